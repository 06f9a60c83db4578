"""AgileNN's skewness and disorder losses, and the optional rate term.

All take per-channel importance of shape (batch, channels), local channels first.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_EPS = 1e-12


def skewness(importance: Tensor, local_channels: int) -> Tensor:
    """Share of each sample's total importance that lies in the local channels."""
    total = importance.sum(dim=1).clamp_min(_EPS)
    return importance[:, :local_channels].sum(dim=1) / total


def skewness_loss(importance: Tensor, local_channels: int, rho: float) -> Tensor:
    """mean(max(rho - skewness, 0)): zero once rho of the importance is local."""
    return torch.relu(rho - skewness(importance, local_channels)).mean()


def disorder_loss(importance: Tensor, local_channels: int) -> Tensor:
    """mean(max((max remote - min local) / total, 0)).

    Zero exactly when every remote channel is less important than every local one.
    """
    total = importance.sum(dim=1).clamp_min(_EPS)
    most_remote = importance[:, local_channels:].max(dim=1).values
    least_local = importance[:, :local_channels].min(dim=1).values
    return torch.relu((most_remote - least_local) / total).mean()


def symbol_entropy_bits(soft_assignment: Tensor) -> Tensor:
    """Order-0 entropy (bits/symbol) of the batch's soft centroid usage.

    Minimising it concentrates the transmitted symbols on few centroids, which
    is what zstd's entropy stage turns into fewer bytes.
    """
    usage = soft_assignment.reshape(-1, soft_assignment.shape[-1]).mean(dim=0)
    return -(usage * torch.log(usage.clamp_min(_EPS))).sum() / math.log(2.0)
