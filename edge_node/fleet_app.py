"""The fleet's Flower ClientApp: a SuperNode on an edge host runs it for the devices behind that host.

Its node config says which devices of the seeded fleet it trains for, and how:

- ``devices``: device indices, ``3`` or ``"3 4 5"`` (an edge node with several MCUs behind it
  trains one update for each, from the samples they sent);
- ``data-dir``: the MNIST folder (default ``$AGILENN_DATA``);
- ``poison``: a factor its updates are scaled by (a broken or malicious device, for drills).

Each TRAIN message carries the fleet's device part and the names of the node's
devices sampled this round; each device trains it on its own samples by split
learning against the server's fixed remote part and answers with its delta and
masks. EVALUATE answers each device's accuracy on its own test set. The run
config is :class:`agilenn.fleet.settings.FleetSettings`, the same the ServerApp reads.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from agilenn.adapt.adapter import AdaptConfig, accuracies
from agilenn.data import load_dataset
from agilenn.fleet.aggregate import scaled, update_to_arrays
from agilenn.fleet.devices import (
    Device,
    device_state,
    fleet_selection,
    load_device_state,
    local_update,
    make_fleet,
)
from agilenn.fleet.settings import FleetSettings
from agilenn.model import AgileNN
from agilenn.pretrained import load_checkpoint

app = ClientApp()


def node_devices(node_config: dict[str, object]) -> list[int]:
    """The device indices a node config lists (``devices = 3`` or ``devices = "3 4"``)."""
    listed = node_config.get("devices")
    if isinstance(listed, int) and not isinstance(listed, bool):
        return [listed]
    if isinstance(listed, str):
        try:
            return [int(part) for part in listed.replace(",", " ").split()]
        except ValueError:
            pass
    raise ValueError(f"the node config's devices must be an index or a list of them, not {listed!r}")


@lru_cache(maxsize=2)
def _fleet(settings: FleetSettings, indices: tuple[int, ...], data_dir: str | None) -> tuple[Device, ...]:
    if any(not 0 <= index < settings.devices for index in indices):
        raise ValueError(f"device indices {list(indices)} do not all lie in the fleet of {settings.devices}")
    train, test = (load_dataset("mnist", split, data_dir) for split in ("train", "test"))
    return tuple(make_fleet(train, test, settings.devices, settings.train_per_device,
                            settings.test_per_device, seed=settings.seed, only=set(indices)))


def _setup(message: Message, context: Context) -> tuple[FleetSettings, list[Device], AgileNN]:
    torch.set_num_threads(1)
    settings = FleetSettings.from_run_config(context.run_config)
    data_dir = context.node_config.get("data-dir")
    fleet = _fleet(settings, tuple(node_devices(dict(context.node_config))),
                   str(data_dir) if data_dir else None)
    wanted = set(message.content.config_records["fleet"]["devices"])  # type: ignore[arg-type]
    model = copy.deepcopy(_model(settings.model))
    names = device_state(model)[0]
    load_device_state(model, names, message.content.array_records["device_part"].to_numpy_ndarrays())
    return settings, [device for device in fleet if device.name in wanted], model


@lru_cache(maxsize=2)
def _model(spec: str) -> AgileNN:
    return load_checkpoint(spec).build_model()


@app.query()
def query(message: Message, context: Context) -> Message:
    names = [f"device-{index}" for index in node_devices(dict(context.node_config))]
    return Message(RecordDict({"fleet": ConfigRecord({"devices": names})}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    settings, devices, model = _setup(message, context)
    config = AdaptConfig(method="full", epochs=settings.local_epochs, lr=settings.lr, seed=settings.seed)
    selection = fleet_selection(model, settings.method)
    names, shapes, _ = device_state(model)
    poison = float(context.node_config.get("poison", 0.0))  # type: ignore[arg-type]
    content = RecordDict()
    samples: dict[str, MetricRecordValues] = {}
    for device in devices:
        update = local_update(model, device, selection, config)
        if poison:
            update = scaled(update, poison)
        content[f"update.{device.name}"] = ArrayRecord(update_to_arrays(update, names, shapes))
        samples[device.name] = update.samples
    content["samples"] = MetricRecord(samples)
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    _, devices, model = _setup(message, context)
    scores: dict[str, MetricRecordValues] = {device.name: float(accuracies(model, device.test)[0])
                                             for device in devices}
    return Message(RecordDict({"accuracy": MetricRecord(scores)}), reply_to=message)
