"""The fleet's server side on Flower: a strategy that aggregates sparse device-part updates.

Flower runs the rounds, samples the clients (``fraction_fit``) and moves the
parameters; :class:`SparseFleetAverage` replaces FedAvg's aggregation with
:class:`agilenn.fleet.aggregate.Aggregator`: element-wise averages over the
devices that updated each element, bad updates refused with a logged reason,
absent devices skipped or reused. A client sends its update as
:func:`agilenn.fleet.aggregate.update_to_arrays` lays it out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from agilenn.fleet.aggregate import Aggregator, arrays_to_update, update_bytes

log = logging.getLogger("agilenn.fleet")


@dataclass
class RoundRecord:
    round: int
    clients: int
    update_bytes: list[int] = field(default_factory=list)  # each update received, as a compact wire form
    accuracy: float | None = None


class SparseFleetAverage(FedAvg):  # type: ignore[misc]
    """FedAvg's round management with our aggregation; ``evaluate_global(state)`` scores each new
    global device part (mean accuracy over the devices' own test sets)."""

    def __init__(self, initial: list[np.ndarray], names: list[str], aggregator: Aggregator, fleet: list[str],
                 evaluate_global: Callable[[list[np.ndarray]], float] | None = None, **flower: Any) -> None:
        super().__init__(initial_parameters=ndarrays_to_parameters(initial), **flower)
        self.current = [array.copy() for array in initial]
        self.names, self.aggregator, self.fleet = names, aggregator, fleet
        self.evaluate_global = evaluate_global
        self.records: list[RoundRecord] = []

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        record = RoundRecord(server_round, len(results))
        updates = []
        for _, fit in results:
            device = str(fit.metrics.get("device", "unknown"))
            arrays = parameters_to_ndarrays(fit.parameters)
            try:
                update = arrays_to_update(device, fit.num_examples, arrays, self.names)
            except ValueError as exc:
                self.aggregator.refuse(server_round, device, str(exc))
                continue
            updates.append(update)
            record.update_bytes.append(update_bytes(update))
        for failure in failures:
            log.warning("round %d: a client failed: %s", server_round, failure)
        averaged = self.aggregator.aggregate(server_round, updates, self.fleet)
        for index, name in enumerate(self.names):
            if name in averaged:
                self.current[index] = self.current[index] + averaged[name]
        if self.evaluate_global is not None:
            record.accuracy = self.evaluate_global(self.current)
        self.records.append(record)
        return ndarrays_to_parameters(self.current), {"updates": len(updates)}
