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

What IG explains (``ig_target``, registered in :data:`EXPLAINED_OUTPUTS`):

* ``"logit"`` (default): the reference's logit of the true class.
* ``"loss"``: the reference's per-sample cross-entropy, as the TensorFlow
  reference implementation does. The softmax makes this output curved in the
  features, so here the second-order term does not vanish.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import torch
import torch.nn.functional as F
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


def true_class_logit(reference: nn.Module, features: Tensor, labels: Tensor) -> Tensor:
    """The reference's logit of each sample's true class, shape (N,)."""
    return reference(features).gather(1, labels.unsqueeze(1)).squeeze(1)


def cross_entropy_loss(reference: nn.Module, features: Tensor, labels: Tensor) -> Tensor:
    """The reference's per-sample cross-entropy, shape (N,): what the TF reference explains."""
    return F.cross_entropy(reference(features), labels, reduction="none")


ExplainedOutput = Callable[[nn.Module, Tensor, Tensor], Tensor]
EXPLAINED_OUTPUTS: dict[str, ExplainedOutput] = {
    "logit": true_class_logit,
    "loss": cross_entropy_loss,
}


def _explained_output(ig_target: str) -> ExplainedOutput:
    try:
        return EXPLAINED_OUTPUTS[ig_target]
    except KeyError:
        names = ", ".join(sorted(EXPLAINED_OUTPUTS))
        raise ValueError(f"unknown ig_target {ig_target!r}; pick one of {names}") from None


def integrated_gradients(
    reference: nn.Module,
    features: Tensor,
    target: Tensor,
    n_steps: int = 8,
    second_order: bool = False,
    ig_target: str = "logit",
) -> Tensor:
    """Attributions of one scalar per sample to each feature element.

    The scalar is ``EXPLAINED_OUTPUTS[ig_target](reference, features, target)``,
    with ``target`` the true labels. Every output is one value per sample, so
    Captum needs no target index; the labels travel as an additional forward
    argument, which Captum repeats for each of the ``n_steps`` path points.
    Zero baseline; same shape as ``features``. Differentiable with respect to
    ``features`` (see the module docstring for which path).
    """
    output = _explained_output(ig_target)

    def forward(path_features: Tensor, labels: Tensor) -> Tensor:
        return output(reference, path_features, labels)

    explainer = IntegratedGradients(forward)
    if second_order:
        explainer.gradient_func = _gradients_with_graph
    attributions = explainer.attribute(
        features, baselines=torch.zeros_like(features), additional_forward_args=(target,),
        n_steps=n_steps,
    )
    return attributions  # type: ignore[no-any-return]


def channel_importance(attributions: Tensor) -> Tensor:
    """Per-channel importance: sum of |attribution| over the spatial positions."""
    return attributions.abs().sum(dim=(2, 3))
