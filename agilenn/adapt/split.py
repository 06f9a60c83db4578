"""Split learning: the server's half of an adaptation step, kept apart from the device's.

The device runs its extractor and local predictor, then hands the server the
features of a batch, its local logits and the labels. :class:`ServerHalf`
runs the rest of AgileNN's training loss on them: the remote predictor on the
quantized remote channels, the merge, the merged cross-entropy, and the
skewness and disorder losses of the Integrated Gradients importance against
the reference network (which never leaves the server). It returns the loss's
gradient with respect to the features and the local logits, and, when it
trains, steps its own optimizer over the remote predictor and the merge. The
device adds its local cross-entropy and back-propagates through its own part.

:class:`InProcessServer` opens server halves in this process;
``edge_node.split_learning`` opens them on a real server over the wire. Both
satisfy :class:`SplitServer`, which is all ``adapt`` needs.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import read_weights_only, tensors_only
from ..config import TrainConfig
from ..errors import CheckpointError
from ..importance import channel_importance, integrated_gradients
from ..losses import disorder_loss, skewness_loss
from ..model import AgileNN, split_channels
from .selection import DevicePart

# The modules whose parameters the server adapts, as named in the model's state dict.
SERVER_TRAINED = ("remote_predictor", "merge")


@dataclass(frozen=True)
class SplitGradients:
    """The server's answer: d(server loss)/d(features) and d/d(local logits), and the loss."""

    features: Tensor
    local_logits: Tensor
    loss: float


class SplitPeer(Protocol):
    """One server half, however reached."""

    @property
    def bytes_exchanged(self) -> int:
        """Both ways; modelled in process, counted on the wire."""
        ...

    def step(self, features: Tensor, local_logits: Tensor, labels: Tensor) -> SplitGradients: ...

    def trained_state(self) -> dict[str, Tensor]:
        """The adapted remote predictor and merge, keyed as in the model's state dict."""
        ...

    def close(self) -> None: ...


class SplitServer(Protocol):
    def open(self, model: AgileNN, train: bool) -> SplitPeer:
        """A server half for ``model``; with ``train`` it adapts its remote part as it answers."""
        ...


def server_loss(model: AgileNN, features: Tensor, local_logits: Tensor, labels: Tensor,
                config: TrainConfig) -> Tensor:
    """AgileNN's training loss without the device's terms and without the rate term."""
    _, remote = split_channels(features, model.config.local_channels)
    logits = model.merge(local_logits, model.remote_predictor(model.quantizer(remote).values))
    importance = channel_importance(integrated_gradients(
        model.reference, features, labels, config.ig_steps, config.second_order, config.ig_target))
    k = model.config.local_channels
    return (config.lam * F.cross_entropy(logits, labels)
            + (1.0 - config.lam) * (skewness_loss(importance, k, config.rho) + disorder_loss(importance, k)))


def device_loss(local_logits: Tensor, labels: Tensor, config: TrainConfig) -> Tensor:
    """The device's own term of the training loss: its local predictor's cross-entropy."""
    return config.local_ce_weight * F.cross_entropy(local_logits, labels)


def make_optimizer(parameters: list[nn.Parameter], name: str, lr: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    if name in ("sgd", "momentum"):
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9 if name == "momentum" else 0.0)
    raise ValueError(f"unknown optimizer {name!r}; pick adam, sgd or momentum")


class ServerHalf:
    """The server's side of split learning on a private copy of the server's modules."""

    def __init__(self, model: AgileNN, config: TrainConfig, train: bool, lr: float = 2e-3,
                 optimizer: str = "adam") -> None:
        self.model = copy.deepcopy(model).eval()  # BatchNorm statistics stay as shipped
        self.config = config
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.trained = [p for name in SERVER_TRAINED for p in getattr(self.model, name).parameters()] \
            if train else []
        for parameter in self.trained:
            parameter.requires_grad_(True)
        self.optimizer = make_optimizer(self.trained, optimizer, lr) if train else None
        self.bytes_exchanged = 0

    def step(self, features: Tensor, local_logits: Tensor, labels: Tensor) -> SplitGradients:
        # The wire carries float16, and a feature that rounds across a centroid boundary changes
        # the quantized value: in process the step sees the values the wire would carry.
        features = features.detach().half().float().requires_grad_(True)
        local_logits = local_logits.detach().half().float().requires_grad_(True)
        loss = server_loss(self.model, features, local_logits, labels, self.config)
        gradients = torch.autograd.grad(loss, [features, local_logits, *self.trained])
        if self.optimizer is not None:
            for parameter, gradient in zip(self.trained, gradients[2:], strict=True):
                parameter.grad = gradient
            self.optimizer.step()
        # What the wire would carry: features and local logits up and their gradients down as
        # float16, and a byte a label.
        self.bytes_exchanged += 4 * (features.numel() + local_logits.numel()) + labels.numel()
        return SplitGradients(gradients[0], gradients[1], float(loss.detach()))

    def trained_state(self) -> dict[str, Tensor]:
        state = self.model.state_dict()
        return {name: tensor.detach().clone() for name, tensor in state.items()
                if name.split(".", 1)[0] in SERVER_TRAINED}

    def close(self) -> None:
        self.optimizer = None


@dataclass(frozen=True)
class InProcessServer:
    """Server halves in this process: split learning with the wire left out."""

    config: TrainConfig
    lr: float = 2e-3
    optimizer: str = "adam"

    def open(self, model: AgileNN, train: bool) -> SplitPeer:
        return ServerHalf(model, self.config, train, self.lr, self.optimizer)


STATE_FORMAT = "agilenn-server-half"
STATE_FORMAT_VERSION = 1


def state_to_bytes(state: dict[str, Tensor]) -> bytes:
    """A server half's adapted tensors as bytes, for the wire (float32: exactly what trained)."""
    buffer = io.BytesIO()
    torch.save({"format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, "state_dict": state}, buffer)
    return buffer.getvalue()


def state_from_bytes(data: bytes, model: AgileNN) -> dict[str, Tensor]:
    """The tensors in ``data``, checked to be the server-trained ones of ``model``, shape for shape."""
    try:
        state = tensors_only(read_weights_only(data, STATE_FORMAT, STATE_FORMAT_VERSION).get("state_dict"))
    except ValueError as exc:
        raise CheckpointError(f"server state: {exc}") from exc
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()
                if name.split(".", 1)[0] in SERVER_TRAINED}
    if {name: tensor.shape for name, tensor in state.items()} != expected:
        raise CheckpointError("server state: its tensors are not this model's remote predictor and merge")
    return state


class SplitStep(nn.Module):
    """The device's split objective as one traceable step (for the memory scheduler): its local
    cross-entropy plus the server's gradients dotted with the outputs they answer. With zero
    gradients from the server it is the device-only loss."""

    def __init__(self, model: DevicePart, local_channels: int, local_weight: float) -> None:
        super().__init__()
        self.model = model
        self.local_channels = local_channels
        self.local_weight = local_weight

    def forward(self, x: Tensor, y: Tensor, feature_gradient: Tensor, logit_gradient: Tensor) -> Tensor:
        features = self.model.extractor(x)
        local_logits = self.model.local_predictor(features[:, :self.local_channels])
        return (self.local_weight * F.cross_entropy(local_logits, y) + (features * feature_gradient).sum()
                + (local_logits * logit_gradient).sum())
