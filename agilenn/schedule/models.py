"""Models for the scheduler's figures that are not AgileNN: a CIFAR-style ResNet-18.

POET and Checkmate report their solvers on ResNet-18; this one takes 32x32
inputs (a 3x3 stem convolution, no max-pool), has four stages of two basic
blocks with ``width``, 2, 4 and 8 times ``width`` channels at strides 1, 2, 2
and 2, an adaptive average pool and a linear classifier.

It is written for :func:`~agilenn.schedule.graph.trace_training_graph`: only
plain modules and functions ``torch.fx`` traces, every ReLU its own module and
not in place (the executor keeps a node's input after its consumer runs, so an
in-place ReLU would overwrite a tensor the plan still holds), residual adds
with ``+``. Trace it in eval mode: BatchNorm then normalises with its stored
statistics, as a device that fine-tunes does, and its training-mode buffer
updates (which fx would trace as side effects) are out of the graph.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (a 1x1 convolution where the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()
        # None rather than nn.Identity: fx traces Identity as an operation, a copy the plan would hold.
        self.shortcut: nn.Sequential | None = None
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images; ``width`` is the first stage's channels (64 in the paper)."""

    def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        if width < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError("width, num_classes and in_channels must be positive")
        self.conv = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        blocks: list[nn.Module] = []
        channels = width
        for stage, stride in enumerate((1, 2, 2, 2)):
            out_channels = width * 2**stage
            blocks += [BasicBlock(channels, out_channels, stride), BasicBlock(out_channels, out_channels, 1)]
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.pool(self.blocks(self.relu(self.bn(self.conv(x)))))
        return self.linear(torch.flatten(features, 1))
