"""The training step as a graph the memory scheduler plans over.

:func:`trace_training_graph` traces ``loss = criterion(module(x), y)`` with
``torch.fx`` and shape propagation. Every operation (a leaf module, a function,
a method) becomes a *forward node*; for each forward node that needs a gradient
a *backward node* follows, in reverse order. A backward node recomputes its
operation locally from the operation's inputs and returns the gradient with
respect to those inputs; the parameters' gradients are applied by the
optimizer inside the same node, so they are never held across nodes. Its
dependencies are the operation's inputs and the backward nodes of the
operation's consumers (which hold the gradient of its output).

Sizes are float32 bytes of each node's output (for a backward node, the
gradients it returns). Costs are multiply-accumulates: a convolution or linear
layer's, one a value for everything else; a backward node costs a recompute
of its operation plus twice it for the gradients. The parameters, their
optimizer state, the input batch and the largest single parameter gradient are
*resident*: held whatever the schedule does.
"""

from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

FLOAT32_BYTES = 4
# Operations whose output aliases their input: the executor copies it, so the plan counts it.
VIEW_FUNCTIONS = {operator.getitem, torch.flatten, torch.reshape}
VIEW_METHODS = {"flatten", "view", "reshape", "__getitem__", "contiguous"}


@dataclass(frozen=True)
class Node:
    """One step of the training graph. ``deps`` index earlier nodes; ``fx_name`` names the
    traced operation (a backward node shares its forward node's)."""

    index: int
    name: str
    backward: bool
    deps: tuple[int, ...]
    size_bytes: int
    macs: int
    fx_name: str


@dataclass
class TrainingGraph:
    """``module`` is None for a graph written by hand (the solver needs only the nodes)."""

    nodes: list[Node]
    resident_bytes: int
    module: fx.GraphModule | None = None
    trainable: frozenset[str] = frozenset()  # parameter names of ``module`` that train
    forward_of: dict[int, int] = field(default_factory=dict)  # backward node -> its forward node

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def plain_peak_bytes(self) -> int:
        """Peak memory of plain training: every forward output kept until the backward pass ends
        (what autograd keeps is less; this is the schedule model's "store all")."""
        forward = sum(n.size_bytes for n in self.nodes if not n.backward)
        largest_backward = max((n.size_bytes for n in self.nodes if n.backward), default=0)
        return self.resident_bytes + forward + largest_backward

    def fingerprint(self) -> bytes:
        """8 bytes naming the graph, so a stored schedule is never run on another one."""
        digest = hashlib.sha256()
        for node in self.nodes:
            digest.update(f"{node.name}|{node.backward}|{node.deps}|{node.size_bytes};".encode())
        return digest.digest()[:8]

    def consumers(self) -> dict[int, list[int]]:
        users: dict[int, list[int]] = {node.index: [] for node in self.nodes}
        for node in self.nodes:
            for dep in node.deps:
                users[dep].append(node.index)
        return users


class TrainingStep(nn.Module):
    """``criterion(module(x), y)``: the traced unit."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.model = module

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(self.model(x), y)


def _macs(node: fx.Node, module: fx.GraphModule, output: Any) -> int:
    values = output.numel() if isinstance(output, Tensor) else 1
    if node.op == "call_module":
        target = module.get_submodule(str(node.target))
        if isinstance(target, nn.Conv2d):
            kernel = target.kernel_size[0] * target.kernel_size[1]
            return values * target.in_channels // target.groups * kernel
        if isinstance(target, nn.Linear):
            return values * target.in_features
    if _is_view(node):
        return 0
    if node.op == "call_function" and node.target is F.cross_entropy:
        first = node.args[0]
        assert isinstance(first, fx.Node)
        return int(first.meta["tensor_meta"].shape.numel())
    return values


def _is_view(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in VIEW_FUNCTIONS) or \
        (node.op == "call_method" and node.target in VIEW_METHODS)


def _bytes(meta: Any) -> int:
    return int(meta.shape.numel()) * FLOAT32_BYTES if meta is not None and hasattr(meta, "shape") else 0


def _trainable_parameters(module: fx.GraphModule, node: fx.Node, trainable: frozenset[str]) -> list[str]:
    if node.op != "call_module":
        return []
    prefix = f"{node.target}."
    return [f"{prefix}{name}" for name, _ in module.get_submodule(str(node.target)).named_parameters()
            if f"{prefix}{name}" in trainable]


def _ancestors_of_output(module: fx.GraphModule) -> set[str]:
    output = next(n for n in module.graph.nodes if n.op == "output")
    seen: set[str] = set()
    stack = list(output.all_input_nodes)
    while stack:
        node = stack.pop()
        if node.name not in seen:
            seen.add(node.name)
            stack.extend(node.all_input_nodes)
    return seen


def trace_training_graph(model: nn.Module, example: Tensor, labels: Tensor,
                         trainable: set[str] | None = None, optimizer_slots: int = 2) -> TrainingGraph:
    """The training graph of one step of ``model`` on ``example``; ``trainable`` names the
    parameters (as in ``model.named_parameters()``) that train, all by default.
    ``optimizer_slots``: float32 state values a trained parameter keeps (Adam: 2, SGD: 0)."""
    return trace_step(TrainingStep(model), (example, labels), trainable, optimizer_slots)


def trace_step(step: nn.Module, inputs: tuple[Tensor, ...], trainable: set[str] | None = None,
               optimizer_slots: int = 2) -> TrainingGraph:
    """The training graph of ``step(*inputs)``, a module that returns the loss and holds the
    trained model as its attribute ``model`` (``trainable`` names that model's parameters)."""
    model: nn.Module = step.model  # type: ignore[assignment]
    module = fx.symbolic_trace(step)
    ShapeProp(module).propagate(*inputs)
    names = {name for name, _ in model.named_parameters()} if trainable is None else set(trainable)
    unknown = names - {name for name, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"unknown parameters: {', '.join(sorted(unknown))}")
    traced_trainable = frozenset(f"model.{name}" for name in names)
    for name, submodule in module.named_modules():
        if getattr(submodule, "inplace", False):  # it would overwrite a tensor a plan still holds
            raise ValueError(f"{name} works in place; the scheduler needs operations that do not")
    live = _ancestors_of_output(module)  # an output nothing uses (the remote channels' slice) is dead
    operations = [n for n in module.graph.nodes
                  if n.op in ("call_module", "call_function", "call_method") and n.name in live]
    index = {n.name: i for i, n in enumerate(operations)}
    needs_grad: dict[str, bool] = {}
    nodes: list[Node] = []
    for i, op in enumerate(operations):
        arguments = [a for a in op.all_input_nodes if a.name in index]
        needs_grad[op.name] = bool(_trainable_parameters(module, op, traced_trainable)) or \
            any(needs_grad[a.name] for a in arguments)
        meta = op.meta.get("tensor_meta")
        nodes.append(Node(i, op.name, False, tuple(index[a.name] for a in arguments), _bytes(meta),
                          _macs(op, module, torch.empty(meta.shape) if meta is not None else None), op.name))
    if not needs_grad[operations[-1].name]:
        raise ValueError("nothing trains: no parameter on the path to the loss is trainable")
    consumers: dict[str, list[fx.Node]] = {op.name: [] for op in operations}
    for op in operations:
        for a in op.all_input_nodes:
            if a.name in consumers:
                consumers[a.name].append(op)
    backward_index: dict[str, int] = {}
    forward_of: dict[int, int] = {}
    for op in reversed(operations):
        if not needs_grad[op.name]:
            continue
        forward = nodes[index[op.name]]
        grad_inputs = [a for a in op.all_input_nodes if a.name in index and needs_grad[a.name]]
        deps = [index[a.name] for a in op.all_input_nodes if a.name in index]
        deps += [backward_index[c.name] for c in consumers[op.name]]
        position = len(nodes)
        backward_index[op.name] = position
        forward_of[position] = forward.index
        nodes.append(Node(position, f"{op.name}'", True, tuple(sorted(set(deps))),
                          sum(_bytes(a.meta.get("tensor_meta")) for a in grad_inputs),
                          3 * forward.macs, op.name))
    parameters = dict(module.named_parameters())
    weights = sum(p.numel() for p in parameters.values()) * FLOAT32_BYTES
    trained = [p for name, p in parameters.items() if name in traced_trainable]
    state = sum(p.numel() for p in trained) * FLOAT32_BYTES * optimizer_slots
    largest_gradient = max((p.numel() for p in trained), default=0) * FLOAT32_BYTES
    batch = sum(tensor.numel() * tensor.element_size() for tensor in inputs)
    resident = weights + state + largest_gradient + batch
    return TrainingGraph(nodes, resident, module, traced_trainable, forward_of)
