"""Feature importance by Captum Integrated Gradients against the reference network.

Gradient paths (why the losses can train the extractor):

* **First-order (default).** Captum computes the path gradients with
  ``torch.autograd.grad`` and no graph, then returns
  ``avg_grad * (features - baseline)``. The product keeps ``features`` in the
  autograd graph, so d(loss)/d(extractor) flows through the ``features``
  factor; the averaged path gradient is a constant.
* **Second-order (``second_order=True``).** The path gradients are taken with
  ``create_graph=True`` as the TensorFlow reference does with nested tapes,
  so the loss also differentiates through ``avg_grad`` itself.

For a piecewise-linear reference (ReLU, max-pool, eval-mode BatchNorm) that
targets a logit, the input-gradient is locally constant, so the second-order
term is zero almost everywhere and both paths give the same update;
``tools/bench_importance.py`` measures the cost of each.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import torch
from captum._utils.gradient import _run_forward
from captum.attr import IntegratedGradients
from torch import Tensor, nn


def _gradients_with_graph(
    forward_fn: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    target_ind: Any = None,
    additional_forward_args: Any = None,
) -> tuple[Tensor, ...]:
    # Same contract as captum._utils.gradient.compute_gradients, plus create_graph.
    with torch.autograd.set_grad_enabled(True):
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        return torch.autograd.grad(torch.unbind(outputs), inputs, create_graph=True)


def integrated_gradients(
    reference: nn.Module,
    features: Tensor,
    target: Tensor,
    n_steps: int = 8,
    second_order: bool = False,
) -> Tensor:
    """Attributions of ``reference(features)[target]`` to each feature element.

    Zero baseline; same shape as ``features``. Differentiable with respect to
    ``features`` (see the module docstring for which path).
    """
    explainer = IntegratedGradients(reference)
    if second_order:
        explainer.gradient_func = _gradients_with_graph
    attributions = explainer.attribute(
        features, baselines=torch.zeros_like(features), target=target, n_steps=n_steps
    )
    return attributions  # type: ignore[no-any-return]


def channel_importance(attributions: Tensor) -> Tensor:
    """Per-channel importance: sum of |attribution| over the spatial positions."""
    return attributions.abs().sum(dim=(2, 3))
