"""What one ``agilenn bench`` run measures, and the error it raises when it cannot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import AgileNNError
from ..pretrained import DEFAULT_MODEL


def _every_family() -> tuple[str, ...]:
    # Imported here, not at the top: the registry imports every family module, and those may import
    # this one.
    from .schemes import family_names

    return family_names()


@dataclass
class BenchConfig:
    model: str = DEFAULT_MODEL
    baseline: str = "pretrained:mnist-full-cnn"
    tiny: str = "pretrained:mnist-tiny-cnn"
    link: str = "serial-115200"
    device: str = "host"
    # ``agilenn export --verify --json`` output for this model: AgileNN's device stages are then priced
    # from the instructions the emulator counted, not from the MAC rate (devices.py).
    firmware_report: str | None = None
    cpi: float = 1.0
    n: int = 500
    warmup: int = 20
    families: tuple[str, ...] = field(default_factory=_every_family)  # names in the registry, or ("all",)
    jpeg_qualities: tuple[int, ...] = (10, 50, 90)
    split_layers: tuple[int, ...] = (2, 4, 5)  # empty: the planner's latency-optimal cut
    dataset: str = "mnist-sample"
    data_dir: str | None = None
    window: int = 100
    stability_percentage: float = 10.0
    until_stable: bool = False
    max_windows: int = 20
    timeout_s: float = 2.0
    seed: int = 0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class BenchError(AgileNNError):
    pass
