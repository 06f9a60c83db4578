"""The msgpack message schema: round trips, hostile bytes, every limit, error replies, the wire format."""

from __future__ import annotations

from pathlib import Path

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from transports.messages import (
    BODY_SCHEMAS,
    AdaptGradient,
    AdaptStep,
    MAX_CHUNK_BYTES,
    MAX_CLASSES,
    MAX_DEVICE_ID_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_REQUEST_ID,
    MAX_TIMESTAMPS,
    MODEL_HASH_BYTES,
    PROTOCOL_VERSION,
    MalformedMessage,
    Message,
    MessageTooLarge,
    MessageType,
    NonFiniteValue,
    ProtocolError,
    UnknownMessageType,
    UnsupportedVersion,
    decode_message,
    encode_message,
    error_reply,
    logits_from_bytes,
    logits_to_bytes,
)



def fast(max_examples: int) -> settings:
    """Deterministic, database-free hypothesis runs: no flakes, no files written."""
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True)


# A failing hypothesis test makes its pytest plugin import libcst, which warns through
# mypy_extensions; under filterwarnings=error that turns the failure report into an INTERNALERROR.
CODES = {"malformed", "unsupported-version", "unknown-type", "too-large", "non-finite"}
ERROR_TYPES = (MalformedMessage, UnsupportedVersion, UnknownMessageType, MessageTooLarge, NonFiniteValue)

# Little-endian float16 bit patterns.
F16_NAN = b"\x00\x7e"
F16_INF = b"\x00\x7c"
F16_NEG_INF = b"\x00\xfc"
F16_ONE = b"\x00\x3c"


# ------------------------------------------------------------------ helpers
def pack(items: Any) -> bytes:
    """Hand-pack msgpack exactly as a (possibly hostile) peer would."""
    data: bytes = msgpack.packb(items, use_bin_type=True)
    return data


def raw(message_type: int = MessageType.PING, body: Any = None, **fields: Any) -> list[Any]:
    """The 7-item wire array of a valid message, with any item overridden by keyword."""
    items = {"version": PROTOCOL_VERSION, "type": int(message_type), "request_id": 7,
             "device_id": "dev-1", "model_hash": bytes(range(MODEL_HASH_BYTES)), "timestamps": {},
             "body": {} if body is None else body}
    items.update(fields)
    return [items[k] for k in ("version", "type", "request_id", "device_id", "model_hash",
                               "timestamps", "body")]


def infer_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"p": b"\x01\x02\x03", "l": F16_ONE * 4}
    body.update(fields)
    return body


def raised(fn: Callable[..., Any], *args: Any) -> type[BaseException] | None:
    """The exception type ``fn(*args)`` raises, or None."""
    try:
        fn(*args)
    except Exception as exc:  # the caller asserts on the type
        return type(exc)
    return None


def assert_same_message(got: Message, want: Message) -> None:
    assert got.version == want.version
    assert got.type is want.type
    assert got.request_id == want.request_id
    assert got.device_id == want.device_id
    assert got.model_hash == want.model_hash
    assert dict(got.body) == dict(want.body)
    assert dict(got.timestamps) == dict(want.timestamps)


# --------------------------------------------------------------- strategies
def text_within(max_bytes: int) -> st.SearchStrategy[str]:
    """Any unicode text (multi-byte included) whose UTF-8 form fits in ``max_bytes``."""

    def fit(text: str) -> str:
        while len(text.encode()) > max_bytes:
            text = text[:-1]
        return text

    return st.text(max_size=max_bytes).map(fit)


def float16_bytes(max_values: int = 64) -> st.SearchStrategy[bytes]:
    finite = st.floats(width=16, allow_nan=False, allow_infinity=False)
    arrays = hnp.arrays(np.float16, st.integers(0, max_values), elements=finite)
    return arrays.map(logits_to_bytes)


def unsigned(maximum: int) -> st.SearchStrategy[int]:
    return st.one_of(st.integers(0, maximum), st.sampled_from([0, maximum]))


def numbers() -> st.SearchStrategy[int | float]:
    return st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**63), 2**64 - 1))


def timings() -> st.SearchStrategy[dict[str, int | float]]:
    return st.dictionaries(text_within(16), numbers(), max_size=MAX_TIMESTAMPS)


BODIES: dict[MessageType, st.SearchStrategy[dict[str, Any]]] = {
    MessageType.INFER_REQUEST: st.fixed_dictionaries({"p": st.binary(max_size=600)},
                                                     optional={"l": float16_bytes()}),
    MessageType.INFER_REPLY: st.fixed_dictionaries(
        {"c": unsigned(MAX_CLASSES - 1), "tm": timings()},
        optional={"pr": float16_bytes(), "lg": float16_bytes()}
    ),
    MessageType.ERROR: st.fixed_dictionaries({"code": text_within(32), "reason": text_within(512)}),
    MessageType.PING: st.just({}),
    MessageType.PONG: st.just({}),
    MessageType.HELLO: st.fixed_dictionaries({"firmware": text_within(32)}),
    MessageType.HELLO_REPLY: st.fixed_dictionaries(
        {"accepted": st.booleans(), "reason": text_within(256), "update_chunks": unsigned(2**16)}
    ),
    MessageType.WEIGHT_CHUNK: st.fixed_dictionaries(
        {"index": unsigned(2**16), "data": st.binary(max_size=1024), "crc32": unsigned(2**32 - 1)}
    ),
    MessageType.WEIGHT_COMMIT: st.fixed_dictionaries(
        {"chunks": unsigned(2**16), "sha256": st.binary(min_size=32, max_size=32)}
    ),
    MessageType.COMMIT_REPLY: st.fixed_dictionaries({"accepted": st.booleans(), "reason": text_within(256)}),
    MessageType.ADAPT_STEP: st.fixed_dictionaries(
        {"s": text_within(32), "i": unsigned(MAX_REQUEST_ID), "t": st.booleans(), "f": float16_bytes(),
         "l": float16_bytes(), "y": st.binary(max_size=64).map(lambda b: b[:len(b) // 2 * 2]),
         "lr": st.floats(0.0, 1.0), "opt": text_within(16)}
    ),
    MessageType.ADAPT_GRADIENT: st.fixed_dictionaries(
        {"g": float16_bytes(), "gs": st.floats(0.0, 1e30), "gl": float16_bytes(), "gls": st.floats(0.0, 1e30),
         "ls": st.floats(-1e30, 1e30)}
    ),
    MessageType.ADAPT_FETCH: st.fixed_dictionaries({"s": text_within(32), "o": unsigned(2**32 - 1)}),
    MessageType.ADAPT_STATE: st.fixed_dictionaries(
        {"o": unsigned(2**32 - 1), "n": unsigned(2**32 - 1), "d": st.binary(max_size=1024)}
    ),
}


ANY_TYPE = st.sampled_from(MessageType)


@st.composite
def messages(draw: st.DrawFn, types: st.SearchStrategy[MessageType] = ANY_TYPE) -> Message:
    message_type = draw(types)
    return Message(
        type=message_type,
        request_id=draw(unsigned(MAX_REQUEST_ID)),
        device_id=draw(text_within(MAX_DEVICE_ID_BYTES)),
        model_hash=draw(st.one_of(st.just(b""), st.binary(min_size=MODEL_HASH_BYTES,
                                                          max_size=MODEL_HASH_BYTES))),
        body=draw(BODIES[message_type]),
        timestamps=draw(timings()),
    )


# msgpack values a hostile peer could send (string map keys only: bytes keys are pinned below).
MSGPACK_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
              st.text(max_size=20), st.binary(max_size=20)),
    lambda children: st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=8), children,
                                                                      max_size=8),
    max_leaves=12,
)


# --------------------------------------------------------------- round trips
def test_every_message_type_has_a_strategy() -> None:
    assert set(BODIES) == set(MessageType) == set(BODY_SCHEMAS)


@fast(200)
@given(messages())
def test_valid_messages_round_trip(message: Message) -> None:
    data = encode_message(message)
    assert len(data) <= MAX_MESSAGE_BYTES
    decoded = decode_message(data)
    assert_same_message(decoded, message)
    assert decoded == message
    assert encode_message(decoded) == data


@pytest.mark.parametrize("message_type", list(MessageType))
@fast(15)
@given(data=st.data())
def test_each_type_round_trips(message_type: MessageType, data: st.DataObject) -> None:
    message = data.draw(messages(st.just(message_type)))
    decoded = decode_message(encode_message(message))
    assert decoded.type is message_type
    assert_same_message(decoded, message)


def test_limits_are_inclusive() -> None:
    biggest = Message(
        MessageType.INFER_REQUEST, MAX_REQUEST_ID, "é" * (MAX_DEVICE_ID_BYTES // 2), b"\xff" * 8,
        {"p": b"\x00" * MAX_PAYLOAD_BYTES, "l": F16_ONE * MAX_CLASSES},
        {f"t{i:015d}": float(i) for i in range(MAX_TIMESTAMPS)},
    )
    assert_same_message(decode_message(encode_message(biggest)), biggest)
    chunk = Message(MessageType.WEIGHT_CHUNK, 0, "d",
                    body={"index": 2**16, "data": b"\x01" * MAX_CHUNK_BYTES, "crc32": 2**32 - 1})
    assert_same_message(decode_message(encode_message(chunk)), chunk)


# --------------------------------------------------------------- hostile bytes
def test_error_codes_are_the_documented_set() -> None:
    assert {cls.code for cls in ERROR_TYPES} == CODES
    assert all(issubclass(cls, ProtocolError) for cls in ERROR_TYPES)


@fast(1000)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        message = decode_message(data)
    except ProtocolError as exc:
        assert type(exc) in ERROR_TYPES
        assert exc.code in CODES
    else:  # a random valid message is possible in principle; it must then be re-encodable
        assert encode_message(message)


@fast(120)
@given(st.lists(MSGPACK_VALUES, max_size=8), st.booleans(), st.sampled_from(MessageType))
def test_random_msgpack_structures_raise_only_protocol_errors(items: list[Any], message_like: bool,
                                                              message_type: MessageType) -> None:
    if message_like:  # 7 items with a real version and type, so validation runs past the header
        items = [PROTOCOL_VERSION, int(message_type), *(items + [{}] * 5)[:5]]
    try:
        message = decode_message(pack(items))
    except ProtocolError as exc:
        assert type(exc) in ERROR_TYPES
        assert exc.code in CODES
    else:
        assert decode_message(encode_message(message)) == message


@fast(150)
@given(messages(), st.data())
def test_single_byte_mutations_raise_protocol_errors_or_stay_valid(message: Message,
                                                                  data: st.DataObject) -> None:
    wire = bytearray(encode_message(message))
    index = data.draw(st.integers(0, len(wire) - 1))
    wire[index] = data.draw(st.integers(0, 255).filter(lambda b: b != wire[index]))
    try:
        decoded = decode_message(bytes(wire))
    except ProtocolError as exc:
        assert exc.code in CODES
    else:
        assert decode_message(encode_message(decoded)) == decoded


@fast(100)
@given(messages(), st.data())
def test_truncations_and_trailing_bytes_are_malformed(message: Message, data: st.DataObject) -> None:
    wire = encode_message(message)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(MalformedMessage):
        decode_message(wire[:cut])
    with pytest.raises(MalformedMessage):
        decode_message(wire + data.draw(st.binary(min_size=1, max_size=8)))


# --------------------------------------------------------------- targeted cases
@pytest.mark.parametrize("version", [2, 0, "1", None, -1])
def test_wrong_version_is_unsupported(version: Any) -> None:
    with pytest.raises(UnsupportedVersion, match=f"version {version!r}") as info:
        decode_message(pack(raw(version=version)))
    assert info.value.code == "unsupported-version"


def test_encode_refuses_a_wrong_version() -> None:
    with pytest.raises(UnsupportedVersion, match="version 2"):
        encode_message(Message(MessageType.PING, 0, "d", version=2))


@pytest.mark.parametrize("type_code", [0, 99, "x", 15, -1, None, [1], {"a": 1}])
def test_unknown_type_code(type_code: Any) -> None:
    with pytest.raises(UnknownMessageType) as info:
        decode_message(pack(raw(type=type_code)))
    assert info.value.code == "unknown-type"
    assert repr(type_code) in str(info.value)


def test_missing_body_field_is_named() -> None:
    body = infer_body()
    del body["p"]
    with pytest.raises(MalformedMessage, match=r"missing \['p'\]"):
        decode_message(pack(raw(MessageType.INFER_REQUEST, body)))
    with pytest.raises(MalformedMessage, match=r"missing \['p'\]"):
        encode_message(Message(MessageType.INFER_REQUEST, 0, "d", body=body))


def test_optional_fields_may_be_left_out_but_are_still_checked() -> None:
    body = infer_body()
    del body["l"]  # the device merges: no local logits on the uplink
    assert decode_message(encode_message(Message(MessageType.INFER_REQUEST, 1, "d", body=body))).body == body
    reply = {"c": 3, "lg": b"\x00\x3c" * 10, "tm": {"q": 5}}
    assert decode_message(encode_message(Message(MessageType.INFER_REPLY, 1, "d", body=reply))).body == reply
    with pytest.raises(NonFiniteValue, match="INFER_REPLY.lg"):
        decode_message(pack(raw(MessageType.INFER_REPLY, {**reply, "lg": b"\x00\x7c"})))
    with pytest.raises(MalformedMessage, match=r"unexpected \['x'\]"):
        decode_message(pack(raw(MessageType.INFER_REPLY, {**reply, "x": 1})))


def test_extra_body_field_is_named() -> None:
    body = infer_body(zz=1)
    with pytest.raises(MalformedMessage, match=r"unexpected \['zz'\]"):
        decode_message(pack(raw(MessageType.INFER_REQUEST, body)))
    with pytest.raises(MalformedMessage, match=r"unexpected \['zz'\]"):
        encode_message(Message(MessageType.INFER_REQUEST, 0, "d", body=body))
    with pytest.raises(MalformedMessage, match=r"unexpected \['x'\]"):
        decode_message(pack(raw(MessageType.PING, {"x": None})))


def test_oversized_payload_is_too_large_on_both_sides() -> None:
    body = infer_body(p=b"\x00" * (MAX_PAYLOAD_BYTES + 1))
    data = pack(raw(MessageType.INFER_REQUEST, body))
    assert len(data) < MAX_MESSAGE_BYTES  # the field limit fires, not the message limit
    with pytest.raises(MessageTooLarge, match="INFER_REQUEST.p") as info:
        decode_message(data)
    assert info.value.code == "too-large"
    with pytest.raises(MessageTooLarge, match="INFER_REQUEST.p"):
        encode_message(Message(MessageType.INFER_REQUEST, 0, "d", body=body))
    with pytest.raises(MessageTooLarge, match="WEIGHT_CHUNK.data"):
        decode_message(pack(raw(MessageType.WEIGHT_CHUNK,
                                {"index": 0, "data": b"\x01" * (MAX_CHUNK_BYTES + 1), "crc32": 0})))


def test_whole_message_limit_is_checked_before_unpacking() -> None:
    # 0xc1 is never valid msgpack: only a size check made before unpacking reports "too large".
    with pytest.raises(MessageTooLarge, match=str(MAX_MESSAGE_BYTES + 1)):
        decode_message(b"\xc1" * (MAX_MESSAGE_BYTES + 1))
    with pytest.raises(MalformedMessage):
        decode_message(b"\xc1" * MAX_MESSAGE_BYTES)


@pytest.mark.parametrize("bad", [F16_NAN, F16_INF, F16_NEG_INF])
def test_non_finite_logits(bad: bytes) -> None:
    body = infer_body(l=F16_ONE + bad + F16_ONE)
    with pytest.raises(NonFiniteValue, match="INFER_REQUEST.l") as info:
        decode_message(pack(raw(MessageType.INFER_REQUEST, body)))
    assert info.value.code == "non-finite"
    with pytest.raises(NonFiniteValue):
        encode_message(Message(MessageType.INFER_REQUEST, 0, "d", body=body))
    reply = {"c": 0, "pr": bad, "tm": {}}
    with pytest.raises(NonFiniteValue, match="INFER_REPLY.pr"):
        decode_message(pack(raw(MessageType.INFER_REPLY, reply)))


def test_odd_and_oversized_float16_arrays() -> None:
    with pytest.raises(MalformedMessage, match="even byte count"):
        decode_message(pack(raw(MessageType.INFER_REQUEST, infer_body(l=F16_ONE + b"\x00"))))
    with pytest.raises(MessageTooLarge):
        decode_message(pack(raw(MessageType.INFER_REQUEST, infer_body(l=F16_ONE * (MAX_CLASSES + 1)))))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_timestamps_and_timings(bad: float) -> None:
    with pytest.raises(NonFiniteValue, match="timestamps"):
        decode_message(pack(raw(timestamps={"t0": 1.0, "t1": bad})))
    with pytest.raises(NonFiniteValue, match="timestamps"):
        encode_message(Message(MessageType.PING, 0, "d", timestamps={"t1": bad}))
    reply = {"c": 3, "pr": F16_ONE, "tm": {"infer": bad}}
    with pytest.raises(NonFiniteValue, match="INFER_REPLY.tm"):
        decode_message(pack(raw(MessageType.INFER_REPLY, reply)))


def test_timestamp_map_limits() -> None:
    with pytest.raises(MessageTooLarge, match="17 entries, the limit is 16"):
        decode_message(pack(raw(timestamps={f"t{i}": i for i in range(MAX_TIMESTAMPS + 1)})))
    assert decode_message(pack(raw(timestamps={"k" * 16: 1.0}))).timestamps == {"k" * 16: 1.0}
    with pytest.raises(MessageTooLarge, match="timestamps"):
        decode_message(pack(raw(timestamps={"k" * 17: 1.0})))
    with pytest.raises(MessageTooLarge, match="timestamps"):  # 6 chars but 18 bytes
        decode_message(pack(raw(timestamps={"€" * 6: 1.0})))
    with pytest.raises(MessageTooLarge, match="INFER_REPLY.tm"):
        decode_message(pack(raw(MessageType.INFER_REPLY, {"c": 0, "pr": b"", "tm": {"€" * 6: 1.0}})))
    with pytest.raises(MalformedMessage, match="number"):
        decode_message(pack(raw(timestamps={"t": True})))
    with pytest.raises(MalformedMessage, match="number"):
        decode_message(pack(raw(timestamps={"t": "1"})))
    with pytest.raises(MalformedMessage, match="timestamps must be a string, not bytes"):
        decode_message(pack(raw(timestamps={b"t": 1})))


@pytest.mark.parametrize("device_id, ok", [
    ("a" * 64, True), ("a" * 65, False), ("é" * 32, True), ("é" * 33, False),
    ("😀" * 16, True), ("😀" * 17, False),
])
def test_device_id_limit_counts_bytes(device_id: str, ok: bool) -> None:
    data = pack(raw(device_id=device_id))
    message = Message(MessageType.PING, 0, device_id)
    if ok:
        assert decode_message(data).device_id == device_id
        assert decode_message(encode_message(message)).device_id == device_id
    else:
        with pytest.raises(MessageTooLarge, match="device_id"):
            decode_message(data)
        with pytest.raises(MessageTooLarge, match="device_id"):
            encode_message(message)


@pytest.mark.parametrize("request_id", [-1, 2**32, 2**64 - 1, True, False, 1.0, "1", None])
def test_bad_request_id_is_malformed(request_id: Any) -> None:
    with pytest.raises(MalformedMessage, match="request_id"):
        decode_message(pack(raw(request_id=request_id)))
    with pytest.raises(MalformedMessage, match="request_id"):
        encode_message(Message(MessageType.PING, request_id, "d"))


@pytest.mark.parametrize("model_hash, error", [
    (b"\x01" * 7, MalformedMessage), (b"\x01" * 9, MessageTooLarge), ("01234567", MalformedMessage),
])
def test_bad_model_hash(model_hash: Any, error: type[ProtocolError]) -> None:
    with pytest.raises(error, match="model_hash"):
        decode_message(pack(raw(model_hash=model_hash)))
    with pytest.raises(error, match="model_hash"):
        encode_message(Message(MessageType.PING, 0, "d", model_hash))


def test_empty_model_hash_is_allowed() -> None:
    assert decode_message(pack(raw(model_hash=b""))).model_hash == b""


@pytest.mark.parametrize("data", [
    pytest.param(pack(raw()[:6]), id="array-of-6"),
    pytest.param(pack([*raw(), 0]), id="array-of-8"),
    pytest.param(pack(dict(enumerate(map(str, raw())))), id="map-not-array"),
    pytest.param(pack({"version": 1}), id="map-with-str-keys"),
    pytest.param(pack(1), id="int"),
    pytest.param(b"", id="empty"),
    pytest.param(pack(raw()) + b"\x00", id="trailing-byte"),
    pytest.param(pack(msgpack.ExtType(5, b"abcd")), id="ext-top-level"),
    pytest.param(pack(raw(timestamps={"t": msgpack.Timestamp(1, 0)})), id="ext-timestamp"),
    pytest.param(pack(raw(MessageType.INFER_REQUEST, infer_body(p=msgpack.ExtType(1, b"")))), id="ext-empty"),
    pytest.param(b"\x91" * 100_000 + b"\x01", id="deep-array"),
    pytest.param(pack(raw(body={"x": [[[[[[1]]]]]]})), id="nested-in-body"),
    pytest.param(b"\x97\x01\x04\x07\xa0\xc4\x00\x80\x81\xa1x" + b"\x91" * 10_000 + b"\x01",
                 id="deep-in-body"),
    pytest.param(pack(raw(body={1: 2})), id="int-key"),
    pytest.param(pack(raw(timestamps={1.5: 2})), id="float-key"),
    pytest.param(pack(raw(MessageType.INFER_REQUEST, {b"p": b"", b"l": b""})), id="bytes-keys"),
    pytest.param(pack(raw(timestamps=[1, 2])), id="timestamps-array"),
    pytest.param(pack(raw(body=[])), id="body-array"),
    pytest.param(pack(raw(device_id=b"dev")), id="device-id-bytes"),
    pytest.param(pack(raw(MessageType.INFER_REQUEST, infer_body(p="text"))), id="str-not-bytes"),
    pytest.param(pack(raw(MessageType.INFER_REPLY, {"c": MAX_CLASSES, "pr": b"", "tm": {}})),
                 id="class-1024"),
    pytest.param(pack(raw(MessageType.HELLO_REPLY, {"accepted": 1, "reason": "", "update_chunks": 0})),
                 id="int-not-bool"),
    pytest.param(pack(raw(MessageType.WEIGHT_COMMIT, {"chunks": 1, "sha256": b"\x00" * 31})), id="sha-31"),
    pytest.param(pack(raw(MessageType.WEIGHT_CHUNK, {"index": 2**16 + 1, "data": b"", "crc32": 0})),
                 id="index-too-big"),
])
def test_malformed_structures(data: bytes) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_message(data)
    assert info.value.code == "malformed"


def test_text_fields_are_limited_in_bytes() -> None:
    with pytest.raises(MessageTooLarge, match="HELLO.firmware"):
        decode_message(pack(raw(MessageType.HELLO, {"firmware": "é" * 17})))
    assert decode_message(pack(raw(MessageType.HELLO, {"firmware": "é" * 16}))).body["firmware"] == "é" * 16


@pytest.mark.parametrize("message, error", [
    (Message(MessageType.PING, 0, "d", version=0), UnsupportedVersion),
    (Message(MessageType.PING, -1, "d"), MalformedMessage),
    (Message(MessageType.PING, 0, "d" * 65), MessageTooLarge),
    (Message(MessageType.PING, 0, "d", b"\x00" * 7), MalformedMessage),
    (Message(MessageType.PING, 0, "d", body={"x": 1}), MalformedMessage),
    (Message(MessageType.PING, 0, "d", body=[]), MalformedMessage),  # type: ignore[arg-type]
    (Message(MessageType.INFER_REQUEST, 0, "d", body=infer_body(p=bytearray(b"x"))), MalformedMessage),
    (Message(MessageType.INFER_REQUEST, 0, "d", body=infer_body(l=F16_NAN)), NonFiniteValue),
    (Message(MessageType.INFER_REPLY, 0, "d", body={"c": 0, "pr": b"", "tm": {"x": float("nan")}}),
     NonFiniteValue),
    (Message(MessageType.ERROR, 0, "d", body={"code": "c" * 33, "reason": ""}), MessageTooLarge),
    (Message(MessageType.COMMIT_REPLY, 0, "d", body={"accepted": None, "reason": ""}), MalformedMessage),
    (Message(MessageType.PING, 0, "d", timestamps={"t": np.float32(1.0)}),  # type: ignore[dict-item]
     MalformedMessage),
    (Message(MessageType.PING, 0, "d", timestamps=5), MalformedMessage),  # type: ignore[arg-type]
    (Message(MessageType.PING, 0, "d", timestamps=[("t", 1.0)]), MalformedMessage),  # type: ignore[arg-type]
])
def test_encode_refuses_invalid_messages(message: Message, error: type[ProtocolError]) -> None:
    with pytest.raises(error) as info:
        encode_message(message)
    assert info.value.code == error.code


# --------------------------------------------------------------- error replies
def test_error_reply_copies_the_request() -> None:
    request = Message(MessageType.INFER_REQUEST, 4242, "sensor-9", b"\xab" * 8, infer_body())
    reply = error_reply(request, NonFiniteValue("INFER_REQUEST.l holds NaN or infinity"))
    assert reply.type is MessageType.ERROR
    assert (reply.request_id, reply.device_id, reply.model_hash) == (4242, "sensor-9", b"\xab" * 8)
    assert dict(reply.body) == {"code": "non-finite", "reason": "INFER_REQUEST.l holds NaN or infinity"}
    assert_same_message(decode_message(encode_message(reply)), reply)


def test_error_reply_with_a_code_string_and_reason() -> None:
    request = Message(MessageType.PING, 1, "d")
    reply = error_reply(request, "busy", "queue full")
    assert dict(reply.body) == {"code": "busy", "reason": "queue full"}
    assert decode_message(encode_message(reply)).body["code"] == "busy"
    # An explicit reason overrides the error's text.
    assert error_reply(request, MalformedMessage("long story"), "short").body["reason"] == "short"


def test_error_reply_to_unparseable_input() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_message(b"\xc1garbage")
    reply = error_reply(None, info.value)
    assert (reply.request_id, reply.device_id, reply.model_hash) == (0, "", b"")
    assert reply.body["code"] == "malformed"
    assert reply.body["reason"].startswith("not a msgpack message")
    assert_same_message(decode_message(encode_message(reply)), reply)


def test_error_reply_truncates_long_reasons() -> None:
    reply = error_reply(None, MalformedMessage("x" * 2000))
    assert reply.body["reason"] == "x" * 512
    assert decode_message(encode_message(reply)).body["reason"] == "x" * 512


@fast(200)
@given(st.binary(max_size=100))
def test_every_decode_error_has_an_encodable_reply(data: bytes) -> None:
    try:
        decode_message(data)
    except ProtocolError as exc:
        reply = error_reply(None, exc)
        assert decode_message(encode_message(reply)).body["code"] == exc.code


# --------------------------------------------------------------- logits
@fast(200)
@given(hnp.arrays(np.float32, st.integers(0, 300), elements=st.floats(-65504, 65504, width=32)))
def test_logits_round_trip_within_float16_precision(values: np.ndarray) -> None:
    data = logits_to_bytes(values)
    assert len(data) == 2 * values.size
    back = logits_from_bytes(data)
    assert back.dtype == np.float32
    assert back.shape == (values.size,)
    assert np.array_equal(back, values.astype(np.float16).astype(np.float32))
    tolerance = np.maximum(np.abs(values) * 2.0**-11, 2.0**-25)  # half an ulp; subnormal spacing
    assert (np.abs(back - values) <= tolerance).all()
    assert logits_to_bytes(back) == data


def test_logits_are_little_endian_float16() -> None:
    assert logits_to_bytes(np.array([1.0, -2.0, 0.5])) == b"\x00\x3c\x00\xc0\x00\x38"
    assert logits_from_bytes(b"\x00\x3c\x00\xc0").tolist() == [1.0, -2.0]


# --------------------------------------------------------------- golden
GOLDEN_REQUEST = Message(
    MessageType.INFER_REQUEST, 7, "dev", bytes(range(1, 9)),
    {"p": b"\x00\x01\x02", "l": logits_to_bytes(np.array([1.0, -2.0]))}, {"t0": 1.5},
)
GOLDEN_HEX = (
    "97"                      # fixarray of 7
    "01"                      # version 1
    "01"                      # type INFER_REQUEST
    "07"                      # request_id 7
    "a3646576"                # "dev"
    "c4080102030405060708"    # bin8 model hash
    "81a27430cb3ff8000000000000"  # {"t0": 1.5} (float64)
    "82a170c403000102a16cc404003c00c0"  # {"p": 00 01 02, "l": float16 [1, -2]}
)


def test_golden_infer_request_bytes() -> None:
    data = encode_message(GOLDEN_REQUEST)
    assert data.hex() == GOLDEN_HEX
    assert data[0] == 0x97  # msgpack fixarray of 7 items
    assert data[1] == PROTOCOL_VERSION == 1
    assert data[2] == MessageType.INFER_REQUEST == 1
    assert msgpack.unpackb(data)[6] == {"p": b"\x00\x01\x02", "l": b"\x00\x3c\x00\xc0"}
    assert_same_message(decode_message(bytes.fromhex(GOLDEN_HEX)), GOLDEN_REQUEST)


DOC_REQUEST_HEX = (  # docs/PROTOCOL.md, "Worked example: an INFER_REQUEST"
    "97010101a66d63752d3031c40831dc1344bc0892858082a170c415a10a1007070602d37c5d5e"
    "568b47347c677312da98a16cc4148cc8f8c365c387b3b1c9d7c60dcdfc4833c6d3bf"
)


def test_worked_example_of_the_protocol_doc() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()
    assert DOC_REQUEST_HEX in doc.replace("\n", "")  # the doc shows exactly these bytes
    data = bytes.fromhex(DOC_REQUEST_HEX)
    assert len(data) == 72
    request = decode_message(data)
    assert (request.type, request.request_id, request.device_id) == (MessageType.INFER_REQUEST, 1, "mcu-01")
    assert request.model_hash.hex() == "31dc1344bc089285"
    assert request.body["p"][:5] == bytes.fromhex("a10a100707") and len(request.body["p"]) == 21
    assert int(np.argmax(logits_from_bytes(request.body["l"]))) == 7  # MNIST test image 0 is a 7
    assert encode_message(request) == data
    assert len(encode_message(request._replace(body={"p": request.body["p"]}))) == 48  # without l
    timings = {"q": 210, "s": 1130, "b": 1}
    reply = Message(MessageType.INFER_REPLY, 1, "mcu-01", request.model_hash,
                    {"c": 7, "pr": logits_to_bytes(np.full(10, 0.1)), "tm": timings})
    data = encode_message(reply)
    assert len(data) == 67  # "The matching reply ... is 67 bytes"
    assert data.endswith(bytes.fromhex("a2746d83a171ccd2a173cd046aa16201"))  # the tm bytes shown
    device_merge = reply._replace(body={"c": 7, "lg": logits_to_bytes(np.zeros(10)), "tm": timings})
    assert len(encode_message(device_merge)) == 67  # "the same size"


# --------------------------------------------------------------- regressions of fixed bugs
def test_regression_mixed_bytes_and_str_body_keys() -> None:
    with pytest.raises(MalformedMessage):
        decode_message(pack(raw(MessageType.PING, {"x": 1, b"y": 2})))


@pytest.mark.parametrize("make_error", [
    pytest.param(lambda: MalformedMessage("é" * 600), id="long-multibyte-reason"),
    pytest.param(lambda: raised_error(pack(raw(type="é" * 1000))),
                 id="hostile-type-code"),
])
def test_regression_error_reply_of_multibyte_reason_encodes(
    make_error: Callable[[], ProtocolError],
) -> None:
    error = make_error()
    reply = error_reply(None, error)
    assert decode_message(encode_message(reply)).body["code"] == error.code


def raised_error(data: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode_message(data)
    return info.value


@pytest.mark.parametrize("version, type_code", [(True, 4), (1.0, 4), (1, 4.0)])
def test_regression_bool_or_float_version_and_type_are_accepted(version: Any, type_code: Any) -> None:
    assert raised(decode_message, pack(raw(version=version, type=type_code))) in (
        UnsupportedVersion, UnknownMessageType)


def test_regression_encode_accepts_bool_version() -> None:
    assert raised(encode_message, Message(MessageType.PING, 0, "d", version=True)) is UnsupportedVersion


@pytest.mark.parametrize("message", [
    pytest.param(Message(MessageType.PING, 0, "d", timestamps={"t": 2**64}), id="timing-2**64"),
    pytest.param(Message(MessageType.PING, 0, "\ud800"), id="surrogate-device-id"),
    pytest.param(Message(MessageType.HELLO, 0, "d", body={"firmware": "\udcff"}), id="surrogate-field"),
])
def test_regression_encode_raises_untyped_errors(message: Message) -> None:
    with pytest.raises(ProtocolError):
        encode_message(message)


@pytest.mark.parametrize("message", [
    pytest.param(Message(MessageType.PING, 0, "d" * 20 + "\ud800"), id="long-surrogate-device-id"),
    pytest.param(Message(MessageType.PING, 0, "d", timestamps={"t": 10**400}), id="huge-int-timing"),
    pytest.param(Message(99, 0, "d"), id="unknown-type"),  # type: ignore[arg-type]
])
def test_regression_encode_errors_are_typed(message: Message) -> None:
    """Review finding: these raised UnicodeEncodeError, OverflowError and KeyError."""
    with pytest.raises(ProtocolError):
        encode_message(message)


# --------------------------------------------------------------- split learning
@fast(100)
@given(hnp.arrays(np.float32, st.integers(1, 300),
                  elements=st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)),
       st.integers(-12, 2))
def test_gradients_keep_float16_precision_however_small(values: np.ndarray, exponent: int) -> None:
    gradient = values * np.float32(10.0**exponent)
    sent = AdaptGradient(gradient, gradient[:3], 0.5)
    received = AdaptGradient.parse(decode_message(encode_message(sent.message(1, "d"))))
    largest = float(np.abs(gradient).max())
    assert np.allclose(received.features, gradient, rtol=1e-3, atol=1e-3 * largest + 1e-30)
    assert received.loss == 0.5


def test_a_step_with_a_half_label_or_a_nan_rate_is_refused() -> None:
    step = AdaptStep("s", 0, True, np.zeros(4, np.float32), np.zeros(2, np.float32), np.array([1]), 0.01)
    body = step.to_body()
    odd = Message(MessageType.ADAPT_STEP, 1, "d", b"", {**body, "y": b"\x01"})
    with pytest.raises(MalformedMessage, match="uint16"):
        AdaptStep.parse(decode_message(encode_message(odd)))
    nan = pack(raw(MessageType.ADAPT_STEP, {**body, "lr": float("nan")}))
    with pytest.raises(NonFiniteValue, match="ADAPT_STEP.lr"):
        decode_message(nan)
