"""CIFAR-10 in its binary format, from a folder the user provides.

Each record is one label byte followed by 3072 pixel bytes (32x32 red plane,
then green, then blue). Files: ``data_batch_1.bin`` .. ``data_batch_5.bin`` and
``test_batch.bin``, directly in the folder or in ``cifar-10-batches-bin/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .dataset import ImageDataset

RECORD_BYTES = 1 + 3 * 32 * 32
FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}


def parse_cifar10_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Pure decode of one binary batch into (images N x 3 x 32 x 32, labels N)."""
    if not raw or len(raw) % RECORD_BYTES:
        raise DataError(
            f"{source}: {len(raw)} bytes is not a whole number of {RECORD_BYTES}-byte records"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{source}: label {labels.max()} outside 0-9")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def load_cifar10(data_dir: Path, split: str) -> ImageDataset:
    if split not in FILES:
        raise ValueError(f"CIFAR-10 split must be one of {sorted(FILES)}, not {split!r}")
    folder = next(
        (d for d in (data_dir, data_dir / "cifar-10-batches-bin") if (d / FILES[split][0]).is_file()),
        None,
    )
    if folder is None:
        raise DataError(f"no CIFAR-10 binary files ({', '.join(FILES[split])}) in {data_dir}")
    parts = []
    for name in FILES[split]:
        path = folder / name
        if not path.is_file():
            raise DataError(f"{path}: missing (expected a CIFAR-10 binary batch)")
        parts.append(parse_cifar10_batch(path.read_bytes(), str(path)))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageDataset(f"cifar10-{split}", images, labels, 10)
