"""Pure parser of the IDX format used by MNIST (no file I/O here)."""

from __future__ import annotations

import struct

import numpy as np

from ..errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def parse_idx(raw: bytes, expected_magic: int, source: str) -> np.ndarray:
    """Decode an uncompressed IDX buffer, checking its magic and its length.

    ``source`` names the file in error messages.
    """
    if len(raw) < 4:
        raise DataError(f"{source}: {len(raw)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">I", raw[:4])
    if magic != expected_magic:
        raise DataError(
            f"{source}: IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{source}: truncated IDX header ({len(raw)} bytes)")
    shape = struct.unpack(f">{ndim}I", raw[4:header_size])
    expected = int(np.prod(shape))
    body = len(raw) - header_size
    if body != expected:
        raise DataError(
            f"{source}: header promises {expected} bytes for shape {shape}, file has {body}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)
