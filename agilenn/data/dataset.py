"""The in-memory image dataset every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class ImageDataset:
    """uint8 images (N, C, H, W) and int64 labels (N,), fully in memory.

    MNIST is 47 MB as uint8, so keeping it resident and batching by index is
    both simpler and faster on a 2-core CPU than a DataLoader with workers.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError("images must be a uint8 array of shape (N, C, H, W)")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def head(self, count: int) -> ImageDataset:
        """The first ``count`` samples (all when ``count`` <= 0)."""
        if count <= 0 or count >= len(self):
            return self
        return ImageDataset(self.name, self.images[:count], self.labels[:count], self.num_classes)

    def batch(self, index: Tensor | slice) -> tuple[Tensor, Tensor]:
        """Float images scaled to [0, 1] and int64 labels for the given indices."""
        selector = index.numpy() if isinstance(index, Tensor) else index
        images = torch.from_numpy(self.images[selector]).float().div_(255.0)
        labels = torch.from_numpy(self.labels[selector].astype(np.int64))
        return images, labels
