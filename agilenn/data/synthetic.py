"""A seeded synthetic 10-class image set for fast unit tests.

Each class is a fixed random stroke pattern; samples jitter its position and
add noise, so a small network learns it in seconds but not trivially.
"""

from __future__ import annotations

import numpy as np

from .dataset import ImageDataset


def make_synthetic(
    count: int, seed: int = 0, image_size: int = 28, num_classes: int = 10
) -> ImageDataset:
    rng = np.random.default_rng(seed)
    # Prototypes come from a fixed seed so train and test splits share classes.
    prototypes = np.random.default_rng(12345).random((num_classes, image_size, image_size)) > 0.8
    labels = rng.integers(0, num_classes, size=count)
    shifts = rng.integers(-1, 2, size=(count, 2))
    images = np.empty((count, 1, image_size, image_size), dtype=np.uint8)
    for i, (label, (dy, dx)) in enumerate(zip(labels, shifts, strict=True)):
        pattern = np.roll(prototypes[label], (dy, dx), axis=(0, 1)) * 200.0
        noisy = pattern + rng.normal(0.0, 25.0, size=pattern.shape)
        images[i, 0] = np.clip(noisy, 0, 255).astype(np.uint8)
    return ImageDataset("synthetic", images, labels.astype(np.int64), num_classes)
