"""The firmware's protocol modules in C against the Python side, byte for byte.

A small host driver (agilenn/firmware/c/tests/protocol_driver.c, built here with AddressSanitizer
and UBSan where the compiler has them) runs the C CRC-32, SHA-256, COBS, framing, msgpack, compact
frames and ARQ on what the tests feed it; every answer is checked against transports/ and hashlib.
Malformed input must be refused, never read past (the sanitizers would abort the driver).
"""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
from cobs import cobs

from transports.arq import ArqConfig, ArqEndpoint
from transports.compact import (
    Frame as CompactFrame,
    pack_frame,
    parse_request_body,
    reply_body,
    unpack_frame,
    error_body,
)
from transports.framing import Frame, FrameKind, decode_frame, encode_frame
from transports.messages import (
    CommitReply,
    ErrorReply,
    Hello,
    HelloReply,
    InferReply,
    MessageType,
    Ping,
    ProtocolError,
    ServerTimings,
    WeightChunk,
    WeightCommit,
    decode_message,
    encode_message,
    encode_unchecked,
)

C_DIR = Path(__file__).resolve().parents[1] / "agilenn" / "firmware" / "c"
MODULES = ["agn_crc32.c", "agn_sha256.c", "agn_cobs.c", "agn_frame.c", "agn_arq.c", "agn_msgpack.c",
           "agn_compact.c"]
HASH = bytes.fromhex("31dc1344bc089285")

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc (apt-get install gcc)")


class Driver:
    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen([str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def ask(self, *words: object) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(" ".join(str(w) for w in words) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, f"the driver died (exit {self.process.wait()}) on {' '.join(map(str, words))[:200]}"
        return answer.rstrip("\n")

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        assert self.process.wait(timeout=10) == 0
        self.process.stdout.close()


def _hex(data: bytes) -> str:
    return data.hex() or "-"


def _build(out: Path) -> Path:
    (out / "agn_config.h").write_text("#define AGN_PAYLOAD_MAX 1024\n#define AGN_CLASSES 10\n")
    sources = [str(C_DIR / "tests" / "protocol_driver.c")] + [str(C_DIR / m) for m in MODULES]
    base = ["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-g", "-O1", f"-I{C_DIR}", f"-I{out}", "-o",
            str(out / "driver")]
    sanitized = base + ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    for command in (sanitized, base):  # without the sanitizers where the compiler lacks them
        done = subprocess.run(command + sources, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return out / "driver"
    raise AssertionError(f"the protocol driver did not build:\n{done.stderr[-3000:]}")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    d = Driver(_build(tmp_path_factory.mktemp("protocol_driver")))
    yield d
    d.close()


# ------------------------------------------------------------------ CRC-32, SHA-256
def test_crc32_is_zlibs(driver: Driver) -> None:
    rng = random.Random(1)
    cases = [b"", b"123456789", bytes(range(256))]
    cases += [rng.randbytes(rng.randrange(1, 3000)) for _ in range(40)]
    for data in cases:
        assert int(driver.ask("crc", _hex(data))) == zlib.crc32(data)


def test_sha256_fips_vectors_and_every_padding_boundary(driver: Driver) -> None:
    assert driver.ask("sha", "-") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert driver.ask("sha", b"abc".hex()) == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    two_blocks = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"
    assert driver.ask("sha", two_blocks.hex()) == \
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    rng = random.Random(2)
    for size in [1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 1000, 12288, 40000]:
        data = rng.randbytes(size)
        assert driver.ask("sha", data.hex()) == hashlib.sha256(data).hexdigest(), size


# ------------------------------------------------------------------ COBS and frames
def test_cobs_matches_the_cobs_package_both_ways(driver: Driver) -> None:
    rng = random.Random(3)
    cases = [b"", b"\x00", b"\x00\x00", b"\x11\x00", bytes(range(1, 254)), bytes(range(1, 255)) + b"\x01",
             b"\x01" * 254, b"\x01" * 255, b"\x01" * 253 + b"\x00", b"\x01" * 508,
             b"\x01" * 254 + b"\x00" * 3]
    cases += [bytes(rng.choice([0, 0, 1, 7, 255]) for _ in range(rng.randrange(600))) for _ in range(30)]
    for data in cases:
        encoded = bytes(cobs.encode(data))
        assert driver.ask("cobs_enc", _hex(data)) == _hex(encoded), data[:8].hex()
        assert driver.ask("cobs_dec", _hex(encoded)) == _hex(data)
    for bad in [b"\x00", b"\x05\x01\x02", b"\x03\x00\x01", b"\x02\x01\x00\x02"]:
        with pytest.raises(cobs.DecodeError):
            cobs.decode(bad)
        assert driver.ask("cobs_dec", bad.hex()) == "ERR", bad.hex()


def _c_frame(answer: str) -> tuple[int, int, bool, bytes] | None:
    if answer.startswith("ERR"):
        return None
    _, kind, seq, more, payload = answer.split(" ")
    return int(kind), int(seq), more == "1", bytes.fromhex(payload) if payload != "-" else b""


def _python_frame(stuffed: bytes) -> tuple[int, int, bool, bytes] | None:
    decoded = decode_frame(stuffed + b"\x00", 240)
    if decoded.frame is None:
        return None
    frame = decoded.frame
    return int(frame.kind), frame.seq, frame.more, frame.payload


def test_frames_encode_like_framing_py(driver: Driver) -> None:
    rng = random.Random(4)
    for kind in FrameKind:
        for length in [0, 1, 4, 239, 240]:
            payload, seq, more = rng.randbytes(length), rng.randrange(256), rng.random() < 0.5
            wire = encode_frame(Frame(kind, seq, payload, more))
            assert driver.ask("frame_enc", int(kind), seq, int(more), _hex(payload)) == wire.hex()
            assert _c_frame(driver.ask("frame_dec", wire[:-1].hex())) == (int(kind), seq, more, payload)
    assert driver.ask("frame_enc", 1, 0, 0, "00" * 241) == "ERR"  # over the 240-byte limit


def test_corrupted_frames_are_refused_as_framing_py_refuses_them(driver: Driver) -> None:
    import struct

    def craft(header: bytes, payload: bytes, crc: int | None = None) -> bytes:
        body = header + payload
        return bytes(cobs.encode(body + struct.pack("<I", zlib.crc32(body) if crc is None else crc)))

    cases = {
        "crc": craft(b"\x01\x00\x03\x00", b"abc", crc=1),
        "length": craft(b"\x01\x00\x04\x00", b"abc"),
        "too long": craft(b"\x01\x00\xf1\x00", b"x" * 241),
        "kind 0": craft(b"\x00\x00\x00\x00", b""),
        "kind 7": craft(b"\x07\x00\x00\x00", b""),
        "short": bytes(cobs.encode(b"\x01\x00\x00")),
        "cobs": b"\x05\x01\x02",
    }
    for name, stuffed in cases.items():
        assert _python_frame(stuffed) is None, name
        assert driver.ask("frame_dec", stuffed.hex()).startswith("ERR"), name
    rng = random.Random(5)
    for _ in range(400):  # random damage: C accepts exactly what Python accepts, with the same fields
        wire = bytearray(encode_frame(Frame(rng.choice(list(FrameKind)), rng.randrange(256),
                                            rng.randbytes(rng.randrange(30)), rng.random() < 0.3))[:-1])
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(len(wire))
            wire[position] = rng.randrange(1, 256)  # never a 0: that would end the frame early
        if rng.random() < 0.2:
            del wire[rng.randrange(len(wire)):]
        if not wire:
            continue
        assert _c_frame(driver.ask("frame_dec", bytes(wire).hex())) == _python_frame(bytes(wire)), wire.hex()


# ------------------------------------------------------------------ msgpack messages
def test_the_device_writes_the_bytes_encode_message_writes(driver: Driver) -> None:
    for rid in [0, 1, 127, 128, 255, 256, 70000, 0xFFFFFFFF]:
        for cs in (False, True):
            for model_hash in (HASH, b""):
                ours = bytes.fromhex(driver.ask("hello", rid, int(cs), _hex(model_hash), "agilenn-mcu-0",
                                                "agilenn-c99/1_host"))
                hello = Hello("agilenn-c99/1_host", cs).message(rid, "agilenn-mcu-0", model_hash)
                theirs = encode_message(hello)
                assert ours == theirs
                assert decode_message(ours).request_id == rid
    long_reason = "r" * 40  # str8, not fixstr
    for accepted in (0, 1):
        ours = bytes.fromhex(driver.ask("commit", 3, accepted, HASH.hex(), "dev", long_reason))
        assert ours == encode_message(CommitReply(bool(accepted), long_reason).message(3, "dev", HASH))
    ours = bytes.fromhex(driver.ask("error", 9, "dev", "malformed", "bad"))
    assert ours == encode_message(ErrorReply("malformed", "bad").message(9, "dev"))


def _host_messages() -> dict[str, bytes]:
    rng = random.Random(6)
    chunk = rng.randbytes(1024)
    return {
        "hello_reply": encode_message(HelloReply(True, "updating", 11).message(1, "agilenn-mcu-0", HASH)),
        "hello_reply_s": encode_message(HelloReply(True, "", 0, 300).message(0xFFFFFFFF, "mcu", HASH)),
        "refusal": encode_message(HelloReply(False, "x" * 200, 0).message(2, "mcu", HASH)),
        "chunk": encode_message(WeightChunk(7, chunk, zlib.crc32(chunk)).message(1, "agilenn-mcu-0", HASH)),
        "commit": encode_message(WeightCommit(11, hashlib.sha256(chunk).digest()).message(1, "m", HASH)),
        "commit_reply": encode_message(CommitReply(False, "nope").message(1, "m", HASH)),
        "error": encode_message(ErrorReply("server-unreachable", "gone").message(4, "m", HASH)),
        "infer_reply": encode_message(InferReply(3, probabilities=np.full(10, 0.1, np.float32),
                                                 timings=ServerTimings(1.5, 20, 2)).message(4, "m", HASH)),
        "ping": encode_message(Ping().message(5, "m")),
    }


def _fields(answer: str) -> dict[str, str]:
    assert answer.startswith("OK "), answer
    return dict(item.split("=", 1) for item in answer[3:].split(" "))


def test_the_device_reads_what_the_host_sends(driver: Driver) -> None:
    messages = _host_messages()
    for name, data in messages.items():
        message = decode_message(data)
        fields = _fields(driver.ask("msg_dec", data.hex()))
        assert int(fields["type"]) == message.type and int(fields["rid"]) == message.request_id, name
        assert fields["device"] == _hex(message.device_id.encode())
        assert fields["hash"] == _hex(message.model_hash)
    reply = _fields(driver.ask("msg_dec", messages["hello_reply"].hex()))
    assert (reply["accepted"], reply["update_chunks"], reply["s"]) == ("1", "11", "-1")
    assert bytes.fromhex(reply["reason"]) == b"updating"
    assert _fields(driver.ask("msg_dec", messages["hello_reply_s"].hex()))["s"] == "300"
    chunk = WeightChunk.parse(decode_message(messages["chunk"]))
    fields = _fields(driver.ask("msg_dec", messages["chunk"].hex()))
    assert (int(fields["index"]), int(fields["crc32"]), bytes.fromhex(fields["data"])) == \
        (chunk.index, chunk.crc32, chunk.data)
    commit = WeightCommit.parse(decode_message(messages["commit"]))
    assert _fields(driver.ask("msg_dec", messages["commit"].hex()))["sha256"] == commit.sha256.hex()
    error = _fields(driver.ask("msg_dec", messages["error"].hex()))
    assert bytes.fromhex(error["code"]) == b"server-unreachable"


def _python_accepts(data: bytes) -> bool:
    try:
        decode_message(data)
    except ProtocolError:
        return False
    return True


def test_malformed_messages_are_refused_and_never_read_past(driver: Driver) -> None:
    messages = _host_messages()
    for name, data in messages.items():
        for end in range(len(data)):  # every truncation
            assert driver.ask("msg_dec", _hex(data[:end])).startswith("ERR"), (name, end)
        assert driver.ask("msg_dec", (data + b"\x00").hex()).startswith("ERR"), name  # trailing bytes
    schema_breaks = [
        encode_unchecked(HelloReply(True, "", 0).message(1, "m", HASH)._replace(version=2)),
        encode_unchecked(HelloReply(True, "", 0).message(1, "m", b"\x01\x02\x03")),
        encode_unchecked(HelloReply(True, "", 70000).message(1, "m", HASH)),
        encode_unchecked(HelloReply(True, "", 0, 20000).message(1, "m", HASH)),
        encode_unchecked(WeightCommit(1, b"\x00" * 31).message(1, "m", HASH)),
        encode_unchecked(WeightChunk(1, b"ab", -1).message(1, "m", HASH)),
        encode_unchecked(ErrorReply("c" * 33, "r").message(1, "m", HASH)),
        encode_unchecked(HelloReply(True, "", 0).message(1, "d" * 65, HASH)),
    ]
    for data in schema_breaks:
        assert not _python_accepts(data)
        assert driver.ask("msg_dec", data.hex()).startswith("ERR"), data.hex()
    rng = random.Random(7)
    disagreements = 0
    for _ in range(1500):  # random damage: no crash; what C accepts, Python accepts
        damaged = bytearray(rng.choice(list(messages.values())))
        for _ in range(rng.randrange(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        data = bytes(damaged)
        answer = driver.ask("msg_dec", data.hex())
        if answer.startswith("OK") and not _python_accepts(data):
            try:  # the C reader does not check UTF-8; everything else it checks
                msgpack.unpackb(data, raw=False)
            except UnicodeDecodeError:
                continue
            except Exception:
                pass
            disagreements += 1
    assert disagreements == 0


# ------------------------------------------------------------------ compact frames
def test_compact_request_bytes_and_reply_reading(driver: Driver) -> None:
    from transports.messages import InferRequest
    rng = random.Random(8)
    for session in (0, 5, 127, 128, 300, 16383):
        logits = np.asarray(rng.sample(range(-50, 50), 10), np.float32) / 7
        halves = logits.astype("<f2")
        payload = rng.randbytes(rng.randrange(1, 900))
        ours = bytes.fromhex(driver.ask("compact_req", session, 77, halves.tobytes().hex(), payload.hex()))
        body = bytes((10,)) + halves.tobytes() + payload
        assert ours == pack_frame(CompactFrame(MessageType.INFER_REQUEST, 2, session, 77, body))
        frame = unpack_frame(ours)
        request = parse_request_body(frame.flags, frame.body)
        assert request.payload == payload and request.local_logits is not None
        assert np.array_equal(request.local_logits, halves.astype(np.float32))
        assert InferRequest(payload, logits).payload == payload
    assert driver.ask("compact_req", 16384, 1, "0000", "00") == "ERR"

    def reply(flags: int, body: bytes, session: int = 300, sequence: int = 9) -> str:
        return driver.ask("compact_rep", pack_frame(CompactFrame(MessageType.INFER_REPLY, flags, session,
                                                                 sequence, body)).hex())

    probabilities = np.full(10, 0.05, np.float32)
    probabilities[4] = 0.55
    for timings in (False, True):
        served = InferReply(4, probabilities=probabilities, timings=ServerTimings(120, 3400, 3))
        merged = reply_body(served, timings)
        fields = _fields(reply(*merged))
        assert (fields["kind"], fields["label"], fields["merged"], fields["session"], fields["seq"]) == \
            ("2", "4", "1", "300", "9")
        remote = reply_body(InferReply(7, remote_logits=np.linspace(-3, 3, 10).astype(np.float32)), timings)
        fields = _fields(reply(*remote, session=3))
        assert (fields["label"], fields["merged"], fields["classes"]) == ("7", "0", "10")
        full = pack_frame(CompactFrame(MessageType.INFER_REPLY, merged[0], 300, 9, merged[1]))
        for end in range(len(full)):
            assert driver.ask("compact_rep", _hex(full[:end])) == "ERR"
        assert driver.ask("compact_rep", (full + b"\x00").hex()) == "ERR"
    for error, unknown in [(ErrorReply("unknown-session", "send HELLO again"), "1"),
                           (ErrorReply("server-unreachable", "gone"), "0"),
                           (ErrorReply("unknown-session-x", "no"), "0")]:
        packed = pack_frame(CompactFrame(MessageType.ERROR, 0, 3, 1, error_body(error)))
        assert _fields(driver.ask("compact_rep", packed.hex()))["unknown_session"] == unknown
    bad = [b"\xc1", b"\xc1\x20\x03", b"\xc2\x20\x03\x01\x00\x01", b"\xc1\x10\x03\x01\x00\x01",
           b"\xc1\x20\x03\x01\x05\x03\x00", b"\xc1\x20\x83\x83\x01\x00\x01", b"\xc1\x30\x03\x01\x10"]
    for data in bad:
        assert driver.ask("compact_rep", data.hex()) == "ERR", data.hex()


# ------------------------------------------------------------------ the ARQ against arq.py
def _split(data: str) -> list[bytes]:
    raw = b"" if data in ("", "-") else bytes.fromhex(data)
    return [part + b"\x00" for part in raw.split(b"\x00")[:-1]]


@pytest.mark.parametrize("loss", [0.0, 0.15])
def test_the_c_arq_and_arq_py_deliver_every_message_once_in_order(driver: Driver, loss: float) -> None:
    rng = random.Random(9 + int(loss * 100))
    driver.ask("arq_init", rng.randrange(2**32))
    host = ArqEndpoint(ArqConfig(retransmit_timeout=0.25, max_retries=30))
    to_device = [rng.randbytes(n) for n in (0, 1, 239, 240, 241, 700, 1400, 5, 1401, 3000, 9)]
    to_host = [rng.randbytes(n) for n in (1, 240, 241, 1400, 0, 60)]
    for message in to_device:
        host.send(message, 0.0)
    received: list[bytes] = []
    delivered: list[bytes] = []
    pending_out = list(to_host)
    c_frames: list[bytes] = []
    now_ms = 0
    while now_ms < 120_000 and (len(received) < 9 or pending_out or len(delivered) < len(to_host)):
        now_ms += 5
        now = now_ms / 1000
        host.poll(now)
        for frame in host.take_frames():
            if rng.random() >= loss:
                c_frames += _split(driver.ask("arq_feed", now_ms, frame.hex()))
        c_frames += _split(driver.ask("arq_poll", now_ms))
        state, got = driver.ask("arq_state").split(" ")
        if got != "none":
            received.append(b"" if got == "-" else bytes.fromhex(got))
        if pending_out and state in ("0", "2", "3"):
            if state == "3":
                pending_out.insert(0, to_host[len(to_host) - len(pending_out) - 1])  # failed: send it again
            first, rest = driver.ask("arq_send", now_ms, _hex(pending_out.pop(0))).split(" ", 1)
            assert first == "0"
            c_frames += _split(rest)
        for frame in c_frames:
            if rng.random() >= loss:
                host.receive(frame, now)
        c_frames = []
        delivered += host.take_delivered()
    # the messages over the device's 1400-byte buffer were dropped whole; the rest came once, in order
    assert received == [m for m in to_device if len(m) <= 1400]
    assert delivered == to_host


def test_the_c_arq_answers_a_stranger_with_resync_and_ignores_a_repeated_reset(driver: Driver) -> None:
    driver.ask("arq_init", 1)
    data = encode_frame(Frame(FrameKind.DATA, 5, b"hello"))
    (answer,) = _split(driver.ask("arq_feed", 0, data.hex()))
    assert decode_frame(answer, 240).frame == Frame(FrameKind.RESYNC, 5)
    reset = encode_frame(Frame(FrameKind.RESET, 10, b"\x01\x02\x03\x04"))
    (answer,) = _split(driver.ask("arq_feed", 1, reset.hex()))
    assert decode_frame(answer, 240).frame == Frame(FrameKind.RESET_ACK, 10, b"\x01\x02\x03\x04")
    frames = _split(driver.ask("arq_feed", 2, encode_frame(Frame(FrameKind.DATA, 10, b"one")).hex()))
    assert [decode_frame(f, 240).frame for f in frames] == [Frame(FrameKind.ACK, 11)]
    assert driver.ask("arq_state") == "0 " + b"one".hex()
    # a late copy of the same RESET must not rewind the receiver: frame 10 stays a duplicate
    _split(driver.ask("arq_feed", 3, reset.hex()))
    frames = _split(driver.ask("arq_feed", 4, encode_frame(Frame(FrameKind.DATA, 10, b"one")).hex()))
    assert [decode_frame(f, 240).frame for f in frames] == [Frame(FrameKind.ACK, 11)]
    assert driver.ask("arq_state") == "0 none"
    # a gap is NAKed once, then only ACKed
    frames = _split(driver.ask("arq_feed", 5, encode_frame(Frame(FrameKind.DATA, 13, b"x")).hex()))
    assert [decode_frame(f, 240).frame for f in frames] == \
        [Frame(FrameKind.NAK, 11), Frame(FrameKind.ACK, 11)]
    frames = _split(driver.ask("arq_feed", 6, encode_frame(Frame(FrameKind.DATA, 12, b"x")).hex()))
    assert [decode_frame(f, 240).frame for f in frames] == [Frame(FrameKind.ACK, 11)]
