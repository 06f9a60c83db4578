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
from typing import Any

from flwr.common import FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from agilenn.fleet.rounds import FleetModel, Received

log = logging.getLogger("agilenn.fleet")


class SparseFleetAverage(FedAvg):  # type: ignore[misc]
    """FedAvg's round management, with :class:`FleetModel` aggregating and stepping each round."""

    def __init__(self, fleet_model: FleetModel, **flower: Any) -> None:
        super().__init__(initial_parameters=ndarrays_to_parameters(fleet_model.current), **flower)
        self.fleet_model = fleet_model

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[Any]) -> tuple[Parameters | None, dict[str, Scalar]]:
        for failure in failures:
            log.warning("round %d: a client failed: %s", server_round, failure)
        received = [Received(str(fit.metrics.get("device", "unknown")), fit.num_examples,
                             parameters_to_ndarrays(fit.parameters)) for _, fit in results]
        record = self.fleet_model.complete_round(server_round, received)
        return ndarrays_to_parameters(self.fleet_model.current), {"updates": len(record.update_bytes)}
