"""docs/PROTOCOL.md stays true: its serial-frame examples and its error-code table.

The frame examples are checked against the project's own framer and ARQ (the
bytes shown decode into exactly the fields the page states, and encoding those
fields gives the same bytes). The error-code table is checked against the
library source in both directions, so it cannot silently go stale.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import pytest

import torch

from agilenn.data import load_mnist_sample
from agilenn.pretrained import load_checkpoint
from transports.arq import ArqConfig, ArqEndpoint
from transports.framing import Frame, FrameKind, decode_frame, encode_frame, max_wire_size
from transports.messages import AdaptFetch, AdaptStep, encode_message

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
DOC_HEX = re.sub(r"\s+", "", DOC)  # the page groups hex digits with spaces and line breaks
LIBRARY_DIRS = ("transports", "server_node", "edge_node")

EPOCH = 0x0D0C0B0A  # the page's RESET / RESET_ACK examples
RESET_ACK_BODY = "05 00 0400 0a0b0c0d 2fafbf07"
RESET_ACK_WIRE = "02 05 02 04 09 0a0b0c0d2fafbf07 00"
NAK_BODY = "03 03 0000 abceb731"
NAK_WIRE = "03 03 03 01 05 abceb731 00"
ACK_AFTER_NAK_BODY = "02 03 0000 cea90b89"
ACK_AFTER_NAK_WIRE = "03 02 03 01 05 cea90b89 00"

# Every frame example on the page: (the hex as the page shows it, the frame it states).
FRAME_EXAMPLES = {
    "data": ("04 11050b 06 68656c6c6f 0a 776f726c64d1334128 00",
             Frame(FrameKind.DATA, 5, b"hello\x00world", more=True)),
    "ack": ("03 02 01 01 05 a07d8f8a 00", Frame(FrameKind.ACK, 1)),
    "reset": ("02 04 02 04 09 0a0b0c0d b1af15cb 00", Frame(FrameKind.RESET, 0, struct.pack("<I", EPOCH))),
    "resync": ("03 06 07 01 05 45966001 00", Frame(FrameKind.RESYNC, 7)),
    "reset-ack": (RESET_ACK_WIRE, Frame(FrameKind.RESET_ACK, 0, struct.pack("<I", EPOCH))),
    "nak": (NAK_WIRE, Frame(FrameKind.NAK, 3)),
    "ack-after-nak": (ACK_AFTER_NAK_WIRE, Frame(FrameKind.ACK, 3)),
}

# The codes a peer can receive (docs/PROTOCOL.md, section 2): each must be in the table.
WIRE_CODES = {
    "malformed", "unsupported-version", "unknown-type", "too-large", "non-finite",
    "model-mismatch", "bad-payload", "unsupported", "internal", "shutting-down",
    "server-unreachable", "worker-lost", "overloaded", "unknown-session", "bad-step", "bad-offset", "busy",
}


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def in_doc(text: str) -> bool:
    return re.sub(r"\s+", "", text) in DOC_HEX


# --------------------------------------------------------------- frame examples
@pytest.mark.parametrize("name", sorted(FRAME_EXAMPLES))
def test_frame_example_decodes_to_the_fields_the_doc_states(name: str) -> None:
    wire_hex, frame = FRAME_EXAMPLES[name]
    assert in_doc(wire_hex), f"the {name} example is no longer on the page"
    wire = unhex(wire_hex)
    decoded = decode_frame(wire, ArqConfig().max_frame_payload)
    assert decoded.error is None
    assert decoded.consumed == len(wire)
    assert decoded.frame == frame
    assert encode_frame(frame) == wire


@pytest.mark.parametrize("body_hex, wire_hex", [
    (RESET_ACK_BODY, RESET_ACK_WIRE),
    (NAK_BODY, NAK_WIRE),
    (ACK_AFTER_NAK_BODY, ACK_AFTER_NAK_WIRE),
])
def test_body_lines_are_the_unstuffed_wire_lines(body_hex: str, wire_hex: str) -> None:
    """The ``body`` lines: header · payload · CRC-32 LE, which COBS turns into the ``wire`` line."""
    from cobs import cobs

    assert in_doc("body " + body_hex)
    body, wire = unhex(body_hex), unhex(wire_hex)
    assert bytes(cobs.encode(body)) + b"\x00" == wire
    kind_and_flags, seq, length = struct.unpack_from("<BBH", body)
    assert length == len(body) - 8
    assert struct.unpack("<I", body[-4:])[0] == zlib.crc32(body[:-4])


def test_reset_ack_example_fields() -> None:
    wire = unhex(RESET_ACK_WIRE)
    frame = decode_frame(wire, 240).frame
    assert frame is not None
    assert (frame.kind, frame.seq, frame.more) == (FrameKind.RESET_ACK, 0, False)
    assert frame.payload == bytes.fromhex("0a0b0c0d")  # "epoch 0x0d0c0b0a as uint32 LE"
    assert struct.unpack("<I", frame.payload)[0] == EPOCH
    assert len(wire) == 14  # "Full wire: … (14 bytes)"
    assert in_doc("0205020409 0a0b0c0d2fafbf07 00")
    assert "CRC-32 over 05 … 0d = 0x07bfaf2f" in DOC
    assert zlib.crc32(unhex(RESET_ACK_BODY)[:-4]) == 0x07BFAF2F


def test_the_arq_answers_the_doc_reset_with_the_doc_reset_ack() -> None:
    receiver = ArqEndpoint(ArqConfig())
    receiver.receive(unhex(FRAME_EXAMPLES["reset"][0]), now=0.0)
    assert receiver.take_frames() == [unhex(RESET_ACK_WIRE)]
    receiver.receive(unhex(FRAME_EXAMPLES["reset"][0]), now=0.1)  # a late copy: answered the same
    assert receiver.take_frames() == [unhex(RESET_ACK_WIRE)]


def test_a_sender_accepts_only_the_reset_ack_echoing_its_seq_and_epoch() -> None:
    sender = ArqEndpoint(ArqConfig())
    sender.send(b"x", now=0.0)
    [reset_wire] = sender.take_frames()
    reset = decode_frame(reset_wire, 240).frame
    assert reset is not None and reset.kind is FrameKind.RESET and len(reset.payload) == 4
    epoch = struct.unpack("<I", reset.payload)[0]
    wrong_epoch = Frame(FrameKind.RESET_ACK, reset.seq, struct.pack("<I", (epoch + 1) % 2**32))
    wrong_seq = Frame(FrameKind.RESET_ACK, (reset.seq + 1) % 256, reset.payload)
    for stale in (wrong_epoch, wrong_seq):
        sender.receive(encode_frame(stale), now=0.01)
        assert sender.take_frames() == []  # ignored: still waiting for its RESET_ACK
    sender.receive(encode_frame(Frame(FrameKind.RESET_ACK, reset.seq, reset.payload)), now=0.02)
    data = decode_frame(sender.take_frames()[0], 240).frame
    assert data is not None and (data.kind, data.seq, data.payload) == (FrameKind.DATA, reset.seq, b"x")


def receiver_expecting(seq: int, window: int = 8) -> ArqEndpoint:
    """A receiver whose stream started at ``seq`` (so it expects ``seq`` next)."""
    receiver = ArqEndpoint(ArqConfig(window=window))
    receiver.receive(encode_frame(Frame(FrameKind.RESET, seq, struct.pack("<I", EPOCH))), now=0.0)
    receiver.take_frames()
    return receiver


def test_the_arq_answers_a_gap_with_the_doc_nak_then_ack() -> None:
    """"A receiver with expected = 3 gets DATA seq 4 … answers, in this order, NAK(3) and ACK(3)"."""
    receiver = receiver_expecting(3)
    receiver.receive(encode_frame(Frame(FrameKind.DATA, 4, b"b")), now=0.0)
    assert receiver.take_frames() == [unhex(NAK_WIRE), unhex(ACK_AFTER_NAK_WIRE)]
    assert in_doc("0303030105abceb73100 0302030105cea90b8900")
    # "If DATA 5 arrives next, with 3 still missing, the receiver answers only ACK(3): one NAK per gap."
    receiver.receive(encode_frame(Frame(FrameKind.DATA, 5, b"c")), now=0.0)
    assert receiver.take_frames() == [unhex(ACK_AFTER_NAK_WIRE)]
    receiver.receive(encode_frame(Frame(FrameKind.DATA, 3, b"a")), now=0.0)
    assert receiver.take_delivered() == [b"a", b"b", b"c"]


def test_a_nak_makes_the_sender_resend_the_missing_frame_at_once() -> None:
    sender = ArqEndpoint(ArqConfig())
    sender.send(b"", now=0.0)
    reset = decode_frame(sender.take_frames()[0], 240).frame
    assert reset is not None
    sender.receive(encode_frame(Frame(FrameKind.RESET_ACK, reset.seq, reset.payload)), now=0.0)
    for piece in (b"a", b"b"):
        sender.send(piece, now=0.0)
    first = (reset.seq + 1) % 256
    sent = [decode_frame(w, 240).frame for w in sender.take_frames()]
    assert [f.seq for f in sent if f is not None] == [reset.seq, first, (first + 1) % 256]
    nak = Frame(FrameKind.NAK, first)
    sender.receive(encode_frame(nak), now=0.01)  # confirms the frame before, resends `first`
    assert sender.take_acknowledged() == [0]
    resent = [decode_frame(w, 240).frame for w in sender.take_frames()]
    assert resent == [Frame(FrameKind.DATA, first, b"a")]


@pytest.mark.parametrize("expected", [3, 250])
def test_the_window_is_the_receivers_counted_from_its_expected_seq(expected: int) -> None:
    """Inside: 0 <= (s - expected) mod 256 < window; anything else is an old duplicate."""
    window = 8
    last_inside = (expected + window - 1) % 256
    receiver = receiver_expecting(expected, window)
    receiver.receive(encode_frame(Frame(FrameKind.DATA, last_inside, b"z")), now=0.0)
    assert receiver.stats.duplicates == 0  # buffered, and the gap NAKed
    assert receiver.take_frames()[0] == encode_frame(Frame(FrameKind.NAK, expected))
    receiver = receiver_expecting(expected, window)
    receiver.receive(encode_frame(Frame(FrameKind.DATA, (expected + window) % 256, b"z")), now=0.0)
    assert receiver.stats.duplicates == 1  # outside: dropped, acknowledged again
    assert receiver.take_frames() == [encode_frame(Frame(FrameKind.ACK, expected))]
    receiver.receive(encode_frame(Frame(FrameKind.DATA, expected, b"a")), now=0.0)
    assert receiver.take_delivered() == [b"a"]
    assert "window 8, `expected` = 250: frames 250 … 255, 0 and 1 are inside" in DOC


def test_the_suggested_timeout_is_the_one_the_doc_states() -> None:
    config = ArqConfig.for_line_rate(115200 / 10)
    assert f"{config.retransmit_timeout:.2f} s at 115200 baud" in DOC
    assert max_wire_size(config.max_frame_payload) == 250 and "(250 bytes on the wire at most)" in DOC


# --------------------------------------------------------------- error codes
def table_codes() -> list[str]:
    """The first column of the error-code table in section 2."""
    start = DOC.index("The codes a peer can receive:")
    table = DOC[start:].split("\n\n")[1]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([^`]+)` \|", row).group(1) for row in rows]  # type: ignore[union-attr]


def library_source() -> str:
    return "\n".join(path.read_text(encoding="utf-8")
                     for folder in LIBRARY_DIRS for path in sorted((ROOT / folder).rglob("*.py")))


def test_the_error_table_lists_every_code_a_peer_can_receive() -> None:
    codes = table_codes()
    assert len(codes) == len(set(codes))
    assert set(codes) == WIRE_CODES


@pytest.mark.parametrize("code", sorted(WIRE_CODES))
def test_every_listed_code_appears_in_the_library(code: str) -> None:
    assert f'"{code}"' in library_source(), f"no .py under {', '.join(LIBRARY_DIRS)} sends {code!r}"


def test_every_code_the_library_sends_is_in_the_table() -> None:
    source = library_source()
    # A code is sent as a literal argument of error_reply / _fail / _give_up / AdaptationError,
    # or is the code of a ProtocolError that decode_message raises.
    senders = r"error_reply|_fail|_give_up|AdaptationError"
    sent = set(re.findall(rf'\b(?:{senders})\([^\n"]*"([a-z][a-z-]*)"', source))
    exceptions = set(re.findall(r'^\s+code = "([a-z][a-z-]*)"', source, re.M))
    assert sent, "the pattern no longer finds the send sites"
    assert sent <= set(table_codes()), f"sent but not in the table: {sent - set(table_codes())}"
    local_only = exceptions - set(table_codes())
    assert local_only == {"unexpected-type"}  # raised locally, never sent
    assert "`unexpected-type`" in DOC and "no peer sends it" in DOC


# --------------------------------------------------------------- split learning
def _doc_block_after(heading: str) -> str:
    """The first fenced block after ``heading``, as one hex string."""
    start = DOC.index(heading)
    block = DOC[DOC.index("```", start) + 3:]
    return re.sub(r"\s+", "", block[:block.index("```")])


def test_the_adapt_step_example_is_what_the_library_sends() -> None:
    sample = load_mnist_sample()
    checkpoint = load_checkpoint("pretrained:mnist")
    model = checkpoint.build_model()
    images = torch.from_numpy(sample.images[:1]).float() / 255.0
    with torch.no_grad():
        features = model.extractor(images)
        local_logits = model.local_predictor(features[:, :model.config.local_channels])
    step = AdaptStep("5e1f0c2a9b7d3e41", 0, True, features.numpy(), local_logits.numpy(),
                     sample.labels[:1], 0.003)
    wire = encode_message(step.message(2, "mcu-01", bytes.fromhex(checkpoint.model_hash)))
    header = _doc_block_after("Its header, in full hex:")
    assert wire.hex().startswith(header) and "The message is\n2,064 bytes" in DOC and len(wire) == 2064
    assert f"c4 02 {int(sample.labels[0]):02x}00" in DOC  # the label, uint16 LE
    fetch = encode_message(AdaptFetch("5e1f0c2a9b7d3e41", 0).message(3, "mcu-01",
                                                                    bytes.fromhex(checkpoint.model_hash)))
    assert fetch.hex() == _doc_block_after("The first ADAPT_FETCH, 45 bytes:") and len(fetch) == 45
