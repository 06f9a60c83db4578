"""The fleet's Flower ServerApp, for a deployment: a SuperLink beside the inference server runs it.

SuperNodes on the edge hosts run :mod:`edge_node.fleet_app`, each for the
devices its node config lists. The app speaks Flower's Message API:

1. It waits for ``min-nodes`` SuperNodes, then asks each (a QUERY message)
   which devices it trains for. A device claimed twice is refused.
2. Each round it samples ``1 - dropout`` of the devices, sends each node the
   fleet's device part and the names of its sampled devices (TRAIN), and hands
   the updates that come back to :class:`agilenn.fleet.rounds.FleetModel`:
   element-wise averaging, bad updates refused with a logged reason, absent
   devices skipped or reused, the server step.
3. It scores the new device part where the data is (EVALUATE): each node
   reports the accuracy on each of its devices' own test sets.

A node whose reply is an error (its ClientApp raised) is logged with Flower's
reason and the round completes with the rest. The JSON report goes to the log
and, with ``report`` in the run config, to that file on the SuperLink's host.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from agilenn.daemon import write_atomically
from agilenn.fleet.aggregate import Aggregator
from agilenn.fleet.devices import device_state
from agilenn.fleet.rounds import FleetModel, Received
from agilenn.fleet.settings import FleetSettings
from agilenn.pretrained import load_checkpoint

log = logging.getLogger("agilenn.fleet")
UPDATE_PREFIX = "update."  # a TRAIN reply holds one ArrayRecord a device: "update.device-3"

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = FleetSettings.from_run_config(context.run_config)
    report = run_fleet(grid, settings)
    text = json.dumps(report, indent=2, sort_keys=True)
    log.warning("fleet learning finished:\n%s", text)  # WARNING: Flower's default level hides INFO
    if settings.report:
        write_atomically(Path(settings.report), (text + "\n").encode())


def run_fleet(grid: Grid, settings: FleetSettings) -> dict[str, Any]:
    """The rounds, over whichever nodes ``grid`` reaches; the fleet's JSON report."""
    nodes = _wait_for_nodes(grid, settings)
    placement = _devices_by_node(grid, nodes)
    model = load_checkpoint(settings.model).build_model()
    names, shapes, initial = device_state(model)
    devices = sorted(placement, key=lambda name: int(name.rsplit("-", 1)[-1]))
    failures: list[dict[str, Any]] = []
    fleet_model = FleetModel(names, initial, Aggregator(shapes, absent=settings.absent), devices,
                             server_lr=settings.server_lr, server_momentum=settings.server_momentum)
    rng = np.random.default_rng(settings.seed)
    started = time.perf_counter()
    before = _evaluate(grid, placement, fleet_model.current, 0, failures)
    for round_number in range(1, settings.rounds + 1):
        present = max(1, round((1 - settings.dropout) * len(devices)))
        sampled = sorted(rng.choice(len(devices), size=present, replace=False))
        wanted = _by_node(placement, [devices[index] for index in sampled])
        replies = _send(grid, MessageType.TRAIN, wanted, fleet_model.current, round_number, failures)
        received = [Received(key.removeprefix(UPDATE_PREFIX), int(_samples(reply, key)),
                             record.to_numpy_ndarrays())
                    for reply in replies for key, record in reply.content.array_records.items()
                    if key.startswith(UPDATE_PREFIX)]
        record = fleet_model.complete_round(round_number, received)
        record.accuracy = _evaluate(grid, placement, fleet_model.current, round_number, failures)
        log.warning("round %d: %d updates, mean accuracy %.4f", round_number, len(received), record.accuracy)
    return {"settings": settings.to_run_config(), "devices": len(devices), "nodes": len(nodes),
            **fleet_model.report(), "no_adaptation_accuracy": before, "failed_replies": failures,
            "fleet_seconds": round(time.perf_counter() - started, 1)}


def _wait_for_nodes(grid: Grid, settings: FleetSettings) -> list[int]:
    deadline = time.monotonic() + settings.node_wait_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= settings.min_nodes:
            return nodes
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(nodes)} SuperNodes connected within {settings.node_wait_s:g} s; "
                               f"min-nodes is {settings.min_nodes}")
        time.sleep(0.5)


def _devices_by_node(grid: Grid, nodes: list[int]) -> dict[str, int]:
    placement: dict[str, int] = {}
    messages = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    for reply in grid.send_and_receive(messages):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log.warning("node %d did not say which devices it trains for: %s", node, reply.error.reason)
            continue
        for device in reply.content.config_records["fleet"]["devices"]:  # type: ignore[union-attr]
            if str(device) in placement:
                log.warning("device %s is claimed by nodes %d and %d; node %d's claim is refused",
                            device, placement[str(device)], node, node)
                continue
            placement[str(device)] = node
    if not placement:
        raise RuntimeError("no SuperNode trains for any device")
    return placement


def _by_node(placement: dict[str, int], devices: Iterable[str]) -> dict[int, list[str]]:
    wanted: dict[int, list[str]] = {}
    for device in devices:
        wanted.setdefault(placement[device], []).append(device)
    return wanted


def _send(grid: Grid, kind: str, wanted: dict[int, list[str]], arrays: list[np.ndarray], round_number: int,
          failures: list[dict[str, Any]]) -> list[Message]:
    """One message a node with the device part and its devices; the replies that are not errors."""
    messages = [Message(RecordDict({"device_part": ArrayRecord([np.asarray(a) for a in arrays]),
                                    "fleet": ConfigRecord({"round": round_number, "devices": devices})}),
                        dst_node_id=node, message_type=kind) for node, devices in wanted.items()]
    answered = []
    for reply in grid.send_and_receive(messages):
        if reply.has_error():
            node = reply.metadata.src_node_id
            log.warning("round %d: node %d failed its %s: %s", round_number, node, kind, reply.error.reason)
            failures.append({"round": round_number, "node": node, "kind": kind, "reason": reply.error.reason})
        else:
            answered.append(reply)
    return answered


def _samples(reply: Message, key: str) -> float:
    return float(reply.content.metric_records["samples"][key.removeprefix(UPDATE_PREFIX)])  # type: ignore[arg-type]


def _evaluate(grid: Grid, placement: dict[str, int], arrays: list[np.ndarray], round_number: int,
              failures: list[dict[str, Any]]) -> float:
    """Mean accuracy over the devices' own test sets, each scored on its node."""
    everyone = _by_node(placement, placement)
    replies = _send(grid, MessageType.EVALUATE, everyone, arrays, round_number, failures)
    scores = [float(value) for reply in replies  # type: ignore[arg-type]
              for value in reply.content.metric_records["accuracy"].values()]
    return float(np.mean(scores)) if scores else float("nan")
