"""The ``agilenn`` CLI, driven through ``main(argv)``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from agilenn.checkpoint import Checkpoint
from agilenn.cli import main
from agilenn.training import Trainer

from .conftest import mnist_dir

TINY = [
    "--dataset", "synthetic", "--max-train-samples", "256", "--batch-size", "32",
    "--feature-channels", "10", "--stem-channels", "8", "--remote-width", "16",
    "--reference-width", "16", "--ig-steps", "2", "--reference-epochs", "1", "--epochs", "2",
    "--quiet",
]
EVAL_KEYS = {
    "accuracy", "local_accuracy", "skewness", "payload_bytes_mean", "payload_bytes_p95",
    "entropy_bound_bytes", "raw_image_zstd_bytes_mean", "n_samples", "model_hash",
}


def _json_output(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny.agnn"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_usage_version_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "train" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("agilenn ")
    assert main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_train_writes_checkpoint_log_and_summary(trained: Path) -> None:
    checkpoint = Checkpoint.from_bytes(trained.read_bytes())
    assert checkpoint.config.feature_channels == 10
    assert len(checkpoint.metadata["history"]) == 3
    log = [json.loads(line) for line in trained.with_name("tiny.agnn.log.jsonl").read_text().splitlines()]
    assert [entry["stage"] for entry in log] == ["reference", "agilenn", "agilenn"]
    assert all(entry["loss"] > 0 for entry in log)


def test_interrupted_training_resumes_to_the_same_model(
    tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_run_epoch = Trainer._run_epoch

    def interrupt_second_epoch(self: Trainer) -> Any:
        if self.completed_epochs == 1:
            raise KeyboardInterrupt  # the user's Ctrl-C, mid-run
        return real_run_epoch(self)

    out = tmp_path / "resumed.agnn"
    monkeypatch.setattr(Trainer, "_run_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(["train", *TINY, "--out", str(out)])
    monkeypatch.setattr(Trainer, "_run_epoch", real_run_epoch)
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(out), "--resume"]) == 0
    assert _json_output(capsys)["epochs"] == 3
    resumed = Checkpoint.from_bytes(out.read_bytes())
    assert resumed.model_hash == Checkpoint.from_bytes(trained.read_bytes()).model_hash


def test_resume_without_state_and_with_other_settings_is_refused(
    tmp_path: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *TINY, "--out", str(tmp_path / "none.agnn"), "--resume"]) == 2
    assert "no training state" in capsys.readouterr().err
    assert main(["train", *TINY, "--lr", "0.5", "--out", str(trained), "--resume"]) == 2
    assert "training config differs" in capsys.readouterr().err


def test_eval_prints_every_documented_key(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "--model", str(trained), "--dataset", "synthetic", "--limit", "120", "--json"]
    assert main(args) == 0
    report = _json_output(capsys)
    assert EVAL_KEYS <= set(report)
    assert report["n_samples"] == 120
    assert report["model_hash"] == Checkpoint.from_bytes(trained.read_bytes()).model_hash
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["skewness"] <= 1.0
    assert report["payload_bytes_p95"] >= report["payload_bytes_mean"] * 0.5 > 0
    assert report["entropy_bound_bytes"] <= report["payload_bytes_mean"]


def test_eval_table_output(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--model", str(trained), "--dataset", "synthetic", "--limit", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("accuracy") for line in lines)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "/nonexistent/model.agnn"], "No such file"),
        (["--model", "pretrained:imagenet"], "no pretrained model"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent"], "no MNIST files"),
    ],
)
def test_eval_errors_are_clear(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGILENN_DATA", raising=False)
    assert main(["eval", *args]) == 2
    assert message in capsys.readouterr().err


def test_eval_refuses_a_corrupt_checkpoint(
    tmp_path: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt = tmp_path / "corrupt.agnn"
    data = bytearray(trained.read_bytes())
    corrupt.write_bytes(bytes(data[: len(data) // 2]))
    assert main(["eval", "--model", str(corrupt), "--dataset", "synthetic"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_eval_without_data_folder_names_both_ways_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AGILENN_DATA", raising=False)
    assert main(["eval", "--dataset", "mnist"]) == 2
    err = capsys.readouterr().err
    assert "--data-dir" in err and "AGILENN_DATA" in err


@pytest.mark.skipif(not mnist_dir().is_dir(), reason="needs ../shared/data/mnist")
def test_shipped_model_on_real_mnist(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["eval", "--dataset", "mnist", "--data-dir", str(mnist_dir()), "--limit", "500", "--json"]
    assert main(args) == 0
    report = _json_output(capsys)
    assert report["n_samples"] == 500
    assert report["accuracy"] > 0.97 and report["local_accuracy"] > 0.85
    assert report["payload_bytes_mean"] < report["raw_image_zstd_bytes_mean"]


def test_shipped_sample_runs_offline(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--dataset", "mnist-sample", "--json"]) == 0
    report = _json_output(capsys)
    assert report["dataset"] == "mnist-sample" and report["accuracy"] > 0.95


def test_codec_command_retunes_the_codec_and_keeps_the_weights(
    tmp_path: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "retuned.agnn"
    args = ["codec", "--model", str(trained), "--level", "3", "--dictionary-size", "1024",
            "--dataset", "synthetic", "--samples", "400", "--out", str(out)]
    assert main(args) == 0
    summary = _json_output(capsys)
    before, after = Checkpoint.from_bytes(trained.read_bytes()), Checkpoint.from_bytes(out.read_bytes())
    assert summary["model_hash"] == after.model_hash != before.model_hash
    assert after.codec.level == 3 and 0 < len(after.codec.dictionary) <= 1024
    assert all(torch.equal(before.state_dict[k], after.state_dict[k]) for k in before.state_dict)
    assert main(["eval", "--model", str(out), "--dataset", "synthetic", "--limit", "100", "--json"]) == 0
    report = _json_output(capsys)
    assert report["model_hash"] == after.model_hash and report["n_samples"] == 100


def test_codec_command_reports_an_untrainable_dictionary(
    tmp_path: Path, trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["codec", "--model", str(trained), "--dictionary-size", "1000000", "--dataset", "synthetic",
            "--samples", "5", "--out", str(tmp_path / "x.agnn")]
    assert main(args) == 2
    assert "cannot train" in capsys.readouterr().err
    assert not (tmp_path / "x.agnn").exists()
