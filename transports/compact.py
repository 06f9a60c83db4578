"""The compact envelope for slow links: a session id instead of the device id and model hash. Pure.

A full message spends ~30 bytes on its envelope (version, type, request id,
device id, model hash, timestamps) and an inference reply ~66 bytes in all; on
``serial-115200`` each byte costs 87 µs. A device on a link below about
1 Mbit/s opens a session once, with a full HELLO whose body asks for one
(``cs``); the receiver (the server, or a gateway in front of it) answers a
HELLO_REPLY carrying a session id (``s``) that stands for the device id and
model hash from then on. Inference then travels in compact frames::

    byte 0     0xC1                      a byte msgpack never uses: no full message starts with it
    byte 1     kind << 4 | flags
    varint     session id                LEB128: 1 byte below 128, 2 below 16384
    byte       sequence                  the request id's low 8 bits
    rest       the body of the kind

    kind 1, INFER_REQUEST   flags: 1 = reply with server timings, 2 = local logits follow
        [n, n float16 local logits]   (flag 2: the server merges)   then the feature payload
    kind 2, INFER_REPLY     flags: 1 = timings follow, 2 = merged
        merged:  class, n, confidence (round(255 p))                           3 bytes
        else:    class, n, n int8 remote logits, float16 scale (logit = q s)   n + 4 bytes
        timings: varints queue µs, compute µs, batch size
    kind 3, ERROR           code index (CODES; 0: the code is the reason's first word), reason (UTF-8)

A ten-class reply body is 14 bytes: 18 frame bytes while the session id is below 128. Neither side keeps
more than ``MAX_SESSIONS`` sessions; the oldest is forgotten first, and a frame
naming an unknown session is answered ``unknown-session``, after which the device
opens a new one. docs/PROTOCOL.md gives a worked example.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from agilenn.errors import AgileNNError

from .messages import (
    MAX_CLASSES,
    MAX_PAYLOAD_BYTES,
    ErrorReply,
    InferReply,
    InferRequest,
    Message,
    MessageType,
    ServerTimings,
    logits_from_bytes,
    logits_to_bytes,
)

MARKER = 0xC1
MAX_SESSIONS = 4096
MAX_SESSION_ID = 16383  # two LEB128 bytes
MAX_REASON_BYTES = 64
WANT_TIMINGS = 1
HAS_LOCAL_LOGITS = 2
MERGED = 2
_KINDS = {MessageType.INFER_REQUEST: 1, MessageType.INFER_REPLY: 2, MessageType.ERROR: 3}
_TYPES = {kind: message_type for message_type, kind in _KINDS.items()}
# Index 0 is "another code": the code then travels as the reason's first word.
CODES = ("", "malformed", "unsupported-version", "unknown-type", "too-large", "non-finite", "unexpected-type",
         "model-mismatch", "bad-payload", "internal", "shutting-down", "unsupported", "server-unreachable",
         "unknown-session", "busy", "wrong-version")


class CompactError(AgileNNError):
    """A compact frame broke its layout; ``code`` goes back in the ERROR."""

    code = "malformed"


class UnknownSession(CompactError):
    code = "unknown-session"


def is_compact(data: bytes) -> bool:
    return len(data) > 0 and data[0] == MARKER


@dataclass(frozen=True)
class Session:
    device_id: str
    model_hash: bytes
    timings: bool = True  # whether replies carry the server's timings


@dataclass(frozen=True)
class Frame:
    """A compact frame's fields: the kind as a message type, the session id and sequence, the body."""

    type: MessageType
    flags: int
    session: int
    sequence: int
    body: bytes


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, position: int, max_bytes: int) -> tuple[int, int]:
    value = 0
    for index in range(max_bytes):
        if position >= len(data):
            raise CompactError("compact frame truncated inside a varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, position
    raise CompactError(f"varint longer than {max_bytes} bytes")


def salvage_ids(data: bytes) -> tuple[int, int]:
    """The session id and sequence of a frame that failed to read, where readable; else (0, 0)."""
    try:
        session, position = _read_varint(data, 2, 2)
        return session, data[position]
    except (CompactError, IndexError):
        return 0, 0


def claims_error(data: bytes) -> bool:
    """Whether compact bytes say they are an ERROR, readable or not."""
    return len(data) > 1 and data[1] >> 4 == _KINDS[MessageType.ERROR]


def pack_frame(frame: Frame) -> bytes:
    if not 0 <= frame.session <= MAX_SESSION_ID:
        raise ValueError(f"session id {frame.session} does not fit two varint bytes")
    return bytes((MARKER, _KINDS[frame.type] << 4 | frame.flags)) + _varint(frame.session) + \
        bytes((frame.sequence & 0xFF,)) + frame.body


def unpack_frame(data: bytes) -> Frame:
    """The frame in untrusted bytes; CompactError for any defect of the envelope."""
    if len(data) < 4 or data[0] != MARKER:
        raise CompactError("not a compact frame")
    if len(data) > MAX_PAYLOAD_BYTES + 2 * MAX_CLASSES + 16:
        raise CompactError(f"compact frame of {len(data)} bytes is over the limit")
    message_type = _TYPES.get(data[1] >> 4)
    if message_type is None:
        raise CompactError(f"unknown compact kind {data[1] >> 4}")
    session, position = _read_varint(data, 2, 2)
    if position >= len(data):
        raise CompactError("compact frame truncated before its sequence byte")
    return Frame(message_type, data[1] & 0x0F, session, data[position], bytes(data[position + 1:]))


# ------------------------------------------------------------------ bodies
def request_body(request: InferRequest) -> tuple[int, bytes]:
    """(flags, body) of an INFER_REQUEST; the caller adds WANT_TIMINGS."""
    if request.local_logits is None:
        return 0, request.payload
    logits = logits_to_bytes(request.local_logits)
    return HAS_LOCAL_LOGITS, bytes((len(logits) // 2,)) + logits + request.payload


def parse_request_body(flags: int, body: bytes) -> InferRequest:
    if not flags & HAS_LOCAL_LOGITS:
        return InferRequest(body)
    if not body or len(body) < 1 + 2 * body[0]:
        raise CompactError("compact request truncated inside its local logits")
    count = body[0]
    logits = body[1:1 + 2 * count]
    if any(high & 0x7C == 0x7C for high in logits[1::2]):
        raise CompactError("compact request's local logits hold NaN or infinity")
    return InferRequest(body[1 + 2 * count:], logits_from_bytes(logits))


def reply_body(reply: InferReply, with_timings: bool) -> tuple[int, bytes]:
    """(flags, body) of an INFER_REPLY: the class and int8 remote logits, or the merged class and
    its confidence; the timings only when the device asked for them."""
    if reply.probabilities is not None:
        probabilities = np.asarray(reply.probabilities, np.float32)
        confidence = round(255 * float(np.clip(probabilities[reply.label], 0.0, 1.0)))
        flags, body = MERGED, bytes((reply.label, len(probabilities), confidence))
    else:
        logits = np.asarray(reply.remote_logits, np.float32)
        largest = float(np.max(np.abs(logits))) if logits.size else 0.0
        scale = np.float16(max(largest / 127, 6.2e-5))  # float16's smallest normal number, and up
        quantized = np.clip(np.round(logits / np.float32(scale)), -127, 127).astype(np.int8)
        header = bytes((reply.label, len(logits)))
        flags, body = 0, header + quantized.tobytes() + scale.astype("<f2").tobytes()
    if with_timings:
        timings = reply.timings
        flags |= WANT_TIMINGS
        body += _varint(round(timings.queue_us)) + _varint(round(timings.compute_us)) + _varint(timings.batch)
    return flags, body


def parse_reply_body(flags: int, body: bytes) -> InferReply:
    if len(body) < 2:
        raise CompactError("compact reply shorter than its class and class count")
    label, count = body[0], body[1]
    if count == 0 or label >= count:
        raise CompactError(f"class {label} of {count} classes")
    if flags & MERGED:
        if len(body) < 3:
            raise CompactError("compact merged reply lacks its confidence")
        confidence = body[2] / 255
        probabilities = np.full(count, (1 - confidence) / max(count - 1, 1), np.float32)
        probabilities[label] = confidence
        reply, position = InferReply(label, probabilities=probabilities), 3
    else:
        end = 2 + count + 2
        if len(body) < end:
            raise CompactError("compact reply truncated inside its logits")
        scale = float(np.frombuffer(body[2 + count:end], "<f2")[0])
        if not math.isfinite(scale):
            raise CompactError("compact reply's logit scale is not finite")
        logits = np.frombuffer(body[2:2 + count], np.int8).astype(np.float32) * np.float32(scale)
        reply, position = InferReply(label, remote_logits=logits), end
    if flags & WANT_TIMINGS:
        queue, position = _read_varint(body, position, 5)
        compute, position = _read_varint(body, position, 5)
        batch, position = _read_varint(body, position, 3)
        reply = InferReply(reply.label, reply.probabilities, reply.remote_logits,
                           ServerTimings(queue, compute, batch))
    if position != len(body):
        raise CompactError(f"{len(body) - position} bytes after the compact reply")
    return reply


def error_body(error: ErrorReply) -> bytes:
    if error.code in CODES[1:]:
        index, reason = CODES.index(error.code), error.reason
    else:
        index, reason = 0, f"{error.code} {error.reason}"
    return bytes((index,)) + reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore").encode()


def parse_error_body(body: bytes) -> ErrorReply:
    if not body or body[0] >= len(CODES):
        raise CompactError("compact error without a known code")
    reason = body[1:].decode(errors="replace")
    if body[0] == 0:
        code, _, reason = reason.partition(" ")
        return ErrorReply(code[:32] or "error", reason)
    return ErrorReply(CODES[body[0]], reason)


def to_message(frame: Frame, session: Session, request_id: int) -> Message:
    """The full message a compact frame stands for (CompactError if its body is broken)."""
    if frame.type is MessageType.INFER_REQUEST:
        body = parse_request_body(frame.flags, frame.body)
    elif frame.type is MessageType.INFER_REPLY:
        body = parse_reply_body(frame.flags, frame.body)  # type: ignore[assignment]
    else:
        body = parse_error_body(frame.body)  # type: ignore[assignment]
    return body.message(request_id, session.device_id, session.model_hash)


class SessionTable:
    """Session ids and what they stand for, at most ``capacity``, the oldest forgotten first."""

    def __init__(self, capacity: int = MAX_SESSIONS) -> None:
        if not 1 <= capacity <= MAX_SESSION_ID + 1:
            raise ValueError(f"capacity must lie in [1, {MAX_SESSION_ID + 1}]")
        self.capacity = capacity
        self._sessions: OrderedDict[int, Session] = OrderedDict()
        self._next = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, session: Session) -> int:
        """The id of ``session``: the one it already has, else a new one."""
        for number, known in self._sessions.items():
            if known == session:
                self._sessions.move_to_end(number)
                return number
        if len(self._sessions) >= self.capacity:
            self._sessions.popitem(last=False)
        while self._next in self._sessions:
            self._next = (self._next + 1) % (MAX_SESSION_ID + 1)
        number, self._next = self._next, (self._next + 1) % (MAX_SESSION_ID + 1)
        self._sessions[number] = session
        return number

    def get(self, number: int) -> Session:
        session = self._sessions.get(number)
        if session is None:
            raise UnknownSession(f"session {number} is not open here; send HELLO again")
        self._sessions.move_to_end(number)
        return session
