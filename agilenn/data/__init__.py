"""Dataset loaders. Nothing here downloads: data comes from local folders.

``load_dataset(name, split, data_dir)`` picks a loader by name from
:data:`DATASETS`; ``resolve_data_dir`` applies the ``--data-dir`` /
``AGILENN_DATA`` rule.
"""

from __future__ import annotations

import io
import os
from importlib import resources
from pathlib import Path
from collections.abc import Callable

import numpy as np

from ..errors import DataError
from .cifar10 import load_cifar10
from .dataset import ImageDataset
from .mnist import load_mnist
from .synthetic import make_synthetic

__all__ = ["DATASETS", "ImageDataset", "load_dataset", "resolve_data_dir", "load_mnist_sample"]

DATA_ENV = "AGILENN_DATA"
SAMPLE_ASSET = "mnist-test-sample.npz"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``--data-dir`` if given, else ``$AGILENN_DATA``, else a clear error."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not chosen:
        raise DataError(f"no data folder: pass --data-dir or set {DATA_ENV}")
    return Path(chosen).expanduser()


def load_mnist_sample(split: str = "test") -> ImageDataset:
    """The real MNIST test images that ship inside the package (for offline demos)."""
    if split != "test":
        raise ValueError("the shipped MNIST sample only has a test split")
    raw = resources.files("agilenn.assets").joinpath(SAMPLE_ASSET).read_bytes()
    with np.load(io.BytesIO(raw)) as arrays:
        return ImageDataset("mnist-sample", arrays["images"], arrays["labels"].astype(np.int64), 10)


def _synthetic(split: str) -> ImageDataset:
    return make_synthetic(2000 if split == "train" else 500, seed=0 if split == "train" else 1)


_FOLDER_LOADERS: dict[str, Callable[[Path, str], ImageDataset]] = {
    "mnist": load_mnist,
    "cifar10": load_cifar10,
}
_BUILTIN_LOADERS: dict[str, Callable[[str], ImageDataset]] = {
    "mnist-sample": load_mnist_sample,
    "synthetic": _synthetic,
}
DATASETS = sorted([*_FOLDER_LOADERS, *_BUILTIN_LOADERS])


def load_dataset(name: str, split: str, data_dir: str | Path | None = None) -> ImageDataset:
    if name in _BUILTIN_LOADERS:
        return _BUILTIN_LOADERS[name](split)
    if name in _FOLDER_LOADERS:
        return _FOLDER_LOADERS[name](resolve_data_dir(data_dir), split)
    raise ValueError(f"unknown dataset {name!r}; pick one of {', '.join(DATASETS)}")
