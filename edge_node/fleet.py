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
import torch
from flwr.client import NumPyClient

from agilenn.adapt.adapter import AdaptConfig
from agilenn.adapt.selection import DevicePart, Selection
from agilenn.fleet.aggregate import Update, update_to_arrays
from agilenn.fleet.devices import Device, local_update
from agilenn.model import AgileNN


def device_state(model: AgileNN) -> tuple[list[str], dict[str, tuple[int, ...]], list[np.ndarray]]:
    """The device part's parameter names (the wire order), shapes and values."""
    parameters = dict(DevicePart(model).named_parameters())  # BatchNorm's statistics stay as shipped
    names = list(parameters)
    return names, {n: tuple(parameters[n].shape) for n in names}, \
        [parameters[n].detach().numpy().copy() for n in names]


def load_device_state(model: AgileNN, names: list[str], arrays: list[np.ndarray]) -> None:
    state = DevicePart(model).state_dict()
    with torch.no_grad():
        for name, array in zip(names, arrays, strict=True):
            state[name].copy_(torch.from_numpy(np.asarray(array)))


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
            scaled = {name: delta * self.poison for name, delta in update.deltas.items()}
            update = Update(update.device, update.samples, scaled, update.masks)
        return update_to_arrays(update, self.names, self.shapes), update.samples, {"device": self.device.name}
