"""The on-device feature extractor: a tiny depthwise-separable conv stack."""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from .config import ModelConfig


def _conv_bn_relu6(conv: nn.Conv2d) -> nn.Sequential:
    # BatchNorm folds into the conv at export, so the MCU runs conv + clamp only.
    return nn.Sequential(conv, nn.BatchNorm2d(conv.out_channels), nn.ReLU6())


class FeatureExtractor(nn.Module):
    """conv3x3 stem -> depthwise 3x3 -> pointwise 1x1, ReLU6 after each.

    ReLU6 bounds every feature to [0, 6], the range the quantizer's centroids
    live in. The total stride (1, 2 or 4) is split over the stem and the
    depthwise conv.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        stem_stride = 2 if config.extractor_stride >= 2 else 1
        depthwise_stride = config.extractor_stride // stem_stride
        width = config.stem_channels
        self.stem = _conv_bn_relu6(
            nn.Conv2d(config.in_channels, width, 3, stem_stride, 1, bias=False)
        )
        self.depthwise = _conv_bn_relu6(
            nn.Conv2d(width, width, 3, depthwise_stride, 1, groups=width, bias=False)
        )
        self.pointwise = _conv_bn_relu6(
            nn.Conv2d(width, config.feature_channels, 1, bias=False)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(self.stem(x)))

    def permute_output_channels(self, order: Tensor) -> None:
        """Reorder the output channels in place (used by importance remapping)."""
        conv = cast(nn.Conv2d, self.pointwise[0])
        norm = cast(nn.BatchNorm2d, self.pointwise[1])
        conv.weight.data = conv.weight.data[order].clone()
        for name in ("weight", "bias", "running_mean", "running_var"):
            tensor = getattr(norm, name)
            tensor.data = tensor.data[order].clone()
