"""The serial framer: round trips, chunked streams, resync after garbage, CRC protection, every error."""

from __future__ import annotations

import struct
import zlib
from itertools import cycle

import pytest
from cobs import cobs
from hypothesis import given, settings
from hypothesis import strategies as st

from transports.framing import Decoded, Frame, FrameKind, decode_frame, encode_frame, max_wire_size

# A failing hypothesis test makes its pytest plugin import libcst, which warns through
# mypy_extensions; under filterwarnings=error that turns the failure report into an INTERNALERROR.
MAX_PAYLOAD = 600


def fast(max_examples: int) -> settings:
    """Deterministic, database-free hypothesis runs: no flakes, no files written."""
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True)


# ------------------------------------------------------------------ helpers
def craft(kind_and_flags: int, seq: int, length: int, payload: bytes, crc: int | None = None) -> bytes:
    """A wire frame built independently of the library; ``crc`` defaults to the correct one."""
    content = struct.pack("<BBH", kind_and_flags, seq, length) + payload
    crc = zlib.crc32(content) if crc is None else crc
    return cobs.encode(content + struct.pack("<I", crc)) + b"\x00"


def receive(chunks: list[bytes], max_payload: int) -> tuple[list[Frame], list[str], bytes]:
    """A receiver loop: append each chunk, decode while bytes are consumed.

    Returns the frames, the errors and the bytes left waiting for a delimiter."""
    buffer = b""
    frames: list[Frame] = []
    errors: list[str] = []
    for chunk in chunks:
        buffer += chunk
        while True:
            result = decode_frame(buffer, max_payload)
            assert 0 <= result.consumed <= len(buffer)
            if result.consumed == 0:
                assert result.frame is None and result.error is None
                break
            assert result.frame is None or result.error is None
            buffer = buffer[result.consumed :]
            if result.frame is not None:
                frames.append(result.frame)
            if result.error is not None:
                assert isinstance(result.error, str) and result.error
                errors.append(result.error)
    return frames, errors, buffer


def split(stream: bytes, sizes: list[int]) -> list[bytes]:
    chunks: list[bytes] = []
    start = 0
    for size in cycle(sizes):
        if start >= len(stream):
            return chunks
        chunks.append(stream[start : start + size])
        start += size
    raise AssertionError("unreachable")


# --------------------------------------------------------------- strategies
def zero_heavy(max_size: int, alphabet: list[int]) -> st.SearchStrategy[bytes]:
    """Bytes from a small alphabet with 0x00 in it: many delimiters and short COBS blocks."""
    return st.lists(st.sampled_from(alphabet), max_size=max_size).map(bytes)


def frames(max_payload: int = MAX_PAYLOAD) -> st.SearchStrategy[Frame]:
    payloads = st.one_of(
        st.binary(max_size=max_payload),
        zero_heavy(max_payload, [0, 1, 0xFF]),
        st.integers(0, max_payload).map(lambda n: b"\x5a" * n),  # zero-free: long COBS blocks
    )
    return st.builds(Frame, st.sampled_from(FrameKind), st.integers(0, 255), payloads, st.booleans())


CHUNK_SIZES = st.lists(st.integers(1, 64), min_size=1, max_size=10)


# --------------------------------------------------------------- round trips
@fast(300)
@given(frames())
def test_frames_round_trip(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert decode_frame(wire, MAX_PAYLOAD) == Decoded(len(wire), frame, None)
    assert wire.count(0) == 1 and wire[-1] == 0
    assert len(wire) <= max_wire_size(len(frame.payload))
    # A frame exactly at the limit passes; one byte less and it is refused.
    assert decode_frame(wire, len(frame.payload)).frame == frame


def test_max_wire_size_bounds_the_worst_case() -> None:
    slack = []
    for n in range(0, 1100):
        wire = encode_frame(Frame(FrameKind.DATA, 0, b"\x01" * n))  # no zeros: maximal COBS overhead
        assert len(wire) <= max_wire_size(n)
        slack.append(max_wire_size(n) - len(wire))
    assert min(slack) == 0  # the bound is reached, so it is the worst case and not a loose guess
    assert max_wire_size(0) == 10  # 4 header + 4 CRC + 1 COBS code + 1 delimiter


def test_largest_payload_round_trips() -> None:
    frame = Frame(FrameKind.DATA, 255, bytes(range(256)) * 255 + b"\x07" * 255, True)
    assert len(frame.payload) == 0xFFFF
    wire = encode_frame(frame)
    assert decode_frame(wire, 0xFFFF) == Decoded(len(wire), frame)


@fast(150)
@given(st.lists(frames(max_payload=200), max_size=12), CHUNK_SIZES)
def test_stream_of_frames_in_arbitrary_chunks(sent: list[Frame], sizes: list[int]) -> None:
    stream = b"".join(encode_frame(frame) for frame in sent)
    got, errors, leftover = receive(split(stream, sizes), 200)
    assert got == sent
    assert errors == []
    assert leftover == b""


def test_idle_delimiters_are_skipped() -> None:
    frame = Frame(FrameKind.ACK, 9)
    assert decode_frame(b"\x00", 10) == Decoded(1)
    got, errors, leftover = receive([b"\x00\x00" + encode_frame(frame) + b"\x00"], 10)
    assert (got, errors, leftover) == ([frame], [], b"")


# --------------------------------------------------------------- resync
@fast(200)
@given(
    st.lists(frames(max_payload=64), min_size=1, max_size=8),
    st.data(),
    CHUNK_SIZES,
)
def test_resync_after_garbage(sent: list[Frame], data: st.DataObject, sizes: list[int]) -> None:
    max_payload = 64
    # Distinct sequence numbers make every sent frame recognisable.
    sent = [frame._replace(seq=i) for i, frame in enumerate(sent)]
    garbage = st.one_of(st.binary(max_size=200), zero_heavy(20, [0, 1, 2, 0x5A]))
    gaps = [data.draw(garbage) for _ in range(len(sent))]  # before each frame
    tail = data.draw(garbage)
    stream = b"".join(gap + encode_frame(frame) for gap, frame in zip(gaps, sent, strict=True)) + tail
    # A frame is untouched when a delimiter (or the start of the stream) directly precedes it.
    untouched = [frame for gap, frame in zip(gaps, sent, strict=True) if not gap or gap[-1] == 0]

    got, errors, _ = receive(split(stream, sizes), max_payload)

    assert all(frame in sent for frame in got)  # the CRC lets nothing foreign through
    assert [frame.seq for frame in got] == sorted({frame.seq for frame in got})  # in order, no duplicates
    assert set(untouched) <= set(got)
    # Any nonzero garbage followed by a delimiter must be reported.
    terminated = stream[: stream.rfind(b"\x00") + 1]
    wires = {encode_frame(frame)[:-1] for frame in sent}
    if any(segment and segment not in wires for segment in terminated.split(b"\x00")[:-1]):
        assert errors


@fast(1000)
@given(st.one_of(st.binary(max_size=300), zero_heavy(40, [0, 1, 2, 3, 0xFF])), st.integers(0, 100))
def test_random_bytes_never_raise(buffer: bytes, max_payload: int) -> None:
    result = decode_frame(buffer, max_payload)
    assert isinstance(result, Decoded)
    assert 0 <= result.consumed <= len(buffer)
    if result.consumed == 0:
        assert 0 not in buffer and len(buffer) <= max_wire_size(max_payload)
        assert result.frame is None and result.error is None
    if 0 in buffer:
        assert result.consumed == buffer.index(0) + 1  # exactly one segment, delimiter included
    assert result.frame is None or result.error is None


@fast(60)
@given(frames(max_payload=48))
def test_single_bit_flips_never_yield_a_frame(frame: Frame) -> None:
    wire = encode_frame(frame)
    for bit in range(8 * len(wire)):
        flipped = bytearray(wire)
        flipped[bit // 8] ^= 1 << (bit % 8)
        got, errors, leftover = receive([bytes(flipped)], 48)
        assert got == []
        assert errors or leftover  # the damage is noticed, or the frame is still waiting for its delimiter


# --------------------------------------------------------------- specific errors
def test_bad_cobs() -> None:
    result = decode_frame(b"\x05\x01\x02\x00rest", 64)
    assert result.consumed == 4 and result.frame is None
    assert result.error is not None and "bad COBS stuffing" in result.error


@pytest.mark.parametrize("body", [b"", b"\x01", b"\x01\x02\x03\x04\x05\x06\x07"])
def test_too_short(body: bytes) -> None:
    wire = cobs.encode(body) + b"\x00"
    result = decode_frame(wire, 64)
    assert result.consumed == len(wire) and result.frame is None
    assert result.error == f"frame of {len(body)} bytes is shorter than header + CRC"


def test_crc_mismatch() -> None:
    good = craft(FrameKind.DATA, 1, 3, b"abc")
    assert decode_frame(good, 64).frame == Frame(FrameKind.DATA, 1, b"abc")
    content = struct.pack("<BBH", FrameKind.DATA, 1, 3) + b"abc"
    bad = craft(FrameKind.DATA, 1, 3, b"abc", crc=zlib.crc32(content) ^ 1)
    assert decode_frame(bad, 64) == Decoded(len(bad), None, "CRC mismatch")


@pytest.mark.parametrize("length", [0, 2, 4, 0xFFFF])
def test_length_field_mismatch_with_a_correct_crc(length: int) -> None:
    wire = craft(FrameKind.DATA, 1, length, b"abc")
    assert decode_frame(wire, 64) == Decoded(len(wire), None, f"length field {length}, payload has 3 bytes")


def test_payload_above_max_payload() -> None:
    wire = encode_frame(Frame(FrameKind.DATA, 3, b"x" * 10))
    assert decode_frame(wire, 10).frame == Frame(FrameKind.DATA, 3, b"x" * 10)
    assert decode_frame(wire, 9) == Decoded(len(wire), None, "payload of 10 bytes exceeds the 9-byte limit")


@pytest.mark.parametrize("kind", [0, 7, 8, 15])
def test_unknown_kind_with_a_correct_crc(kind: int) -> None:
    for flags in (0, 0x10):
        wire = craft(kind | flags, 0, 1, b"z")
        assert decode_frame(wire, 64) == Decoded(len(wire), None, f"unknown frame kind {kind}")


def test_more_flag_is_bit_4() -> None:
    wire = craft(FrameKind.NAK | 0x10, 200, 0, b"")
    assert decode_frame(wire, 0).frame == Frame(FrameKind.NAK, 200, b"", True)
    assert encode_frame(Frame(FrameKind.NAK, 200, b"", True)) == wire


@pytest.mark.parametrize("max_payload", [0, 64, 600])
def test_long_buffer_without_delimiter(max_payload: int) -> None:
    limit = max_wire_size(max_payload)
    assert decode_frame(b"\x01" * limit, max_payload) == Decoded(0)  # may still become a frame
    result = decode_frame(b"\x01" * (limit + 1), max_payload)
    assert result.consumed == limit + 1 and result.frame is None
    assert result.error is not None and "no delimiter" in result.error
    assert decode_frame(b"", max_payload) == Decoded(0)


def test_garbage_then_frame_recovers_at_the_delimiter() -> None:
    frame = Frame(FrameKind.RESET, 17, b"\x00boot\x00")
    stream = b"\x13\x37\xff\x00" + encode_frame(frame)
    first = decode_frame(stream, 64)
    assert first.consumed == 4 and first.frame is None and first.error
    assert decode_frame(stream[first.consumed :], 64) == Decoded(len(stream) - 4, frame)


# --------------------------------------------------------------- encoder arguments
@pytest.mark.parametrize("frame", [
    Frame(FrameKind.DATA, 256), Frame(FrameKind.DATA, -1), Frame(FrameKind.DATA, 0, b"\x00" * 0x10000),
])
def test_encode_rejects_bad_arguments(frame: Frame) -> None:
    with pytest.raises(ValueError, match="8-bit|65535"):
        encode_frame(frame)


# --------------------------------------------------------------- golden
def test_golden_frame_from_the_protocol_doc() -> None:
    frame = Frame(FrameKind.DATA, 5, b"hello\x00world", True)
    wire = bytes.fromhex("0411050b0668656c6c6f0a776f726c64d133412800")
    assert encode_frame(frame) == wire
    assert decode_frame(wire, 64) == Decoded(len(wire), frame)
    # Header 11 05 0b00: DATA | more, seq 5, length 11; the CRC is over header + payload.
    content = bytes.fromhex("1105" "0b00") + b"hello\x00world"
    assert cobs.decode(wire[:-1]) == content + struct.pack("<I", zlib.crc32(content))


@pytest.mark.parametrize("frame, wire", [
    (Frame(FrameKind.ACK, 1), "03 02 01 01 05 a07d8f8a 00"),
    (Frame(FrameKind.RESET, 0, bytes.fromhex("0a0b0c0d")), "02 04 02 04 09 0a0b0c0d b1af15cb 00"),
    (Frame(FrameKind.RESYNC, 7), "03 06 07 01 05 45966001 00"),
])
def test_control_frames_from_the_protocol_doc(frame: Frame, wire: str) -> None:
    data = bytes.fromhex(wire)
    assert encode_frame(frame) == data
    assert decode_frame(data, 16) == Decoded(len(data), frame)
