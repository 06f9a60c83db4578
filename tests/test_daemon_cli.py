"""``agilenn edge`` and ``agilenn demo`` through ``main(argv)``."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from agilenn.cli import main
from agilenn.data import load_mnist_sample
from server_node.remote import RemoteServer

SAMPLE = load_mnist_sample().head(6)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_edge_without_a_server_answers_locally(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["edge", "--limit", "4"]) == 0
    lines = _lines(capsys)
    assert [line["index"] for line in lines] == [0, 1, 2, 3]
    assert all(line["source"] == "local-fallback" for line in lines)
    assert [line["label"] for line in lines] == [int(label) for label in SAMPLE.labels[:4]]


def test_edge_offloads_to_a_server_from_a_folder_of_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for index, image in enumerate(SAMPLE.images):
        np.save(tmp_path / f"{index:03d}.npy", image)
    with RemoteServer() as server:
        assert main(["edge", "--server", server.endpoint, "--source", str(tmp_path)]) == 0
    lines = _lines(capsys)
    assert [line["predicted"] for line in lines] == [int(label) for label in SAMPLE.labels]
    assert all(line["source"] == "offloaded" and line["bytes_up"] > 0 for line in lines)


def test_edge_reads_an_npy_batch_from_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    buffer = io.BytesIO()
    np.save(buffer, SAMPLE.images[:3])

    class _Stdin:
        def __init__(self, data: bytes) -> None:
            self.buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", _Stdin(buffer.getvalue()))
    assert main(["edge", "--source", "-"]) == 0
    assert [line["predicted"] for line in _lines(capsys)] == [int(label) for label in SAMPLE.labels[:3]]


def test_edge_refuses_an_unknown_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["edge", "--source", "/nonexistent/images"]) == 2
    assert "neither a known dataset nor a folder" in capsys.readouterr().err


def test_demo_runs_real_daemons_over_the_emulated_serial_link(capsys: pytest.CaptureFixture[str]) -> None:
    # A deadline far above the ~100 ms a request takes: CI runs this beside other tests on two cores.
    assert main(["demo", "--count", "20", "--mcu-count", "5", "--deadline-ms", "5000", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"] == 20 and summary["link"] == "serial-115200"
    assert summary["accuracy"] >= 0.9 and summary["fallbacks"] == 0, summary
    assert summary["server_exit_code"] == 0  # SIGTERM stopped it gracefully
    assert summary["latency_ms"]["p50"] > 3  # ~50 bytes on a compact session at 11,520 B/s is ~4 ms
    assert 10 < summary["bytes_up_mean"] < 200
    mcu = summary["mcu"]  # the simulated MCU offloaded through the gateway daemon on a pty
    assert mcu["requests"] == 5 and mcu["offloaded"] == 5 and mcu["accuracy"] >= 0.8
    assert mcu["gateway"] == {"forwarded": 5, "session": 1} and mcu["gateway_exit_code"] == 0


def test_edge_reads_pictures_converts_them_and_reports_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    # Lossless PNG at the model's size, and an RGB picture at twice the size that must be
    # converted to one channel and resized.
    for index, image in enumerate(SAMPLE.images[:3]):
        Image.fromarray(image[0]).save(tmp_path / f"{index:03d}.png")
    big = np.repeat(np.kron(SAMPLE.images[3, 0], np.ones((2, 2), np.uint8))[..., None], 3, axis=2)
    Image.fromarray(big).save(tmp_path / "003.bmp")
    (tmp_path / "004.png").write_bytes(b"not a png at all")
    np.save(tmp_path / "005.npy", np.zeros((3, 5), np.uint8))
    (tmp_path / "006.pgm").write_bytes(b"P5\n28 28\n999999999999\n")  # Pillow: ValueError, not OSError
    Image.fromarray(SAMPLE.images[5, 0]).save(tmp_path / "007.png")
    (tmp_path / "notes.txt").write_text("skipped: not an image")
    with RemoteServer() as server:
        assert main(["edge", "--server", server.endpoint, "--source", str(tmp_path)]) == 0
    lines = _lines(capsys)
    assert [line["index"] for line in lines] == [0, 1, 2, 3, 4, 5, 6, 7]  # bad files do not stop the run
    assert [line["predicted"] for line in lines[:4]] == [int(label) for label in SAMPLE.labels[:4]]
    assert all(line["source"] == "offloaded" for line in lines[:4])
    assert "004.png: not a readable image" in lines[4]["error"]
    assert "005.npy: shape (3, 5)" in lines[5]["error"]
    assert "006.pgm: not a readable image" in lines[6]["error"]
    assert lines[7]["predicted"] == int(SAMPLE.labels[5]) and lines[7]["source"] == "offloaded"
