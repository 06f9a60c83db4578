"""Dataset loaders. Nothing here downloads: data comes from local folders.

``load_dataset(name, split, data_dir)`` picks a loader by name from
:data:`DATASETS`, or takes a spec: ``mnist-c:NAME`` (the MNIST split with an
MNIST-C corruption, see :mod:`.mnist_c`) or ``npz:PATH`` (a user's labelled
samples, see :mod:`.npz`), or ``cluttered-mnist`` / ``cluttered-mnist:SIZE``
(each MNIST digit on a 64x64 or SIZE x SIZE canvas among fragments of other
digits, see :mod:`.cluttered`). ``dataset_spec`` checks such a name for argparse;
``resolve_data_dir`` applies the ``--data-dir`` / ``AGILENN_DATA`` rule.
"""

from __future__ import annotations

import argparse
import io
import os
from importlib import resources
from pathlib import Path
from collections.abc import Callable

import numpy as np

from ..errors import DataError
from .cifar10 import load_cifar10
from .cluttered import DEFAULT_SIZE as CLUTTERED_SIZE, NAME as CLUTTERED, check_size, load_cluttered_mnist
from .dataset import ImageDataset
from .mnist import load_mnist
from .mnist_c import CORRUPTIONS, corrupt, lookup, split_seed
from .npz import load_npz
from .synthetic import make_synthetic

__all__ = [
    "DATASETS", "DATASET_HELP", "ImageDataset", "dataset_spec", "load_dataset", "resolve_data_dir",
    "load_mnist_sample",
]

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
MNIST_C_PREFIX = "mnist-c:"
NPZ_PREFIX = "npz:"
CLUTTERED_PREFIX = CLUTTERED + ":"
DATASET_HELP = (f"{', '.join(DATASETS)}; {MNIST_C_PREFIX}NAME for MNIST with an MNIST-C corruption "
                f"({', '.join(CORRUPTIONS)}); {CLUTTERED} ({CLUTTERED_SIZE}x{CLUTTERED_SIZE}) or "
                f"{CLUTTERED_PREFIX}SIZE for cluttered MNIST; or {NPZ_PREFIX}PATH for an .npz with images "
                f"and labels")


def _load_mnist_c(corruption: str, split: str, data_dir: str | Path | None) -> ImageDataset:
    """The real MNIST split, every image corrupted, with the split's fixed seed."""
    seed = split_seed(corruption, split)  # checks both names before reading 50 MB
    clean = load_mnist(resolve_data_dir(data_dir), split)
    images = corrupt(clean.images, corruption, seed)
    return ImageDataset(f"{MNIST_C_PREFIX}{corruption}-{split}", images, clean.labels, clean.num_classes)


def _cluttered_size(text: str) -> str:
    """The canvas size of ``cluttered-mnist:SIZE``, checked; ValueError otherwise."""
    if not text.isdigit():
        raise ValueError(f"{CLUTTERED_PREFIX}SIZE takes a whole number of pixels, not {text!r}")
    return str(check_size(int(text)))


def _parse_spec(name: str) -> tuple[str, str]:
    """``(kind, value)``: a plain name, ``mnist-c`` and its corruption, ``cluttered`` and its
    canvas size, or ``npz`` and its path."""
    if name in DATASETS:
        return "plain", name
    if name == CLUTTERED:
        return "cluttered", str(CLUTTERED_SIZE)
    if name.startswith(CLUTTERED_PREFIX):
        return "cluttered", _cluttered_size(name.removeprefix(CLUTTERED_PREFIX))
    if name.startswith(MNIST_C_PREFIX):
        corruption = name.removeprefix(MNIST_C_PREFIX)
        lookup(corruption)  # ValueError naming the known ones
        return "mnist-c", corruption
    if name.startswith(NPZ_PREFIX) and name != NPZ_PREFIX:
        return "npz", name.removeprefix(NPZ_PREFIX)
    raise ValueError(f"unknown dataset {name!r}; pick one of {DATASET_HELP}")


def load_dataset(name: str, split: str, data_dir: str | Path | None = None) -> ImageDataset:
    """A dataset by name or spec; ``split`` is ignored for ``npz:PATH``, which is one file."""
    kind, value = _parse_spec(name)
    if kind == "mnist-c":
        return _load_mnist_c(value, split, data_dir)
    if kind == "cluttered":
        return load_cluttered_mnist(resolve_data_dir(data_dir), split, int(value))
    if kind == "npz":
        return load_npz(Path(value).expanduser())
    if name in _BUILTIN_LOADERS:
        return _BUILTIN_LOADERS[name](split)
    return _FOLDER_LOADERS[name](resolve_data_dir(data_dir), split)


def dataset_spec(text: str) -> str:
    """argparse ``type`` for ``--dataset``: a name from DATASETS, ``mnist-c:NAME``,
    ``cluttered-mnist[:SIZE]`` or ``npz:PATH``.

    Only the form is checked here; whether the npz file exists is the loader's business.
    """
    try:
        _parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
