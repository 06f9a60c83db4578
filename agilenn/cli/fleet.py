"""``agilenn fleet``: fleet learning of the device part across simulated devices, on Flower.

Makes a non-IID fleet from MNIST (each device two MNIST-C corruptions and a
skewed class mix, with its own held-out set), then runs Flower: a server with
our sparse-aware aggregation (:mod:`server_node.fleet`) and one Flower client a
device (:mod:`edge_node.fleet`), over gRPC on loopback. Each round Flower
samples ``1 - --dropout`` of the devices; absent ones are skipped or their
last update reused (``--absent``). ``--poisoned N`` devices send updates scaled
a hundredfold, which the server must reject. ``--serve`` runs the server alone
and ``--join`` one device's client, for a fleet across machines (the devices'
data is the same seeded fleet on every host). Prints one JSON object: the mean
per-device accuracy of the fleet's model, of each device adapting alone, of
no adaptation and of centralised training on the pooled adaptation data, the
bytes a device sends a round, and every rejected update with its reason.
``--personalize E`` also reports the fleet's model after each device fine-tunes
it for E epochs on its own samples (personalised federated learning).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge_node.fleet import FleetClient, device_state, load_device_state
from server_node.fleet import SparseFleetAverage

from ..adapt.adapter import AdaptConfig, train_selection
from ..adapt.split import InProcessServer
from ..data import ImageDataset, load_dataset
from ..errors import AgileNNError
from ..fleet.aggregate import ABSENT_POLICIES, Aggregator
from ..fleet.devices import (
    FLEET_METHODS,
    apply_deltas,
    fleet_selection,
    local_update,
    make_fleet,
    mean_accuracy,
)
from ..model import AgileNN
from ..pretrained import DEFAULT_MODEL, load_checkpoint
from .common import fail, print_json, write_atomically


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data-dir", help="MNIST folder (default: $AGILENN_DATA)")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--method", choices=FLEET_METHODS, default="full")
    parser.add_argument("--absent", choices=ABSENT_POLICIES, default="skip")
    parser.add_argument("--dropout", type=float, default=0.0, help="share of devices missing each round")
    parser.add_argument("--poisoned", type=int, default=0, help="devices sending poisoned updates")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-per-device", type=int, default=200)
    parser.add_argument("--test-per-device", type=int, default=300)
    parser.add_argument("--no-baselines", action="store_true", help="skip alone and centralised training")
    parser.add_argument("--personalize", type=int, default=0, metavar="EPOCHS",
                        help="also report each device fine-tuning the fleet's model for EPOCHS")
    place = parser.add_mutually_exclusive_group()
    place.add_argument("--serve", metavar="HOST:PORT",
                       help="run only the Flower server here; --devices clients join it with --join")
    place.add_argument("--join", metavar="HOST:PORT", help="run only device --device-index's client")
    parser.add_argument("--device-index", type=int, default=0, help="with --join: which device of the fleet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    parser.add_argument("--plot", type=Path, help="folder for accuracy by round")
    return parser


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _with_state(model: AgileNN, names: list[str], arrays: list[np.ndarray]) -> AgileNN:
    moved = copy.deepcopy(model)
    load_device_state(moved, names, arrays)
    return moved


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.devices < 2 or args.rounds < 1 or not 0 <= args.dropout < 1 or args.poisoned >= args.devices:
            raise ValueError("need 2+ devices, 1+ rounds, a dropout in [0, 1) and fewer poisoned "
                             "than devices")
        torch.set_num_threads(1)
        model = load_checkpoint(args.model).build_model()
        train = load_dataset("mnist", "train", args.data_dir)
        test = load_dataset("mnist", "test", args.data_dir)
        fleet = make_fleet(train, test, args.devices, args.train_per_device, args.test_per_device,
                           seed=args.seed)
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    logging.getLogger("flwr").setLevel(logging.ERROR)  # its legacy API warns at every client start
    config = AdaptConfig(method="full", epochs=args.local_epochs, lr=args.lr, seed=args.seed)
    selection = fleet_selection(model, args.method)
    if args.join:
        if not 0 <= args.device_index < len(fleet):
            return fail(f"--device-index must lie in [0, {len(fleet)})")
        import flwr

        client = FleetClient(model, fleet[args.device_index], selection, config,
                             poison=100.0 if args.device_index < args.poisoned else 0.0)
        flwr.client.start_client(server_address=args.join, client=client.to_client())
        return 0
    names, shapes, initial = device_state(model)
    aggregator = Aggregator(shapes, absent=args.absent)
    strategy = SparseFleetAverage(
        initial, names, aggregator, [device.name for device in fleet],
        lambda arrays: mean_accuracy(_with_state(model, names, arrays), fleet),
        fraction_fit=1.0 - args.dropout, min_fit_clients=max(1, round((1 - args.dropout) * args.devices)),
        min_available_clients=args.devices, fraction_evaluate=0.0, min_evaluate_clients=0)
    started = time.perf_counter()
    clients = [] if args.serve else [FleetClient(copy.deepcopy(model), device, selection, config,
                                                 poison=100.0 if index < args.poisoned else 0.0)
                                     for index, device in enumerate(fleet)]
    _run_flower(strategy, clients, args.rounds, args.serve or f"127.0.0.1:{_free_port()}")
    fleet_seconds = time.perf_counter() - started
    report: dict[str, Any] = {
        "devices": args.devices, "rounds": args.rounds, "method": args.method, "absent": args.absent,
        "dropout": args.dropout, "poisoned": args.poisoned,
        "fleet_accuracy": strategy.records[-1].accuracy,
        "no_adaptation_accuracy": mean_accuracy(model, fleet),
        "accuracy_by_round": [record.accuracy for record in strategy.records],
        "bytes_per_device_round": float(np.mean([b for r in strategy.records for b in r.update_bytes])),
        "full_update_bytes": 4 * sum(int(np.prod(shape)) for shape in shapes.values()),
        "rejected_updates": [{"round": r, "device": rejection.device, "reason": rejection.reason}
                             for r, rejection in aggregator.rejected],
        "fleet_seconds": round(fleet_seconds, 1),
    }
    if args.personalize:
        # Each device fine-tunes the fleet's model on its own samples: the fleet gives the start.
        shared = _with_state(model, names, strategy.current)
        tuned = AdaptConfig(**{**config.__dict__, "epochs": args.personalize})
        report["personalize_epochs"] = args.personalize
        personal = [apply_deltas(shared, dict(local_update(shared, device, selection, tuned).deltas))
                    for device in fleet]
        report["fleet_personalized_accuracy"] = mean_accuracy(personal, fleet)
    if not args.no_baselines:
        report.update(_baselines(model, fleet, selection, config, args))
    print_json(report)
    if args.json:
        write_atomically(args.json, (json.dumps(report, indent=2, sort_keys=True) + "\n").encode())
    if args.plot:
        _plot(report, args.plot)
    return 0


def _run_flower(strategy: SparseFleetAverage, clients: list[FleetClient], rounds: int, address: str) -> None:
    """A Flower server at ``address`` and ``clients``, each in a thread (none: they join from
    elsewhere, with ``agilenn fleet --join``)."""
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
               args: argparse.Namespace) -> dict[str, float]:
    """Each device alone, and one model on the pooled adaptation data, for the same epochs."""
    epochs = AdaptConfig(**{**config.__dict__, "epochs": args.rounds * args.local_epochs})
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
