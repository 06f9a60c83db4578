"""The AGW1 weight image (docs/FIRMWARE.md section 2): what a slot holds and what a push sends."""

from __future__ import annotations

import struct

import numpy as np

from .int8 import LUT_SIZE, ConvLayer, Dims, Int8Model

MAGIC = b"AGW1"
VERSION = 1
SECTION_COUNT = 18
ALIGN = 4
_HEAD = struct.Struct("<4sHH8sI12B")  # magic, version, header bytes, model hash, image bytes, dims
_ENTRY = struct.Struct("<II")  # section offset, length
HEADER_BYTES = _HEAD.size + _ENTRY.size * SECTION_COUNT
assert _HEAD.size == 32


def _sections(model: Int8Model) -> list[bytes]:
    """The 18 sections' bytes, in table order, little-endian."""
    arrays: list[np.ndarray] = []
    for layer in (model.stem, model.depthwise, model.pointwise):
        arrays += [layer.weights.astype(np.int8), layer.bias.astype("<i4"), layer.mult.astype("<i4"),
                   layer.shift.astype("<i4")]
    arrays += [model.qmax.astype("<i4"), model.local_weights.astype(np.int8), model.local_bias.astype("<i4"),
               model.local_scale.astype("<f4"), model.centroid_lut.astype(np.uint8)]
    return [a.tobytes() for a in arrays] + [bytes(model.prior)]


def _aligned(value: int) -> int:
    return -(-value // ALIGN) * ALIGN


def pack_image(model: Int8Model) -> bytes:
    sections = _sections(model)
    table, body = [], bytearray()
    for data in sections:
        offset = HEADER_BYTES + len(body)
        table.append((offset, len(data)))
        body += data
        body += bytes(_aligned(len(body)) - len(body))  # the next section starts 4-aligned
    total = HEADER_BYTES + len(body)
    head = _HEAD.pack(MAGIC, VERSION, HEADER_BYTES, model.model_hash, total, *model.dims.as_tuple())
    return head + b"".join(_ENTRY.pack(*entry) for entry in table) + bytes(body)


def _expected_lengths(dims: Dims) -> list[int]:
    """Byte length of sections 0-16; the prior's (17) follows from its own header."""
    s, f, c = dims.stem_ch, dims.feat_ch, dims.classes
    lengths = [s * dims.in_ch * 9] + [4 * s] * 3 + [s * 9] + [4 * s] * 3 + [f * s] + [4 * f] * 3
    return lengths + [12, c * dims.local_inputs, 4 * c, 4 * c, LUT_SIZE]


def parse_image(data: bytes) -> Int8Model:
    """Inverse of :func:`pack_image`; ValueError with the reason for any defect."""
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise ValueError(f"an AGW1 image takes at least {HEADER_BYTES} bytes, not {len(data)}")
    magic, version, header_bytes, model_hash, total, *dim_values = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ValueError(f"not an AGW1 image (magic {magic!r})")
    if version != VERSION:
        raise ValueError(f"AGW1 format version {version}; this reads version {VERSION}")
    if header_bytes != HEADER_BYTES:
        raise ValueError(f"header of {header_bytes} bytes; {SECTION_COUNT} sections take {HEADER_BYTES}")
    if total != len(data):
        raise ValueError(f"the image says it holds {total} bytes, but {len(data)} came")
    dims = Dims(*dim_values)  # ValueError on inconsistent dims
    table = [_ENTRY.unpack_from(data, _HEAD.size + _ENTRY.size * i) for i in range(SECTION_COUNT)]
    expected = _expected_lengths(dims)
    previous_end = HEADER_BYTES
    sections = []
    for index, (offset, length) in enumerate(table):
        if offset % ALIGN:
            raise ValueError(f"section {index} starts at {offset}, not 4-byte aligned")
        if offset < previous_end or offset + length > total:
            raise ValueError(f"section {index} at [{offset}, {offset + length}) overlaps the header or "
                             f"another section, or runs past the image's {total} bytes")
        if index < len(expected) and length != expected[index]:
            raise ValueError(f"section {index} holds {length} bytes; the dims need {expected[index]}")
        previous_end = offset + length
        sections.append(data[offset:offset + length])

    def ints(index: int) -> np.ndarray:
        return np.frombuffer(sections[index], dtype="<i4").astype(np.int32)

    def layer(first: int, shape: tuple[int, int]) -> ConvLayer:
        weights = np.frombuffer(sections[first], dtype=np.int8).reshape(shape).copy()
        return ConvLayer(weights, ints(first + 1), ints(first + 2), ints(first + 3))

    return Int8Model(
        dims, model_hash,
        layer(0, (dims.stem_ch, dims.in_ch * 9)), layer(4, (dims.stem_ch, 9)),
        layer(8, (dims.feat_ch, dims.stem_ch)), ints(12),
        np.frombuffer(sections[13], dtype=np.int8).reshape(dims.classes, dims.local_inputs).copy(),
        ints(14), np.frombuffer(sections[15], dtype="<f4").astype(np.float32),
        np.frombuffer(sections[16], dtype=np.uint8).copy(), sections[17],
    )  # Int8Model checks value ranges and the prior
