"""Compact sessions on a slow link: adapters that put full messages into compact frames and back.

:class:`CompactClient` wraps a device's client transport. Its first inference
request goes out in full, after a HELLO asking for a compact session; once the
HELLO_REPLY names a session, requests travel as compact frames and compact
replies are turned back into full messages, so the code above it (a
:class:`~transports.zmq_transport.Requester`, an EdgeClient) sees the protocol it
always saw. A peer that does not know compact sessions answers the HELLO with
an ERROR, and the client stays with full messages.

:class:`SessionEndpoint` is the receiving end, with no I/O: it answers
compact-session HELLOs itself, turns compact requests into full messages, and
the answers to them into compact frames. A compact frame it cannot read is
answered with a compact ERROR and a logged reason; nothing is dropped silently.
:class:`CompactServer` runs a server's transport through one; the serial
gateway runs an MCU's link through one and forwards full messages to the
server. The frame layout is in :mod:`transports.compact`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from .compact import (
    WANT_TIMINGS,
    CompactError,
    claims_error,
    Frame,
    Session,
    SessionTable,
    error_body,
    is_compact,
    pack_frame,
    reply_body,
    request_body,
    salvage_ids,
    to_message,
    unpack_frame,
)
from .emulator import LinkProfile, get_profile
from .messages import (
    MAX_REQUEST_ID,
    ErrorReply,
    Hello,
    HelloReply,
    InferReply,
    InferRequest,
    MessageType,
    ProtocolError,
    decode_message,
    encode_message,
)
from .pipe import MessageTransport, ServerTransport

log = logging.getLogger("agilenn.sessions")
HELLO_REQUEST_ID = MAX_REQUEST_ID  # the session HELLO's id: never one of a device's requests
HELLO_RETRY_S = 2.0
SESSION_FIRMWARE = "compact-session"
_MAX_IN_FLIGHT = 4096
SLOW_LINK_BYTES_PER_S = 125_000  # 1 Mbit/s


def slow_link(link: str | LinkProfile | None) -> bool:
    """Whether compact sessions pay on ``link``: a rate-limited link below 1 Mbit/s."""
    if link is None:
        return False
    profile = get_profile(link) if isinstance(link, str) else link
    return profile.rate_limited and profile.bandwidth_bytes_per_s < SLOW_LINK_BYTES_PER_S


class CompactClient:
    """A client transport that speaks compact frames once the peer has granted a session."""

    def __init__(self, inner: MessageTransport, timings: bool = False) -> None:
        self.inner = inner
        self.endpoint = inner.endpoint
        self.timings = timings  # ask the server for its timings in each reply (4-6 bytes more)
        self.session: int | None = None
        self._session_for: tuple[str, bytes] | None = None  # (device id, model hash) it stands for
        self._hello_sent_at = -HELLO_RETRY_S
        self._refused = False  # the peer answered our HELLO with an ERROR: it has no compact sessions
        self._in_flight: dict[int, tuple[int, Session]] = {}  # sequence (a byte) -> request
        self.last_sent_bytes = 0  # what the link carried for the last message sent and received
        self.last_received_bytes = 0

    def send(self, message: bytes) -> None:
        request = decode_message(message)  # our own caller's bytes: valid
        self.last_sent_bytes = len(message)
        if request.type is not MessageType.INFER_REQUEST or self._refused:
            self.inner.send(message)
            return
        identity = (request.device_id, request.model_hash)
        if self.session is None or self._session_for != identity:
            self.session = None
            self._open(request.device_id, request.model_hash)
            self.inner.send(message)  # in full, while the session is being opened
            return
        flags, body = request_body(InferRequest.parse(request))
        if self.timings:
            flags |= WANT_TIMINGS
        self._in_flight[request.request_id & 0xFF] = (request.request_id, Session(*identity))
        frame = pack_frame(Frame(MessageType.INFER_REQUEST, flags, self.session, request.request_id, body))
        self.last_sent_bytes = len(frame)
        self.inner.send(frame)

    def _open(self, device_id: str, model_hash: bytes) -> None:
        if self._session_for == (device_id, model_hash) and \
                time.monotonic() - self._hello_sent_at < HELLO_RETRY_S:
            return  # a HELLO is on its way
        self._session_for = (device_id, model_hash)
        self._hello_sent_at = time.monotonic()
        hello = Hello(SESSION_FIRMWARE, compact_session=True).message(HELLO_REQUEST_ID, device_id, model_hash)
        self.inner.send(encode_message(hello))

    def recv(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while True:
            data = self.inner.recv(max(0.0, deadline - time.monotonic()))
            if data is None:
                return None
            if is_compact(data):
                expanded = self._expand(data)
                if expanded is not None:
                    self.last_received_bytes = len(data)
                    return expanded
            elif not self._took_hello_answer(data):
                self.last_received_bytes = len(data)
                return data
            if time.monotonic() >= deadline:
                return None

    def _took_hello_answer(self, data: bytes) -> bool:
        """Whether ``data`` answered our HELLO (and was taken here, not passed up)."""
        try:
            message = decode_message(data)
        except ProtocolError:
            return False
        if message.request_id != HELLO_REQUEST_ID:
            return False
        if message.type is MessageType.HELLO_REPLY:
            granted = HelloReply.parse(message)
            if granted.accepted and granted.session is not None and \
                    self._session_for == (message.device_id, message.model_hash):
                self.session = granted.session
            return True
        if message.type is MessageType.ERROR:
            self._refused = True
            log.info("%s has no compact sessions (%s); sending full messages", self.endpoint,
                     ErrorReply.parse(message).code)
            return True
        return False

    def _expand(self, data: bytes) -> bytes | None:
        try:
            frame = unpack_frame(data)
            request = self._in_flight.pop(frame.sequence, None)
            if request is None:
                return None  # a late answer to a request already given up on
            message = to_message(frame, request[1], request[0])
        except CompactError as exc:
            log.info("dropped an unreadable compact frame from %s: %s", self.endpoint, exc)
            return None
        if message.type is MessageType.ERROR and ErrorReply.parse(message).code == "unknown-session":
            self.session = None  # the server forgot it: the next request opens a new one
            self._hello_sent_at = -HELLO_RETRY_S
        return encode_message(message)

    def reconnect(self) -> None:
        self.inner.reconnect()

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class Inbound:
    """What became of bytes from a device: the full message to pass on, and what to answer at once
    (a session's HELLO_REPLY, or a compact ERROR), either or neither."""

    full: bytes | None
    answer: bytes | None = None


class SessionEndpoint:
    """The receiving end of compact sessions, with no I/O: a server's transport and a serial
    gateway both run their traffic through one. ``peer`` tells devices apart (a ZeroMQ identity)."""

    def __init__(self, sessions: SessionTable | None = None) -> None:
        self.sessions = sessions or SessionTable()
        # (peer, sequence) -> (session id, whether the device asked for timings)
        self._compact: OrderedDict[tuple[bytes, int], tuple[int, bool]] = OrderedDict()

    def inbound(self, data: bytes, peer: bytes = b"") -> Inbound:
        if is_compact(data):
            return self._expand(data, peer)
        granted = self._granted_session(data)
        return Inbound(None, granted) if granted is not None else Inbound(data)

    def _granted_session(self, data: bytes) -> bytes | None:
        if len(data) > 256:  # a session HELLO is small; do not decode big messages twice
            return None
        try:
            message = decode_message(data)
        except ProtocolError:
            return None  # passed on: the receiver answers it with its reason
        if message.type is not MessageType.HELLO or not Hello.parse(message).compact_session \
                or len(message.model_hash) == 0:
            return None
        number = self.sessions.open(Session(message.device_id, message.model_hash))
        return encode_message(HelloReply(True, "", 0, number).message(message.request_id, message.device_id,
                                                                       message.model_hash))

    def _expand(self, data: bytes, peer: bytes) -> Inbound:
        try:
            frame = unpack_frame(data)
            if frame.type is not MessageType.INFER_REQUEST:
                raise CompactError(f"a device sends no compact {frame.type.name}")
            full = encode_message(to_message(frame, self.sessions.get(frame.session), frame.sequence))
        except (CompactError, ProtocolError) as exc:
            log.info("rejected a compact frame from %s: %s: %s", peer.hex() or "the device", exc.code, exc)
            if claims_error(data):  # an ERROR is never answered, or two peers could loop
                return Inbound(None)
            session, sequence = salvage_ids(data)
            body = error_body(ErrorReply(exc.code, str(exc)))
            return Inbound(None, pack_frame(Frame(MessageType.ERROR, 0, session, sequence, body)))
        self._compact[(peer, frame.sequence)] = (frame.session, bool(frame.flags & WANT_TIMINGS))
        while len(self._compact) > _MAX_IN_FLIGHT:
            self._compact.popitem(last=False)
        return Inbound(full)

    def outbound(self, data: bytes, peer: bytes = b"") -> bytes:
        """The answer to a device, as a compact frame when its request came as one."""
        if not self._compact:
            return data
        reply = decode_message(data)  # our own side's bytes: valid
        key = (peer, reply.request_id)
        if key not in self._compact or reply.type not in (MessageType.INFER_REPLY, MessageType.ERROR):
            return data
        session, timings = self._compact.pop(key)
        if reply.type is MessageType.INFER_REPLY:
            flags, body = reply_body(InferReply.parse(reply), timings)
        else:
            flags, body = 0, error_body(ErrorReply.parse(reply))
        return pack_frame(Frame(reply.type, flags, session, reply.request_id, body))


class CompactServer:
    """A server transport that also serves compact sessions (see the module's docstring)."""

    def __init__(self, inner: ServerTransport, sessions: SessionTable | None = None) -> None:
        self.inner = inner
        self.session_endpoint = SessionEndpoint(sessions)

    @property
    def endpoint(self) -> str:
        return str(getattr(self.inner, "endpoint", ""))

    def bind(self) -> str:
        return self.inner.bind()

    def recv(self, timeout: float) -> tuple[bytes, bytes] | None:
        received = self.inner.recv(timeout)
        if received is None:
            return None
        identity, data = received
        inbound = self.session_endpoint.inbound(data, identity)
        if inbound.answer is not None:
            self.inner.send(identity, inbound.answer)
        return None if inbound.full is None else (identity, inbound.full)

    def send(self, identity: bytes, message: bytes) -> None:
        self.inner.send(identity, self.session_endpoint.outbound(message, identity))

    def close(self) -> None:
        self.inner.close()
