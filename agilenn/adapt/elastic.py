"""ElasticTrainer-style tensor selection (Huang et al., MobiSys'23): what to train within a time budget.

1. **Importance.** One probe step on an adaptation batch gives each trainable
   tensor a first-order Taylor estimate of the loss change it buys:
   ``|sum(g * dw)|`` with ``dw = -lr * g`` the step the tensor would take.
2. **Backward-time model.** For every leaf module on the path from the loss
   back to the input, the time to pass the gradient to its input (``dy``) and
   the time to compute each of its tensors' gradients (``dw``), measured on
   this host with ``torch.autograd.grad`` on the module alone (the fastest of
   a few runs), and multiplied by ``slowdown`` for a slower device.
3. **Selection.** Training tensors down to layer d costs their ``dw`` times
   plus the ``dy`` of every layer above d (the gradient must reach d). For
   each depth d, a knapsack over the tensors at or above it picks the most
   importance within what the budget leaves; the best over all depths wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .knapsack import knapsack
from .memory import trace
from .selection import Selection



@dataclass(frozen=True)
class LayerTime:
    """One leaf module in backward order (the loss end first)."""

    name: str
    activation_grad_s: float  # passing the gradient through the module to its input
    weight_grad_s: dict[str, float]  # parameter name -> computing its gradient


@dataclass(frozen=True)
class ElasticChoice:
    tensors: tuple[str, ...]
    importance: float  # the chosen share of the total importance, in [0, 1]
    backward_s: float  # modelled backward time of the choice
    full_backward_s: float  # modelled backward time of training every tensor


def taylor_importance(parameters: dict[str, nn.Parameter], loss: Callable[[], Tensor],
                      lr: float) -> dict[str, float]:
    """``|sum(g * dw)|`` per tensor after one probe step; the parameters are left unchanged."""
    gradients = torch.autograd.grad(loss(), list(parameters.values()), allow_unused=True)
    importance = {}
    for (name, _), gradient in zip(parameters.items(), gradients, strict=True):
        if gradient is None:
            importance[name] = 0.0
            continue
        step = -lr * gradient
        importance[name] = abs(float((gradient * step).sum()))
    return importance


def _fastest_seconds(work: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs: on a shared machine the others measure the neighbours."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return min(samples)


def _gradient_timer(output: Tensor, repeats: int) -> Callable[[Tensor], float]:
    """The seconds it takes to compute the gradient of ``output`` (seeded with ones) for a tensor."""
    seed = torch.ones_like(output)

    def seconds(target: Tensor) -> float:
        return _fastest_seconds(lambda: torch.autograd.grad(output, target, seed, retain_graph=True), repeats)

    return seconds


def backward_time_model(model: nn.Module, x: Tensor, trainable: set[str], slowdown: float = 1.0,
                        repeats: int = 5) -> list[LayerTime]:
    """Each leaf module's backward times on this host, times ``slowdown``, loss end first."""
    calls, _, _ = trace(model, x, Selection.whole(sorted(trainable)))
    layers = []
    for call in calls:
        inputs = call.input.detach().requires_grad_(True)
        with torch.enable_grad():
            output = call.module(inputs)
        gradient_of = _gradient_timer(output, repeats)
        prefix = call.name + "." if call.name else ""
        dw = {prefix + local: slowdown * gradient_of(call.module.get_parameter(local))
              for local in call.trained}
        layers.append(LayerTime(call.name, slowdown * gradient_of(inputs), dw))
    return layers[::-1]


def select_within_time(layers: list[LayerTime], importance: dict[str, float],
                       time_budget: float) -> ElasticChoice:
    """The tensors with the most importance whose modelled backward time is within
    ``time_budget`` (a fraction of the time to train every tensor)."""
    tensors = [(depth, name, seconds) for depth, layer in enumerate(layers)
               for name, seconds in layer.weight_grad_s.items()]
    deepest = max((depth for depth, _, _ in tensors), default=-1)
    full = sum(s for _, _, s in tensors) + sum(layer.activation_grad_s for layer in layers[:deepest])
    budget = time_budget * full
    total = sum(importance.get(name, 0.0) for _, name, _ in tensors) or 1.0
    best = ElasticChoice((), 0.0, 0.0, full)
    for depth in range(deepest + 1):
        reach = sum(layer.activation_grad_s for layer in layers[:depth])
        if reach > budget:
            break
        items = [(name, seconds) for d, name, seconds in tensors if d <= depth]
        chosen = knapsack([importance.get(name, 0.0) for name, _ in items], [s for _, s in items],
                          budget - reach)
        value = sum(importance.get(items[i][0], 0.0) for i in chosen) / total
        if value > best.importance:
            names = tuple(items[i][0] for i in chosen)
            deepest_chosen = max(d for d, name, _ in tensors if name in names)
            cost = sum(items[i][1] for i in chosen) + sum(
                layer.activation_grad_s for layer in layers[:deepest_chosen])
            best = ElasticChoice(names, value, cost, full)
    return best
