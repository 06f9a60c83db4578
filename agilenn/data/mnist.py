"""MNIST from the standard IDX ``.gz`` files (LeCun, Cortes, Burges; CC BY-SA 3.0)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import ImageDataset
from .idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60_000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10_000),
}


def find_mnist_dir(data_dir: Path) -> Path:
    """Accept either the folder holding the IDX files or its parent with ``mnist/``."""
    for candidate in (data_dir, data_dir / "mnist"):
        if (candidate / FILES["test"][0]).is_file():
            return candidate
    raise DataError(
        f"no MNIST files in {data_dir} or {data_dir / 'mnist'}: expected "
        f"{FILES['train'][0]}, {FILES['train'][1]}, {FILES['test'][0]}, {FILES['test'][1]}"
    )


def _read_gz(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"{path}: missing (expected a gzip-compressed IDX file)")
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a valid gzip file ({exc})") from exc


def load_mnist(data_dir: Path, split: str) -> ImageDataset:
    if split not in FILES:
        raise ValueError(f"MNIST split must be one of {sorted(FILES)}, not {split!r}")
    folder = find_mnist_dir(data_dir)
    images_name, labels_name, count = FILES[split]
    images = parse_idx(_read_gz(folder / images_name), IMAGES_MAGIC, str(folder / images_name))
    labels = parse_idx(_read_gz(folder / labels_name), LABELS_MAGIC, str(folder / labels_name))
    if images.shape != (count, 28, 28):
        raise DataError(f"{folder / images_name}: shape {images.shape}, expected ({count}, 28, 28)")
    if labels.shape != (count,):
        raise DataError(f"{folder / labels_name}: {labels.shape[0]} labels, expected {count}")
    if labels.max(initial=0) > 9:
        raise DataError(f"{folder / labels_name}: label {labels.max()} outside 0-9")
    return ImageDataset(f"mnist-{split}", images[:, None].copy(), labels.astype(np.int64), 10)
