"""Fleet aggregation that fits sparse updates, refuses bad ones, and copes with absent devices. Pure.

Each device sends the tensors it updated, as deltas from the round's model,
with a mask per tensor saying which elements it updated (a channel slice of a
weight, a bias, or all of it) and its sample count. Every element is averaged
over the devices that updated it, weighted by their sample counts (sub-model
federated learning), never diluted by the devices that did not touch it.

Before averaging, each update is checked. An update is refused, with a logged
reason, when it holds NaN or infinity, names a tensor the model lacks or has
the wrong shape, or when its norm is more than ``norm_factor`` times the
median of the round's norms (a broken or malicious device). The round then
completes with the rest.

Devices that miss a round either count for nothing (``skip``), or have their
last accepted update reused, as FedLaAvg does (``reuse``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("agilenn.fleet")
ABSENT_POLICIES = ("skip", "reuse")


@dataclass(frozen=True)
class Update:
    device: str
    samples: int
    deltas: Mapping[str, np.ndarray]
    # name -> bool array shaped like the delta: the elements updated (a missing mask: all of them)
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)


def scaled(update: Update, factor: float) -> Update:
    """``update`` with its deltas times ``factor``: how a broken or malicious device is drilled."""
    return Update(update.device, update.samples,
                  {name: delta * factor for name, delta in update.deltas.items()}, update.masks)


@dataclass(frozen=True)
class Rejection:
    device: str
    reason: str


@dataclass
class Aggregator:
    """Aggregates rounds against the model's tensor shapes; remembers updates for ``reuse``."""

    shapes: Mapping[str, tuple[int, ...]]
    absent: str = "skip"
    norm_factor: float = 10.0
    last: dict[str, Update] = field(default_factory=dict)
    rejected: list[tuple[int, Rejection]] = field(default_factory=list)  # (round, why)

    def __post_init__(self) -> None:
        if self.absent not in ABSENT_POLICIES:
            raise ValueError(f"absent must be one of {', '.join(ABSENT_POLICIES)}")
        if not self.norm_factor > 1:
            raise ValueError("norm_factor must be above 1")

    def aggregate(self, round_number: int, updates: list[Update], fleet: list[str],
                  ) -> dict[str, np.ndarray]:
        """The averaged delta of each tensor any accepted update touched (zero where none did)."""
        accepted = [update for update in updates if self._check(round_number, update)]
        accepted = self._within_norms(round_number, accepted)
        for update in accepted:
            self.last[update.device] = update
        if self.absent == "reuse":
            present = {update.device for update in updates}
            accepted += [self.last[device] for device in fleet
                         if device not in present and device in self.last]
        return average(accepted, self.shapes)

    def refuse(self, round_number: int, device: str, reason: str) -> None:
        """Record an update refused before it could be read as one (its arrays did not add up)."""
        log.warning("round %d: rejected the update of %s: %s", round_number, device, reason)
        self.rejected.append((round_number, Rejection(device, reason)))

    def _reject(self, round_number: int, update: Update, reason: str) -> bool:
        self.refuse(round_number, update.device, reason)
        return False

    def _check(self, round_number: int, update: Update) -> bool:
        if update.samples < 1:
            return self._reject(round_number, update, f"{update.samples} samples")
        for name, delta in update.deltas.items():
            if name not in self.shapes:
                return self._reject(round_number, update, f"unknown tensor {name!r}")
            if tuple(delta.shape) != tuple(self.shapes[name]):
                return self._reject(round_number, update, f"{name} has shape {tuple(delta.shape)}, "
                                    f"the model's is {tuple(self.shapes[name])}")
            if not np.all(np.isfinite(delta)):
                return self._reject(round_number, update, f"{name} holds NaN or infinity")
            mask = update.masks.get(name)
            if mask is not None and tuple(mask.shape) != tuple(delta.shape):
                return self._reject(round_number, update, f"the mask of {name} has another shape")
        return True

    def _within_norms(self, round_number: int, updates: list[Update]) -> list[Update]:
        if len(updates) < 3:  # a median of fewer says nothing about which one is off
            return updates
        norms = [math.sqrt(sum(float(np.sum(np.square(d))) for d in u.deltas.values())) for u in updates]
        median = float(np.median(norms))
        kept = []
        for update, norm in zip(updates, norms, strict=True):
            if median > 0 and norm > self.norm_factor * median:
                self._reject(round_number, update, f"update norm {norm:.3g} is {norm / median:.1f}x the "
                             f"round's median {median:.3g} (limit {self.norm_factor}x)")
            else:
                kept.append(update)
        return kept


def average(updates: list[Update], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Per element: the sample-weighted mean over the updates whose mask covers it."""
    result: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        total = np.zeros(shape, dtype=np.float64)
        weight = np.zeros(shape, dtype=np.float64)
        for update in updates:
            if name not in update.deltas:
                continue
            mask = update.masks.get(name)
            covered = np.ones(shape, dtype=bool) if mask is None else mask.astype(bool)
            total += np.where(covered, update.deltas[name], 0.0) * update.samples
            weight += covered * update.samples
        if weight.any():
            result[name] = np.divide(total, weight, out=np.zeros(shape), where=weight > 0).astype(np.float32)
    return result


def update_bytes(update: Update) -> int:
    """What an update needs on the wire in a compact form: float32 for each element it updated,
    and for a partly updated tensor its mask: two bytes for a slice of leading input channels
    (how Tiny Training's sparse updates are shaped), else one bit an element."""
    size = 0
    for name, delta in update.deltas.items():
        mask = update.masks.get(name)
        if mask is None:
            size += 4 * delta.size
            continue
        size += 4 * int(mask.sum())
        leading = int(mask.reshape(mask.shape[0], mask.shape[1], -1)[0, :, 0].sum()) if mask.ndim >= 2 else -1
        slice_mask = np.zeros(mask.shape, bool)
        if leading >= 0:
            slice_mask[:, :leading] = True
        size += 2 if leading >= 0 and np.array_equal(mask.astype(bool), slice_mask) else -(-mask.size // 8)
    return size


def update_to_arrays(update: Update, names: list[str], shapes: Mapping[str, tuple[int, ...]],
                     ) -> list[np.ndarray]:
    """An update as Flower carries it: for each tensor in ``names`` order, its delta and a uint8
    mask of the elements updated (all zero: not updated)."""
    arrays: list[np.ndarray] = []
    for name in names:
        delta = update.deltas.get(name)
        if delta is None:
            arrays += [np.zeros(shapes[name], np.float32), np.zeros(shapes[name], np.uint8)]
            continue
        mask = update.masks.get(name)
        arrays += [np.asarray(delta, np.float32),
                   np.ones(shapes[name], np.uint8) if mask is None else mask.astype(np.uint8)]
    return arrays


def arrays_to_update(device: str, samples: int, arrays: list[np.ndarray], names: list[str]) -> Update:
    """The update a client's arrays describe; shapes are not trusted here (the aggregator checks).
    ValueError when there are not two arrays, a delta and a mask, for each tensor."""
    if len(arrays) != 2 * len(names):
        raise ValueError(f"{len(arrays)} arrays, not a delta and a mask for each of {len(names)} tensors")
    deltas, masks = {}, {}
    for index, name in enumerate(names):
        delta, mask = arrays[2 * index], arrays[2 * index + 1].astype(bool)
        if not mask.any():
            continue
        deltas[name] = delta
        if not mask.all():
            masks[name] = mask
    return Update(device, samples, deltas, masks)
