"""Runs a :class:`~agilenn.schedule.program.Plan` in PyTorch, node by node, and checks it.

A forward node runs its traced operation on its inputs from RAM, without
autograd. A backward node re-runs its operation on leaf copies of its inputs,
with autograd, and takes ``torch.autograd.grad`` of it against the gradient of
its output (the sum of what its consumers' backward nodes returned): it
returns the gradients with respect to the inputs and adds the parameters'
gradients to theirs. ``PAGE_OUT`` writes a tensor's bytes to a file-backed
store (a folder; one file a tensor, raw float32), ``PAGE_IN`` reads them back,
``FREE`` drops the tensor. Views (a slice, a flatten) are copied, so every
tensor in RAM owns its bytes.

The accounting is our own, as in :mod:`agilenn.adapt.memory`: the bytes of
every tensor the executor holds between events, plus the graph's resident
bytes; buffers inside one operation's backward are in neither the plan nor the
measurement. Bytes paged are the bytes written to and read from the store.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, fx

from .graph import TrainingGraph
from .program import Event, Plan

Value = Tensor | tuple[Tensor | None, ...]


@dataclass(frozen=True)
class Execution:
    loss: float
    gradients: dict[str, Tensor]  # by parameter name in the traced model (without "model.")
    peak_bytes: int
    bytes_paged_in: int
    bytes_paged_out: int

    @property
    def bytes_paged(self) -> int:
        return self.bytes_paged_in + self.bytes_paged_out


def _size(value: Value | None) -> int:
    if value is None:
        return 0
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    return sum(_size(part) for part in value)


class _FlashStore:
    """Tensors as raw files in a folder: what a device's SD card or flash would hold."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shapes: dict[int, list[tuple[torch.Size, torch.dtype] | None]] = {}
        self.written = self.read = 0

    def put(self, node: int, value: Value) -> None:
        parts = [value] if isinstance(value, Tensor) else list(value)
        self.shapes[node] = [None if part is None else (part.shape, part.dtype) for part in parts]
        with open(self.folder / f"{node}.bin", "wb") as file:
            for part in parts:
                if part is not None:
                    data = part.detach().contiguous().numpy().tobytes()
                    file.write(data)
                    self.written += len(data)

    def get(self, node: int, single: bool) -> Value:
        parts: list[Tensor | None] = []
        with open(self.folder / f"{node}.bin", "rb") as file:
            for entry in self.shapes[node]:
                if entry is None:
                    parts.append(None)
                    continue
                shape, dtype = entry
                count = int(torch.Size(shape).numel())
                data = file.read(count * torch.empty((), dtype=dtype).element_size())
                self.read += len(data)
                parts.append(torch.from_numpy(np.frombuffer(data, dtype=_numpy(dtype)).copy()).reshape(shape))
        return parts[0] if single else tuple(parts)  # type: ignore[return-value]


def _numpy(dtype: torch.dtype) -> Any:
    return torch.empty((), dtype=dtype).numpy().dtype


class Executor:
    """Runs plans of one training graph; ``run`` returns the loss, gradients and what it measured."""

    def __init__(self, graph: TrainingGraph) -> None:
        if graph.module is None:
            raise ValueError("a graph written by hand has no operations to run")
        self.graph = graph
        self.module: fx.GraphModule = graph.module
        operations = {n.name: n for n in self.module.graph.nodes}
        self.operations = [operations[node.fx_name] for node in graph.nodes]
        self.index = {node.fx_name: node.index for node in graph.nodes if not node.backward}
        self.backward_of = {graph.forward_of[b]: b for b in graph.forward_of}
        self.loss_node = max(self.index.values())
        # For each forward node, where its output's gradient comes from: (the backward node of
        # a consumer, the position of this node among that consumer's inputs).
        self.gradient_sources: dict[int, list[tuple[int, int]]] = {i: [] for i in self.index.values()}
        for consumer in self.operations[:len(self.index)]:  # the forward operations, once each
            backward = self.backward_of.get(self.index[consumer.name])
            if backward is None:
                continue
            for position, argument in enumerate(consumer.all_input_nodes):
                if argument.name in self.index:
                    self.gradient_sources[self.index[argument.name]].append((backward, position))

    def run(self, plan: Plan, *inputs: Tensor, folder: Path | None = None) -> Execution:
        """Run ``plan`` on the step's inputs (for a training step: images and labels)."""
        plan.simulate(self.graph)  # refuses a plan for another graph, or one that breaks its rules
        names = [node.name for node in self.module.graph.nodes if node.op == "placeholder"]
        if len(inputs) != len(names):
            raise ValueError(f"the step takes {len(names)} inputs ({', '.join(names)}), not {len(inputs)}")
        with tempfile.TemporaryDirectory(prefix="agilenn-paging-", dir=folder) as scratch:
            return self._run(plan, dict(zip(names, inputs, strict=True)), _FlashStore(Path(scratch)))

    def _run(self, plan: Plan, inputs: dict[str, Tensor], store: _FlashStore) -> Execution:
        ram: dict[int, Value] = {}
        self._applied: set[int] = set()
        live = peak = 0
        gradients: dict[str, Tensor] = {}
        loss = float("nan")
        for kind, node in plan.events:
            if kind is Event.COMPUTE:
                value = self._backward(node, ram, inputs, gradients) if self.graph.nodes[node].backward \
                    else self._forward(node, ram, inputs)
                if node == self.loss_node:
                    loss = float(value)  # type: ignore[arg-type]
                ram[node] = value
                live += _size(value)
            elif kind is Event.PAGE_OUT:
                store.put(node, ram[node])
            elif kind is Event.PAGE_IN:
                ram[node] = store.get(node, not self.graph.nodes[node].backward)
                live += _size(ram[node])
            else:
                live -= _size(ram.pop(node))
            peak = max(peak, live)
        return Execution(loss, {name.removeprefix("model."): g for name, g in gradients.items()},
                         self.graph.resident_bytes + peak, store.read, store.written)

    def _arguments(self, operation: fx.Node, ram: dict[int, Value], inputs: dict[str, Tensor],
                   leaves: dict[str, Tensor] | None = None) -> tuple[Any, Any]:
        def value(argument: fx.Node) -> Any:
            if leaves is not None and argument.name in leaves:
                return leaves[argument.name]
            if argument.op == "placeholder":
                return inputs[argument.name]
            if argument.op == "get_attr":
                return self.module.get_parameter(str(argument.target))
            return ram[self.index[argument.name]]

        return fx.node.map_arg(operation.args, value), fx.node.map_arg(operation.kwargs, value)

    def _call(self, operation: fx.Node, args: Any, kwargs: Any) -> Any:
        if operation.op == "call_module":
            return self.module.get_submodule(str(operation.target))(*args, **kwargs)
        if operation.op == "call_function":
            return operation.target(*args, **kwargs)  # type: ignore[operator]
        return getattr(args[0], str(operation.target))(*args[1:], **kwargs)

    def _forward(self, node: int, ram: dict[int, Value], inputs: dict[str, Tensor]) -> Tensor:
        operation = self.operations[node]
        with torch.no_grad():
            output = self._call(operation, *self._arguments(operation, ram, inputs))
        aliased = output.untyped_storage().data_ptr() in self._input_pointers(operation, ram, inputs)
        return output.clone() if aliased else output

    def _input_pointers(self, operation: fx.Node, ram: dict[int, Value],
                        inputs: dict[str, Tensor]) -> set[int]:
        pointers = set()
        for argument in operation.all_input_nodes:
            tensor = inputs.get(argument.name) if argument.op == "placeholder" else ram.get(
                self.index.get(argument.name, -1))
            if isinstance(tensor, Tensor):
                pointers.add(tensor.untyped_storage().data_ptr())
        return pointers

    def _backward(self, node: int, ram: dict[int, Value], inputs: dict[str, Tensor],
                  gradients: dict[str, Tensor]) -> tuple[Tensor | None, ...]:
        forward = self.graph.forward_of[node]
        operation = self.operations[forward]
        graded = [a for a in operation.all_input_nodes if a.name in self.index
                  and self.index[a.name] in self.backward_of]
        leaves = {a.name: ram[self.index[a.name]].detach().requires_grad_(True)  # type: ignore[union-attr]
                  for a in graded}
        output_gradient = self._output_gradient(forward, ram)
        parameters = self._parameters(operation)
        with torch.enable_grad():
            output = self._call(operation, *self._arguments(operation, ram, inputs, leaves))
            targets = [leaves[a.name] for a in graded] + [p for _, p in parameters]
            found = torch.autograd.grad(output, targets, output_gradient, allow_unused=True)
        if node not in self._applied:  # a recomputed backward node must not count its parameters twice
            self._applied.add(node)
            for (name, _), gradient in zip(parameters, found[len(graded):], strict=True):
                if gradient is not None:
                    gradients[name] = gradients[name] + gradient if name in gradients else gradient
        by_input = {a.name: g for a, g in zip(graded, found[:len(graded)], strict=True)}
        return tuple(by_input.get(a.name) for a in operation.all_input_nodes)

    def _output_gradient(self, forward: int, ram: dict[int, Value]) -> Tensor:
        """The gradient of a forward node's output: what its consumers' backward nodes returned."""
        if forward == self.loss_node:
            return torch.ones(())
        total: Tensor | None = None
        for backward, position in self.gradient_sources[forward]:
            returned = ram[backward]
            assert isinstance(returned, tuple)
            part = returned[position]
            if part is not None:
                total = part if total is None else total + part
        if total is None:
            raise ValueError(f"no gradient reached {self.graph.nodes[forward].fx_name}")
        return total

    def _parameters(self, operation: fx.Node) -> list[tuple[str, torch.nn.Parameter]]:
        if operation.op != "call_module":
            return []
        prefix = f"{operation.target}."
        return [(prefix + name, p) for name, p in self.module.get_submodule(str(operation.target))
                .named_parameters() if prefix + name in self.graph.trainable]


def plain_step(graph: TrainingGraph, *inputs: Tensor) -> tuple[float, dict[str, Tensor]]:
    """The same step by ordinary autograd: the loss and the trainable parameters' gradients."""
    module = graph.module
    if module is None:
        raise ValueError("a graph written by hand has no operations to run")
    parameters = {name: p for name, p in module.named_parameters() if name in graph.trainable}
    with torch.enable_grad():
        loss = module(*inputs)
        found = torch.autograd.grad(loss, list(parameters.values()))
    named = zip(parameters, found, strict=True)
    return float(loss.detach()), {name.removeprefix("model."): g for name, g in named}


def gradients_match(execution: Execution, reference: dict[str, Tensor], rtol: float = 1e-4,
                    atol: float = 1e-6) -> bool:
    return set(execution.gradients) == set(reference) and all(
        torch.allclose(execution.gradients[name], reference[name], rtol=rtol, atol=atol)
        for name in reference)
