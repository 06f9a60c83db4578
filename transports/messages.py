"""The msgpack message schema shared by devices, edge nodes and servers. Pure.

Every message is a msgpack array of seven items::

    [version, type, request_id, device_id, model_hash, timestamps, body]

``body`` is a map whose fields depend on ``type`` (see :data:`BODY_SCHEMAS`).
Decoding validates everything against hard limits; each failure raises a
:class:`ProtocolError` whose ``code`` a server puts in its error reply.
docs/PROTOCOL.md gives the byte layouts with a worked example.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import IntEnum
from types import MappingProxyType
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

import msgpack
import numpy as np

from agilenn.errors import AgileNNError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 256 * 1024
MAX_DEVICE_ID_BYTES = 64
MODEL_HASH_BYTES = 8
MAX_TIMESTAMPS = 16
MAX_REQUEST_ID = 2**32 - 1


class MessageType(IntEnum):
    INFER_REQUEST = 1
    INFER_REPLY = 2
    ERROR = 3
    PING = 4
    PONG = 5
    HELLO = 6
    HELLO_REPLY = 7
    WEIGHT_CHUNK = 8
    WEIGHT_COMMIT = 9
    COMMIT_REPLY = 10
    ADAPT_STEP = 11
    ADAPT_GRADIENT = 12
    ADAPT_FETCH = 13
    ADAPT_STATE = 14


class ProtocolError(AgileNNError):
    """A message broke the schema. ``code`` is the machine-readable reason."""

    code = "malformed"


class MalformedMessage(ProtocolError):
    code = "malformed"


class UnsupportedVersion(ProtocolError):
    code = "unsupported-version"


class UnknownMessageType(ProtocolError):
    code = "unknown-type"


class MessageTooLarge(ProtocolError):
    code = "too-large"


class NonFiniteValue(ProtocolError):
    code = "non-finite"


class UnexpectedMessage(ProtocolError):
    """A valid message of another type than the one the receiver waits for."""

    code = "unexpected-type"


# ---------------------------------------------------------------- field checks
# A check takes a value and raises a ProtocolError without the field's name;
# the caller adds the name. The happy path formats no strings, because every
# inference request runs these checks twice (once per side).
Check = Callable[[Any], None]


def _binary(max_bytes: int, exact: bool = False) -> Check:
    def check(value: Any) -> None:
        if type(value) is not bytes:
            raise MalformedMessage(f"must be bytes, not {type(value).__name__}")
        if len(value) > max_bytes:
            raise MessageTooLarge(f"is {len(value)} bytes, the limit is {max_bytes}")
        if exact and len(value) != max_bytes:
            raise MalformedMessage(f"must be exactly {max_bytes} bytes")
    return check


def _float16_array(max_values: int) -> Check:
    as_bytes = _binary(2 * max_values)

    def check(value: Any) -> None:
        as_bytes(value)
        if len(value) % 2:
            raise MalformedMessage("must hold float16 values (an even byte count)")
        # A little-endian float16 is NaN or infinite exactly when its exponent
        # bits (0x7C of the high byte) are all set.
        if any(high & 0x7C == 0x7C for high in value[1::2]):
            raise NonFiniteValue("holds NaN or infinity")
    return check


def _text(max_bytes: int) -> Check:
    def check(value: Any) -> None:
        if type(value) is not str:
            raise MalformedMessage(f"must be a string, not {type(value).__name__}")
        if len(value) > max_bytes // 4:  # shorter strings cannot exceed the limit
            try:
                size = len(value.encode())
            except UnicodeEncodeError:
                raise MalformedMessage("is not valid UTF-8 (a lone surrogate)") from None
            if size > max_bytes:
                raise MessageTooLarge(f"is longer than {max_bytes} bytes")
    return check


def _unsigned(maximum: int) -> Check:
    def check(value: Any) -> None:
        if type(value) is not int or not 0 <= value <= maximum:
            raise MalformedMessage(f"must be an integer in [0, {maximum}]")
    return check


def _finite_float(low: float, high: float) -> Check:
    def check(value: Any) -> None:
        if type(value) is not float:
            raise MalformedMessage("must be a float")
        if not math.isfinite(value):
            raise NonFiniteValue("is not finite")
        if not low <= value <= high:
            raise MalformedMessage(f"must lie in [{low}, {high}]")
    return check


def _boolean(value: Any) -> None:
    if type(value) is not bool:
        raise MalformedMessage("must be true or false")


_timing_key = _text(16)


def _durations(value: Any) -> None:
    if not isinstance(value, Mapping):
        raise MalformedMessage("must be a map")
    if len(value) > MAX_TIMESTAMPS:
        raise MessageTooLarge(f"has {len(value)} entries, the limit is {MAX_TIMESTAMPS}")
    for key, number in value.items():
        _timing_key(key)
        if type(number) is int:
            if not -(2**63) <= number < 2**64:  # what msgpack can carry
                raise MalformedMessage(f"[{key!r}] is out of the 64-bit range")
            continue
        if type(number) is not float:
            raise MalformedMessage(f"[{key!r}] must be a number")
        if not math.isfinite(number):
            raise NonFiniteValue(f"[{key!r}] is not finite")


def _checked(name: str, check: Check, value: Any) -> None:
    try:
        check(value)
    except ProtocolError as exc:
        raise type(exc)(f"{name} {exc}") from None


MAX_PAYLOAD_BYTES = 64 * 1024
MAX_CLASSES = 1024
MAX_CHUNK_BYTES = 16 * 1024
# Split learning: one batch's features (float16) a step, and the server's adapted part in pieces.
MAX_ADAPT_VALUES = 96 * 1024
MAX_ADAPT_BATCH = 1024
MAX_STATE_CHUNK_BYTES = 192 * 1024

# type -> {field: check}. Every listed field is required; besides them only
# the type's OPTIONAL_FIELDS are allowed. The per-inference messages use one-
# or two-letter keys because every byte costs 87 us on a 115200-baud link:
# p = payload, l = local logits (float16), c = class, pr = probabilities
# (float16), lg = remote logits (float16), tm = server timings.
BODY_SCHEMAS: dict[MessageType, dict[str, Check]] = {
    MessageType.INFER_REQUEST: {"p": _binary(MAX_PAYLOAD_BYTES)},
    MessageType.INFER_REPLY: {"c": _unsigned(MAX_CLASSES - 1), "tm": _durations},
    MessageType.ERROR: {"code": _text(32), "reason": _text(512)},
    MessageType.PING: {},
    MessageType.PONG: {},
    MessageType.HELLO: {"firmware": _text(32)},
    MessageType.HELLO_REPLY: {"accepted": _boolean, "reason": _text(256),
                              "update_chunks": _unsigned(2**16)},
    MessageType.WEIGHT_CHUNK: {"index": _unsigned(2**16), "data": _binary(MAX_CHUNK_BYTES),
                               "crc32": _unsigned(2**32 - 1)},
    MessageType.WEIGHT_COMMIT: {"chunks": _unsigned(2**16), "sha256": _binary(32, exact=True)},
    MessageType.COMMIT_REPLY: {"accepted": _boolean, "reason": _text(256)},
    # Split learning (docs/PROTOCOL.md): s = session, i = step, t = the server trains, f = features,
    # l = local logits, y = labels (uint16), g/gl = their gradients (float16, times gs/gls), ls = loss.
    MessageType.ADAPT_STEP: {"s": _text(32), "i": _unsigned(MAX_REQUEST_ID), "t": _boolean,
                             "f": _float16_array(MAX_ADAPT_VALUES), "l": _float16_array(MAX_ADAPT_VALUES),
                             "y": _binary(2 * MAX_ADAPT_BATCH), "lr": _finite_float(0.0, 1.0),
                             "opt": _text(16)},
    MessageType.ADAPT_GRADIENT: {"g": _float16_array(MAX_ADAPT_VALUES), "gs": _finite_float(0.0, 1e30),
                                 "gl": _float16_array(MAX_ADAPT_VALUES), "gls": _finite_float(0.0, 1e30),
                                 "ls": _finite_float(-1e30, 1e30)},
    MessageType.ADAPT_FETCH: {"s": _text(32), "o": _unsigned(2**32 - 1)},
    MessageType.ADAPT_STATE: {"o": _unsigned(2**32 - 1), "n": _unsigned(2**32 - 1),
                              "d": _binary(MAX_STATE_CHUNK_BYTES)},
}


# Without "l" the device keeps its local logits and merges itself; the reply
# then carries the remote logits "lg" instead of the merged "pr".
# A HELLO with "cs" true asks for a compact session (transports/compact.py); its HELLO_REPLY
# then carries the session id "s".
OPTIONAL_FIELDS: dict[MessageType, dict[str, Check]] = {
    MessageType.INFER_REQUEST: {"l": _float16_array(MAX_CLASSES)},
    MessageType.HELLO: {"cs": _boolean},
    MessageType.HELLO_REPLY: {"s": _unsigned(2**14 - 1)},
    MessageType.INFER_REPLY: {"pr": _float16_array(MAX_CLASSES), "lg": _float16_array(MAX_CLASSES)},
}

_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Message(NamedTuple):
    """One protocol message. A NamedTuple because it is built twice per inference."""

    type: MessageType
    request_id: int
    device_id: str
    model_hash: bytes = b""
    body: Mapping[str, Any] = _EMPTY
    timestamps: Mapping[str, float] = _EMPTY
    version: int = PROTOCOL_VERSION


_request_id = _unsigned(MAX_REQUEST_ID)
_device_id = _text(MAX_DEVICE_ID_BYTES)
_model_hash = _binary(MODEL_HASH_BYTES, exact=True)
_SCHEMA_FIELDS = {kind: frozenset(schema) for kind, schema in BODY_SCHEMAS.items()}
_ALLOWED_FIELDS = {kind: fields | frozenset(OPTIONAL_FIELDS.get(kind, {}))
                   for kind, fields in _SCHEMA_FIELDS.items()}
_ALL_CHECKS = {kind: {**schema, **OPTIONAL_FIELDS.get(kind, {})} for kind, schema in BODY_SCHEMAS.items()}


def _listed(keys: set[Any] | frozenset[Any]) -> str:
    # Sorted by repr: a hostile peer may mix bytes and str keys, which do not sort together.
    return f"[{', '.join(sorted(map(repr, keys)))}]" if keys else "nothing"


def _validate(message: Message) -> None:
    if type(message.version) is not int or message.version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"protocol version {message.version}; this side speaks {PROTOCOL_VERSION}"
        )
    if message.type not in BODY_SCHEMAS:
        raise UnknownMessageType(f"unknown message type {message.type!r:.40}")
    _checked("request_id", _request_id, message.request_id)
    _checked("device_id", _device_id, message.device_id)
    if message.model_hash:
        _checked("model_hash", _model_hash, message.model_hash)
    _checked("timestamps", _durations, message.timestamps)
    body = message.body
    if not isinstance(body, Mapping):
        raise MalformedMessage("body must be a map")
    keys = body.keys()
    required, allowed = _SCHEMA_FIELDS[message.type], _ALLOWED_FIELDS[message.type]
    if not (keys >= required and keys <= allowed):
        raise MalformedMessage(f"{message.type.name} body: missing {_listed(required - set(body))}, "
                               f"unexpected {_listed(set(body) - allowed)}")
    checks = _ALL_CHECKS[message.type]
    for name in keys:
        try:
            checks[name](body[name])
        except ProtocolError as exc:
            raise type(exc)(f"{message.type.name}.{name} {exc}") from None


def encode_message(message: Message) -> bytes:
    """Validate and pack. An invalid message is never put on the wire."""
    _validate(message)
    try:
        data: bytes = msgpack.packb(
            [message.version, int(message.type), message.request_id, message.device_id,
             message.model_hash, dict(message.timestamps), dict(message.body)],
            use_bin_type=True,
        )
    except (OverflowError, TypeError, ValueError) as exc:  # UnicodeEncodeError is a ValueError
        raise MalformedMessage(f"cannot be packed: {exc}") from exc
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message is {len(data)} bytes, the limit is {MAX_MESSAGE_BYTES}")
    return data


def encode_unchecked(message: Message) -> bytes:
    """Pack without validating: only for fault injection (tests, bad-input benchmarks)."""
    return bytes(msgpack.packb(
        [message.version, int(message.type), message.request_id, message.device_id, message.model_hash,
         dict(message.timestamps), dict(message.body)], use_bin_type=True))


def decode_message(data: bytes) -> Message:
    """Unpack and validate untrusted bytes; any defect raises a ProtocolError."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(f"message is {len(data)} bytes, the limit is {MAX_MESSAGE_BYTES}")
    try:
        items = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_bin_len=MAX_MESSAGE_BYTES, max_str_len=MAX_MESSAGE_BYTES,
            max_array_len=64, max_map_len=64, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises a dozen types on hostile bytes
        raise MalformedMessage(f"not a msgpack message: {exc}") from exc
    if not isinstance(items, list) or len(items) != 7:
        raise MalformedMessage("a message is a msgpack array of 7 items")
    version, type_code, request_id, device_id, model_hash, timestamps, body = items
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {version!r}; this side speaks {PROTOCOL_VERSION}")
    try:
        if type(type_code) is not int:
            raise ValueError
        message_type = MessageType(type_code)
    except ValueError:
        raise UnknownMessageType(f"unknown message type {type_code!r:.40}") from None
    if not isinstance(timestamps, dict) or not isinstance(body, dict):
        raise MalformedMessage("timestamps and body must be maps")
    if not isinstance(model_hash, bytes):
        raise MalformedMessage("model_hash must be bytes")
    message = Message(message_type, request_id, device_id, model_hash, body, timestamps, version)
    _validate(message)
    return message


def request_id_of(data: bytes) -> int | None:
    """The request id of a valid message; None for anything that fails validation."""
    try:
        return decode_message(data).request_id
    except ProtocolError:
        return None


def _read_header(data: bytes) -> tuple[Any, Any, Any] | None:
    """(type code, request id, device id) read item by item, so the body of even an
    oversized message is never unpacked; None when the bytes do not start like a message."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1), max_array_len=64,
                                max_map_len=64)
    unpacker.feed(data)
    try:
        if unpacker.read_array_header() != 7:
            return None
        unpacker.skip()  # the version: an ERROR reply must reach a peer of any version
        return unpacker.unpack(), unpacker.unpack(), unpacker.unpack()
    except Exception:  # hostile bytes: nothing to salvage
        return None


def salvage_header(data: bytes) -> Message | None:
    """The request id and device id of a message that failed validation, if readable.

    Lets an ERROR reply echo the request's id, so the sender learns why instead
    of waiting out its timeout. Anything unreadable gives None (id 0 then).
    """
    return _salvaged(_read_header(data))


def _salvaged(header: tuple[Any, Any, Any] | None) -> Message | None:
    if header is None:
        return None
    _, request_id, device_id = header
    if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
        return None
    if type(device_id) is not str or len(device_id.encode("utf-8", "replace")) > MAX_DEVICE_ID_BYTES:
        device_id = ""
    return Message(MessageType.ERROR, request_id, device_id)


def _claims_error(header: tuple[Any, Any, Any] | None) -> bool:
    return header is not None and header[0] == MessageType.ERROR


def claims_error(data: bytes) -> bool:
    """Whether ``data`` says it is an ERROR, valid or not."""
    return _claims_error(_read_header(data))


def answer_to_invalid(data: bytes, error: ProtocolError) -> Message | None:
    """The ERROR answering bytes that failed validation, or None if they claim to be an
    ERROR themselves: an ERROR is never answered with an ERROR, or two peers could loop."""
    header = _read_header(data)  # read once: these bytes may be megabytes of garbage
    if _claims_error(header):
        return None
    return error_reply(_salvaged(header), error)


def logits_to_bytes(values: np.ndarray) -> bytes:
    """Little-endian float16: 2 bytes a class on the wire, plenty for logits.

    Values beyond float16's range are clipped to it rather than becoming
    infinity, which the receiver would refuse; NaN stays NaN and is refused.
    """
    return np.clip(np.asarray(values, dtype=np.float32), -65504.0, 65504.0).astype("<f2").tobytes()


def logits_from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


# ---------------------------------------------------------------- typed bodies
# The only code that spells a body key. Each message type has one class: build
# it and call ``message()`` to send, or ``parse()`` a decoded message to read
# it. The key order below is the byte order on the wire; keep it.
BodyT = TypeVar("BodyT", bound="Body")


class Body:
    TYPE: ClassVar[MessageType]

    def to_body(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_body(cls: type[BodyT], body: Mapping[str, Any]) -> BodyT:
        return cls()

    def message(self, request_id: int, device_id: str, model_hash: bytes = b"") -> Message:
        return Message(self.TYPE, request_id, device_id, model_hash, self.to_body())

    @classmethod
    def parse(cls: type[BodyT], message: Message) -> BodyT:
        """The typed body of a validated message; UnexpectedMessage if it is of another type."""
        if message.type is not cls.TYPE:
            raise UnexpectedMessage(f"expected {cls.TYPE.name}, got {message.type.name}")
        return cls.from_body(message.body)


class Ping(Body):
    TYPE = MessageType.PING


class Pong(Body):
    TYPE = MessageType.PONG


@dataclass(frozen=True)
class InferRequest(Body):
    """The offloaded features; with ``local_logits`` the server merges, without them the device does."""

    TYPE: ClassVar[MessageType] = MessageType.INFER_REQUEST
    payload: bytes
    local_logits: np.ndarray | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"p": self.payload}
        if self.local_logits is not None:
            body["l"] = logits_to_bytes(self.local_logits)
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> InferRequest:
        local = body.get("l")
        return cls(body["p"], None if local is None else logits_from_bytes(local))


@dataclass(frozen=True)
class ServerTimings:
    """How long a request waited for its batch and how long the batch ran, in whole microseconds."""

    queue_us: float = 0
    compute_us: float = 0
    batch: int = 0

    def to_wire(self) -> dict[str, float]:
        # One-letter keys: 14 bytes instead of 49 on the downlink.
        return {"q": self.queue_us, "s": self.compute_us, "b": self.batch}

    @classmethod
    def from_wire(cls, compact: Mapping[str, float]) -> ServerTimings:
        return cls(compact.get("q", 0), compact.get("s", 0), int(compact.get("b", 0)))

    def as_ms(self) -> dict[str, float]:
        return {"queue_ms": self.queue_us / 1e3, "compute_ms": self.compute_us / 1e3, "batch": self.batch}


@dataclass(frozen=True)
class InferReply(Body):
    """The class, and the merged ``probabilities`` or the ``remote_logits`` for the device to merge."""

    TYPE: ClassVar[MessageType] = MessageType.INFER_REPLY
    label: int
    probabilities: np.ndarray | None = None
    remote_logits: np.ndarray | None = None
    timings: ServerTimings = ServerTimings()

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"c": self.label}
        if self.probabilities is not None:
            body["pr"] = logits_to_bytes(self.probabilities)
        if self.remote_logits is not None:
            body["lg"] = logits_to_bytes(self.remote_logits)
        body["tm"] = self.timings.to_wire()
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> InferReply:
        probabilities, remote = body.get("pr"), body.get("lg")
        return cls(body["c"], None if probabilities is None else logits_from_bytes(probabilities),
                   None if remote is None else logits_from_bytes(remote), ServerTimings.from_wire(body["tm"]))


@dataclass(frozen=True)
class ErrorReply(Body):
    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: str
    reason: str

    def to_body(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ErrorReply:
        return cls(body["code"], body["reason"])


@dataclass(frozen=True)
class Hello(Body):
    TYPE: ClassVar[MessageType] = MessageType.HELLO
    firmware: str
    compact_session: bool = False

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"firmware": self.firmware}
        if self.compact_session:
            body["cs"] = True
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Hello:
        return cls(body["firmware"], body.get("cs", False))


@dataclass(frozen=True)
class HelloReply(Body):
    TYPE: ClassVar[MessageType] = MessageType.HELLO_REPLY
    accepted: bool
    reason: str
    update_chunks: int = 0
    session: int | None = None  # the compact session's id, when the HELLO asked for one

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"accepted": self.accepted, "reason": self.reason,
                                "update_chunks": self.update_chunks}
        if self.session is not None:
            body["s"] = self.session
        return body

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> HelloReply:
        return cls(body["accepted"], body["reason"], body["update_chunks"], body.get("s"))


@dataclass(frozen=True)
class WeightChunk(Body):
    TYPE: ClassVar[MessageType] = MessageType.WEIGHT_CHUNK
    index: int
    data: bytes
    crc32: int

    def to_body(self) -> dict[str, Any]:
        return {"index": self.index, "data": self.data, "crc32": self.crc32}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WeightChunk:
        return cls(body["index"], body["data"], body["crc32"])


@dataclass(frozen=True)
class WeightCommit(Body):
    TYPE: ClassVar[MessageType] = MessageType.WEIGHT_COMMIT
    chunks: int
    sha256: bytes

    def to_body(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "sha256": self.sha256}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> WeightCommit:
        return cls(body["chunks"], body["sha256"])


@dataclass(frozen=True)
class CommitReply(Body):
    TYPE: ClassVar[MessageType] = MessageType.COMMIT_REPLY
    accepted: bool
    reason: str

    def to_body(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "reason": self.reason}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> CommitReply:
        return cls(body["accepted"], body["reason"])


def _scaled_float16(values: np.ndarray) -> tuple[bytes, float]:
    """float16 values and the scale to multiply them by: gradients are often far below float16's
    smallest normal number, so they travel scaled to its range."""
    values = np.asarray(values, dtype=np.float32).ravel()
    largest = float(np.abs(values).max()) if values.size else 0.0
    scale = largest / 32768.0 if largest > 0 else 1.0
    return (values / scale).astype("<f2").tobytes(), scale


def _float16_values(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


@dataclass(frozen=True)
class AdaptStep(Body):
    """One split-learning step: a batch's features and local logits, flattened, and its labels.

    With ``train`` the server adapts its remote part in session ``session``; ``step`` numbers the
    steps of a session from 0, so a resent step is answered again, never applied twice. The
    features' shape is the served model's, the batch ``len(labels)``.
    """

    TYPE: ClassVar[MessageType] = MessageType.ADAPT_STEP
    session: str
    step: int
    train: bool
    features: np.ndarray
    local_logits: np.ndarray
    labels: np.ndarray
    lr: float
    optimizer: str = "adam"

    def to_body(self) -> dict[str, Any]:
        return {"s": self.session, "i": self.step, "t": self.train,
                "f": np.asarray(self.features, dtype="<f2").tobytes(),
                "l": logits_to_bytes(np.asarray(self.local_logits).ravel()),
                "y": np.asarray(self.labels, dtype="<u2").tobytes(), "lr": float(self.lr),
                "opt": self.optimizer}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AdaptStep:
        if len(body["y"]) % 2:
            raise MalformedMessage("ADAPT_STEP.y must hold uint16 labels (an even byte count)")
        return cls(body["s"], body["i"], body["t"], _float16_values(body["f"]), _float16_values(body["l"]),
                   np.frombuffer(body["y"], dtype="<u2").astype(np.int64), body["lr"], body["opt"])


@dataclass(frozen=True)
class AdaptGradient(Body):
    """The server's answer to an :class:`AdaptStep`: the loss's gradient with respect to the
    features and the local logits (flattened, in the step's order), and the loss."""

    TYPE: ClassVar[MessageType] = MessageType.ADAPT_GRADIENT
    features: np.ndarray
    local_logits: np.ndarray
    loss: float

    def to_body(self) -> dict[str, Any]:
        features, features_scale = _scaled_float16(self.features)
        logits, logits_scale = _scaled_float16(self.local_logits)
        return {"g": features, "gs": features_scale, "gl": logits, "gls": logits_scale,
                "ls": float(self.loss)}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AdaptGradient:
        return cls(_float16_values(body["g"]) * body["gs"], _float16_values(body["gl"]) * body["gls"],
                   body["ls"])


@dataclass(frozen=True)
class AdaptFetch(Body):
    """Ask for the session's adapted remote part from byte ``offset`` of its serialised state."""

    TYPE: ClassVar[MessageType] = MessageType.ADAPT_FETCH
    session: str
    offset: int

    def to_body(self) -> dict[str, Any]:
        return {"s": self.session, "o": self.offset}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AdaptFetch:
        return cls(body["s"], body["o"])


@dataclass(frozen=True)
class AdaptState(Body):
    """``data`` is bytes ``offset`` onwards of a ``total``-byte state (see ``agilenn.adapt.split``)."""

    TYPE: ClassVar[MessageType] = MessageType.ADAPT_STATE
    offset: int
    total: int
    data: bytes

    def to_body(self) -> dict[str, Any]:
        return {"o": self.offset, "n": self.total, "d": self.data}

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AdaptState:
        return cls(body["o"], body["n"], body["d"])


def error_reply(request: Message | None, error: ProtocolError | str, reason: str = "") -> Message:
    """The ERROR message answering ``request`` (or an unparseable one, if None)."""
    code = error if isinstance(error, str) else error.code
    # The limit is 512 bytes of UTF-8, not characters; never split a character.
    text = (reason or str(error)).encode("utf-8", "replace")[:512].decode("utf-8", "ignore")
    if request is None:
        return ErrorReply(code, text).message(0, "")
    return ErrorReply(code, text).message(request.request_id, request.device_id, request.model_hash)
