"""Learned soft-to-hard vector quantizer for the remote feature channels."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

RELU6_MAX = 6.0


class Quantized(NamedTuple):
    values: Tensor  # hard centroid values forward, soft values' gradient backward
    symbols: Tensor  # int64 centroid index of every element
    soft_assignment: Tensor  # (..., n_centroids) probabilities, for the rate term


class SoftHardQuantizer(nn.Module):
    """Scalar quantizer with learned centroids (Agustsson et al., soft-to-hard).

    The forward pass emits the nearest centroid, exactly what the server will
    reconstruct from the symbols. The backward pass uses the softmax-weighted
    mixture of centroids (straight-through), so both the extractor and the
    centroids receive gradients.
    """

    def __init__(self, n_centroids: int, sharpness: float = 4.0) -> None:
        super().__init__()
        if n_centroids < 2:
            raise ValueError("n_centroids must be at least 2")
        self.sharpness = sharpness
        # Starting at 0 exactly matters: ReLU6 emits many exact zeros.
        self.raw_centroids = nn.Parameter(torch.linspace(0.0, RELU6_MAX, n_centroids))

    @property
    def n_centroids(self) -> int:
        return self.raw_centroids.numel()

    def centroids(self) -> Tensor:
        """Centroids clamped into the ReLU6 range, where every feature lies."""
        return self.raw_centroids.clamp(0.0, RELU6_MAX)

    def forward(self, x: Tensor) -> Quantized:
        centroids = self.centroids()
        distance = (x.unsqueeze(-1) - centroids).square()
        soft_assignment = torch.softmax(-self.sharpness * distance, dim=-1)
        soft = (soft_assignment * centroids).sum(-1)
        symbols = distance.argmin(-1)
        hard = centroids[symbols]
        values = soft + (hard - soft).detach()
        return Quantized(values, symbols, soft_assignment)

    def quantize(self, x: Tensor) -> Tensor:
        """Symbols only: what the device computes before encoding."""
        return (x.unsqueeze(-1) - self.centroids()).abs().argmin(-1)

    def dequantize(self, symbols: Tensor) -> Tensor:
        return self.centroids()[symbols]
