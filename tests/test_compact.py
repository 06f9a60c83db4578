"""The compact envelope for slow links: frames, sessions, and a device and server that speak it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_node.client import EdgeClient
from server_node.remote import RemoteServer
from transports.compact import (
    MARKER,
    CompactError,
    Frame,
    Session,
    SessionTable,
    UnknownSession,
    error_body,
    pack_frame,
    parse_error_body,
    parse_reply_body,
    parse_request_body,
    reply_body,
    request_body,
    to_message,
    unpack_frame,
)
from transports.messages import (
    ErrorReply,
    Hello,
    HelloReply,
    InferReply,
    InferRequest,
    MessageType,
    ServerTimings,
    decode_message,
    encode_message,
)
from transports.memory import MemoryServerTransport
from transports.sessions import CompactClient, CompactServer, slow_link
from agilenn.data import load_mnist_sample

SAMPLE = load_mnist_sample()
logits = st.lists(st.floats(-60000, 60000, allow_nan=False, width=16), min_size=1, max_size=255)


@given(st.binary(max_size=300), st.one_of(st.none(), logits), st.integers(0, 16383),
       st.integers(0, 2**32 - 1))
def test_a_request_survives_the_compact_frame(payload: bytes, local: list[float] | None, session: int,
                                              request_id: int) -> None:
    request = InferRequest(payload, None if local is None else np.array(local, np.float32))
    flags, body = request_body(request)
    frame = unpack_frame(pack_frame(Frame(MessageType.INFER_REQUEST, flags, session, request_id, body)))
    assert (frame.session, frame.sequence) == (session, request_id & 0xFF)
    back = parse_request_body(frame.flags, frame.body)
    assert back.payload == payload
    if local is None:
        assert back.local_logits is None
    else:
        np.testing.assert_array_equal(back.local_logits, np.array(local, np.float16).astype(np.float32))


@given(logits, st.booleans(), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(1, 1024))
def test_remote_logits_come_back_within_half_a_step_of_int8(values: list[float], timings: bool, queue: int,
                                                             compute: int, batch: int) -> None:
    remote = np.array(values, np.float16).astype(np.float32)
    timed = ServerTimings(queue, compute, batch)
    reply = InferReply(int(np.argmax(remote)), remote_logits=remote, timings=timed)
    flags, body = reply_body(reply, timings)
    back = parse_reply_body(flags, body)
    assert back.label == reply.label and back.probabilities is None
    step = max(float(np.max(np.abs(remote))) / 127, 6.2e-5) * 1.001
    assert np.all(np.abs(back.remote_logits - remote) <= step / 2 + 1e-3 * step)
    assert back.timings == (timed if timings else ServerTimings())


def test_a_ten_class_reply_body_is_at_most_fourteen_bytes_and_a_frame_eighteen() -> None:
    reply = InferReply(3, remote_logits=np.linspace(-5, 9, 10).astype(np.float32))
    flags, body = reply_body(reply, with_timings=False)
    assert len(body) <= 14
    assert len(pack_frame(Frame(MessageType.INFER_REPLY, flags, 100, 7, body))) <= 18  # a session id < 128
    merged = reply_body(InferReply(3, probabilities=np.full(10, 0.1, np.float32)), with_timings=False)[1]
    assert len(merged) == 3 and parse_reply_body(2, merged).label == 3


def test_error_codes_travel_as_one_byte_and_unknown_ones_as_text() -> None:
    assert len(error_body(ErrorReply("model-mismatch", ""))) == 1
    assert parse_error_body(error_body(ErrorReply("model-mismatch", "retired"))) == \
        ErrorReply("model-mismatch", "retired")
    assert parse_error_body(error_body(ErrorReply("brand-new", "why"))) == ErrorReply("brand-new", "why")


@pytest.mark.parametrize("data", [b"", bytes([MARKER]), bytes([MARKER, 0x10]), bytes([MARKER, 0x70, 1, 2]),
                                  bytes([MARKER, 0x10, 0xFF, 0xFF, 0xFF, 1]), bytes([MARKER, 0x10, 5])])
def test_a_broken_envelope_is_refused(data: bytes) -> None:
    with pytest.raises(CompactError):
        unpack_frame(data)


@pytest.mark.parametrize(("flags", "body"), [
    (0, b""), (0, b"\x05\x03"), (0, b"\x01\x03\x00"), (2, b"\x01\x03"),
    (0, b"\x00\x02\x01\x01\x00\x7c"), (1, b"\x00\x01\x00\x00\x3c")])
def test_a_broken_reply_body_is_refused(flags: int, body: bytes) -> None:
    with pytest.raises(CompactError):
        parse_reply_body(flags, body)


def test_nan_local_logits_are_refused() -> None:
    with pytest.raises(CompactError, match="NaN"):
        parse_request_body(2, b"\x01\x00\x7e")


def test_the_session_table_forgets_the_oldest_and_reuses_a_sessions_id() -> None:
    table = SessionTable(capacity=2)
    first = table.open(Session("a", b"h" * 8))
    second = table.open(Session("b", b"h" * 8))
    assert table.open(Session("a", b"h" * 8)) == first  # refreshed: now "b" is the oldest
    table.open(Session("c", b"h" * 8))
    assert table.get(first).device_id == "a"
    with pytest.raises(UnknownSession):
        table.get(second)
    frame = Frame(MessageType.INFER_REQUEST, 0, second, 1, b"x")
    with pytest.raises(UnknownSession):
        to_message(frame, table.get(frame.session), 1)


def test_only_links_below_a_megabit_get_compact_sessions() -> None:
    assert slow_link("serial-115200")
    assert not slow_link(None) and not slow_link("wifi-10m")


def test_a_device_on_a_compact_session_gets_the_same_answers_in_fewer_bytes() -> None:
    images = SAMPLE.images[:12]
    with RemoteServer.in_memory() as running:
        full = EdgeClient(transport=running.connect(), compact=False, device_id="dev-plain01")
        compact = EdgeClient(transport=running.connect(), compact=True, device_id="dev-compact")
        try:
            plain = [full.infer(image) for image in images]
            small = [compact.infer(image) for image in images]
        finally:
            full.close()
            compact.close()
    assert all(p.source == "offloaded" for p in plain + small)
    assert [p.label for p in small] == [p.label for p in plain]
    # The first request goes in full while the session opens; every later one is compact.
    assert small[0].bytes_up == plain[0].bytes_up
    assert all(s.bytes_up <= p.bytes_up - 20 for s, p in zip(small[1:], plain[1:], strict=True))
    assert all(s.bytes_down <= 18 for s in small[1:])


def test_the_server_answers_broken_compact_frames_and_unknown_sessions_and_keeps_serving() -> None:
    with RemoteServer.in_memory() as running:
        wire = running.connect()
        try:
            for broken in (bytes([MARKER, 0x10, 0x09, 0x04]) + b"junk",  # no such session
                           bytes([MARKER, 0x20, 0x00, 0x05]),  # a device sends no replies
                           bytes([MARKER, 0x10, 0xFF])):  # truncated varint
                wire.send(broken)
                answer = wire.recv(5.0)
                assert answer is not None and answer[0] == MARKER
                error = unpack_frame(answer)
                assert error.type is MessageType.ERROR
                assert parse_error_body(error.body).code in ("unknown-session", "malformed")
            wire.send(bytes([MARKER, 0x30, 0x00, 0x01]) + b"\x01")  # an ERROR is never answered
            assert wire.recv(0.3) is None
            client = EdgeClient(transport=running.connect(), compact=True)
            try:
                assert [client.infer(image).source for image in SAMPLE.images[:3]] == ["offloaded"] * 3
            finally:
                client.close()
        finally:
            wire.close()


def test_a_forgotten_session_costs_one_request_then_a_new_session_opens() -> None:
    with RemoteServer.in_memory() as running:
        client = EdgeClient(transport=running.connect(), compact=True)
        try:
            assert client.infer(SAMPLE.images[0]).source == "offloaded"
            assert client.infer(SAMPLE.images[1]).bytes_down <= 18
            server_side = running.server.transport
            assert isinstance(server_side, CompactServer)
            server_side.session_endpoint.sessions = SessionTable()  # as if the server restarted
            lost = client.infer(SAMPLE.images[2])
            assert lost.source == "local-fallback" and "unknown-session" in lost.reason
            answers = [client.infer(image) for image in SAMPLE.images[3:6]]
            assert [a.source for a in answers] == ["offloaded"] * 3 and answers[-1].bytes_down <= 18
        finally:
            client.close()


def test_a_peer_without_compact_sessions_leaves_the_device_on_full_messages() -> None:
    peer = MemoryServerTransport()  # answers HELLO "unsupported", as a broker's worker does
    peer.bind()
    client = CompactClient(peer.connect())
    try:
        for request_id in (1, 2):
            client.send(encode_message(InferRequest(b"x").message(request_id, "dev", b"h" * 8)))
            while True:
                received = peer.recv(5.0)
                assert received is not None
                identity, data = received
                assert data[0] != MARKER  # never a compact frame
                message = decode_message(data)
                if message.type is MessageType.HELLO:
                    peer.send(identity, encode_message(ErrorReply("unsupported", "HELLO is not served here")
                                                       .message(message.request_id, "dev", b"h" * 8)))
                    continue
                peer.send(identity, encode_message(InferReply(1, remote_logits=np.zeros(10, np.float32))
                                                   .message(message.request_id, "dev", b"h" * 8)))
                break
            answer = client.recv(5.0)  # the HELLO's ERROR is taken by the client, not passed up
            assert answer is not None and decode_message(answer).request_id == request_id
    finally:
        client.close()
        peer.close()


def test_the_worked_example_of_the_protocol_doc() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text().replace(" ", "")
    request = pack_frame(Frame(MessageType.INFER_REQUEST, 1, 5, 257, bytes.fromhex("a10c10070700")))
    assert request.hex() == "c1110501a10c10070700" and "c1110501a10c10070700" in doc
    remote = np.array([-2.5, 0.0, 1.25, -1.0, 3.0, -4.0, 0.5, 8.75, -0.25, 2.0], np.float32)
    flags, body = reply_body(InferReply(7, remote_logits=remote, timings=ServerTimings(210, 1130, 1)), True)
    reply = pack_frame(Frame(MessageType.INFER_REPLY, flags, 5, 257, body))
    assert len(reply) == 23 and reply.hex() == "c1210501070adc0012f12cc6077ffc1d692cd201ea0801"
    for part in ("c1210501", "070a", "dc0012f12cc6077ffc1d", "692c", "d201ea0801"):
        assert part in doc
    assert len(pack_frame(Frame(MessageType.INFER_REPLY, 0, 5, 257, reply_body(InferReply(
        7, remote_logits=remote), False)[1]))) == 18
    error = pack_frame(Frame(MessageType.ERROR, 0, 5, 257, error_body(ErrorReply("unknown-session", ""))))
    assert error.hex() == "c13005010d" and "c13005010d" in doc
    hello = Hello("compact-session", compact_session=True).message(2**32 - 1, "mcu-01",
                                                                     bytes.fromhex("31dc1344bc089285"))
    granted = HelloReply(True, "", 0, 5).message(2**32 - 1, "mcu-01", bytes.fromhex("31dc1344bc089285"))
    for message in (hello, granted):
        assert encode_message(message).hex() in doc
