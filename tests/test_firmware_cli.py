"""The firmware from the command line: agilenn export --verify, agilenn mcu, agilenn demo --mcu-firmware."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agilenn.cli import main
from agilenn.firmware.export import MANIFEST_FILE, WEIGHTS_FILE, read_manifest
from agilenn.firmware.toolchain import CORTEX_M4, HOST, missing_tools
from agilenn.pretrained import load_checkpoint

from .conftest import mnist_dir, reap
from .fakes import another_version, int8_image

pytestmark = [
    pytest.mark.skipif(not mnist_dir().is_dir(), reason="needs ../shared/data/mnist"),
    pytest.mark.skipif(bool(missing_tools(HOST)), reason="needs gcc and make (apt-get install gcc make)"),
]
NEEDS_QEMU = pytest.mark.skipif(
    bool(missing_tools(CORTEX_M4, run=True)),
    reason="needs arm-none-eabi-gcc and qemu-system-arm (apt-get install gcc-arm-none-eabi qemu-system-arm)")
KB = 1024


def _export(out: Path, *extra: str) -> list[str]:
    return ["export", "--model", "pretrained:mnist", "--out", str(out), "--data-dir", str(mnist_dir()),
            "--calibration", "500", *extra]


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fw")
    assert main(_export(out)) == 0
    return out


def test_export_writes_a_folder_that_names_its_model(firmware: Path) -> None:
    manifest = read_manifest(firmware)
    assert manifest.model_hash == load_checkpoint("pretrained:mnist").model_hash
    assert (firmware / WEIGHTS_FILE).read_bytes()[:4] == b"AGW1"
    assert manifest.image_bytes == (firmware / WEIGHTS_FILE).stat().st_size
    expected = ("agn_config.h", "agn_default_image.c", "agn_model.c", "agn_device.c", "Makefile",
                MANIFEST_FILE)
    for name in expected:
        assert name in manifest.files and (firmware / name).is_file()
    with pytest.raises(ValueError, match="not a folder agilenn export wrote"):
        read_manifest(firmware / "build-does-not-exist")


def test_verify_on_the_host_build_matches_the_reference_byte_for_byte(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_export(tmp_path / "fw", "--verify", "--emulator", "host", "--limit", "60", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == "host" and report["images"] == 60
    assert report["payload_identical"] is True and report["payloads_differing"] == 0
    assert report["logits_identical"] is True
    assert report["agreement"] >= 0.95
    assert abs(report["accuracy_float"] - report["accuracy_int8"]) <= 0.05
    assert report["instructions_per_inference"] is None  # a host process counts none


@NEEDS_QEMU
def test_verify_in_qemu_counts_instructions_and_fits_the_mcu(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_export(tmp_path / "fw", "--verify", "--limit", "8", "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["target"] == CORTEX_M4 and report["payload_identical"] is True
    assert 10_000 < report["instructions_per_inference"] <= report["instructions_max"]
    assert 0 < report["flash_bytes"] <= 64 * KB and 0 < report["ram_bytes"] <= 32 * KB


def test_mcu_answers_locally_when_nothing_is_on_its_link(
        firmware: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["mcu", "--firmware", str(firmware), "--emulator", "host", "--line", "none", "--classify", "2",
            "--data-dir", str(mnist_dir())]
    assert main(args) == 0
    ports, report = capsys.readouterr().out.split("\n", 1)
    assert json.loads(ports)["link"].startswith("/dev/")
    result = json.loads(report)
    assert result["classify"]["requests"] == 2 and result["classify"]["local"] == 2
    assert result["classify"]["lost"] == 0 and result["status"]["local"] == 2


@NEEDS_QEMU
def test_demo_runs_the_firmware_in_qemu_through_the_gateway(
        firmware: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["demo", "--count", "5", "--mcu-firmware", str(firmware), "--mcu-count", "12", "--json"]
    assert main(args) == 0
    mcu = json.loads(capsys.readouterr().out)["mcu"]
    assert mcu["device"] == "C firmware on cortex-m4"
    assert mcu["requests"] == mcu["offloaded"] == 12 and mcu["lost"] == 0
    assert mcu["gateway"]["forwarded"] == 12 and mcu["gateway_exit_code"] == 0
    assert mcu["accuracy"] >= 0.8
    assert 0 < mcu["device_latency_ms"]["p50"] <= mcu["latency_ms"]["p50"]


def test_agilenn_pair_pushes_a_new_version_to_the_booted_firmware(
        firmware: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    update = another_version(load_checkpoint("pretrained:mnist"), 0.25)
    (tmp_path / "update.agnn").write_bytes(update.to_bytes())
    (tmp_path / "update.agw").write_bytes(int8_image(update))
    mcu = subprocess.Popen(
        [sys.executable, "-m", "agilenn", "mcu", "--firmware", str(firmware), "--emulator", "host", "--line",
         "none", "--pair", "2", "--classify", "1", "--data-dir", str(mnist_dir())],
        stdout=subprocess.PIPE, text=True)
    try:
        assert mcu.stdout is not None
        link = json.loads(mcu.stdout.readline())["link"]
        registry = tmp_path / "paired.json"
        assert main(["pair", "--port", link, "--model", str(tmp_path / "update.agnn"), "--push", "--image",
                     str(tmp_path / "update.agw"), "--attempts", "2", "--registry", str(registry)]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["updated"] and record["model_hash"] == update.model_hash
        assert json.loads(mcu.stdout.readline())["pair"]["outcome"] == "updated"
        report = json.loads(mcu.stdout.read())
        assert report["status"]["model_hash"] == update.model_hash and report["status"]["pushes_applied"] == 1
        assert mcu.wait(timeout=30) == 0
        assert update.model_hash == json.loads(registry.read_text())["agilenn-mcu-0"]["model_hash"]
    finally:
        reap(mcu)
