"""On-device adaptation of the device part: choose what trains, then train it on drifted data.

``adapt(model, train_set, config)`` returns a new model. The device part
(extractor and local predictor) trains only the chosen :class:`Selection`.
With ``remote="split"`` (the default) it trains by split learning
(:mod:`agilenn.adapt.split`): each batch's features go to a server half, which
answers with the gradient of the merged cross-entropy and of the skewness and
disorder losses (Integrated Gradients against the reference network, which
stays on the server), so skewness survives the adaptation; the remote
predictor and the merge adapt in the same rounds. The server half runs in
process unless ``server`` reaches a real one (``edge_node.split_learning``).
With ``remote="fixed"`` the device learns alone on its local cross-entropy and
the remote channels' filters stay fixed, so the server needs no change.

Methods (``METHODS``): ``full`` (the whole device part), ``last`` (the local
predictor), ``bias`` (every bias), ``sparse`` (Tiny Training: a contribution
analysis measures each candidate's accuracy gain, and a knapsack picks the
most gain within ``memory_budget``) and ``elastic`` (ElasticTrainer: Taylor
importance and a backward-time model, a knapsack per depth within
``time_budget``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..config import TrainConfig
from ..data import ImageDataset
from ..model import AgileNN, split_channels
from .elastic import backward_time_model, select_within_time, taylor_importance
from .knapsack import knapsack
from .memory import estimate_peak_memory, measure_peak_memory
from .selection import DevicePart, Selection, apply_selection, bias_only, full, remove_selection, under
from ..schedule.costs import device_costs
from ..schedule.executor import Executor, gradients_match, plain_step
from ..schedule.graph import trace_step
from ..schedule.milp import InfeasibleSchedule, SolveOptions, solve
from ..schedule.program import Plan
from .split import (
    InProcessServer,
    SplitGradients,
    SplitPeer,
    SplitServer,
    SplitStep,
    device_loss,
    make_optimizer,
)

METHODS = ("full", "last", "bias", "sparse", "elastic")
REMOTE_MODES = ("split", "fixed")
# With the remote channels fixed, only the local predictor and the local channels' rows of the
# extractor's last layer may train: everything before that layer feeds the remote channels too.
REMOTE_FIXED_LAYER = "extractor.pointwise."
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
    remote: str = "split"  # split: the server adapts alongside; fixed: the remote channels stay put
    # Costs the memory scheduler plans with when a selection does not fit memory_budget as plain
    # training: the device's paging assumptions and its MAC rate (the bench's stm32f746 profile).
    schedule_device: str = "stm32f746"
    device_macs_per_second: float = 124e6
    training: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; pick one of {', '.join(METHODS)}")
        if self.remote not in REMOTE_MODES:
            raise ValueError(f"unknown remote mode {self.remote!r}; pick one of {', '.join(REMOTE_MODES)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 < self.time_budget <= 1:
            raise ValueError("epochs, batch_size and lr must be positive and time_budget in (0, 1]")


@dataclass
class AdaptResult:
    model: AgileNN
    selection: Selection
    peak_memory_estimated: int
    peak_memory_measured: int
    full_update_peak_memory: int
    train_seconds: float  # training alone: choosing the selection (probes included) is not in it
    server_seconds: float  # of train_seconds, waiting on the server half (the wire included)
    details: dict[str, Any]
    bytes_exchanged: int  # by split learning, both ways: training and probes


def _first_batch(train_set: ImageDataset, config: AdaptConfig) -> tuple[Tensor, Tensor]:
    """The batch the memory and time models are taken on."""
    return train_set.batch(slice(0, config.batch_size))


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


def _mask_remote_rows(part: DevicePart) -> None:
    """Keep the remote channels' filters fixed: the last extractor layer trains only the rows
    (output channels) of the local channels, so what the server receives does not move."""
    keep = part.local_channels
    for name, parameter in part.named_parameters():
        if parameter.requires_grad and name.startswith(REMOTE_FIXED_LAYER):
            mask = torch.zeros(parameter.shape[0], *[1] * (parameter.dim() - 1))
            mask[:keep] = 1.0
            parameter.register_hook(lambda gradient, mask=mask: gradient * mask)


def split_objective(model: AgileNN, images: Tensor, labels: Tensor, peer: SplitPeer | None,
                    config: TrainConfig) -> tuple[Tensor, float]:
    """A scalar whose gradient in the device part is the split loss's, and the loss itself.

    The scalar is the device's own term plus the server's gradients dotted with the outputs they
    answer: back-propagating it is back-propagating the server's gradients. Without a peer the
    device learns alone, on its own term.
    """
    features = model.extractor(images)
    local_logits = model.local_predictor(split_channels(features, model.config.local_channels)[0])
    loss = device_loss(local_logits, labels, config)
    if peer is None:
        return loss, float(loss.detach())
    answer = peer.step(features.detach(), local_logits.detach(), labels)
    objective = loss + (features * answer.features).sum() + (local_logits * answer.local_logits).sum()
    return objective, float(loss.detach()) + answer.loss


def _split_step(adapted: AgileNN, config: TrainConfig) -> SplitStep:
    return SplitStep(DevicePart(adapted), adapted.config.local_channels, config.local_ce_weight)


def _scheduled_step(adapted: AgileNN, plan: Plan, images: Tensor, labels: Tensor, peer: SplitPeer | None,
                    config: TrainConfig, executor: Executor, parameters: dict[str, nn.Parameter]) -> float:
    """One step run by the memory scheduler's plan: a forward without gradients gives the server
    its features, then the plan runs the split objective with the server's answer as inputs."""
    with torch.no_grad():
        features = adapted.extractor(images)
        local_logits = adapted.local_predictor(split_channels(features, adapted.config.local_channels)[0])
    feature_gradient, logit_gradient = torch.zeros_like(features), torch.zeros_like(local_logits)
    server_loss = 0.0
    if peer is not None:
        answer = peer.step(features, local_logits, labels)
        feature_gradient, logit_gradient, server_loss = answer.features, answer.local_logits, answer.loss
    execution = executor.run(plan, images, labels, feature_gradient, logit_gradient)
    for name, gradient in execution.gradients.items():
        parameters[name].grad = gradient
    return execution.loss + server_loss


def train_selection(model: AgileNN, selection: Selection, train_set: ImageDataset, config: AdaptConfig,
                    epochs: int, peer: SplitPeer | None, progress: bool = False,
                    plan: Plan | None = None) -> AgileNN:
    """A copy of ``model`` whose selection trained ``epochs`` epochs by split learning with
    ``peer`` (whose adapted remote predictor and merge the copy takes), or, with no peer, on the
    device alone with the remote channels fixed. Nothing else changes: the quantizer's centroids
    and the reference stay as they were. With a memory-scheduler ``plan`` (whole tensors only)
    every step runs by it, on full batches: a last, smaller batch would be another graph."""
    adapted = copy.deepcopy(model).eval()  # BatchNorm keeps its statistics, as on the device
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    part = DevicePart(adapted)
    executor = None
    if plan is None:
        apply_selection(part, selection)
    else:
        for name, parameter in part.named_parameters():
            parameter.requires_grad_(name in selection.ratios)
        example, labels = train_set.batch(slice(0, config.batch_size))
        executor = Executor(trace_step(_split_step(adapted, config.training),
                                       _step_inputs(adapted, example, labels), set(selection.ratios)))
    if peer is None:
        _mask_remote_rows(part)
    optimizer = make_optimizer([p for p in adapted.parameters() if p.requires_grad], config.optimizer,
                               config.lr)
    parameters = dict(part.named_parameters())  # where a scheduled step puts its gradients
    generator = torch.Generator().manual_seed(config.seed)
    last_start = len(train_set) - (config.batch_size if plan is not None else 1)
    steps = epochs * (last_start // config.batch_size + 1)
    with tqdm(total=steps, disable=not progress, desc=f"adapt {config.method}", leave=False) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(train_set), generator=generator)
            for start in range(0, last_start + 1, config.batch_size):
                images, labels = train_set.batch(order[start:start + config.batch_size])
                optimizer.zero_grad(set_to_none=True)
                if plan is not None and executor is not None:
                    loss = _scheduled_step(adapted, plan, images, labels, peer, config.training, executor,
                                           parameters)
                else:
                    objective, loss = split_objective(adapted, images, labels, peer, config.training)
                    objective.backward()
                optimizer.step()
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}")
    remove_selection(adapted)
    if peer is not None:
        adapted.load_state_dict(peer.trained_state(), strict=False)
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


class _TimedPeer:
    """A peer that adds the seconds each step waits on the server to ``seconds``."""

    def __init__(self, peer: SplitPeer) -> None:
        self.peer, self.seconds = peer, 0.0

    @property
    def bytes_exchanged(self) -> int:
        return self.peer.bytes_exchanged

    def step(self, features: Tensor, local_logits: Tensor, labels: Tensor) -> SplitGradients:
        started = time.perf_counter()
        try:
            return self.peer.step(features, local_logits, labels)
        finally:
            self.seconds += time.perf_counter() - started

    def trained_state(self) -> dict[str, Tensor]:
        return self.peer.trained_state()

    def close(self) -> None:
        self.peer.close()


class _Peers:
    """Opens the server halves of one adaptation (none with the remote channels fixed) and
    counts what they exchanged and how long steps waited on them."""

    def __init__(self, server: SplitServer, remote: str) -> None:
        self.server, self.remote = server, remote
        self.bytes_exchanged = 0
        self.server_seconds = 0.0

    @contextlib.contextmanager
    def open(self, model: AgileNN, train: bool) -> Iterator[SplitPeer | None]:
        if self.remote == "fixed":
            yield None
            return
        peer = _TimedPeer(self.server.open(model, train))
        try:
            yield peer
        finally:
            peer.close()
            self.bytes_exchanged += peer.bytes_exchanged
            self.server_seconds += peer.seconds


def trainable_names(part: DevicePart, remote: str) -> list[str]:
    """What may train: all of the device part, or with the remote channels fixed only the local
    predictor and the last extractor layer (whose remote rows :func:`_mask_remote_rows` holds)."""
    names = [name for name, _ in part.named_parameters()]
    if remote == "split":
        return names
    return [name for name in names if name.startswith(("local_predictor.", REMOTE_FIXED_LAYER))]


def sparse_selection(model: AgileNN, train_set: ImageDataset, config: AdaptConfig, peers: _Peers,
                     progress: bool = False) -> tuple[Selection, dict[str, Any]]:
    """Tiny Training's contribution analysis: each candidate (a bias; a weight at a fraction of its
    input channels) trains alone on 80% of the set; its accuracy gain on the other 20% is its value
    and its peak memory above the resident weights its cost; a knapsack picks within the budget."""
    part, (example, _) = DevicePart(model), _first_batch(train_set, config)
    split = max(1, len(train_set) * 4 // 5)
    probe, held_out = train_set.head(split), _tail(train_set, split)
    before = _accuracy(model, held_out)
    allowed = set(trainable_names(part, config.remote))
    parameters = [(name, p) for name, p in part.named_parameters() if name in allowed]
    candidates = [Selection({name: 1.0}) for name, p in parameters if p.dim() < 2]
    candidates += [Selection({name: ratio}) for name, p in parameters if p.dim() >= 2
                   for ratio in SPARSE_RATIOS if ratio == 1.0 or p.shape[1] > 1]
    resident = _resident(part, example, config)
    gains, costs = [], []
    for candidate in tqdm(candidates, disable=not progress, desc="contribution analysis", leave=False):
        # The candidate alone: a server side adapting too would move every candidate's gain alike.
        with peers.open(model, train=False) as peer:
            trained = train_selection(model, candidate, probe, config, config.probe_epochs, peer)
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
    return selection, {"contributions": table, "held_out_accuracy_before": before}


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


def elastic_selection(model: AgileNN, train_set: ImageDataset, config: AdaptConfig, peers: _Peers,
                      ) -> tuple[Selection, dict[str, Any]]:
    """ElasticTrainer: Taylor importance from one probe step, then the most importance within
    ``time_budget`` of the full update's backward time (see :mod:`agilenn.adapt.elastic`)."""
    probe = copy.deepcopy(model).eval()
    part, (images, labels) = DevicePart(probe), _first_batch(train_set, config)
    allowed = set(trainable_names(part, config.remote))
    parameters = {name: p for name, p in part.named_parameters() if name in allowed}
    for parameter in parameters.values():
        parameter.requires_grad_(True)
    with peers.open(model, train=False) as peer:
        importance = taylor_importance(
            parameters, lambda: split_objective(probe, images, labels, peer, config.training)[0], config.lr)
    layers = backward_time_model(part, images, set(parameters), config.slowdown)
    choice = select_within_time(layers, importance, config.time_budget)
    if not choice.tensors:
        raise ValueError(f"nothing trains within {config.time_budget:.0%} of the full update's backward time")
    selection = Selection.whole(list(choice.tensors))
    return selection, {"importance": importance, "importance_share": choice.importance,
                       "backward_s_modelled": choice.backward_s,
                       "full_backward_s_modelled": choice.full_backward_s}


def choose_selection(model: AgileNN, train_set: ImageDataset, config: AdaptConfig,
                     server: SplitServer | None = None, progress: bool = False,
                     ) -> tuple[Selection, dict[str, Any]]:
    return _choose(model, train_set, config, _Peers(server or _in_process(config), config.remote), progress)


def _choose(model: AgileNN, train_set: ImageDataset, config: AdaptConfig, peers: _Peers,
            progress: bool) -> tuple[Selection, dict[str, Any]]:
    part = DevicePart(model)
    fixed: dict[str, Callable[[], Selection]] = {
        "full": lambda: full(part), "last": lambda: under(part, "local_predictor"),
        "bias": lambda: bias_only(part)}
    if config.method == "sparse":
        return sparse_selection(model, train_set, config, peers, progress)
    if config.method == "elastic":
        return elastic_selection(model, train_set, config, peers)
    allowed = set(trainable_names(part, config.remote))
    selection = Selection({name: ratio for name, ratio in fixed[config.method]().ratios.items()
                           if name in allowed})
    if not selection.ratios:
        raise ValueError(f"{config.method} trains nothing with the remote channels fixed")
    return selection, {}


def _in_process(config: AdaptConfig) -> SplitServer:
    return InProcessServer(config.training, config.lr, config.optimizer)


def adapt(model: AgileNN, train_set: ImageDataset, config: AdaptConfig, progress: bool = False,
          server: SplitServer | None = None) -> AdaptResult:
    """Choose what trains by ``config.method``, measure its memory, train it; the model is left
    unchanged. ``server``: where the server halves of split learning run (default: in process)."""
    torch.manual_seed(config.seed)
    peers = _Peers(server or _in_process(config), config.remote)
    selection, details = _choose(model, train_set, config, peers, progress)
    part, (example, labels) = DevicePart(model), _first_batch(train_set, config)
    estimated = _peak(part, example, selection, config)
    measured = measure_peak_memory(part, example, selection, lambda logits: F.cross_entropy(logits, labels),
                                   config.optimizer).peak
    plan = None
    if config.memory_budget and estimated > config.memory_budget:
        plan, schedule = _schedule(model, selection, example, labels, config)
        details["schedule"] = schedule
        estimated, measured = schedule["peak_memory_bytes_planned"], schedule["peak_memory_bytes_measured"]
    waited_before = peers.server_seconds
    started = time.perf_counter()
    with peers.open(model, train=True) as peer:
        adapted = train_selection(model, selection, train_set, config, config.epochs, peer, progress, plan)
    seconds = time.perf_counter() - started
    return AdaptResult(adapted, selection, estimated, measured, _peak(part, example, full(part), config),
                       seconds, peers.server_seconds - waited_before, details, peers.bytes_exchanged)


def _step_inputs(model: AgileNN, images: Tensor, labels: Tensor) -> tuple[Tensor, ...]:
    config = model.config
    features = torch.zeros(len(images), config.feature_channels, config.feature_size, config.feature_size)
    return images, labels, features, torch.zeros(len(images), config.num_classes)


def _schedule(model: AgileNN, selection: Selection, images: Tensor, labels: Tensor, config: AdaptConfig,
              ) -> tuple[Plan, dict[str, Any]]:
    """A selection too big for the budget as plain training runs by a memory schedule: the plan,
    checked once on the first batch (gradients, peak, bytes paged), and its figures."""
    if any(ratio < 1.0 for ratio in selection.ratios.values()):
        raise ValueError("a selection with channel fractions does not fit the memory budget, and "
                         "the memory scheduler plans whole tensors only")
    step = _split_step(copy.deepcopy(model).eval(), config.training)
    inputs = _step_inputs(model, images, labels)
    graph = trace_step(step, inputs, set(selection.ratios))
    costs = device_costs(config.schedule_device, config.device_macs_per_second)
    try:
        solution = solve(graph, costs, SolveOptions(config.memory_budget, time_limit=60.0))
    except InfeasibleSchedule as exc:
        raise ValueError(f"{config.method} does not fit {config.memory_budget} bytes, even with a memory "
                         f"schedule: {exc}") from None
    planned = solution.plan.simulate(graph)
    execution = Executor(graph).run(solution.plan, *inputs)
    return solution.plan, {
        "status": solution.status, "plain_peak_memory_bytes": graph.plain_peak_bytes,
        "peak_memory_bytes_planned": planned.peak_bytes, "peak_memory_bytes_measured": execution.peak_bytes,
        "bytes_paged_per_step": planned.bytes_paged,
        "recomputations_per_step": planned.computations - len(graph),
        "gradients_match": gradients_match(execution, plain_step(graph, *inputs)[1]),
        "schedule_bytes": len(solution.plan.to_bytes()), "solve_seconds": round(solution.solve_seconds, 3)}


def with_replay(train_set: ImageDataset, shipped: ImageDataset, count: int) -> ImageDataset:
    """``train_set`` and the last ``count`` samples of ``shipped`` (the data the model was trained
    on): rehearsing a few of them while adapting keeps the model from forgetting clean data. The
    last ones, because drifted sets made from the same split start at its first image."""
    if count <= 0:
        return train_set
    if count > len(shipped):
        raise ValueError(f"{count} replay samples asked of {len(shipped)}")
    if shipped.images.shape[1:] != train_set.images.shape[1:]:
        raise ValueError(f"replay images {shipped.images.shape[1:]} differ from {train_set.images.shape[1:]}")
    return ImageDataset(f"{train_set.name}+replay{count}",
                        np.concatenate([train_set.images, shipped.images[-count:]]),
                        np.concatenate([train_set.labels, shipped.labels[-count:]]), train_set.num_classes)


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
