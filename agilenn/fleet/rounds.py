"""The fleet's device part across rounds: accepted updates averaged, then a server step. Pure.

Both ways of running the fleet (Flower's legacy strategy in ``agilenn fleet``, and the
ServerApp under a SuperLink) keep one :class:`FleetModel`. A round hands it the
updates received; it refuses what the :class:`Aggregator` refuses, averages the
rest and moves the device part. The server step is FedAvgM (Hsu et al., 2019):
with ``server_momentum`` 0 and ``server_lr`` 1 it is plain FedAvg; a momentum
lets a fleet whose devices each take few local steps a round move as far as the
pooled data would take one model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .aggregate import Aggregator, Update, arrays_to_update, update_bytes


@dataclass
class RoundRecord:
    round: int
    clients: int
    update_bytes: list[int] = field(default_factory=list)  # each update received, as a compact wire form
    accuracy: float | None = None


@dataclass(frozen=True)
class Received:
    """One device's reply in a round, as the transport carried it: a delta and a mask a tensor."""

    device: str
    samples: int
    arrays: list[np.ndarray]


class FleetModel:
    """The fleet's device part (``names`` in wire order) and the rounds that moved it."""

    def __init__(self, names: list[str], initial: list[np.ndarray], aggregator: Aggregator, fleet: list[str],
                 evaluate: Callable[[list[np.ndarray]], float] | None = None, server_lr: float = 1.0,
                 server_momentum: float = 0.0) -> None:
        if not server_lr > 0 or not 0 <= server_momentum < 1:
            raise ValueError("the server learning rate must be above 0 and its momentum in [0, 1)")
        self.names, self.aggregator, self.fleet, self.evaluate = names, aggregator, fleet, evaluate
        self.current = [np.array(array, copy=True) for array in initial]
        self.server_lr, self.server_momentum = server_lr, server_momentum
        self.velocity: dict[str, np.ndarray] = {}
        self.records: list[RoundRecord] = []

    @property
    def shapes(self) -> Mapping[str, tuple[int, ...]]:
        return self.aggregator.shapes

    def complete_round(self, round_number: int, received: list[Received]) -> RoundRecord:
        record = RoundRecord(round_number, len(received))
        updates: list[Update] = []
        for reply in received:
            try:
                update = arrays_to_update(reply.device, reply.samples, reply.arrays, self.names)
            except ValueError as exc:
                self.aggregator.refuse(round_number, reply.device, str(exc))
                continue
            updates.append(update)
            record.update_bytes.append(update_bytes(update))
        averaged = self.aggregator.aggregate(round_number, updates, self.fleet)
        for index, name in enumerate(self.names):
            step = averaged.get(name)
            if step is None and name not in self.velocity:
                continue
            velocity = self.server_momentum * self.velocity.get(name, np.zeros_like(self.current[index]))
            if step is not None:
                velocity = velocity + step
            self.velocity[name] = velocity
            self.current[index] = (self.current[index] + self.server_lr * velocity).astype(np.float32)
        if self.evaluate is not None:
            record.accuracy = self.evaluate(self.current)
        self.records.append(record)
        return record

    def report(self) -> dict[str, object]:
        """What the rounds came to, as the fleet's JSON carries it."""
        sizes = [size for record in self.records for size in record.update_bytes]
        return {
            "rounds": len(self.records),
            "fleet_accuracy": self.records[-1].accuracy if self.records else None,
            "accuracy_by_round": [record.accuracy for record in self.records],
            "bytes_per_device_round": float(np.mean(sizes)) if sizes else 0.0,
            "full_update_bytes": 4 * sum(int(np.prod(shape)) for shape in self.shapes.values()),
            "rejected_updates": [{"round": r, "device": rejection.device, "reason": rejection.reason}
                                 for r, rejection in self.aggregator.rejected],
        }
