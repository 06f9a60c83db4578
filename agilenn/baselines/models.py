"""Baseline networks, and a multiply-accumulate counter for the device cost model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .payloads import BaselinePayloads


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class FullCNN(nn.Module):
    """A conventional MNIST CNN, run whole on the server (or split for split8).

    ``blocks`` is the unit of splitting: split8 cuts after block ``i`` and
    sends that block's output; the server runs the rest.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.blocks = nn.Sequential(
            nn.Sequential(*_conv(in_channels, w)),
            nn.Sequential(*_conv(w, w), nn.MaxPool2d(2)),
            nn.Sequential(*_conv(w, 2 * w)),
            nn.Sequential(*_conv(2 * w, 2 * w), nn.MaxPool2d(2)),
            nn.Sequential(*_conv(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            nn.Linear(4 * w, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)

    def head(self, split: int) -> nn.Sequential:
        """Blocks ``[0, split)``: what the device runs under split8."""
        return nn.Sequential(*list(self.blocks)[:split])

    def tail(self, split: int) -> nn.Sequential:
        """Blocks ``[split, end)``: what the server runs under split8."""
        return nn.Sequential(*list(self.blocks)[split:])

    @property
    def split_points(self) -> range:
        """Interior cuts only: cutting at 0 is raw-offload, at the end is local-only."""
        return range(1, len(self.blocks))


class TinyCNN(nn.Module):
    """A standalone on-device classifier within the AgileNN device part's budget.

    Same shape of network as the AgileNN extractor (stride-2 stem, depthwise,
    pointwise), then pooling and one linear layer, sized so its multiply-
    accumulates and parameters do not exceed the AgileNN device part's.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 11) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU6(),
            nn.Conv2d(width, width, 3, 2, 1, groups=width, bias=False), nn.BatchNorm2d(width), nn.ReLU6(),
            nn.Conv2d(width, 2 * width, 1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU6(),
            nn.AdaptiveAvgPool2d(3), nn.Flatten(),
        )
        self.head = nn.Linear(2 * width * 9, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


BASELINE_ARCHS: dict[str, Callable[..., nn.Module]] = {"full-cnn": FullCNN, "tiny-cnn": TinyCNN}


def count_macs(root: nn.Module, example: Tensor, forward: Callable[[Tensor], object] | None = None) -> int:
    """Multiply-accumulates of ``forward`` (default: ``root`` itself) on one example.

    Only layers inside ``root`` that actually run are counted, so
    ``count_macs(agilenn, x, agilenn.device_forward)`` gives the device part.

    Counts convolutions and linear layers, which is what MAC-throughput
    figures for MCUs (CMSIS-NN, ESP-NN) measure; pooling, normalisation and
    activations are folded or negligible there.
    """
    total = 0

    def on_conv(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        assert isinstance(layer, nn.Conv2d)
        kernel = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
        total += output[0].numel() * kernel

    def on_linear(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        assert isinstance(layer, nn.Linear)
        total += layer.in_features * layer.out_features

    handles = []
    for layer in root.modules():
        if isinstance(layer, nn.Conv2d):
            handles.append(layer.register_forward_hook(on_conv))
        elif isinstance(layer, nn.Linear):
            handles.append(layer.register_forward_hook(on_linear))
    try:
        with torch.no_grad():
            (forward or root)(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return total


def baseline_payloads(model: FullCNN, raw_dictionary: bytes, input_shape: tuple[int, int, int] = (1, 28, 28),
                      ) -> BaselinePayloads:
    """The payload codec for ``model``: the activation shape at every split point."""
    with torch.no_grad():
        example = torch.zeros(1, *input_shape)
        shapes = {split: tuple(model.head(split)(example).shape[1:]) for split in model.split_points}
    return BaselinePayloads(input_shape, shapes, raw_dictionary)
