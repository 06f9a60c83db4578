"""Serial framing: COBS-stuffed frames with a header and a CRC32. Pure, no I/O.

On the wire a frame is ``COBS(header + payload + crc32) + 0x00``::

    header  byte 0   kind (bits 0-3) | flags (bits 4-7; 0x10 = more fragments follow)
            byte 1   sequence number (mod 256)
            byte 2-3 payload length, little-endian
    payload length bytes
    crc32   4 bytes little-endian, zlib/IEEE CRC-32 of header + payload

COBS guarantees the only 0x00 on the wire is the delimiter, so a receiver that
loses sync (noise, a reset MCU, a dropped byte) recovers at the next 0x00.
"""

from __future__ import annotations

import struct
import zlib
from enum import IntEnum
from typing import NamedTuple

from cobs import cobs

HEADER = struct.Struct("<BBH")
CRC = struct.Struct("<I")
FLAG_MORE = 0x10
DELIMITER = b"\x00"


class FrameKind(IntEnum):
    DATA = 1
    ACK = 2  # seq = next sequence number the receiver expects (cumulative)
    NAK = 3  # seq = the missing frame the receiver asks for again
    RESET = 4  # seq = first sequence number of the sender's new stream; payload = 4-byte epoch
    RESET_ACK = 5  # echoes the RESET's seq and epoch
    RESYNC = 6  # "I hold no stream from you" (a receiver that restarted): please RESET


class Frame(NamedTuple):
    kind: FrameKind
    seq: int
    payload: bytes = b""
    more: bool = False


class Decoded(NamedTuple):
    """``consumed`` bytes were used; ``frame`` is None when more bytes are needed
    (consumed == 0), after an idle delimiter, or after garbage (``error`` says why)."""

    consumed: int
    frame: Frame | None = None
    error: str | None = None


def max_wire_size(max_payload: int) -> int:
    """Worst-case bytes on the wire for a frame carrying ``max_payload`` bytes."""
    body = HEADER.size + max_payload + CRC.size
    return body + body // 254 + 1 + len(DELIMITER)


def encode_frame(frame: Frame) -> bytes:
    if not 0 <= frame.seq <= 255:
        raise ValueError("sequence numbers are 8-bit")
    if len(frame.payload) > 0xFFFF:
        raise ValueError("a frame carries at most 65535 payload bytes")
    flags = FLAG_MORE if frame.more else 0
    body = HEADER.pack(int(frame.kind) | flags, frame.seq, len(frame.payload)) + frame.payload
    return bytes(cobs.encode(body + CRC.pack(zlib.crc32(body)))) + DELIMITER


def decode_frame(buffer: bytes, max_payload: int) -> Decoded:
    """Decode the first frame in ``buffer`` (see :class:`Decoded`)."""
    end = buffer.find(DELIMITER)
    if end < 0:
        if len(buffer) > max_wire_size(max_payload):
            return Decoded(len(buffer), error="no delimiter within the maximum frame size")
        return Decoded(0)
    if end == 0:
        return Decoded(1)
    consumed = end + 1
    try:
        body = bytes(cobs.decode(buffer[:end]))
    except cobs.DecodeError as exc:
        return Decoded(consumed, error=f"bad COBS stuffing: {exc}")
    if len(body) < HEADER.size + CRC.size:
        return Decoded(consumed, error=f"frame of {len(body)} bytes is shorter than header + CRC")
    content, (crc,) = body[: -CRC.size], CRC.unpack(body[-CRC.size :])
    if zlib.crc32(content) != crc:
        return Decoded(consumed, error="CRC mismatch")
    kind_and_flags, seq, length = HEADER.unpack_from(content)
    payload = content[HEADER.size :]
    if length != len(payload):
        return Decoded(consumed, error=f"length field {length}, payload has {len(payload)} bytes")
    if length > max_payload:
        return Decoded(consumed, error=f"payload of {length} bytes exceeds the {max_payload}-byte limit")
    try:
        kind = FrameKind(kind_and_flags & 0x0F)
    except ValueError:
        return Decoded(consumed, error=f"unknown frame kind {kind_and_flags & 0x0F}")
    return Decoded(consumed, Frame(kind, seq, payload, bool(kind_and_flags & FLAG_MORE)))
