"""Cluttered MNIST: each digit at a random place on a larger canvas, among fragments of others.

The protocol of the recurrent-attention (Mnih et al. 2014) and spatial-transformer
(Jaderberg et al. 2015) papers: a 28x28 MNIST digit is pasted at a uniformly
random position on a ``size`` x ``size`` black canvas, and ``patches`` random
8x8 crops of other random digits of the same split are pasted at uniformly
random positions. Overlaps keep the brighter pixel, so the digit is always
there in full. We use 8 crops on a 64x64 canvas and scale the count with the
canvas area for other sizes (:func:`default_patches`).

Everything is drawn from one ``numpy`` Generator seeded per (split, size)
(:func:`split_seed`), so a split is the same bytes on every machine. Train
images use only MNIST train digits, test images only test digits: :func:`clutter`
cuts its crops from the same array of digits it places, and the loader hands
it one MNIST split.
Batches are vectorised; no loop runs per image.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .dataset import ImageDataset
from .mnist import find_mnist_dir, load_mnist

__all__ = [
    "DEFAULT_SIZE", "NAME", "PATCH", "check_size", "clutter", "default_patches", "load_cluttered_mnist",
    "split_seed",
]

NAME = "cluttered-mnist"

DIGIT = 28
PATCH = 8  # side of a clutter crop, as in the recurrent-attention paper
DEFAULT_SIZE = 64
DEFAULT_PATCHES = 8  # on the 64x64 canvas
MAX_SIZE = 256
CHUNK = 4096  # images per vectorised step: bounds the index temporaries to about 100 MB


def default_patches(size: int) -> int:
    """8 crops on 64x64, scaled with the canvas area (at least one)."""
    return max(1, round(DEFAULT_PATCHES * size * size / (DEFAULT_SIZE * DEFAULT_SIZE)))


def split_seed(split: str, size: int) -> int:
    """The fixed seed of one split at one canvas size: 0 for train, 1 for test, plus ``2 * size``."""
    splits = {"train": 0, "test": 1}
    if split not in splits:
        raise ValueError(f"cluttered MNIST split must be one of {sorted(splits)}, not {split!r}")
    return splits[split] + 2 * size


def check_size(size: int) -> int:
    if not DIGIT <= size <= MAX_SIZE:
        raise ValueError(f"cluttered MNIST canvas size must lie in [{DIGIT}, {MAX_SIZE}], not {size}")
    return size


def _paste(canvas: np.ndarray, pieces: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Paste square ``pieces`` (n, p, p) at top-left (rows, cols) of ``canvas`` (n, S, S), keeping the max."""
    side = pieces.shape[1]
    offsets = np.arange(side)
    every = np.arange(len(canvas))[:, None, None]
    r = (rows[:, None] + offsets)[:, :, None]
    c = (cols[:, None] + offsets)[:, None, :]
    canvas[every, r, c] = np.maximum(canvas[every, r, c], pieces)


def _crops(source: np.ndarray, which: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """PATCH x PATCH crops of ``source[which]`` (N, 28, 28) at top-left (rows, cols)."""
    offsets = np.arange(PATCH)
    r = (rows[:, None] + offsets)[:, :, None]
    c = (cols[:, None] + offsets)[:, None, :]
    return source[which[:, None, None], r, c]


def _other_digits(rng: np.random.Generator, first: int, count: int, total: int) -> np.ndarray:
    """Random indices into the source, never the digit's own (index ``first + i`` for image i)."""
    own = np.arange(first, first + count) % total
    drawn = rng.integers(0, total - 1, size=count)
    return drawn + (drawn >= own)


def clutter(digits: np.ndarray, size: int = DEFAULT_SIZE, patches: int | None = None, seed: int = 0,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Cluttered canvases from uint8 digits (N, 1, 28, 28), and each digit's top-left (row, col).

    Image ``i`` holds ``digits[i]``; its clutter comes from the other digits of
    the same array. Returns uint8 images (N, 1, size, size) and int64
    positions (N, 2). The same digits, size, patch count and seed give the
    same bytes.
    """
    check_size(size)
    patches = default_patches(size) if patches is None else patches
    if digits.dtype != np.uint8 or digits.shape[1:] != (1, DIGIT, DIGIT):
        raise ValueError(f"expected uint8 digits of shape (N, 1, {DIGIT}, {DIGIT}), got "
                         f"{digits.dtype} {digits.shape}")
    if patches < 0 or (patches and len(digits) < 2):
        raise ValueError("clutter needs a non-negative patch count and at least two digits to cut from")
    rng = np.random.default_rng(seed)
    source = digits[:, 0]
    images = np.zeros((len(digits), size, size), dtype=np.uint8)
    positions = rng.integers(0, size - DIGIT + 1, size=(len(digits), 2))
    for start in range(0, len(digits), CHUNK):
        stop = min(start + CHUNK, len(digits))
        canvas = images[start:stop]
        for _ in range(patches):
            which = _other_digits(rng, start, stop - start, len(digits))
            cut = rng.integers(0, DIGIT - PATCH + 1, size=(2, stop - start))
            at = rng.integers(0, size - PATCH + 1, size=(2, stop - start))
            _paste(canvas, _crops(source, which, cut[0], cut[1]), at[0], at[1])
        _paste(canvas, source[start:stop], positions[start:stop, 0], positions[start:stop, 1])
    return images[:, None], positions.astype(np.int64)


@lru_cache(maxsize=2)
def _built(folder: Path, split: str, size: int) -> ImageDataset:
    digits = load_mnist(folder, split)
    images, _ = clutter(digits.images, size, seed=split_seed(split, size))
    return ImageDataset(f"{NAME}-{split}" if size == DEFAULT_SIZE else f"{NAME}:{size}-{split}",
                        images, digits.labels, digits.num_classes)


def load_cluttered_mnist(data_dir: Path, split: str, size: int = DEFAULT_SIZE) -> ImageDataset:
    """One MNIST split, every digit cluttered on a ``size`` canvas with the split's fixed seed.

    Built on first use and kept in memory (the last two splits asked for);
    nothing is written to disk. The arrays are shared between callers: copy
    before changing them.
    """
    split_seed(split, check_size(size))  # checks both before reading 50 MB
    return _built(find_mnist_dir(data_dir).resolve(), split, size)
