"""A user's labelled samples from an ``.npz`` file with ``images`` and ``labels``.

``images`` is uint8, (N, H, W) or (N, C, H, W) with C 1 or 3; ``labels`` holds
N integers. The number of classes is kept simple: MNIST-shaped images
(1 x 28 x 28) have 10 classes, so their labels must lie in 0-9; anything else
has ``max(10, labels.max() + 1)`` classes, labels below :data:`MAX_CLASSES`.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import ImageDataset

MNIST_SHAPE = (1, 28, 28)
MNIST_CLASSES = 10
MAX_CLASSES = 1000
EXPECTED = "an .npz with 'images' (uint8, (N, H, W) or (N, C, H, W), C 1 or 3) and 'labels' (N integers)"
_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _arrays(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    except _READ_ERRORS as exc:
        raise DataError(f"{source}: not an .npz archive ({exc}); expected {EXPECTED}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{source}: a single .npy array, not an .npz archive; expected {EXPECTED}")
    with loaded:
        missing = [key for key in ("images", "labels") if key not in loaded.files]
        if missing:
            raise DataError(f"{source}: no {' or '.join(map(repr, missing))} array "
                            f"(has {', '.join(loaded.files) or 'nothing'}); expected {EXPECTED}")
        try:
            return loaded["images"], loaded["labels"]
        except _READ_ERRORS as exc:
            raise DataError(f"{source}: unreadable array ({exc}); expected {EXPECTED}") from exc


def _check_images(images: np.ndarray, source: str) -> np.ndarray:
    if images.dtype != np.uint8:
        raise DataError(f"{source}: 'images' is {images.dtype}, expected uint8 (0-255 pixels)")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"{source}: 'images' has shape {images.shape}, expected (N, H, W) or (N, C, H, W) "
                        "with C 1 or 3")
    if images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise DataError(f"{source}: 'images' has shape {images.shape}, expected at least one non-empty image")
    return images


def _check_labels(labels: np.ndarray, count: int, classes_limit: int, source: str) -> np.ndarray:
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(f"{source}: 'labels' is {labels.dtype} of shape {labels.shape}, "
                        "expected a 1-D integer array")
    if len(labels) != count:
        raise DataError(f"{source}: {len(labels)} labels for {count} images, expected one label per image")
    if labels.min() < 0:
        raise DataError(f"{source}: negative label {labels.min()}, expected labels from 0")
    if labels.max() >= classes_limit:
        raise DataError(f"{source}: label {labels.max()} out of range, expected 0-{classes_limit - 1}")
    return labels.astype(np.int64)


def parse_npz(raw: bytes, source: str) -> ImageDataset:
    """Decode and validate an ``.npz`` buffer; ``source`` names the file in error messages."""
    images, labels = _arrays(raw, source)
    images = _check_images(images, source)
    mnist_shaped = images.shape[1:] == MNIST_SHAPE
    limit = MNIST_CLASSES if mnist_shaped else MAX_CLASSES
    labels = _check_labels(labels, len(images), limit, source)
    classes = MNIST_CLASSES if mnist_shaped else max(MNIST_CLASSES, int(labels.max()) + 1)
    return ImageDataset(f"npz:{source}", np.ascontiguousarray(images), labels, classes)


def load_npz(path: Path) -> ImageDataset:
    if not path.is_file():
        raise DataError(f"{path}: missing (expected {EXPECTED})")
    return parse_npz(path.read_bytes(), str(path))
