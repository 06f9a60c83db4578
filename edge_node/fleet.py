"""The fleet's device side on Flower: one client a device, training the device part locally.

:class:`FleetClient` takes the fleet's device part from Flower, trains it on
its device's samples by split learning against the server's fixed remote part
(:func:`agilenn.fleet.devices.local_update`) and returns its delta and masks. A
client built with ``poison`` sends a scaled-up delta instead, to exercise the
server's rejection of bad updates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.client import NumPyClient

from agilenn.adapt.adapter import AdaptConfig
from agilenn.adapt.selection import Selection
from agilenn.fleet.aggregate import scaled, update_to_arrays
from agilenn.fleet.devices import Device, device_state, load_device_state, local_update
from agilenn.model import AgileNN


class FleetClient(NumPyClient):  # type: ignore[misc]
    def __init__(self, model: AgileNN, device: Device, selection: Selection, config: AdaptConfig,
                 poison: float = 0.0) -> None:
        self.model, self.device, self.selection, self.config = model, device, selection, config
        self.poison = poison
        self.names, self.shapes, _ = device_state(model)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return device_state(self.model)[2]

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any],
            ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        load_device_state(self.model, self.names, parameters)
        update = local_update(self.model, self.device, self.selection, self.config)
        if self.poison:
            update = scaled(update, self.poison)
        return update_to_arrays(update, self.names, self.shapes), update.samples, {"device": self.device.name}
