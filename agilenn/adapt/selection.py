"""What trains during on-device adaptation: a :class:`Selection` of parameters, and how to apply it.

A selection maps parameter names (as in ``module.named_parameters()``) to the
leading fraction of the weight's input channels (dimension 1) that trains;
1.0 is the whole tensor. Methods are helpers that build selections: everything
(:func:`full`), biases only (:func:`bias_only`), a sub-module such as the
local predictor (:func:`under`), or a Tiny-Training style sparse update
(:func:`sparse`: biases of the last layers plus chosen weights, possibly a
fraction of their input channels).

A channel fraction is applied as a *sliced parameter* (see
:func:`apply_selection`): only the trained slice is a parameter that requires a
gradient, so ``p.grad`` and the optimizer state hold the slice alone. PyTorch
still computes the full weight gradient transiently inside the layer's
backward (the slicing happens in ``torch.cat``'s backward), and the forward
assembles a full copy of the weight each step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..model import AgileNN, split_channels


@dataclass(frozen=True)
class Selection:
    """Parameter name -> fraction in (0, 1] of its leading input channels that trains."""

    ratios: Mapping[str, float]

    def __post_init__(self) -> None:
        for name, ratio in self.ratios.items():
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"channel ratio of {name!r} must lie in (0, 1], not {ratio}")
        object.__setattr__(self, "ratios", MappingProxyType(dict(self.ratios)))

    def __hash__(self) -> int:
        return hash(frozenset(self.ratios.items()))

    @classmethod
    def whole(cls, names: list[str]) -> Selection:
        return cls({name: 1.0 for name in names})

    def __or__(self, other: Selection) -> Selection:
        return Selection({**self.ratios, **other.ratios})


def full(module: nn.Module) -> Selection:
    """Every parameter trains."""
    return Selection.whole([name for name, _ in module.named_parameters()])


def bias_only(module: nn.Module) -> Selection:
    """Every bias trains; BatchNorm's bias counts, as it folds into the conv's bias at export."""
    return Selection.whole([name for name, _ in module.named_parameters() if name.endswith("bias")])


def under(module: nn.Module, prefix: str) -> Selection:
    """Every parameter of the sub-module ``prefix``, e.g. ``"local_predictor"``."""
    names = [name for name, _ in module.named_parameters() if name.startswith(prefix + ".")]
    if not names:
        raise ValueError(f"no parameters under {prefix!r}")
    return Selection.whole(names)


def sparse(module: nn.Module, bias_layers: int, weights: Mapping[str, float]) -> Selection:
    """Tiny Training's sparse update: the last ``bias_layers`` biases plus ``weights`` (name -> ratio).

    "Last" is in registration order, which is the forward order of sequential models.
    """
    biases = [name for name, _ in module.named_parameters() if name.endswith("bias")]
    return Selection.whole(biases[-bias_layers:] if bias_layers > 0 else []) | Selection(weights)


def trained_channels(shape: torch.Size, ratio: float) -> int:
    """How many leading input channels (dimension 1) of a weight of ``shape`` train at ``ratio``."""
    if ratio == 1.0:
        return shape[1] if len(shape) >= 2 else 0
    if len(shape) < 2:
        raise ValueError("a channel ratio below 1 needs a weight with input channels (dimension 1)")
    return max(1, math.floor(ratio * shape[1]))


def trained_elements(parameter: Tensor, ratio: float) -> int:
    """Elements of ``parameter`` that train: all of it, or its leading input-channel slice."""
    if ratio == 1.0:
        return parameter.numel()
    return parameter.numel() // parameter.shape[1] * trained_channels(parameter.shape, ratio)


def check_selection(module: nn.Module, selection: Selection) -> dict[str, nn.Parameter]:
    """The selected parameters by name; refuses unknown names and an empty selection."""
    parameters = dict(module.named_parameters())
    unknown = sorted(set(selection.ratios) - set(parameters))
    if unknown:
        raise ValueError(f"the selection names unknown parameters: {', '.join(unknown)}")
    if not selection.ratios:
        raise ValueError("the selection trains nothing")
    for name, ratio in selection.ratios.items():
        trained_channels(parameters[name].shape, ratio)
    return {name: parameters[name] for name in selection.ratios}


class _LeadingChannels(nn.Module):
    """``weight = cat(trained leading input channels, frozen rest)`` along dimension 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, trained: Tensor, frozen: Tensor) -> Tensor:
        return torch.cat([trained, frozen], dim=1)

    def right_inverse(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return weight[:, :self.channels].clone(), weight[:, self.channels:].clone()


def apply_selection(module: nn.Module, selection: Selection) -> None:
    """Set ``requires_grad`` so that only the selection trains, in place.

    A weight with a channel ratio below 1 becomes a parametrization of two
    parameters, ``parametrizations.weight.original0`` (the trained leading
    channels) and ``original1`` (the frozen rest); :func:`remove_selection`
    bakes it back into one plain parameter. Train with BatchNorm in eval mode
    (``module.eval()``): the device keeps the statistics frozen.
    """
    selected = check_selection(module, selection)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    owners = dict(module.named_modules())
    for name, parameter in selected.items():
        channels = trained_channels(parameter.shape, selection.ratios[name])
        if selection.ratios[name] == 1.0 or channels == parameter.shape[1]:
            parameter.requires_grad_(True)
            continue
        owner_name, _, attribute = name.rpartition(".")
        owner = owners[owner_name]
        parametrize.register_parametrization(owner, attribute, _LeadingChannels(channels), unsafe=True)
        slices = getattr(owner.parametrizations, attribute)
        slices.original0.requires_grad_(True)
        slices.original1.requires_grad_(False)


def remove_selection(module: nn.Module) -> None:
    """Bake every channel slice back into a plain parameter (after training)."""
    for owner in module.modules():
        if parametrize.is_parametrized(owner):
            for attribute in list(cast(nn.ModuleDict, owner.parametrizations).keys()):
                parametrize.remove_parametrizations(owner, attribute, leave_parametrized=True)


class DevicePart(nn.Module):
    """The part of AgileNN that trains on the device: extractor and local predictor, with gradients.

    Shares its modules with ``model``; its output is the local logits.
    """

    def __init__(self, model: AgileNN) -> None:
        super().__init__()
        self.local_channels = model.config.local_channels
        self.extractor = model.extractor
        self.local_predictor = model.local_predictor

    def forward(self, x: Tensor) -> Tensor:
        local, _ = split_channels(self.extractor(x), self.local_channels)
        return self.local_predictor(local)
