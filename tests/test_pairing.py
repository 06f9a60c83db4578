"""MCU pairing over a real pty: hello, accept or reject, weight push, commit."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from agilenn.pretrained import load_pretrained
from agilenn.cli.pair import pair_until_done
from edge_node.pairing import McuSimulator, PairingHost, PairingRecord, device_part_bytes
from transports.arq import ArqConfig
from transports.errors import TransportError
from transports.messages import Hello, MessageType, decode_message, encode_message
from transports.reliable import ReliableLink
from transports.serial_pipe import SerialPipe, open_pty

from .conftest import reap
from .fakes import another_version, int8_image

CHECKPOINT = load_pretrained("mnist")
FAST = ArqConfig(retransmit_timeout=0.1)


@pytest.fixture
def cable() -> Iterator[tuple[ReliableLink, ReliableLink]]:
    device_end, path = open_pty()
    with ReliableLink(SerialPipe(path), FAST) as host, ReliableLink(device_end, FAST) as device:
        yield host, device


def _pair(host: PairingHost, device: McuSimulator) -> tuple[PairingRecord, tuple[bool, str]]:
    records: list[PairingRecord] = []
    thread = threading.Thread(target=lambda: records.append(host.pair_one(wait=10)))
    thread.start()
    outcome = device.pair(timeout=10)
    thread.join()
    return records[0], outcome


def test_a_device_with_the_same_model_is_accepted_without_an_update(
    cable: tuple[ReliableLink, ReliableLink]
) -> None:
    host_link, device_link = cable
    same = bytes.fromhex(CHECKPOINT.model_hash)
    record, (accepted, reason) = _pair(PairingHost(host_link, CHECKPOINT),
                                       McuSimulator(device_link, "mcu-01", "1.2.0", same))
    assert accepted and reason == "same model"
    assert record.accepted and not record.updated and record.device_id == "mcu-01"


def test_a_device_with_another_model_is_rejected_with_both_hashes(
    cable: tuple[ReliableLink, ReliableLink]
) -> None:
    host_link, device_link = cable
    record, (accepted, reason) = _pair(PairingHost(host_link, CHECKPOINT),
                                       McuSimulator(device_link, "mcu-02", "1.0.0", bytes(8)))
    assert not accepted and not record.accepted
    assert "0000000000000000" in reason and CHECKPOINT.model_hash in reason


def test_a_push_updates_the_device_part_and_the_device_adopts_the_hash(
    cable: tuple[ReliableLink, ReliableLink]
) -> None:
    host_link, device_link = cable
    device = McuSimulator(device_link, "mcu-03", "1.0.0", bytes(8))
    record, (accepted, reason) = _pair(PairingHost(host_link, CHECKPOINT, push_weights=True), device)
    assert accepted and reason == "applied" and record.updated
    assert device.weights == device_part_bytes(CHECKPOINT)  # byte-exact over the serial link
    assert device.model_hash.hex() == CHECKPOINT.model_hash == record.model_hash


def test_a_corrupted_image_is_refused_by_the_device(
    cable: tuple[ReliableLink, ReliableLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    import edge_node.pairing as pairing

    real = pairing.device_part_bytes
    monkeypatch.setattr(pairing, "hashlib", _WrongDigest())  # the commit's SHA-256 will not match
    host_link, device_link = cable
    device = McuSimulator(device_link, "mcu-04", "1.0.0", bytes(8))
    record, (accepted, reason) = _pair(PairingHost(host_link, CHECKPOINT, push_weights=True), device)
    assert not accepted and "SHA-256" in reason and not record.accepted
    assert device.model_hash == bytes(8) and device.weights == b""  # nothing applied
    assert real is pairing.device_part_bytes


class _WrongDigest:
    """hashlib whose sha256 differs between host and device: a fault a cable cannot make alone."""

    def __init__(self) -> None:
        self.calls = 0

    def sha256(self, data: bytes) -> _Digest:
        self.calls += 1
        return _Digest(bytes([self.calls]) * 32)


class _Digest:
    def __init__(self, value: bytes) -> None:
        self.value = value

    def digest(self) -> bytes:
        return self.value


def test_pair_cli_with_the_mcu_simulator_process(tmp_path: pytest.TempPathFactory,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import subprocess
    import sys

    from agilenn.cli import main

    simulator = subprocess.Popen([sys.executable, "-m", "agilenn", "mcu-sim", "--device-id", "mcu-cli",
                                  "--timeout", "20"], stdout=subprocess.PIPE, text=True)
    try:
        assert simulator.stdout is not None
        path = simulator.stdout.readline().strip()
        registry = tmp_path / "paired.json"  # type: ignore[operator]
        assert main(["pair", "--port", path, "--push", "--registry", str(registry), "--wait", "20"]) == 0
        outcome = json.loads(simulator.stdout.readline())
        assert simulator.wait(timeout=20) == 0
    finally:
        reap(simulator)
    assert outcome["accepted"] and outcome["model_hash"] == CHECKPOINT.model_hash
    assert outcome["weights_bytes"] == len(device_part_bytes(CHECKPOINT))
    recorded = json.loads(registry.read_text())["mcu-cli"]
    assert recorded["accepted"] and recorded["updated"] and recorded["firmware"] == "0.1.0"
    assert json.loads(capsys.readouterr().out)["device_id"] == "mcu-cli"


def test_a_push_keeps_the_previous_version_in_the_other_slot_for_a_rollback(
    cable: tuple[ReliableLink, ReliableLink]
) -> None:
    host_link, device_link = cable
    device = McuSimulator(device_link, "mcu-ab", "1.0.0", bytes(8))
    _pair(PairingHost(host_link, CHECKPOINT, push_weights=True), device)
    assert device.model_hash.hex() == CHECKPOINT.model_hash and device.weights
    device.rollback()
    assert device.model_hash == bytes(8) and device.weights == b""  # the version it had before
    device.rollback()
    assert device.model_hash.hex() == CHECKPOINT.model_hash


def test_a_link_that_drops_mid_push_leaves_the_device_on_its_version(
    cable: tuple[ReliableLink, ReliableLink], monkeypatch: pytest.MonkeyPatch
) -> None:
    host_link, device_link = cable
    sent: list[str] = []
    real_send = PairingHost._send

    def dropping(self: PairingHost, hello: object, body: object) -> None:
        if len(sent) == 3:  # the HELLO_REPLY and two chunks made it; then the cable is pulled
            raise TransportError("cable pulled")
        sent.append(type(body).__name__)
        real_send(self, hello, body)  # type: ignore[arg-type]

    monkeypatch.setattr(PairingHost, "_send", dropping)
    device = McuSimulator(device_link, "mcu-drop", "1.0.0", bytes(8))
    errors: list[BaseException] = []

    def host() -> None:
        try:
            PairingHost(host_link, CHECKPOINT, push_weights=True).pair_one(wait=10)
        except TransportError as exc:
            errors.append(exc)

    thread = threading.Thread(target=host)
    thread.start()
    accepted, reason = device.pair(timeout=2)
    thread.join()
    assert sent == ["HelloReply", "WeightChunk", "WeightChunk"] and errors
    assert not accepted and "push interrupted" in reason
    assert device.model_hash == bytes(8) and device.weights == b""  # still the old version


def test_c_firmware_is_pushed_the_int8_image_not_torch_bytes(
    cable: tuple[ReliableLink, ReliableLink]
) -> None:
    host_link, device_link = cable
    image = int8_image(CHECKPOINT)
    device = McuSimulator(device_link, "mcu-c99", "agilenn-c99/1 host", bytes(8))
    host = PairingHost(host_link, CHECKPOINT, push_weights=True, int8_image=image)
    record, (accepted, reason) = _pair(host, device)
    assert accepted and record.updated
    assert device.weights == image


def test_c_firmware_without_an_int8_image_is_refused_with_what_to_pass(
    cable: tuple[ReliableLink, ReliableLink]
) -> None:
    host_link, device_link = cable
    device = McuSimulator(device_link, "mcu-c99", "agilenn-c99/1 host", bytes(8))
    record, (accepted, reason) = _pair(PairingHost(host_link, CHECKPOINT, push_weights=True), device)
    assert not accepted and not record.accepted
    assert "--image" in reason and device.model_hash == bytes(8)


def test_an_int8_image_of_another_model_is_refused_before_pairing(
    cable: tuple[ReliableLink, ReliableLink]
) -> None:
    host_link, _ = cable
    other = another_version(CHECKPOINT, 0.01)
    with pytest.raises(ValueError, match=f"exported from model {other.model_hash}"):
        PairingHost(host_link, CHECKPOINT, push_weights=True, int8_image=int8_image(other))
    with pytest.raises(ValueError, match="AGW1"):
        PairingHost(host_link, CHECKPOINT, push_weights=True, int8_image=b"torch bytes")


def test_a_hello_where_the_commit_reply_belongs_is_answered_by_the_next_attempt_at_once(
    cable: tuple[ReliableLink, ReliableLink]
) -> None:
    host_link, device_link = cable
    host = PairingHost(host_link, CHECKPOINT, push_weights=True)
    records: list[PairingRecord] = []
    thread = threading.Thread(target=lambda: records.append(pair_until_done(host, 2, wait=10)))
    thread.start()
    try:
        device_link.send(encode_message(Hello("1.0.0").message(1, "mcu-05", bytes(8))), timeout=10)
        while decode_message(device_link.recv(10) or b"").type is not MessageType.WEIGHT_COMMIT:
            pass  # the whole push arrives; the device sends no COMMIT_REPLY but starts over:
        device = McuSimulator(device_link, "mcu-05", "1.0.0", bytes(8))
        accepted, reason = device.pair(timeout=5)  # a HELLO the host must not wait past
    finally:
        thread.join(30)
    assert accepted and reason == "applied"
    assert records and records[0].updated and records[0].model_hash == CHECKPOINT.model_hash
