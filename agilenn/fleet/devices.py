"""A non-IID fleet made from MNIST, and what one device does in a round of fleet learning.

Each simulated device sees its own drift: two MNIST-C corruptions (half of its
images each) and a skewed class mix drawn from a Dirichlet distribution. Its
adaptation set comes from the MNIST training split and its own held-out set
from the test split, disjoint from every other device's; all seeded.

In a round a device starts from the fleet's device part, trains it on its own
samples by split learning against the server's fixed remote part (the server
serves every device one remote part; only device parts are federated), and
sends the change of the tensors it updated, with masks for channel slices.
"""

from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import torch

from ..adapt.adapter import AdaptConfig, accuracies, train_selection
from ..adapt.selection import DevicePart, Selection, bias_only, full, trained_channels
from ..adapt.split import InProcessServer
from ..data import ImageDataset
from ..data.mnist_c import corrupt
from ..model import AgileNN
from .aggregate import Update

DRIFTS = ("rotate", "fog", "shot_noise", "stripe", "shear", "motion_blur", "brightness", "zigzag")
FLEET_METHODS = ("full", "sparse")


@dataclass(frozen=True)
class Device:
    name: str
    corruptions: tuple[str, str]
    train: ImageDataset
    test: ImageDataset


def _draw(dataset: ImageDataset, available: list[np.ndarray], weights: np.ndarray, count: int,
          rng: np.random.Generator) -> np.ndarray:
    """``count`` unused indices of ``dataset`` with a class mix close to ``weights``."""
    chosen: list[int] = []
    for label in rng.choice(len(weights), size=count, p=weights):
        if len(available[label]) == 0:
            label = int(np.argmax([len(pool) for pool in available]))
        chosen.append(int(available[label][-1]))
        available[label] = available[label][:-1]
    return np.array(chosen)


def make_fleet(train: ImageDataset, test: ImageDataset, devices: int, train_per_device: int = 200,
               test_per_device: int = 300, alpha: float = 0.5, seed: int = 0,
               only: Collection[int] | None = None) -> list[Device]:
    """The fleet, or with ``only`` those of its devices (the same ones: every device's draws are
    made, so an edge host builds just the devices behind it)."""
    rng = np.random.default_rng(seed)
    pools = {name: [rng.permutation(np.flatnonzero(data.labels == c)) for c in range(data.num_classes)]
             for name, data in (("train", train), ("test", test))}
    fleet = []
    for index in range(devices):
        first, second = rng.choice(len(DRIFTS), size=2, replace=False)
        corruptions = (DRIFTS[first], DRIFTS[second])
        weights = rng.dirichlet(np.full(train.num_classes, alpha))
        parts = []
        for split, data, count in (("train", train, train_per_device), ("test", test, test_per_device)):
            chosen = _draw(data, pools[split], weights, count, rng)
            if only is not None and index not in only:
                continue
            images = data.images[chosen].copy()
            half = count // 2
            images[:half] = corrupt(images[:half], corruptions[0], seed * 1000 + 2 * index)
            images[half:] = corrupt(images[half:], corruptions[1], seed * 1000 + 2 * index + 1)
            parts.append(ImageDataset(f"device-{index}:{split}", images, data.labels[chosen],
                                      data.num_classes))
        if parts:
            fleet.append(Device(f"device-{index}", corruptions, parts[0], parts[1]))
    return fleet


def fleet_selection(model: AgileNN, method: str) -> Selection:
    """``full``: the whole device part; ``sparse``: every bias and a quarter of the input channels
    of the last extractor layer and of the local predictor (Tiny Training's shape of update)."""
    part = DevicePart(model)
    if method == "full":
        return full(part)
    if method != "sparse":
        raise ValueError(f"unknown fleet method {method!r}; pick one of {', '.join(FLEET_METHODS)}")
    quarter = {"extractor.pointwise.0.weight": 0.25, "local_predictor.linear.weight": 0.25}
    return bias_only(part) | Selection(quarter)


def local_update(model: AgileNN, device: Device, selection: Selection, config: AdaptConfig) -> Update:
    """``device``'s change to ``model``'s device part after ``config.epochs`` epochs on its samples."""
    server = InProcessServer(config.training, config.lr, config.optimizer)
    peer = server.open(model, train=False)  # the fleet shares the server's remote part, fixed
    trained = train_selection(model, selection, device.train, config, config.epochs, peer)
    before, after = DevicePart(model).state_dict(), DevicePart(trained).state_dict()
    deltas, masks = {}, {}
    for name, ratio in selection.ratios.items():
        deltas[name] = (after[name] - before[name]).numpy()
        if ratio < 1.0:
            mask = np.zeros(before[name].shape, bool)
            mask[:, :trained_channels(before[name].shape, ratio)] = True
            masks[name] = mask
    return Update(device.name, len(device.train), deltas, masks)


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


def apply_deltas(model: AgileNN, deltas: dict[str, np.ndarray]) -> AgileNN:
    """A copy of ``model`` whose device part moved by ``deltas``."""
    moved = copy.deepcopy(model)
    state = DevicePart(moved).state_dict()
    with torch.no_grad():
        for name, delta in deltas.items():
            state[name].add_(torch.from_numpy(delta).to(state[name].dtype))
    return moved


def mean_accuracy(model: AgileNN | list[AgileNN], fleet: list[Device]) -> float:
    """Combined accuracy on each device's own test set (one model for all, or one each), averaged."""
    models = model if isinstance(model, list) else [model] * len(fleet)
    return float(np.mean([accuracies(m, device.test)[0] for m, device in zip(models, fleet, strict=True)]))
