"""The feature codec: remote centroid indices <-> bytes. Pure, no I/O.

Payload layout (all integers unsigned)::

    byte 0      0xA0 | FORMAT_VERSION          marker + version
    byte 1      layout (bits 0-1) | (bits_per_symbol - 1) << 2
    varints     channels, height, width        LEB128, 1 byte each below 128
    rest        the body

``layout`` is LAYOUT_BYTES (one byte per symbol) or LAYOUT_BITPACKED (symbols
packed MSB-first at ``bits_per_symbol`` each), each body a zstd frame
(magic-less, no checksum), or LAYOUT_RANS, a body coded by
:mod:`agilenn.entropy` with a prior fitted on training payloads. A zstd
dictionary or a rans prior is part of the model's codec settings, not of the
payload.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import zstandard

from .entropy import Prior, fit_prior, prior_from_bytes
from .errors import CodecError

FORMAT_VERSION = 1
_MARKER = 0xA0
LAYOUT_BYTES = 0
LAYOUT_BITPACKED = 1
LAYOUT_RANS = 2
LAYOUTS = {"bytes": LAYOUT_BYTES, "bitpacked": LAYOUT_BITPACKED, "rans": LAYOUT_RANS}
MAX_SYMBOLS = 1 << 20  # caps what a hostile header can make the decoder allocate
_ZSTD_FORMAT = zstandard.FORMAT_ZSTD1_MAGICLESS  # the 4-byte magic is dead weight on a 100-byte payload


@dataclass(frozen=True)
class CodecSettings:
    n_centroids: int = 8
    layout: str = "bytes"
    level: int = 19
    dictionary: bytes = field(default=b"", repr=False)
    prior: bytes = field(default=b"", repr=False)  # layout rans only: entropy.Prior.to_bytes()

    def __post_init__(self) -> None:
        if not 2 <= self.n_centroids <= 256:
            raise ValueError("n_centroids must lie in [2, 256]")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, not {self.layout!r}")
        if (self.layout == "rans") != bool(self.prior):
            raise ValueError("layout rans takes a prior fitted on training payloads "
                             "(agilenn codec --layout rans), and no other layout takes one")
        if self.prior:
            if self.dictionary:
                raise ValueError("layout rans has no zstd body, so no dictionary")
            n_symbols = self.parsed_prior().n_symbols
            if n_symbols != self.n_centroids:
                raise ValueError(f"the prior codes {n_symbols} symbols, not {self.n_centroids} centroids")

    def parsed_prior(self) -> Prior:
        """The rans prior; ``ValueError`` if its bytes are malformed."""
        return prior_from_bytes(self.prior)

    @property
    def bits_per_symbol(self) -> int:
        return max(1, math.ceil(math.log2(self.n_centroids)))

    def to_dict(self) -> dict[str, Any]:
        values = {"n_centroids": self.n_centroids, "layout": self.layout,
                  "level": self.level, "dictionary": self.dictionary}
        if self.prior:  # absent otherwise, so the hashes of older models stay as they were
            values["prior"] = self.prior
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CodecSettings:
        return cls(**values)


def _write_varint(value: int, out: bytearray) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 28, 7):
        if pos >= len(data):
            raise CodecError("payload truncated inside its shape header")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise CodecError("shape varint longer than 4 bytes")


def _pack_bits(symbols: np.ndarray, bits: int) -> bytes:
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint8)
    return np.packbits((symbols[:, None] >> shifts) & 1).tobytes()


def _unpack_bits(body: bytes, count: int, bits: int) -> np.ndarray:
    flat = np.unpackbits(np.frombuffer(body, dtype=np.uint8), count=count * bits)
    weights = (1 << np.arange(bits - 1, -1, -1)).astype(np.uint8)
    return (flat.reshape(count, bits) * weights).sum(axis=1).astype(np.uint8)


class ZstdFrames:
    """Magic-less zstd frames with no checksum, content size or dictionary id.

    Those fields cost 4-12 bytes a frame, which matters on a slow link; the
    receiver knows the size from its own header. zstd contexts are not
    thread-safe and cost far more to create than to use on a 100-byte
    payload, so each thread keeps its own pair.
    """

    def __init__(self, level: int, dictionary: bytes = b"") -> None:
        self.level = level
        self.dictionary = dictionary
        self._local = threading.local()

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        contexts = getattr(self._local, "contexts", None)
        if contexts is None:
            dictionary = zstandard.ZstdCompressionDict(self.dictionary) if self.dictionary else None
            params = zstandard.ZstdCompressionParameters.from_level(
                self.level, format=_ZSTD_FORMAT, write_checksum=0, write_content_size=0, write_dict_id=0,
            )
            contexts = (
                zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params),
                zstandard.ZstdDecompressor(dict_data=dictionary, format=_ZSTD_FORMAT),
            )
            self._local.contexts = contexts
        return contexts

    def compress(self, data: bytes) -> bytes:
        return self._contexts()[0].compress(data)

    def decompress(self, frame: bytes, size: int) -> bytes:
        """Exactly ``size`` bytes back, or :class:`CodecError`."""
        try:
            # zstd allocates whatever size a frame declares, ignoring
            # max_output_size, so a forged declaration must be refused first.
            declared = zstandard.get_frame_parameters(frame, format=_ZSTD_FORMAT).content_size
            if declared not in (zstandard.CONTENTSIZE_UNKNOWN, size):
                raise CodecError(f"zstd frame declares {declared} bytes, header promises {size}")
            body = self._contexts()[1].decompress(frame, max_output_size=size, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise CodecError(f"corrupt zstd body: {exc}") from exc
        if len(body) != size:
            raise CodecError(f"body decodes to {len(body)} bytes, header promises {size}")
        return body


class FeatureCodec:
    """``encode(symbols) -> bytes`` and ``decode(bytes) -> symbols`` for one model."""

    def __init__(self, settings: CodecSettings) -> None:
        self.settings = settings
        self._layout_code = LAYOUTS[settings.layout]
        self._frames = ZstdFrames(settings.level, settings.dictionary)
        self._prior = settings.parsed_prior() if settings.prior else None

    def encode(self, symbols: np.ndarray) -> bytes:
        """Encode one sample's symbols, shape (channels, height, width)."""
        symbols = np.asarray(symbols)
        if symbols.ndim != 3 or symbols.size == 0:
            raise ValueError(f"expected non-empty symbols of shape (C, H, W), got {symbols.shape}")
        if (symbols.min() < 0 or symbols.max() >= self.settings.n_centroids):
            raise ValueError(f"symbols must lie in [0, {self.settings.n_centroids})")
        bits = self.settings.bits_per_symbol
        header = bytearray((_MARKER | FORMAT_VERSION, self._layout_code | (bits - 1) << 2))
        for dim in symbols.shape:
            _write_varint(dim, header)
        if self._prior is not None:
            return bytes(header) + self._prior.encode(symbols)  # ValueError on another shape
        return bytes(header) + self._frames.compress(self.raw_body(symbols))

    def raw_body(self, symbols: np.ndarray) -> bytes:
        """The uncompressed body of ``encode``: what a zstd dictionary is trained on."""
        if self._layout_code == LAYOUT_RANS:
            raise ValueError("layout rans has no zstd body")
        flat = np.asarray(symbols).astype(np.uint8).ravel()
        if self._layout_code == LAYOUT_BYTES:
            return flat.tobytes()
        return _pack_bits(flat, self.settings.bits_per_symbol)

    def decode(self, payload: bytes) -> np.ndarray:
        """Inverse of :meth:`encode`. Any malformed input raises :class:`CodecError`."""
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise CodecError(f"payload must be bytes, not {type(payload).__name__}")
        data = bytes(payload)
        shape, pos = self._parse_header(data)
        if self._prior is not None:
            if shape != self._prior.shape:
                raise CodecError(f"payload shape {shape}; this model's rans prior codes {self._prior.shape}")
            return self._prior.decode(data[pos:])
        count = math.prod(shape)
        bits = self.settings.bits_per_symbol
        body_size = count if self._layout_code == LAYOUT_BYTES else (count * bits + 7) // 8
        body = self._frames.decompress(data[pos:], body_size)
        if self._layout_code == LAYOUT_BYTES:
            flat = np.frombuffer(body, dtype=np.uint8)
        else:
            flat = _unpack_bits(body, count, bits)
        if flat.max() >= self.settings.n_centroids:
            raise CodecError(
                f"symbol {flat.max()} out of range for {self.settings.n_centroids} centroids"
            )
        return flat.reshape(shape).copy()

    def _parse_header(self, data: bytes) -> tuple[tuple[int, int, int], int]:
        if len(data) < 3:
            raise CodecError(f"payload of {len(data)} bytes is shorter than a header")
        if data[0] & 0xF0 != _MARKER:
            raise CodecError(f"not an agilenn feature payload (first byte 0x{data[0]:02x})")
        if data[0] & 0x0F != FORMAT_VERSION:
            raise CodecError(
                f"payload format version {data[0] & 0x0F}, this codec reads {FORMAT_VERSION}"
            )
        layout, bits = data[1] & 0x03, (data[1] >> 2) + 1
        if layout != self._layout_code or bits != self.settings.bits_per_symbol:
            raise CodecError(
                f"payload layout {layout} with {bits}-bit symbols; this model's codec "
                f"expects layout {self._layout_code} with {self.settings.bits_per_symbol}-bit"
            )
        pos = 2
        dims = []
        for _ in range(3):
            dim, pos = _read_varint(data, pos)
            dims.append(dim)
        count = math.prod(dims)
        if count == 0:
            raise CodecError(f"shape {tuple(dims)} holds no symbols")
        if count > MAX_SYMBOLS:
            raise CodecError(f"shape {tuple(dims)} exceeds the {MAX_SYMBOLS}-symbol limit")
        return (dims[0], dims[1], dims[2]), pos


def order0_entropy_bits(symbol_counts: np.ndarray) -> float:
    """Order-0 entropy, in bits per symbol, of a histogram of symbol counts."""
    counts = np.asarray(symbol_counts, dtype=np.float64)
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * np.log2(probabilities)).sum())


def train_dictionary(settings: CodecSettings, samples: Iterable[np.ndarray], size: int) -> CodecSettings:
    """Settings with a zstd dictionary of ``size`` bytes trained on symbol samples.

    Train on training-set payloads only; a dictionary saves most on small
    payloads because zstd then needs no per-frame entropy tables.
    """
    plain = FeatureCodec(replace(settings, dictionary=b""))
    bodies: list[bytes | bytearray | memoryview] = [plain.raw_body(s) for s in samples]
    try:
        dictionary = zstandard.train_dictionary(size, bodies, level=settings.level)
    except zstandard.ZstdError as exc:
        raise ValueError(f"cannot train a {size}-byte dictionary on {len(bodies)} samples: {exc}") from exc
    return replace(settings, dictionary=dictionary.as_bytes())


def fit_rans(settings: CodecSettings, samples: Iterable[np.ndarray], kind: str = "context") -> CodecSettings:
    """Settings with layout rans and a prior of ``kind`` fitted on symbol samples.

    Fit on training-set payloads only, of the shape the model sends. rans has
    no use for a zstd level, so it is reset to the default: the model hash then
    does not depend on the level the model happened to have before.
    """
    prior = fit_prior(samples, settings.n_centroids, kind)
    return replace(settings, layout="rans", level=CodecSettings.level, dictionary=b"", prior=prior.to_bytes())
