"""The C firmware as a device: pairing with A/B slots, a compact session through the gateway, its console.

The host build runs as a process on two ptys (the link and the console), like the Cortex-M4 build
in QEMU, which one test boots too. Pushes are sent by a small host here that speaks HELLO_REPLY /
WEIGHT_CHUNK / WEIGHT_COMMIT itself with an AGW1 image (docs/FIRMWARE.md sections 2 and 4).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from agilenn.checkpoint import Checkpoint
from agilenn.cli.pair import pair_until_done
from agilenn.data import load_mnist_sample
from agilenn.firmware.image import pack_image
from agilenn.firmware.int8 import quantize_model
from agilenn.firmware.runner import Firmware, PairResult, boot
from agilenn.firmware.sources import model_sources
from agilenn.firmware.toolchain import CORTEX_M4, HOST, build, memory_usage, missing_tools
from agilenn.pretrained import load_pretrained
from edge_node.gateway import SerialGateway
from edge_node.pairing import PairingHost, PairingRecord
from server_node.remote import RemoteServer
from transports.compact import SessionTable
from transports.messages import (
    CommitReply,
    Hello,
    HelloReply,
    Message,
    WeightChunk,
    WeightCommit,
    decode_message,
    encode_message,
)
from transports.reliable import ReliableLink, open_serial_link

from .fakes import another_version, int8_image

C_DIR = Path(__file__).resolve().parents[1] / "agilenn" / "firmware" / "c"
CHECKPOINT = load_pretrained("mnist")
SAMPLE = load_mnist_sample().head(200)
CHUNK_BYTES = 1024

pytestmark = pytest.mark.skipif(bool(missing_tools(HOST)),
                                reason="needs gcc and make (apt-get install gcc make)")


@dataclass
class Images:
    default: bytes  # the AGW1 image slot A boots with
    model_hash: bytes
    update: bytes  # the same weights under another model hash
    update_hash: bytes


def assemble(out: Path, device_id: str = "agilenn-mcu-0") -> Images:
    """A firmware folder: the C sources plus the generated config and default image."""
    for source in C_DIR.iterdir():
        if source.is_file():
            shutil.copyfile(source, out / source.name)
    model = quantize_model(CHECKPOINT, SAMPLE.images[:64])
    for name, text in model_sources(model, device_id).items():
        (out / name).write_text(text)
    image = pack_image(model)
    update_hash = bytes.fromhex("0123456789abcdef")
    return Images(image, image[8:16], image[:8] + update_hash + image[16:], update_hash)


@pytest.fixture(scope="module")
def firmware_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Images]:
    out = tmp_path_factory.mktemp("fw")
    images = assemble(out)
    build(out, HOST)
    return out, images


@pytest.fixture
def device(firmware_dir: tuple[Path, Images]) -> Iterator[Firmware]:
    with boot(firmware_dir[0], HOST) as firmware:
        yield firmware


@pytest.fixture
def link(device: Firmware) -> Iterator[ReliableLink]:
    with open_serial_link(device.link_port, 115200) as serial_link:
        yield serial_link


# ------------------------------------------------------------------ a pairing host that pushes AGW1 images
@dataclass
class Push:
    """What the host answers each HELLO with, in order; ``log`` records what happened."""

    image: bytes = b""
    model_hash: bytes = b""
    accepted: bool = True
    sha256: bytes | None = None  # None: the right one
    cut_after: int | None = None  # stop after this many chunks (no commit)


@dataclass
class PairingPeer:
    link: ReliableLink
    plan: list[Push]
    log: list[str] = field(default_factory=list)
    hellos: list[Message] = field(default_factory=list)
    error: BaseException | None = None

    def run(self) -> None:
        try:
            for push in self.plan:
                self._answer(push)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _send(self, hello: Message, body: HelloReply | WeightChunk | WeightCommit, model_hash: bytes) -> None:
        message = body.message(hello.request_id, hello.device_id, model_hash)
        self.link.send(encode_message(message), timeout=10)

    def _answer(self, push: Push) -> None:
        data = self.link.recv(15)
        assert data is not None, "no HELLO from the device"
        hello = decode_message(data)
        Hello.parse(hello)
        self.hellos.append(hello)
        chunks = [push.image[i:i + CHUNK_BYTES] for i in range(0, len(push.image), CHUNK_BYTES)]
        self._send(hello, HelloReply(push.accepted, "from the test host", len(chunks)), push.model_hash)
        for index, chunk in enumerate(chunks):
            if push.cut_after is not None and index == push.cut_after:
                self.log.append("cut")
                return
            self._send(hello, WeightChunk(index, chunk, zlib.crc32(chunk)), push.model_hash)
        if not chunks:
            self.log.append("no push")
            return
        self._send(hello, WeightCommit(len(chunks), push.sha256 or hashlib.sha256(push.image).digest()),
                   push.model_hash)
        data = self.link.recv(15)
        assert data is not None, "no COMMIT_REPLY"
        reply = CommitReply.parse(decode_message(data))
        self.log.append(f"commit {reply.accepted} {reply.reason}")


def pair_with(device: Firmware, link: ReliableLink, plan: list[Push], attempts: int, timeout_ms: int = 3000
              ) -> tuple[PairingPeer, PairResult]:
    peer = PairingPeer(link, plan)
    thread = threading.Thread(target=peer.run, name="test-pairing-peer")
    thread.start()
    try:
        result = device.console.pair(attempts, timeout_ms)
    finally:
        thread.join(30)
    assert not thread.is_alive()
    if peer.error is not None:
        raise peer.error
    return peer, result


def image_of(index: int) -> bytes:
    return SAMPLE.images[index].tobytes()


# ------------------------------------------------------------------ pairing
def test_a_push_lands_in_the_other_slot_and_the_device_runs_it(
        device: Firmware, link: ReliableLink, firmware_dir: tuple[Path, Images]) -> None:
    images = firmware_dir[1]
    before = device.console.verify(image_of(0))
    status = device.console.status()
    assert (status.active_slot, status.model_hash) == (0, images.model_hash)
    peer, result = pair_with(device, link, [Push(images.update, images.update_hash)], attempts=1)
    assert peer.log == ["commit True applied"]
    assert peer.hellos[0].request_id == 1 and peer.hellos[0].model_hash == images.model_hash
    assert Hello.parse(peer.hellos[0]).firmware == "agilenn-c99/1 host"
    assert (result.outcome, result.attempts, result.active_slot, result.model_hash) == \
        ("updated", 1, 1, images.update_hash)
    after = device.console.verify(image_of(0))  # the same weights, read from slot B now
    assert np.array_equal(after.accumulators, before.accumulators) and after.payload == before.payload
    status = device.console.status()
    assert (status.active_slot, status.model_hash, status.pushes_applied, status.pushes_failed) == \
        (1, images.update_hash, 1, 0)
    # the next pairing: the host has the same model (no push), then a host that refuses
    peer, result = pair_with(device, link, [Push(model_hash=images.update_hash)], attempts=3)
    assert (result.outcome, result.attempts) == ("same-model", 1)
    assert peer.hellos[0].request_id == 2 and peer.hellos[0].model_hash == images.update_hash
    peer, result = pair_with(device, link, [Push(model_hash=images.model_hash, accepted=False)], attempts=3)
    assert (result.outcome, result.attempts, result.active_slot) == ("refused", 1, 1)
    assert "from the test host" in result.reason


def test_a_push_whose_sha256_is_wrong_is_refused_and_the_old_model_stays(
        device: Firmware, link: ReliableLink, firmware_dir: tuple[Path, Images]) -> None:
    images = firmware_dir[1]
    bad = Push(images.update, images.update_hash, sha256=b"\x00" * 32)
    peer, result = pair_with(device, link, [bad], attempts=1)
    assert peer.log == ["commit False SHA-256 of the image does not match the commit"]
    assert (result.outcome, result.active_slot, result.model_hash) == \
        ("refused", 0, images.model_hash)
    # an image whose own model hash is not the one pushed is refused as well
    peer, result = pair_with(device, link, [Push(images.update, bytes(8))], attempts=1)
    assert peer.log == ["commit False the image's model hash is not the one pushed"]
    status = device.console.status()
    assert (status.active_slot, status.model_hash, status.pushes_applied, status.pushes_failed) == \
        (0, images.model_hash, 0, 2)
    device.console.verify(image_of(1))  # still runs


def test_a_push_cut_midway_leaves_the_device_running_and_the_next_attempt_updates_it(
        device: Firmware, link: ReliableLink, firmware_dir: tuple[Path, Images]) -> None:
    images = firmware_dir[1]
    reference = device.console.verify(image_of(2))
    cut = Push(images.update, images.update_hash, cut_after=5)
    peer, result = pair_with(device, link, [cut], attempts=1, timeout_ms=400)
    assert peer.log == ["cut"]
    assert (result.outcome, result.active_slot, result.model_hash) == \
        ("failed", 0, images.model_hash)
    assert "WEIGHT_CHUNK" in result.reason
    again = device.console.verify(image_of(2))  # 0 bricked: the same model answers the same
    assert again.payload == reference.payload and np.array_equal(again.accumulators, reference.accumulators)
    # cut again, then the device backs off, says HELLO again, and the whole push goes through
    peer, result = pair_with(device, link, [cut, Push(images.update, images.update_hash)], attempts=3,
                             timeout_ms=400)
    assert peer.log == ["cut", "commit True applied"]
    assert [hello.request_id for hello in peer.hellos] == [2, 3]  # request ids count up
    assert (result.outcome, result.attempts, result.active_slot, result.model_hash) == \
        ("updated", 2, 1, images.update_hash)
    assert device.console.verify(image_of(2)).payload == reference.payload
    assert device.console.status().pushes_failed == 2


def _host_pushes(port: str, checkpoint: Checkpoint, image: bytes, device: Firmware) -> PairResult:
    """``agilenn pair``'s host (a fresh link on ``port``) against the device's PAIR, one attempt each."""
    records: list[PairingRecord] = []
    with open_serial_link(port, 115200) as host_link:
        host = PairingHost(host_link, checkpoint, push_weights=True, int8_image=image)
        thread = threading.Thread(target=lambda: records.append(pair_until_done(host, 1, 15.0)))
        thread.start()
        try:
            result = device.console.pair(1, 3000)
        finally:
            thread.join(30)
    assert records and records[0].accepted and records[0].updated
    return result


def test_the_real_pairing_host_pushes_each_version_and_a_new_host_is_answered_at_once(
        device: Firmware, firmware_dir: tuple[Path, Images]) -> None:
    images = firmware_dir[1]
    before = device.console.verify(image_of(3))
    nudged = another_version(CHECKPOINT, 0.5)
    nudged_image = int8_image(nudged)
    result = _host_pushes(device.link_port, nudged, nudged_image, device)
    assert (result.outcome, result.attempts, result.model_hash.hex()) == ("updated", 1, nudged.model_hash)
    moved = device.console.verify(image_of(3))
    assert not np.array_equal(moved.accumulators, before.accumulators)  # the new local bias is in use
    # Another host process on the port: it holds no stream from the device and answers the device's
    # HELLO with RESYNC; the device sends it again in a new stream rather than wait out its timeout.
    result = _host_pushes(device.link_port, CHECKPOINT, images.default, device)
    assert (result.outcome, result.attempts, result.model_hash) == ("updated", 1, images.model_hash)
    back = device.console.verify(image_of(3))
    assert np.array_equal(back.accumulators, before.accumulators) and back.payload == before.payload


def test_a_power_cut_mid_push_boots_the_old_version_and_a_committed_push_survives_one(
        firmware_dir: tuple[Path, Images], tmp_path: Path) -> None:
    fw, images = firmware_dir
    flash = tmp_path / "flash.bin"
    with boot(fw, HOST, flash_file=flash) as first, open_serial_link(first.link_port, 115200) as link:
        reference = first.console.verify(image_of(4))
        pristine = flash.read_bytes()
        peer = PairingPeer(link, [Push(images.update, images.update_hash, cut_after=6)])
        first.console.raw(struct.pack("<BBH", 0x03, 1, 5000), expect=0)  # PAIR, not waiting for its answer
        peer.run()  # returns once six chunks are acknowledged: in the device's flash
        assert peer.error is None and peer.log == ["cut"]
        first.process.kill()  # the power goes, mid-push
        first.process.wait()
    assert flash.read_bytes() != pristine  # the cut push had reached slot B
    with boot(fw, HOST, flash_file=flash) as second, open_serial_link(second.link_port, 115200) as link:
        status = second.console.status()
        assert (status.active_slot, status.model_hash) == (0, images.model_hash)  # the old version
        assert second.console.verify(image_of(4)).payload == reference.payload
        _, result = pair_with(second, link, [Push(images.update, images.update_hash)], attempts=1)
        assert result.outcome == "updated"
        second.process.kill()  # no orderly shutdown: only what reached the flash counts
        second.process.wait()
    with boot(fw, HOST, flash_file=flash) as third:
        status = third.console.status()
        assert (status.active_slot, status.model_hash) == (1, images.update_hash)
        again = third.console.verify(image_of(4))  # the same weights under the pushed hash
        assert again.payload == reference.payload
        assert np.array_equal(again.accumulators, reference.accumulators)


def test_a_64_byte_device_id_still_gets_its_hello_and_its_longest_refusal_out(tmp_path: Path) -> None:
    long_id = "m" * 64  # the protocol's largest
    images = assemble(tmp_path, long_id)
    build(tmp_path, HOST)
    wrong_dims = bytearray(images.update)
    wrong_dims[23] ^= 1  # the stem's channel count: a valid SHA-256, an image this firmware cannot run
    with boot(tmp_path, HOST) as device, open_serial_link(device.link_port, 115200) as link:
        peer, result = pair_with(device, link, [Push(bytes(wrong_dims), images.update_hash)], attempts=1)
    assert peer.hellos[0].device_id == long_id
    reason = "not a valid image: dims differ from those this firmware was compiled for"
    assert peer.log == [f"commit False {reason}"]
    assert (result.outcome, result.model_hash) == ("refused", images.model_hash)


def test_pairing_with_nobody_on_the_link_fails_every_attempt(device: Firmware,
                                                             firmware_dir: tuple[Path, Images]) -> None:
    started = time.monotonic()
    result = device.console.pair(2, 300)
    assert (result.outcome, result.attempts, result.active_slot) == ("failed", 2, 0)
    assert result.model_hash == firmware_dir[1].model_hash
    assert time.monotonic() - started < 5


# ------------------------------------------------------------------ offloading
@contextlib.contextmanager
def serving_gateway(link: ReliableLink) -> Iterator[SerialGateway]:
    """A gateway relaying ``link`` to an in-memory server, serving on a thread for the block."""
    with RemoteServer.in_memory() as server:
        serial_gateway = SerialGateway(link, client=server.connect(), timeout_s=2.0)
        stop = threading.Event()
        thread = threading.Thread(target=serial_gateway.serve, args=(stop,), name="test-gateway")
        thread.start()
        try:
            yield serial_gateway
        finally:
            stop.set()
            thread.join()
            serial_gateway.close()


@pytest.fixture
def gateway(link: ReliableLink) -> Iterator[SerialGateway]:
    with serving_gateway(link) as serial_gateway:
        yield serial_gateway


def test_classify_is_offloaded_through_the_gateway_on_a_compact_session(device: Firmware,
                                                                       gateway: SerialGateway) -> None:
    results = [device.console.classify(image_of(i)) for i in range(6)]
    assert all(r.offloaded for r in results), results
    labels = SAMPLE.labels[:6]
    assert sum(r.label == int(truth) for r, truth in zip(results, labels, strict=True)) >= 5
    assert gateway.stats["session"] == 1 and gateway.stats["forwarded"] == 6
    # the gateway restarted: the device is told unknown-session, answers locally, then opens a new one
    gateway.sessions.sessions = SessionTable()
    stale = device.console.classify(image_of(0))
    assert not stale.offloaded and stale.label == stale.local_class
    fresh = device.console.classify(image_of(0))
    assert fresh.offloaded and gateway.stats["session"] == 2
    status = device.console.status()
    assert (status.offloaded, status.local) == (7, 1)


def test_classify_with_no_gateway_answers_with_the_local_class(device: Firmware) -> None:
    started = time.monotonic()
    result = device.console.classify(image_of(3))
    elapsed = time.monotonic() - started
    assert not result.offloaded and result.label == result.local_class
    assert 1.5 < elapsed < 6, elapsed  # the 2 s offload deadline
    verify = device.console.verify(image_of(3))
    assert result.local_class == int(np.argmax(verify.local_logits))
    assert device.console.status().local == 1


# ------------------------------------------------------------------ robustness
def test_bad_console_requests_get_a_reason_and_garbage_on_the_link_is_survived(
        device: Firmware, link: ReliableLink) -> None:
    assert device.console.raw(b"\x7f", 17) == b"\xee\x0funknown command"
    answer = device.console.raw(b"\x01\x00\x00", 2, timeout=5)  # a VERIFY cut short: timed out
    assert answer[0] == 0xEE
    rng = np.random.default_rng(0)
    import serial

    with serial.Serial(device.link_port, 115200, timeout=0) as raw_port:  # a second writer on the line
        for _ in range(20):
            raw_port.write(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
        raw_port.write(b"\x00" + b"\xff" * 2000 + b"\x00")  # an overlong frame
        time.sleep(0.2)
    status = device.console.status()
    assert status.active_slot == 0
    device.console.verify(image_of(0))
    link.send(b"\x93\x01\x02", timeout=5)  # a message the device cannot read: dropped, counted
    link.send(encode_message(HelloReply(True, "nobody asked", 0).message(77, "x")), timeout=5)
    assert device.console.status().active_slot == 0
    assert device.console.raw(b"\x42", 17) == b"\xee\x0funknown command"


# ------------------------------------------------------------------ the Cortex-M4 build in QEMU
def test_the_cortex_m4_build_boots_in_qemu_and_verifies_like_the_host(
        firmware_dir: tuple[Path, Images], device: Firmware) -> None:
    missing = missing_tools(CORTEX_M4, run=True)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install gcc-arm-none-eabi qemu-system-arm)")
    fw, images = firmware_dir
    elf = build(fw, CORTEX_M4)
    flash, ram = memory_usage(fw / "build" / "agn_m4.map")
    assert flash <= 64 * 1024 and ram <= 32 * 1024 and flash >= 2 * len(images.default)
    host = device.console.verify(image_of(4))
    with boot(fw, CORTEX_M4, count_instructions=True) as m4:
        assert m4.counts_instructions and elf.exists()
        status = m4.console.status(timeout=20)
        assert (status.active_slot, status.model_hash) == (0, images.model_hash)
        answer = m4.console.verify(image_of(4), timeout=60)
        assert np.array_equal(answer.accumulators, host.accumulators)
        assert np.array_equal(answer.logits_f16, host.logits_f16) and answer.payload == host.payload
        assert answer.instructions > 10_000
        assert m4.console.verify(image_of(4)).instructions == answer.instructions  # deterministic
        # the count is exact: the calibration loop takes 2 n + 2 instructions, plus its call
        counts = [m4.console.calibrate(n) for n in (0, 1, 1000, 2000, 100_000)]
        assert [c - counts[0] for c in counts] == [0, 2, 2000, 4000, 200_000]



def test_the_cortex_m4_build_takes_a_push_and_offloads_through_the_gateway_in_qemu(
        firmware_dir: tuple[Path, Images]) -> None:
    missing = missing_tools(CORTEX_M4, run=True)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install gcc-arm-none-eabi qemu-system-arm)")
    fw, images = firmware_dir
    build(fw, CORTEX_M4)
    with boot(fw, CORTEX_M4) as m4, open_serial_link(m4.link_port, 115200) as serial_link:
        assert not m4.counts_instructions and "real time" in m4.mode
        peer, result = pair_with(m4, serial_link, [Push(images.update, images.update_hash)], attempts=2)
        assert peer.log == ["commit True applied"]
        assert (result.outcome, result.active_slot, result.model_hash) == ("updated", 1, images.update_hash)
        assert Hello.parse(peer.hellos[0]).firmware == "agilenn-c99/1 cortex-m4"
        # back to the served model's hash (the server serves by it), then offload through the gateway
        peer, result = pair_with(m4, serial_link, [Push(images.default, images.model_hash)], attempts=2)
        assert (result.outcome, result.active_slot, result.model_hash) == ("updated", 0, images.model_hash)
        with serving_gateway(serial_link) as serial_gateway:
            results = [m4.console.classify(image_of(i), timeout=20) for i in range(3)]
        assert all(r.offloaded for r in results) and serial_gateway.stats["forwarded"] == 3
