"""Local, remote and reference predictors, and the learned logit merge.

Remote architectures are picked by name (``ModelConfig.remote_arch``) from
:data:`REMOTE_PREDICTORS`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from .config import ModelConfig


class LocalPredictor(nn.Module):
    """Adaptive average pooling to ``pool`` x ``pool``, then one linear layer.

    Small enough for an MCU. With the MNIST defaults (a 7x7 feature map and
    ``local_pool`` 7) the pooling is the identity and pools nothing: the head
    is one linear layer over all ``k * 7 * 7`` local feature values.
    """

    def __init__(self, channels: int, pool: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.linear = nn.Linear(channels * pool * pool, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(self.pool(features).flatten(1))


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks and a linear head, for feature maps of about 7x7.

    Piecewise linear on purpose when used as the reference network: its
    input-gradients are then locally constant, which makes the first-order
    Integrated Gradients path exact (see docs/ARCHITECTURE.md).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_conv_block(in_channels, width),
            *_conv_block(width, width),
            nn.MaxPool2d(2, ceil_mode=True),
            *_conv_block(width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.body(features))

    def permute_input_channels(self, order: Tensor) -> None:
        first_conv = cast(nn.Conv2d, self.body[0])
        first_conv.weight.data = first_conv.weight.data[:, order].clone()


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileNetV2Remote(nn.Module):
    """A MobileNetV2-style remote network, as in the paper, sized by ``width``."""

    def __init__(self, in_channels: int, num_classes: int, width: int) -> None:
        super().__init__()
        stages = [(width // 2, 1), (width // 2, 1), (width, 2), (width, 1), (2 * width, 1)]
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width // 2, 1, bias=False),
            nn.BatchNorm2d(width // 2),
            nn.ReLU6(),
        ]
        cin = width // 2
        for cout, stride in stages:
            layers.append(InvertedResidual(cin, cout, stride))
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.body(features))


RemoteFactory = Callable[[int, int, int], nn.Module]
REMOTE_PREDICTORS: dict[str, RemoteFactory] = {
    "cnn": SmallCNN,
    "mobilenetv2": MobileNetV2Remote,
}


def build_remote_predictor(config: ModelConfig) -> nn.Module:
    try:
        factory = REMOTE_PREDICTORS[config.remote_arch]
    except KeyError:
        names = ", ".join(sorted(REMOTE_PREDICTORS))
        raise ValueError(f"unknown remote_arch {config.remote_arch!r}; pick one of {names}") from None
    return factory(config.remote_channels, config.num_classes, config.remote_width)


def build_reference_network(config: ModelConfig) -> SmallCNN:
    """The frozen importance oracle: sees all channels of the feature map."""
    return SmallCNN(config.feature_channels, config.num_classes, config.reference_width)


class LogitMerge(nn.Module):
    """Convex combination of local and remote logits with learned weights."""

    def __init__(self) -> None:
        super().__init__()
        self.weight_logits = nn.Parameter(torch.zeros(2))

    def weights(self) -> Tensor:
        return torch.softmax(self.weight_logits, dim=0)

    def forward(self, local_logits: Tensor, remote_logits: Tensor) -> Tensor:
        local_weight, remote_weight = self.weights()
        return local_weight * local_logits + remote_weight * remote_logits
