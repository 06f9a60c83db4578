"""``agilenn fleet``: fleet learning of the device part across simulated devices, on Flower.

Makes a non-IID fleet from MNIST (each device two MNIST-C corruptions and a
skewed class mix, with its own held-out set), then runs Flower: a server with
our sparse-aware aggregation (:mod:`server_node.fleet`) and one Flower client a
device (:mod:`edge_node.fleet`), over gRPC on loopback. Each round Flower
samples ``1 - --dropout`` of the devices; absent ones are skipped or their
last update reused (``--absent``). ``--poisoned N`` devices send updates scaled
a hundredfold, which the server must reject. Across machines, run the same
rounds under a Flower SuperLink with SuperNodes on the edge hosts (the
``deploy/flower-fleet`` app; see the README). Prints one JSON object: the mean
per-device accuracy of the fleet's model, of each device adapting alone, of
no adaptation and of centralised training on the pooled adaptation data, the
bytes a device sends a round, and every rejected update with its reason.
``--personalize E`` also reports the fleet's model after each device fine-tunes
it for E epochs on its own samples (personalised federated learning).
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import fields
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_node.fleet import FleetClient
from transports.zmq_transport import free_loopback_endpoint
from server_node.fleet import SparseFleetAverage

from ..adapt.adapter import AdaptConfig, train_selection
from ..adapt.split import InProcessServer
from ..data import ImageDataset, load_dataset
from ..errors import AgileNNError
from ..fleet.aggregate import ABSENT_POLICIES, Aggregator
from ..fleet.rounds import FleetModel
from ..fleet.settings import FleetSettings
from ..fleet.devices import (
    FLEET_METHODS,
    apply_deltas,
    device_state,
    fleet_selection,
    load_device_state,
    local_update,
    make_fleet,
    mean_accuracy,
)
from ..model import AgileNN
from ..pretrained import load_checkpoint
from .common import fail, print_json, write_atomically


_DEPLOYMENT_ONLY = {"min_nodes", "node_wait_s", "report"}  # a SuperLink run's settings, not this command's
_HELP = {
    "model": "the model whose device part the fleet adapts",
    "devices": "devices in the fleet", "dropout": "share of devices missing each round",
    "absent": "what a missing device counts for: nothing (skip) or its last update (reuse, FedLaAvg)",
    "method": "full: the whole device part; sparse: biases and a quarter of two layers' channels",
    "server_lr": "the server's step on the mean update",
    "server_momentum": "FedAvgM's server momentum (0: plain FedAvg)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = FleetSettings()
    for field in fields(FleetSettings):
        if field.name in _DEPLOYMENT_ONLY:
            continue
        default = getattr(defaults, field.name)
        choices = {"method": FLEET_METHODS, "absent": ABSENT_POLICIES}.get(field.name)
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(default), default=default,
                            choices=choices,
                            help=f"{_HELP.get(field.name, '')} (default: %(default)s)".strip())
    parser.add_argument("--data-dir", help="MNIST folder (default: $AGILENN_DATA)")
    parser.add_argument("--poisoned", type=int, default=0, help="devices sending poisoned updates")
    parser.add_argument("--no-baselines", action="store_true", help="skip alone and centralised training")
    parser.add_argument("--personalize", type=int, default=0, metavar="EPOCHS",
                        help="also report each device fine-tuning the fleet's model for EPOCHS")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, help="folder for accuracy by round")
    return parser


def _with_state(model: AgileNN, names: list[str], arrays: list[np.ndarray]) -> AgileNN:
    moved = copy.deepcopy(model)
    load_device_state(moved, names, arrays)
    return moved


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = FleetSettings(**{field.name: getattr(args, field.name) for field in fields(FleetSettings)
                                    if field.name not in _DEPLOYMENT_ONLY})
        if not 0 <= args.poisoned < settings.devices or args.personalize < 0:
            raise ValueError("--poisoned must lie in [0, --devices) and --personalize be 0 or more")
        torch.set_num_threads(1)
        model = load_checkpoint(settings.model).build_model()
        train = load_dataset("mnist", "train", args.data_dir)
        test = load_dataset("mnist", "test", args.data_dir)
        fleet = make_fleet(train, test, settings.devices, settings.train_per_device, settings.test_per_device,
                           seed=settings.seed)
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    logging.getLogger("flwr").setLevel(logging.ERROR)  # its legacy API warns at every client start
    config = AdaptConfig(method="full", epochs=settings.local_epochs, lr=settings.lr, seed=settings.seed)
    selection = fleet_selection(model, settings.method)
    names, shapes, initial = device_state(model)
    fleet_model = FleetModel(names, initial, Aggregator(shapes, absent=settings.absent),
                             [device.name for device in fleet],
                             lambda arrays: mean_accuracy(_with_state(model, names, arrays), fleet),
                             server_lr=settings.server_lr, server_momentum=settings.server_momentum)
    strategy = SparseFleetAverage(
        fleet_model, fraction_fit=1.0 - settings.dropout,
        min_fit_clients=max(1, round((1 - settings.dropout) * settings.devices)),
        min_available_clients=settings.devices, fraction_evaluate=0.0, min_evaluate_clients=0)
    started = time.perf_counter()
    clients = [FleetClient(copy.deepcopy(model), device, selection, config,
                           poison=100.0 if index < args.poisoned else 0.0)
               for index, device in enumerate(fleet)]
    _run_flower(strategy, clients, settings.rounds, free_loopback_endpoint().removeprefix("tcp://"))
    report: dict[str, Any] = {
        **{key.replace("-", "_"): value for key, value in settings.to_run_config().items()
           if key.replace("-", "_") not in _DEPLOYMENT_ONLY},
        "poisoned": args.poisoned, **fleet_model.report(),
        "no_adaptation_accuracy": mean_accuracy(model, fleet),
        "fleet_seconds": round(time.perf_counter() - started, 1),
    }
    if args.personalize:
        # Each device fine-tunes the fleet's model on its own samples: the fleet gives the start.
        shared = _with_state(model, names, fleet_model.current)
        tuned = AdaptConfig(**{**config.__dict__, "epochs": args.personalize})
        report["personalize_epochs"] = args.personalize
        personal = [apply_deltas(shared, dict(local_update(shared, device, selection, tuned).deltas))
                    for device in fleet]
        report["fleet_personalized_accuracy"] = mean_accuracy(personal, fleet)
    if not args.no_baselines:
        report.update(_baselines(model, fleet, selection, config, settings))
    print_json(report)
    if args.json:
        write_atomically(args.json, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    if args.plot:
        _plot(report, args.plot)
    return 0


def _run_flower(strategy: SparseFleetAverage, clients: list[FleetClient], rounds: int, address: str) -> None:
    """A Flower server at ``address`` and ``clients``, each in a thread."""
    import flwr

    def join(client: FleetClient) -> None:
        flwr.client.start_client(server_address=address, client=client.to_client())

    threads = [threading.Thread(target=join, args=(client,), daemon=True) for client in clients]

    def start_clients() -> None:
        for thread in threads:
            thread.start()

    threading.Timer(1.0, start_clients).start()  # once the server listens
    flwr.server.start_server(server_address=address, config=flwr.server.ServerConfig(num_rounds=rounds),
                             strategy=strategy)
    for thread in threads:
        thread.join(timeout=30)


def _baselines(model: AgileNN, fleet: list[Any], selection: Any, config: AdaptConfig,
               settings: FleetSettings) -> dict[str, float]:
    """Each device alone, and one model on the pooled adaptation data, for the same epochs."""
    epochs = AdaptConfig(**{**config.__dict__, "epochs": settings.rounds * settings.local_epochs})
    alone = [apply_deltas(model, dict(local_update(model, device, selection, epochs).deltas))
             for device in fleet]
    pooled = ImageDataset("pooled", np.concatenate([d.train.images for d in fleet]),
                          np.concatenate([d.train.labels for d in fleet]), fleet[0].train.num_classes)
    peer = InProcessServer(config.training, config.lr, config.optimizer).open(model, train=False)
    centralised = train_selection(model, selection, pooled, epochs, epochs.epochs, peer)
    return {"alone_accuracy": mean_accuracy(alone, fleet),
            "centralised_accuracy": mean_accuracy(centralised, fleet)}


def _plot(report: dict[str, Any], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.5))
    rounds = range(1, len(report["accuracy_by_round"]) + 1)
    axis.plot(rounds, report["accuracy_by_round"], marker="o", label="fleet")
    baselines = (("no_adaptation_accuracy", ":"), ("alone_accuracy", "--"), ("centralised_accuracy", "-."))
    for key, style in baselines:
        if key in report:
            axis.axhline(report[key], linestyle=style, label=key.removesuffix("_accuracy").replace("_", " "))
    axis.set_xlabel("round")
    axis.set_ylabel("mean accuracy on the devices' own test sets")
    axis.legend(fontsize=8)
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / "fleet_accuracy.png", dpi=120, bbox_inches="tight")
