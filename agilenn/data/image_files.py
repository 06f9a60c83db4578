"""Single image files (PNG, JPEG, PGM, BMP, ``.npy``) as model inputs.

Pillow decodes the picture formats; each image is converted to the model's
channel count and resized to its input size, so a folder of ordinary photos
or scans can be fed to ``agilenn edge``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError

PICTURE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".bmp", ".gif", ".tif", ".tiff"})
IMAGE_SUFFIXES = PICTURE_SUFFIXES | {".npy"}


def load_image_file(path: Path, channels: int, size: int) -> np.ndarray:
    """One image as uint8 (C, H, W) in the model's layout.

    A ``.npy`` array is taken as is, so it must already have that shape.
    """
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc})") from exc
        if array.shape != (channels, size, size):
            raise DataError(f"{path}: shape {array.shape}, the model takes {(channels, size, size)}")
        return array
    try:
        with Image.open(path) as picture:
            converted = picture.convert("L" if channels == 1 else "RGB")
            if converted.size != (size, size):
                converted = converted.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(converted, dtype=np.uint8)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from exc
    return pixels[np.newaxis] if channels == 1 else pixels.transpose(2, 0, 1).copy()


def image_files(folder: Path) -> list[Path]:
    """The image files in ``folder``, in name order; other files are skipped."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
