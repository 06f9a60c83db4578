"""A fleet run's settings, as Flower's run config carries them (``flwr run --run-config 'rounds=5'``).

The ServerApp and every ClientApp read the same run config, so each edge host
builds the same seeded fleet and trains as the server expects. Keys are the
field names in kebab case; unknown keys and wrong types are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from .aggregate import ABSENT_POLICIES
from .devices import FLEET_METHODS


@dataclass(frozen=True)
class FleetSettings:
    model: str = "pretrained:mnist"
    devices: int = 20  # the fleet's size; a device is one index of it, on whichever host lists it
    rounds: int = 20
    train_per_device: int = 200
    test_per_device: int = 300
    seed: int = 0
    method: str = "full"
    local_epochs: int = 2
    lr: float = 3e-3
    server_lr: float = 1.0
    server_momentum: float = 0.9  # FedAvgM: 20 rounds of plain FedAvg left the fleet 6 pp short
    absent: str = "skip"
    dropout: float = 0.0
    min_nodes: int = 1  # the ServerApp starts once this many SuperNodes are connected
    node_wait_s: float = 120.0
    report: str = ""  # where the ServerApp writes the fleet's JSON ("": only logged)

    def __post_init__(self) -> None:
        problems = []
        if self.devices < 2 or self.rounds < 1 or self.local_epochs < 1 or self.min_nodes < 1:
            problems.append("devices must be 2+, rounds, local-epochs and min-nodes 1+")
        if self.train_per_device < 1 or self.test_per_device < 1:
            problems.append("train-per-device and test-per-device must be 1+")
        if not self.lr > 0 or not self.server_lr > 0 or not 0 <= self.server_momentum < 1:
            problems.append("lr and server-lr must be above 0 and server-momentum in [0, 1)")
        if not 0 <= self.dropout < 1 or not self.node_wait_s > 0:
            problems.append("dropout must lie in [0, 1) and node-wait-s above 0")
        if self.method not in FLEET_METHODS or self.absent not in ABSENT_POLICIES:
            problems.append(f"method must be one of {', '.join(FLEET_METHODS)} and absent one of "
                            f"{', '.join(ABSENT_POLICIES)}")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_run_config(cls, config: Mapping[str, object]) -> FleetSettings:
        known = {field.name.replace("_", "-"): field for field in fields(cls)}
        values: dict[str, object] = {}
        for key, value in config.items():
            field = known.get(key)
            if field is None:
                raise ValueError(f"unknown fleet setting {key!r}; known: {', '.join(sorted(known))}")
            wanted = type(getattr(cls(), field.name))
            if wanted is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not wanted:
                raise ValueError(f"fleet setting {key!r} must be {wanted.__name__}, not {value!r}")
            values[field.name] = value
        return cls(**values)  # type: ignore[arg-type]

    def to_run_config(self) -> dict[str, object]:
        return {name.replace("_", "-"): value for name, value in asdict(self).items()}
