"""Peak memory of one on-device training step: an analytic estimate and a measurement.

Both break the peak into the same parts, in bytes::

    peak = weights + input + activations + loss + gradients + optimizer_state

*weights* are every parameter and floating-point buffer (frozen ones too: the
forward pass needs them resident; BatchNorm's int64 ``num_batches_tracked``
is left out). *activations* and *loss* are the tensors autograd keeps for the
backward pass, of the layers and of the loss; all of them are alive at the end
of the forward pass, and the backward pass only frees them, so that is their
maximum over the step. *gradients* are the trained elements only;
*optimizer_state* is what the optimizer keeps per trained element. Adding the
gradients to the saved activations is slightly conservative: the backward
pass frees activations while it fills the gradients.

Training runs with BatchNorm in eval mode: the device keeps the statistics
frozen (batches of 1 have none worth estimating), so BatchNorm is a per-channel
affine map whose scale and shift may train.

PyTorch's caching allocator pools and reuses blocks, so allocator statistics
hide what is saved; :func:`measure_peak_memory` counts the tensors themselves.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .selection import Selection, apply_selection, check_selection, trained_channels, trained_elements

FLOAT32_BYTES = 4
INT8_BYTES = 1
INDEX_BYTES = 8  # int64 class targets of the loss
Saved = tuple[Hashable, int]  # (identity of the storage kept, its bytes)


@dataclass(frozen=True)
class OptimizerKind:
    """An optimizer by name: how many copies of the trained elements it keeps, and how to build it."""

    state_copies: int
    step_bytes: int  # a per-tensor step counter (Adam's float32 scalar)
    build: Callable[[list[nn.Parameter]], torch.optim.Optimizer]


OPTIMIZERS: dict[str, OptimizerKind] = {
    "sgd": OptimizerKind(0, 0, lambda ps: torch.optim.SGD(ps, lr=1e-3)),
    "momentum": OptimizerKind(1, 0, lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9)),
    "adam": OptimizerKind(2, FLOAT32_BYTES, lambda ps: torch.optim.Adam(ps, lr=1e-3)),
}


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: int
    input: int
    activations: int
    loss: int
    gradients: int
    optimizer_state: int

    @property
    def peak(self) -> int:
        return (self.weights + self.input + self.activations + self.loss
                + self.gradients + self.optimizer_state)


@dataclass(frozen=True)
class MemoryEstimate(MemoryBreakdown):
    layers: tuple[tuple[str, int], ...] = ()  # activation bytes each layer adds, in forward order


@dataclass(frozen=True)
class MemoryMeasurement(MemoryBreakdown):
    saved_tensors: int = 0  # distinct storages autograd kept, resident ones excluded


@dataclass(frozen=True)
class LayerCall:
    """One call of a leaf module in the traced forward pass."""

    name: str
    module: nn.Module
    input: Tensor
    output: Tensor
    trained: Mapping[str, float]  # own parameter name -> channel ratio
    dtype_bytes: int

    @property
    def in_graph(self) -> bool:
        """Autograd records a node for this call: something before it or in it trains."""
        return self.output.requires_grad

    def kept(self, tensor: Tensor) -> Saved:
        """A tensor kept alive by the graph holds its whole storage, not just the viewed elements."""
        storage = tensor.untyped_storage()
        size = storage.nbytes() // tensor.element_size()
        per_element = self.dtype_bytes if tensor.is_floating_point() else tensor.element_size()
        return storage.data_ptr(), size * per_element

    def assembled_weight(self) -> list[Saved]:
        """A channel-sliced weight is re-assembled by ``torch.cat`` each forward: a new tensor."""
        weight = self.module.get_parameter("weight")
        ratio = self.trained.get("weight", 1.0)
        if ratio == 1.0 or trained_channels(weight.shape, ratio) == weight.shape[1]:
            return []
        return [(("assembled", self.name), weight.numel() * self.dtype_bytes)]


Rule = Callable[[LayerCall], list[Saved]]


def _conv_autograd(call: LayerCall) -> list[Saved]:
    # One backward formula covers input, weight and bias, so both are kept whenever the node exists.
    return [call.kept(call.input), *call.assembled_weight()] if call.in_graph else []


def _linear_autograd(call: LayerCall) -> list[Saved]:
    # addmm keeps each matrix only for the other one's gradient.
    saved = [call.kept(call.input)] if "weight" in call.trained else []
    return saved + (call.assembled_weight() if call.input.requires_grad else [])


def _weight_needs_input(call: LayerCall) -> list[Saved]:
    return [call.kept(call.input)] if "weight" in call.trained else []


def _keeps_input(call: LayerCall) -> list[Saved]:
    return [call.kept(call.input)] if call.in_graph else []


def _keeps_output(call: LayerCall) -> list[Saved]:
    return [call.kept(call.output)] if call.in_graph else []


def _adaptive_pool_autograd(call: LayerCall) -> list[Saved]:
    # An output of 1 x 1 is a mean, which keeps only sizes.
    return _keeps_input(call) if call.output.shape[-2:].numel() > 1 else []


def _bitmask(call: LayerCall) -> list[Saved]:
    return [(("mask", call.name), -(-call.output.numel() // 8))] if call.in_graph else []


def _nothing(call: LayerCall) -> list[Saved]:
    return []


_STATELESS: dict[type[nn.Module], Rule] = {nn.Flatten: _nothing, nn.Identity: _nothing, nn.Dropout: _nothing}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
RULES: dict[str, dict[type[nn.Module], Rule]] = {
    # What PyTorch's autograd keeps (what measure_peak_memory sees).
    "autograd": {
        **_STATELESS, **dict.fromkeys(_CONVS, _conv_autograd), nn.Linear: _linear_autograd,
        **dict.fromkeys(_NORMS, _keeps_input), nn.Hardtanh: _keeps_input, nn.ReLU: _keeps_output,
        nn.AdaptiveAvgPool2d: _adaptive_pool_autograd,
    },
    # What a backward graph pruned to the trained elements needs (Tiny Training's compiled graph): a
    # weight gradient needs the layer's input, a bias or input gradient needs nothing kept, an eval
    # BatchNorm's scale gradient needs its input, a ReLU needs a 1-bit mask, an average pool nothing.
    "pruned": {
        **_STATELESS, **dict.fromkeys((*_CONVS, nn.Linear, *_NORMS), _weight_needs_input),
        nn.Hardtanh: _bitmask, nn.ReLU: _bitmask, nn.AdaptiveAvgPool2d: _nothing,
    },
}


def _rule(rules: Mapping[type[nn.Module], Rule], module: nn.Module) -> Rule:
    for kind in type(module).__mro__:
        if kind in rules:
            return rules[kind]
    raise ValueError(f"no memory rule for {type(module).__name__}, which takes part in the backward pass")


def _storages(tensors: list[Tensor]) -> set[Hashable]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def _resident(module: nn.Module, example_input: Tensor) -> set[Hashable]:
    return _storages([*module.parameters(), *module.buffers(), example_input])


def _record(calls: list[LayerCall], name: str, selection: Selection, dtype_bytes: int,
            module: nn.Module, args: tuple[object, ...], output: object) -> None:
    if not (args and isinstance(args[0], Tensor) and isinstance(output, Tensor)):
        raise ValueError(f"{name or 'the module'} must map one tensor to one tensor")
    prefix = name + "." if name else ""
    own = [local for local, _ in module.named_parameters(recurse=False)]
    trained = {local: selection.ratios[prefix + local] for local in own if prefix + local in selection.ratios}
    calls.append(LayerCall(name, module, args[0], output, trained, dtype_bytes))


def trace(module: nn.Module, example_input: Tensor, selection: Selection,
          dtype_bytes: int = FLOAT32_BYTES) -> tuple[list[LayerCall], Tensor, set[Hashable]]:
    """Leaf-module calls of one forward pass of a copy (eval mode, only the selection requiring grad).

    Returns the calls, the output and the storages of the copy's parameters,
    buffers and the input. Only shapes, storage identity and requires-grad
    flags are read from the pass; nothing is measured.
    """
    model = copy.deepcopy(module).eval()
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in selection.ratios)
    calls: list[LayerCall] = []
    handles = [leaf.register_forward_hook(functools.partial(_record, calls, name, selection, dtype_bytes))
               for name, leaf in model.named_modules() if next(leaf.children(), None) is None]
    try:
        with torch.enable_grad():
            output = model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    accounted = {(call.name + "." if call.name else "") + local for call in calls for local in call.trained}
    if set(selection.ratios) - accounted:
        raise ValueError(f"no layer call accounts for {sorted(set(selection.ratios) - accounted)}")
    return calls, output, _resident(model, example_input)


def _optimizer(name: str) -> OptimizerKind:
    try:
        return OPTIMIZERS[name]
    except KeyError:
        raise ValueError(f"unknown optimizer {name!r}; pick one of {', '.join(sorted(OPTIMIZERS))}") from None


def _weight_elements(module: nn.Module) -> int:
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    return sum(t.numel() for t in [*module.parameters(), *buffers])


def estimate_peak_memory(module: nn.Module, example_input: Tensor, selection: Selection,
                         optimizer: str = "sgd", dtype_bytes: int = FLOAT32_BYTES,
                         rules: str = "autograd", grad_bytes: int = FLOAT32_BYTES) -> MemoryEstimate:
    """The analytic peak of one training step, by the layer rules in :data:`RULES`.

    ``dtype_bytes`` is the storage of weights, input and activations (4 for
    float32, 1 for int8); ``grad_bytes`` that of gradients, optimizer state and
    the loss, which stay float. The loss is taken to be cross entropy with
    class-index targets: it keeps its log-softmax, the targets and a scalar.
    Functional ops between leaf modules are assumed to keep nothing (true of
    views, slicing, ``cat`` and addition; not of a functional ReLU or product).
    """
    kind, selected = _optimizer(optimizer), check_selection(module, selection)
    calls, output, seen = trace(module, example_input, selection, dtype_bytes)
    table = RULES[rules]
    layers = []
    for call in calls:
        added = 0
        for key, size in _rule(table, call.module)(call):
            added += 0 if key in seen else size
            seen.add(key)
        layers.append((call.name, added))
    loss = (output.numel() + 1) * grad_bytes + output.shape[0] * INDEX_BYTES if output.requires_grad else 0
    gradients = sum(trained_elements(p, selection.ratios[n]) for n, p in selected.items()) * grad_bytes
    return MemoryEstimate(
        weights=_weight_elements(module) * dtype_bytes, input=example_input.numel() * dtype_bytes,
        activations=sum(size for _, size in layers), loss=loss, gradients=gradients,
        optimizer_state=kind.state_copies * gradients + kind.step_bytes * len(selected),
        layers=tuple(layers))


@dataclass
class _SavedCounter:
    """A pack hook that records every storage autograd keeps, except resident ones."""

    resident: set[Hashable]
    storages: dict[Hashable, int] = field(default_factory=dict)

    def pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self.resident:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor


def _unpack(tensor: Tensor) -> Tensor:
    return tensor


def _nbytes(tensors: list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_peak_memory(module: nn.Module, example_input: Tensor, selection: Selection,
                        loss_fn: Callable[[Tensor], Tensor], optimizer: str = "sgd") -> MemoryMeasurement:
    """Run one real training step on a copy of ``module`` and count what it holds, in bytes.

    Saved tensors are deduplicated by storage and counted at the storage's
    full size: a saved view (a channel slice, a flattened map) keeps its whole
    storage alive, so the viewed bytes would undercount. Storages of the
    parameters, buffers and input are resident anyway and not counted again.
    Gradients are the ``p.grad`` tensors allocated; the optimizer state is
    every tensor in ``optimizer.state`` after ``step()``.
    """
    kind = _optimizer(optimizer)
    model = copy.deepcopy(module).eval()
    apply_selection(model, selection)
    trained = [p for p in model.parameters() if p.requires_grad]
    step = kind.build(trained)
    layers = _SavedCounter(_resident(model, example_input))
    with torch.autograd.graph.saved_tensors_hooks(layers.pack, _unpack):
        output = model(example_input)
    losses = _SavedCounter(layers.resident | set(layers.storages))
    with torch.autograd.graph.saved_tensors_hooks(losses.pack, _unpack):
        loss = loss_fn(output)
    loss.backward()
    step.step()
    state = [t for values in step.state.values() for t in values.values() if isinstance(t, Tensor)]
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    return MemoryMeasurement(
        weights=_nbytes([*model.parameters(), *buffers]), input=_nbytes([example_input]),
        activations=sum(layers.storages.values()), loss=sum(losses.storages.values()),
        gradients=_nbytes([p.grad for p in trained if p.grad is not None]),
        optimizer_state=_nbytes(state), saved_tensors=len(layers.storages) + len(losses.storages))
