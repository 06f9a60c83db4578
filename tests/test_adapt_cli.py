"""``agilenn adapt`` end to end on a user's own drifted samples, and the adapted model being served."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from agilenn.cli import main
from agilenn.cli.adapt import memory_size
from agilenn.data import load_mnist_sample
from agilenn.data.mnist_c import corrupt
from edge_node.client import OFFLOADED, EdgeClient
from server_node.remote import RemoteServer

KEYS = {"method", "corruption", "samples", "accuracy_before", "accuracy_after", "local_accuracy_before",
        "local_accuracy_after", "clean_accuracy_before", "clean_accuracy_after", "skewness_before",
        "skewness_after", "peak_memory_bytes_estimated", "peak_memory_bytes_measured",
        "full_update_peak_memory_bytes", "train_seconds", "bytes_exchanged", "model_hash"}


def _npz(path: Path, start: int, stop: int, seed: int) -> str:
    sample = load_mnist_sample()
    images = corrupt(sample.images[start:stop], "rotate", seed)
    np.savez(path, images=images[:, 0], labels=sample.labels[start:stop])  # (N, H, W), as users have them
    return f"npz:{path}"


def test_adapt_prints_every_figure_and_writes_a_model_the_server_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, held_out = _npz(tmp_path / "mine.npz", 0, 200, 0), _npz(tmp_path / "held.npz", 600, 800, 1)
    out = tmp_path / "adapted.agnn"
    code = main(["adapt", "--dataset", train, "--eval-dataset", held_out, "--clean-dataset", "mnist-sample",
                 "--samples", "200", "--method", "last", "--epochs", "6", "--eval-limit", "200",
                 "--ig-steps", "2", "--json", "--out", str(out)])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert KEYS <= set(report)
    assert report["accuracy_after"] > report["accuracy_before"]  # rotated digits: it adapted
    assert report["peak_memory_bytes_estimated"] == report["peak_memory_bytes_measured"]
    assert report["peak_memory_bytes_estimated"] < report["full_update_peak_memory_bytes"]
    assert report["model_hash"] != report["model_hash_before"]
    with RemoteServer.in_memory(str(out)) as server, \
            EdgeClient(str(out), transport=server.connect()) as client:
        prediction = client.infer(load_mnist_sample().images[0])
    assert prediction.source == OFFLOADED  # the server serves the new model, hash and all


def test_adapt_learns_with_a_real_server_over_zeromq_with_its_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train, held_out = _npz(tmp_path / "mine.npz", 0, 96, 0), _npz(tmp_path / "held.npz", 600, 700, 1)
    common = ["adapt", "--dataset", train, "--eval-dataset", held_out, "--clean-dataset", "mnist-sample",
              "--samples", "96", "--method", "bias", "--epochs", "1", "--eval-limit", "100",
              "--ig-steps", "2", "--json"]
    with RemoteServer() as server:
        assert main([*common, "--server", server.endpoint, "--labels", "server"]) == 0
        wired = json.loads(capsys.readouterr().out)
    assert wired["bytes_exchanged_source"] == "counted on the wire" and wired["server"] == server.endpoint
    # Three steps of up to 32 samples, ~2 KB of features up and of gradients down each, and the
    # server's adapted half (~0.5 MB) fetched back.
    assert wired["bytes_exchanged"] > 2 * 1960 * wired["samples"] + 400_000
    assert 0 < wired["samples"] <= 96 and wired["labels"] == "server"  # the confident ones only
    assert main([*common, "--remote", "fixed"]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone["bytes_exchanged"] == 0 and alone["remote"] == "fixed"
    assert set(alone["selection"]) <= {"local_predictor.linear.bias", "extractor.pointwise.1.bias"}
    assert alone["model_hash"] != alone["model_hash_before"]


def test_adapt_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "broken.npz").write_bytes(b"not an npz")
    mine = _npz(tmp_path / "mine.npz", 0, 20, 0)
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, images=np.zeros((4, 3, 28, 28), np.uint8), labels=np.zeros(4, np.int64))
    cases = [
        (["--dataset", f"npz:{tmp_path / 'broken.npz'}", "--eval-dataset", mine], "broken.npz"),
        (["--dataset", mine], "--eval-dataset"),  # else it would evaluate on what it trained on
        (["--dataset", mine, "--eval-dataset", mine, "--samples", "0"], "at least 1"),
        (["--dataset", f"npz:{rgb}", "--eval-dataset", mine], "the model takes (1, 28, 28)"),
        (["--dataset", mine, "--eval-dataset", mine, "--out", str(tmp_path / "no" / "x.agnn")], "no folder"),
        (["--dataset", mine, "--eval-dataset", mine, "--link", "serial-115200"], "name the server"),
    ]
    for arguments, message in cases:
        assert main(["adapt", "--clean-dataset", "mnist-sample", *arguments]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (arguments, err)
    with pytest.raises(SystemExit):
        main(["adapt", "--dataset", "mnist-c:rotate", "--method", "everything"])


@pytest.mark.parametrize("text, size", [("64KB", 65536), ("1.5MB", 1572864), ("4096", 4096), ("2 kib", 2048)])
def test_memory_sizes_parse(text: str, size: int) -> None:
    assert memory_size(text) == size


def test_a_nonsense_memory_size_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="64KB"):
        memory_size("lots")
