"""A fleet's rounds: the server step (FedAvg, FedAvgM), refusals of replies that do not add up, the
run config every Flower app reads, and an edge host building only the devices behind it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest

from agilenn.data import load_mnist_sample
from agilenn.fleet.aggregate import Aggregator, Update, update_to_arrays
from agilenn.fleet.devices import make_fleet
from agilenn.fleet.rounds import FleetModel, Received
from agilenn.fleet.settings import FleetSettings
from edge_node.fleet_app import node_devices

SHAPES = {"weight": (2, 2)}
NAMES = ["weight"]


def _reply(device: str, value: float, samples: int = 10) -> Received:
    update = Update(device, samples, {"weight": np.full((2, 2), value, np.float32)})
    return Received(device, samples, update_to_arrays(update, NAMES, SHAPES))


def _model(**server: float) -> FleetModel:
    return FleetModel(NAMES, [np.zeros((2, 2), np.float32)], Aggregator(SHAPES), ["a", "b"], **server)


def test_plain_fedavg_moves_the_device_part_by_the_weighted_mean_update() -> None:
    model = _model()
    model.complete_round(1, [_reply("a", 1.0, samples=30), _reply("b", 3.0, samples=10)])
    np.testing.assert_allclose(model.current[0], 1.5)
    assert model.report()["rounds"] == 1 and model.report()["bytes_per_device_round"] == 16


def test_server_momentum_keeps_moving_along_the_last_rounds_direction() -> None:
    plain, momentum = _model(), _model(server_momentum=0.5)
    for round_number in (1, 2):
        for model in (plain, momentum):
            model.complete_round(round_number, [_reply("a", 1.0), _reply("b", 1.0)])
    np.testing.assert_allclose(plain.current[0], 2.0)
    np.testing.assert_allclose(momentum.current[0], 1.0 + 1.5)  # round 2 steps 1 + 0.5 * 1
    momentum.complete_round(3, [])  # nobody answered: the velocity still carries it, halved
    np.testing.assert_allclose(momentum.current[0], 2.5 + 0.75)


def test_a_reply_whose_arrays_do_not_add_up_is_refused_and_the_round_completes() -> None:
    model = _model()
    broken = Received("b", 10, [np.ones((2, 2), np.float32)])  # a delta without its mask
    record = model.complete_round(1, [_reply("a", 2.0), broken])
    np.testing.assert_allclose(model.current[0], 2.0)
    assert record.update_bytes == [16]
    assert model.report()["rejected_updates"] == [
        {"round": 1, "device": "b", "reason": "1 arrays, not a delta and a mask for each of 1 tensors"}]


@pytest.mark.parametrize("server", [{"server_lr": 0.0}, {"server_momentum": 1.0}, {"server_momentum": -0.1}])
def test_a_server_step_that_cannot_converge_is_refused(server: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="server"):
        _model(**server)


def test_run_config_round_trips_and_refuses_unknown_keys_wrong_types_and_bad_values() -> None:
    settings = FleetSettings(devices=3, rounds=2, lr=0.01, report="/tmp/x.json")
    assert FleetSettings.from_run_config(settings.to_run_config()) == settings
    assert FleetSettings.from_run_config({"lr": 1, "server-momentum": 0}).lr == 1.0  # TOML ints for floats
    with pytest.raises(ValueError, match="unknown fleet setting 'round'"):
        FleetSettings.from_run_config({"round": 2})
    with pytest.raises(ValueError, match="'devices' must be int"):
        FleetSettings.from_run_config({"devices": "20"})
    with pytest.raises(ValueError, match="dropout"):
        FleetSettings.from_run_config({"dropout": 1.0})
    with pytest.raises(ValueError, match="method"):
        FleetSettings.from_run_config({"method": "everything"})


def test_an_edge_host_builds_exactly_the_devices_behind_it() -> None:
    sample = load_mnist_sample()
    whole = make_fleet(sample.head(600), sample, devices=4, train_per_device=40, test_per_device=40, seed=3)
    some = make_fleet(sample.head(600), sample, devices=4, train_per_device=40, test_per_device=40, seed=3,
                      only={1, 3})
    assert [device.name for device in some] == ["device-1", "device-3"]
    for part, device in zip(some, (whole[1], whole[3]), strict=True):
        assert np.array_equal(part.train.images, device.train.images)
        assert np.array_equal(part.test.labels, device.test.labels)


@pytest.mark.parametrize(("listed", "indices"), [(3, [3]), ("0 1", [0, 1]), ("4,5", [4, 5])])
def test_a_node_config_lists_one_device_or_several(listed: object, indices: list[int]) -> None:
    assert node_devices({"devices": listed}) == indices


@pytest.mark.parametrize("listed", [None, "a b", True, 1.5])
def test_a_node_config_without_device_indices_is_refused(listed: object) -> None:
    with pytest.raises(ValueError, match="devices"):
        node_devices({"devices": listed})


def test_the_flower_apps_run_config_names_every_setting_with_its_default() -> None:
    app_file = Path(__file__).resolve().parents[1] / "deploy" / "flower-fleet" / "pyproject.toml"
    app = tomllib.loads(app_file.read_text())
    config = app["tool"]["flwr"]["app"]["config"]
    assert FleetSettings.from_run_config(config) == FleetSettings()
    assert set(config) == set(FleetSettings().to_run_config())
    assert app["tool"]["flwr"]["app"]["components"] == {"serverapp": "server_node.fleet_app:app",
                                                        "clientapp": "edge_node.fleet_app:app"}
