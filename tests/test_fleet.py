"""Fleet learning on Flower: a non-IID fleet, rounds over gRPC on loopback, bad updates refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agilenn.adapt.adapter import AdaptConfig
from agilenn.cli import main
from agilenn.data import load_mnist_sample
from agilenn.fleet.aggregate import update_bytes
from agilenn.fleet.devices import fleet_selection, local_update, make_fleet
from agilenn.pretrained import load_checkpoint

SAMPLE = load_mnist_sample()
MODEL = load_checkpoint("pretrained:mnist").build_model()


def test_each_device_has_its_own_drift_and_class_mix_and_nothing_is_shared() -> None:
    fleet = make_fleet(SAMPLE.head(500), SAMPLE, devices=4, train_per_device=40, test_per_device=40, seed=1)
    mixes = [np.bincount(device.train.labels, minlength=10) / 40 for device in fleet]
    assert len({device.corruptions for device in fleet}) > 1
    assert max(np.abs(mix - np.full(10, 0.1)).sum() for mix in mixes) > 0.5  # skewed, not uniform
    again = make_fleet(SAMPLE.head(500), SAMPLE, devices=4, train_per_device=40, test_per_device=40, seed=1)
    assert all(np.array_equal(a.train.images, b.train.images) for a, b in zip(fleet, again, strict=True))


def test_a_sparse_update_sends_at_most_a_quarter_of_a_full_ones_bytes() -> None:
    device = make_fleet(SAMPLE.head(500), SAMPLE, devices=1, train_per_device=32, test_per_device=8)[0]
    config = AdaptConfig(epochs=1)
    full = local_update(MODEL, device, fleet_selection(MODEL, "full"), config)
    sparse = local_update(MODEL, device, fleet_selection(MODEL, "sparse"), config)
    assert update_bytes(sparse) <= update_bytes(full) / 4
    assert all(np.isfinite(delta).all() for delta in full.deltas.values())


@pytest.mark.leaves_threads("ThreadPoolExecutor", "flwr 1.42's start_server stops its gRPC server but "
                            "keeps the server's worker pool, one thread a client, until the process exits")
def test_the_fleet_command_runs_flower_rounds_and_rejects_the_poisoned_device(
        tmp_path: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agilenn.cli.fleet.load_dataset", lambda name, split, data_dir=None: SAMPLE)
    out = tmp_path / "fleet.json"  # type: ignore[operator]
    assert main(["fleet", "--devices", "4", "--rounds", "2", "--train-per-device", "32",
                 "--test-per-device", "40", "--poisoned", "1", "--personalize", "1", "--json", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert {"fleet_accuracy", "alone_accuracy", "no_adaptation_accuracy", "centralised_accuracy",
            "bytes_per_device_round", "rejected_updates", "rounds", "devices"} <= set(report)
    assert len(report["accuracy_by_round"]) == 2 and report["rounds"] == 2
    assert [r["device"] for r in report["rejected_updates"]] == ["device-0", "device-0"]
    assert all("median" in r["reason"] for r in report["rejected_updates"])
    assert report["bytes_per_device_round"] == report["full_update_bytes"]
    assert 0 < report["fleet_personalized_accuracy"] <= 1 and report["personalize_epochs"] == 1
