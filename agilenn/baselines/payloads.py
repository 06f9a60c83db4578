"""Wire payloads of the baseline schemes. Pure: bytes in, arrays out, no I/O.

Every payload starts with one tag byte, so one server serves all three:

- ``R`` raw-offload: the uint8 image, one magic-less zstd frame (with the
  checkpoint's dictionary when it has one).
- ``J`` jpeg-offload: a baseline JPEG file (Pillow), grayscale or RGB.
- ``S`` split8: the split index (1 byte), the quantisation step as float32
  little-endian (4 bytes), then one zstd frame of the activations at that
  split, uniformly quantised to uint8: ``q = round(x / step)``, with
  ``step = max(x) / 255`` (split points follow a ReLU, so ``x >= 0``).

Decoding checks every size against what the model expects before it
allocates anything, and raises :class:`~agilenn.errors.CodecError` with the
reason.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..codec import ZstdFrames
from ..errors import CodecError

RAW, JPEG, SPLIT8 = b"R", b"J", b"S"
_SPLIT_HEADER = struct.Struct("<Bf")
_FLOAT32_MAX = float(np.finfo(np.float32).max)

Shape = tuple[int, ...]


class BaselinePayloads:
    """Encoder and decoder of the three payloads for one model.

    ``input_shape`` is the image (C, H, W); ``split_shapes`` maps each split
    index to the activation shape the device sends at that split.
    """

    def __init__(self, input_shape: Shape, split_shapes: Mapping[int, Shape], raw_dictionary: bytes = b"",
                 level: int = 9) -> None:
        self.input_shape = tuple(input_shape)
        self.split_shapes = {index: tuple(shape) for index, shape in split_shapes.items()}
        self._raw = ZstdFrames(level, raw_dictionary)
        self._split = ZstdFrames(level)

    # ------------------------------------------------------------ device side
    def encode_raw(self, image: np.ndarray) -> bytes:
        return RAW + self._raw.compress(self._image(image).tobytes())

    def encode_jpeg(self, image: np.ndarray, quality: int) -> bytes:
        image = self._image(image)
        picture = Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0))
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality, optimize=True)
        return JPEG + buffer.getvalue()

    def encode_split8(self, activation: np.ndarray, split: int) -> bytes:
        activation = np.asarray(activation, dtype=np.float32)
        if self.split_shapes.get(split) != activation.shape:
            raise ValueError(f"split {split} sends shape {self.split_shapes.get(split)}, "
                             f"got {activation.shape}")
        peak = float(activation.max())
        step = peak / 255.0 if peak > 0 else 1.0
        levels = np.clip(np.rint(activation / step), 0, 255).astype(np.uint8)
        return SPLIT8 + _SPLIT_HEADER.pack(split, step) + self._split.compress(levels.tobytes())

    # ------------------------------------------------------------ server side
    def decode(self, payload: bytes) -> tuple[int, np.ndarray]:
        """(split index, float32 array): split 0 is an image scaled to [0, 1]."""
        if not payload:
            raise CodecError("empty payload")
        tag, body = payload[:1], payload[1:]
        if tag == RAW:
            image = np.frombuffer(self._raw.decompress(body, math.prod(self.input_shape)), dtype=np.uint8)
            return 0, image.reshape(self.input_shape).astype(np.float32) / 255.0
        if tag == JPEG:
            return 0, self._decode_jpeg(body).astype(np.float32) / 255.0
        if tag == SPLIT8:
            return self._decode_split8(body)
        raise CodecError(f"unknown baseline payload tag 0x{payload[0]:02x}; expected R, J or S")

    def _decode_jpeg(self, body: bytes) -> np.ndarray:
        channels, height, width = self.input_shape
        try:
            with Image.open(io.BytesIO(body), formats=["JPEG"]) as picture:
                # The header is read lazily: refuse a wrong size before decoding any pixels.
                if picture.size != (width, height):
                    raise CodecError(f"JPEG is {picture.size[0]}x{picture.size[1]}, the model takes "
                                     f"{width}x{height}")
                pixels = np.asarray(picture.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError) as exc:
            raise CodecError(f"not a readable JPEG: {exc}") from exc
        return pixels[np.newaxis] if channels == 1 else pixels.transpose(2, 0, 1)

    def _decode_split8(self, body: bytes) -> tuple[int, np.ndarray]:
        if len(body) < _SPLIT_HEADER.size:
            raise CodecError("split8 payload shorter than its header")
        split, step = _SPLIT_HEADER.unpack_from(body)
        shape = self.split_shapes.get(split)
        if shape is None:
            raise CodecError(f"split {split} is not a split point of this model "
                             f"(it has {sorted(self.split_shapes)})")
        if not math.isfinite(step) or step <= 0 or step * 255 > _FLOAT32_MAX:
            raise CodecError(f"split8 step {step} is not a positive number whose 255 levels fit float32")
        levels = np.frombuffer(self._split.decompress(body[_SPLIT_HEADER.size:], math.prod(shape)), np.uint8)
        return split, levels.reshape(shape).astype(np.float32) * np.float32(step)

    def _image(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.shape != self.input_shape or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 image of shape {self.input_shape}, "
                             f"got {image.dtype} {image.shape}")
        return image
