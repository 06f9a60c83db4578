"""What every scheme family shares: outcomes, schemes, the build context and the registry.

Stages of a request, in order (milliseconds): ``device`` (the network on the
device), ``encode`` (payload and message), ``transmit`` (the uplink: the
emulator's serialisation and delay), ``queue`` and ``server`` (the server's
own timings from the reply), ``reply`` (the rest of the round trip: the
downlink, sockets and the server's decode) and ``merge`` (decoding the reply
and, for AgileNN, merging with the local logits). They add up to the
request's end-to-end latency.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import torch

from transports.emulator import LinkProfile

from ..config import BenchConfig

STAGES = ("device", "encode", "transmit", "queue", "server", "reply", "merge")


@dataclass
class Outcome:
    predicted: int
    stages_ms: dict[str, float]
    bytes_up: int = 0
    bytes_down: int = 0
    failure: str = ""  # why the server's answer was not used (the prediction is then local, or -1)
    codec_ms: float = 0.0  # the payload codec's share of the encode stage (zstd, JPEG, quantisation)

    @property
    def latency_ms(self) -> float:
        return sum(self.stages_ms.values())


@dataclass
class Scheme:
    """A named way to classify an image; ``classify`` returns an :class:`Outcome`."""

    name: str
    family: str
    device_macs: int
    offloads: bool
    classify: Callable[[np.ndarray], Outcome]
    merge_macs: int = 0  # the device's arithmetic on the reply: AgileNN's weighted sum of logits
    codec_cycles: int = 0  # the payload codec's cycles on an MCU, when priced that way (0: scale host time)
    # The device part's instructions per inference (compute and payload coding), counted by running its
    # firmware in an emulator; when set, they price the device stages instead of the MAC count.
    device_instructions: int = 0


class Closeable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closeable)


@dataclass
class SchemeContext:
    """What a family builds its schemes from. ``endpoint`` is its served model's server, if any."""

    config: BenchConfig
    link: LinkProfile | None
    endpoint: str = ""
    resources: ExitStack = field(default_factory=ExitStack)

    def own(self, resource: C) -> C:
        """Close ``resource`` when the run ends, even if a later scheme fails to build."""
        self.resources.callback(resource.close)
        return resource


class Family(ABC):
    """A scheme family, picked by name: the model it needs served, and how it builds its schemes."""

    name: ClassVar[str] = ""  # set by register_family
    summary: ClassVar[str] = ""  # one line for ``agilenn bench --help``
    order: ClassVar[int] = 100  # where its schemes come in the report, lowest first
    marker: ClassVar[str] = "o"  # its matplotlib marker and line style in the plots
    linestyle: ClassVar[str] = "-"

    def served_model(self, config: BenchConfig) -> str | None:
        """The model an ``agilenn server`` must serve for these schemes; None for none."""
        return None

    def check(self, config: BenchConfig) -> None:
        """Refuse settings these schemes cannot run with (ValueError), before any server starts."""
        return None  # most families run with any settings

    @abstractmethod
    def schemes(self, context: SchemeContext) -> list[Scheme]:
        """The family's schemes; whatever they open goes through ``context.own``."""


FAMILIES: dict[str, type[Family]] = {}
F = TypeVar("F", bound="type[Family]")


def register_family(name: str) -> Callable[[F], F]:
    """A class decorator: ``--schemes name`` picks the family."""

    def register(family: F) -> F:
        if not name or "," in name or name == "all":
            raise ValueError(f"{name!r} cannot name a scheme family")
        if FAMILIES.get(name, family) is not family:
            raise ValueError(f"scheme family {name!r} is already {FAMILIES[name].__qualname__}")
        family.name = name
        FAMILIES[name] = family
        return family

    return register


def family_names() -> tuple[str, ...]:
    """Every registered family, in report order (``order``, then registration)."""
    return tuple(sorted(FAMILIES, key=lambda name: FAMILIES[name].order))


def select_families(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` checked against the registry (``all`` for every one), in report order."""
    known = family_names()
    if "all" in names:
        return known
    unknown = set(names) - set(known)
    if unknown or not names:
        raise ValueError(f"unknown schemes {sorted(unknown)}; pick from {', '.join(known)} or all")
    return tuple(name for name in known if name in names)


# ------------------------------------------------------------------ helpers for families
def as_input(image: np.ndarray) -> torch.Tensor:
    """A uint8 image as the float batch of one that the networks take."""
    return torch.from_numpy(np.ascontiguousarray(image)).float().div_(255.0).unsqueeze(0)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and how long it took, in milliseconds."""
    started = time.perf_counter()
    result = fn()
    return result, 1e3 * (time.perf_counter() - started)


def image_shape(config: Any) -> tuple[int, int, int]:
    return config.in_channels, config.image_size, config.image_size
