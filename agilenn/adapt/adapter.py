"""On-device adaptation of the device part: choose what trains, then train it on drifted data.

``adapt(model, train_set, config)`` returns a new model. The device part
(extractor and local predictor) trains only the chosen :class:`Selection`;
the remote predictor and the merge, which live on the server, adapt in the
same rounds. The loss is AgileNN's training loss without its rate term:
cross-entropy of the merged and of the local logits, plus the skewness and
disorder losses of the Integrated Gradients importance against the reference
network (which stays on the server), so skewness survives the adaptation. Run in one process this is
split learning with the wire left out: the gradient that reaches the
extractor's output is the one the server would send back.

Methods (``METHODS``): ``full`` (the whole device part), ``last`` (the local
predictor), ``bias`` (every bias), ``sparse`` (Tiny Training: a contribution
analysis measures each candidate's accuracy gain, and a knapsack picks the
most gain within ``memory_budget``) and ``elastic`` (ElasticTrainer: Taylor
importance and a backward-time model, a knapsack per depth within
``time_budget``).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..config import TrainConfig
from ..data import ImageDataset
from ..importance import channel_importance, integrated_gradients
from ..losses import disorder_loss, skewness_loss
from ..model import AgileNN
from .elastic import backward_time_model, select_within_time, taylor_importance
from .knapsack import knapsack
from .memory import estimate_peak_memory, measure_peak_memory
from .selection import DevicePart, Selection, apply_selection, bias_only, full, remove_selection, under

METHODS = ("full", "last", "bias", "sparse", "elastic")
SPARSE_RATIOS = (0.25, 0.5, 1.0)


@dataclass(frozen=True)
class AdaptConfig:
    method: str = "sparse"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 2e-3
    optimizer: str = "adam"
    memory_budget: int = 0  # bytes of peak training memory; 0: no budget
    time_budget: float = 0.3  # elastic: a fraction of the full update's backward time
    slowdown: float = 1.0  # the device's backward time over this host's
    probe_epochs: int = 1  # sparse: training each candidate alone, to measure its gain
    seed: int = 0
    training: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; pick one of {', '.join(METHODS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 < self.time_budget <= 1:
            raise ValueError("epochs, batch_size and lr must be positive and time_budget in (0, 1]")


@dataclass
class AdaptResult:
    model: AgileNN
    selection: Selection
    peak_memory_estimated: int
    peak_memory_measured: int
    full_update_peak_memory: int
    train_seconds: float
    details: dict[str, Any]
    samples_through_split: int  # every sample's pass through the split: training and probes


def _first_batch(train_set: ImageDataset, config: AdaptConfig) -> tuple[Tensor, Tensor]:
    """The batch the memory and time models are taken on."""
    return train_set.batch(slice(0, config.batch_size))


def _loss(model: AgileNN, images: Tensor, labels: Tensor, config: TrainConfig) -> Tensor:
    k = model.config.local_channels
    out = model(images)
    importance = channel_importance(integrated_gradients(
        model.reference, out.features, labels, config.ig_steps, config.second_order, config.ig_target))
    return (config.lam * F.cross_entropy(out.logits, labels)
            + (1.0 - config.lam) * (skewness_loss(importance, k, config.rho) + disorder_loss(importance, k))
            + config.local_ce_weight * F.cross_entropy(out.local_logits, labels))


def accuracies(model: AgileNN, dataset: ImageDataset, batch_size: int = 1000) -> tuple[float, float]:
    """Combined and local-only accuracy (the model's own forward: the codec is lossless on symbols)."""
    combined = local = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            images, labels = dataset.batch(slice(start, start + batch_size))
            out = model(images)
            combined += int((out.logits.argmax(1) == labels).sum())
            local += int((out.local_logits.argmax(1) == labels).sum())
    return combined / len(dataset), local / len(dataset)


def _accuracy(model: AgileNN, dataset: ImageDataset) -> float:
    return accuracies(model, dataset)[0]


def train_selection(model: AgileNN, selection: Selection, train_set: ImageDataset, config: AdaptConfig,
                    epochs: int, progress: bool = False, server_side: bool = True) -> AgileNN:
    """A copy of ``model`` whose selection (and, with ``server_side``, the server's remote
    predictor and merge) trained ``epochs`` epochs; nothing else changes, the quantizer's
    centroids and the reference included."""
    adapted = copy.deepcopy(model).eval()  # BatchNorm keeps its statistics, as on the device
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    apply_selection(DevicePart(adapted), selection)
    if server_side:
        for parameter in [*adapted.remote_predictor.parameters(), *adapted.merge.parameters()]:
            parameter.requires_grad_(True)
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    optimizer = (torch.optim.Adam(trainable, lr=config.lr) if config.optimizer == "adam"
                 else torch.optim.SGD(trainable, lr=config.lr, momentum=0.9 if config.optimizer == "momentum"
                                      else 0.0))
    generator = torch.Generator().manual_seed(config.seed)
    steps = epochs * -(-len(train_set) // config.batch_size)
    with tqdm(total=steps, disable=not progress, desc=f"adapt {config.method}", leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(train_set), generator=generator)
            for start in range(0, len(train_set), config.batch_size):
                images, labels = train_set.batch(order[start:start + config.batch_size])
                loss = _loss(adapted, images, labels, config.training)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update()
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
    remove_selection(adapted)
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    adapted.freeze_reference()
    return adapted.eval()


def _peak(part: DevicePart, example: Tensor, selection: Selection, config: AdaptConfig) -> int:
    return estimate_peak_memory(part, example, selection, config.optimizer).peak


def _resident(part: DevicePart, example: Tensor, config: AdaptConfig) -> int:
    """What a step holds whatever trains: the weights, the input batch and the loss."""
    estimate = estimate_peak_memory(part, example, under(part, "local_predictor"), config.optimizer)
    return estimate.weights + estimate.input + estimate.loss


def _tail(dataset: ImageDataset, start: int) -> ImageDataset:
    return ImageDataset(dataset.name, dataset.images[start:], dataset.labels[start:], dataset.num_classes)


def _union(selections: list[Selection]) -> Selection:
    merged = Selection({})
    for selection in selections:
        merged = merged | selection
    return merged


def sparse_selection(model: AgileNN, train_set: ImageDataset, config: AdaptConfig,
                     progress: bool = False) -> tuple[Selection, dict[str, Any]]:
    """Tiny Training's contribution analysis: each candidate (a bias; a weight at a fraction of its
    input channels) trains alone on 80% of the set; its accuracy gain on the other 20% is its value
    and its peak memory above the resident weights its cost; a knapsack picks within the budget."""
    part, (example, _) = DevicePart(model), _first_batch(train_set, config)
    split = max(1, len(train_set) * 4 // 5)
    probe, held_out = train_set.head(split), _tail(train_set, split)
    before = _accuracy(model, held_out)
    weights = [(name, p) for name, p in part.named_parameters() if p.dim() >= 2]
    candidates = [Selection({name: 1.0}) for name, p in part.named_parameters() if p.dim() < 2]
    candidates += [Selection({name: ratio}) for name, p in weights for ratio in SPARSE_RATIOS
                   if ratio == 1.0 or p.shape[1] > 1]
    resident = _resident(part, example, config)
    gains, costs = [], []
    for candidate in tqdm(candidates, disable=not progress, desc="contribution analysis", leave=False):
        # The candidate alone: a server side adapting too would move every candidate's gain alike.
        trained = train_selection(model, candidate, probe, config, config.probe_epochs, server_side=False)
        gains.append(_accuracy(trained, held_out) - before)
        costs.append(max(0, _peak(part, example, candidate, config) - resident))
    budget = config.memory_budget or _peak(part, example, full(part), config)
    selection = _best_within(part, example, config, candidates, gains, costs, budget, resident)
    if selection is None:
        smallest = min(_peak(part, example, candidate, config) for candidate in candidates)
        raise ValueError(f"nothing trains within a memory budget of {budget} bytes; the smallest "
                         f"candidate needs {smallest}")
    table = [{"candidate": dict(c.ratios), "accuracy_gain": round(g, 4), "bytes": cost}
             for c, g, cost in zip(candidates, gains, costs, strict=True)]
    passes = len(candidates) * config.probe_epochs * len(probe)
    return selection, {"contributions": table, "held_out_accuracy_before": before, "probe_samples": passes}


def _best_within(part: DevicePart, example: Tensor, config: AdaptConfig, candidates: list[Selection],
                 gains: list[float], costs: list[int], budget: int, resident: int) -> Selection | None:
    """The most summed gain within a peak of ``budget`` bytes: at most one channel ratio per weight
    (every combination is tried; there are few), the biases by a knapsack in what each leaves."""
    room = budget - resident
    biases = [i for i, c in enumerate(candidates) if all(ratio == 1.0 and "bias" in name
                                                          for name, ratio in c.ratios.items())]
    options: dict[str, list[int]] = {}
    for index, candidate in enumerate(candidates):
        if index not in biases:
            options.setdefault(next(iter(candidate.ratios)), []).append(index)
    best: tuple[float, list[int]] | None = None
    for combination in itertools.product(*[[None, *indices] for indices in options.values()]):
        chosen = [i for i in combination if i is not None]
        left = room - sum(costs[i] for i in chosen)
        if left < 0:
            continue
        chosen += [biases[i] for i in knapsack([gains[b] for b in biases], [costs[b] for b in biases], left)]
        # Peaks do not simply add up: drop the weakest until the union fits.
        while chosen and _peak(part, example, _union([candidates[i] for i in chosen]), config) > budget:
            chosen.remove(min(chosen, key=lambda i: gains[i] / max(costs[i], 1)))
        value = sum(gains[i] for i in chosen)
        if chosen and (best is None or value > best[0]):
            best = (value, chosen)
    return _union([candidates[i] for i in best[1]]) if best is not None else None


def elastic_selection(model: AgileNN, train_set: ImageDataset, config: AdaptConfig,
                      ) -> tuple[Selection, dict[str, Any]]:
    """ElasticTrainer: Taylor importance from one probe step, then the most importance within
    ``time_budget`` of the full update's backward time (see :mod:`agilenn.adapt.elastic`)."""
    probe = copy.deepcopy(model).eval()
    part, (images, labels) = DevicePart(probe), _first_batch(train_set, config)
    parameters = dict(part.named_parameters())
    for parameter in parameters.values():
        parameter.requires_grad_(True)
    importance = taylor_importance(parameters, lambda: _loss(probe, images, labels, config.training),
                                   config.lr)
    layers = backward_time_model(part, images, set(parameters), config.slowdown)
    choice = select_within_time(layers, importance, config.time_budget)
    if not choice.tensors:
        raise ValueError(f"nothing trains within {config.time_budget:.0%} of the full update's backward time")
    selection = Selection.whole(list(choice.tensors))
    return selection, {"importance": importance, "importance_share": choice.importance,
                       "probe_samples": len(images),
                       "backward_s_modelled": choice.backward_s,
                       "full_backward_s_modelled": choice.full_backward_s}


def choose_selection(model: AgileNN, train_set: ImageDataset, config: AdaptConfig,
                     progress: bool = False) -> tuple[Selection, dict[str, Any]]:
    part = DevicePart(model)
    fixed: dict[str, Callable[[], Selection]] = {
        "full": lambda: full(part), "last": lambda: under(part, "local_predictor"),
        "bias": lambda: bias_only(part)}
    if config.method in fixed:
        return fixed[config.method](), {}
    if config.method == "sparse":
        return sparse_selection(model, train_set, config, progress)
    return elastic_selection(model, train_set, config)


def adapt(model: AgileNN, train_set: ImageDataset, config: AdaptConfig,
          progress: bool = False) -> AdaptResult:
    """Choose what trains by ``config.method``, measure its memory, train it; the model is left unchanged."""
    torch.manual_seed(config.seed)
    selection, details = choose_selection(model, train_set, config, progress)
    part, (example, labels) = DevicePart(model), _first_batch(train_set, config)
    estimated = _peak(part, example, selection, config)
    measured = measure_peak_memory(part, example, selection, lambda logits: F.cross_entropy(logits, labels),
                                   config.optimizer).peak
    started = time.perf_counter()
    adapted = train_selection(model, selection, train_set, config, config.epochs, progress)
    seconds = time.perf_counter() - started
    passes = config.epochs * len(train_set) + int(details.get("probe_samples", 0))
    return AdaptResult(adapted, selection, estimated, measured, _peak(part, example, full(part), config),
                       seconds, details, passes)


def pseudo_labelled(model: AgileNN, dataset: ImageDataset, threshold: float = 0.9) -> ImageDataset:
    """The samples the server's merged prediction is at least ``threshold`` sure of, labelled with it:
    adaptation without labels from the user (their own labels are never read)."""
    with torch.no_grad():
        images, _ = dataset.batch(slice(0, len(dataset)))
        probabilities = torch.softmax(model(images).logits, dim=1)
    confidence, predicted = probabilities.max(dim=1)
    keep = (confidence >= threshold).numpy()
    return ImageDataset(f"{dataset.name}:pseudo", dataset.images[keep], predicted.numpy()[keep],
                        dataset.num_classes)


def split_learning_bytes(model: AgileNN, passes: int) -> int:
    """What the exchange would carry: each pass's features up and their gradient down, float16."""
    config = model.config
    per_sample = config.feature_channels * config.feature_size**2 * 2
    return 2 * per_sample * passes
