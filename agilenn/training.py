"""Two-stage AgileNN training.

Stage 1 ("reference") trains the extractor and the reference network on the
full feature map with cross-entropy. Stage 2 ("agilenn") freezes the
reference, optionally reorders channels by importance, and trains extractor,
local and remote predictors, quantizer and merge with

    lam * CE(merged) + (1 - lam) * (skewness + disorder)
    + local_ce_weight * CE(local) + rate_weight * entropy(symbols).

Importance is Integrated Gradients of the frozen reference's true-class logit,
or of its cross-entropy with ``ig_target="loss"`` (see agilenn.importance).

The trainer is resumable at epoch boundaries: ``state_dict()`` after any epoch
and ``load_state_dict()`` into a new trainer continue bit-for-bit, because
shuffling and learning rates are functions of (seed, epoch, step) only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from .config import ModelConfig, TrainConfig
from .data import ImageDataset
from .importance import channel_importance, integrated_gradients
from .losses import disorder_loss, skewness, skewness_loss, symbol_entropy_bits
from .model import AgileNN

REMAP_SAMPLES = 2048


@dataclass
class EpochMetrics:
    stage: str
    epoch: int
    loss: float
    accuracy: float
    local_accuracy: float | None  # None in the reference stage, which has no split
    skewness: float | None
    rate_bits: float | None
    seconds: float


class _Running:
    """Sample-weighted running means of named metrics."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, count: int, **values: float) -> None:
        self.count += count
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + value * count

    def mean(self, name: str) -> float:
        return self.sums[name] / max(self.count, 1)

    def mean_if_seen(self, name: str) -> float | None:
        return self.mean(name) if name in self.sums else None


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean())


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by up to ``max_shift`` pixels, filling with zeros.

    Small translations are the augmentation that closes most of the MNIST
    train/test gap; zero fill matches the black background.
    """
    if max_shift <= 0:
        return images
    padded = F.pad(images, [max_shift] * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    height, width = images.shape[-2:]
    return torch.stack([
        padded[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets.tolist())
    ])


class Trainer:
    def __init__(
        self,
        model_config: ModelConfig,
        train_config: TrainConfig,
        dataset: ImageDataset,
        progress: bool = True,
    ) -> None:
        self.train_config = train_config
        self.dataset = dataset.head(train_config.max_train_samples)
        self.progress = progress
        torch.manual_seed(train_config.seed)
        self.model = AgileNN(model_config)
        self.completed_epochs = 0
        self.history: list[EpochMetrics] = []
        self.optimizer = self._make_optimizer(agilenn_stage=False)

    @property
    def total_epochs(self) -> int:
        return self.train_config.reference_epochs + self.train_config.epochs

    @property
    def in_agilenn_stage(self) -> bool:
        return self.completed_epochs >= self.train_config.reference_epochs

    def _make_optimizer(self, agilenn_stage: bool) -> torch.optim.Optimizer:
        if agilenn_stage:
            parameters = self.model.trainable_parameters()
        else:
            parameters = [*self.model.extractor.parameters(), *self.model.reference.parameters()]
        return torch.optim.AdamW(
            parameters, lr=self.train_config.lr, weight_decay=self.train_config.weight_decay
        )

    def run(self, on_epoch_end: Callable[[Trainer, EpochMetrics], None] | None = None) -> None:
        """Train the remaining epochs, calling ``on_epoch_end`` after each one."""
        while self.completed_epochs < self.total_epochs:
            if self.completed_epochs == self.train_config.reference_epochs:
                self.enter_agilenn_stage()
            metrics = self._run_epoch()
            self.completed_epochs += 1
            self.history.append(metrics)
            if on_epoch_end is not None:
                on_epoch_end(self, metrics)

    def enter_agilenn_stage(self) -> None:
        """Freeze the reference, remap channels if configured, new optimizer."""
        self.model.freeze_reference()
        if self.train_config.remap_channels:
            self.model.permute_feature_channels(self.importance_order())
        self.optimizer = self._make_optimizer(agilenn_stage=True)

    @torch.no_grad()
    def _features(self, images: Tensor) -> Tensor:
        return self.model.extractor(images)

    def importance_order(self) -> Tensor:
        """Channels sorted by mean importance over a fixed slice of the training set."""
        self.model.eval()
        images, labels = self.dataset.batch(slice(0, REMAP_SAMPLES))
        cfg = self.train_config
        attributions = integrated_gradients(
            self.model.reference, self._features(images), labels, cfg.ig_steps, ig_target=cfg.ig_target
        )
        return channel_importance(attributions).mean(0).argsort(descending=True)

    def _batches(self) -> Iterator[tuple[Tensor, Tensor]]:
        generator = torch.Generator().manual_seed(self.train_config.seed * 1000 + self.completed_epochs)
        order = torch.randperm(len(self.dataset), generator=generator)
        size = self.train_config.batch_size
        for start in range(0, len(order), size):
            images, labels = self.dataset.batch(order[start : start + size])
            yield random_shift(images, self.train_config.augment_shift, generator), labels

    def _set_learning_rate(self, step: int, steps_per_epoch: int) -> None:
        # Cosine decay within each stage; a pure function of the step, so resumable.
        cfg = self.train_config
        stage_start, stage_epochs = (
            (cfg.reference_epochs, cfg.epochs) if self.in_agilenn_stage else (0, cfg.reference_epochs)
        )
        position = ((self.completed_epochs - stage_start) * steps_per_epoch + step) / max(
            stage_epochs * steps_per_epoch, 1
        )
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * position))

    def _run_epoch(self) -> EpochMetrics:
        stage = "agilenn" if self.in_agilenn_stage else "reference"
        self.model.train()
        running = _Running()
        steps = math.ceil(len(self.dataset) / self.train_config.batch_size)
        started = time.perf_counter()
        bar = tqdm(
            self._batches(), total=steps, disable=not self.progress, leave=False,
            desc=f"epoch {self.completed_epochs + 1}/{self.total_epochs} {stage}",
        )
        for step, (images, labels) in enumerate(bar):
            self._set_learning_rate(step, steps)
            running.add(len(labels), **self.train_step(images, labels))
            bar.set_postfix({name: f"{running.mean(name):.3f}" for name in running.sums})
        bar.close()
        return EpochMetrics(
            stage, self.completed_epochs + 1, running.mean("loss"), running.mean("accuracy"),
            running.mean_if_seen("local_accuracy"), running.mean_if_seen("skewness"),
            running.mean_if_seen("rate_bits"), time.perf_counter() - started,
        )

    def train_step(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        """One optimizer update of the current stage; returns the batch's metrics."""
        loss_fn = self.agilenn_loss if self.in_agilenn_stage else self.reference_loss
        loss, values = loss_fn(images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), **values}

    def reference_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        logits = self.model.reference(self.model.extractor(images))
        return F.cross_entropy(logits, labels), {"accuracy": _accuracy(logits, labels)}

    def agilenn_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
        cfg = self.train_config
        k = self.model.config.local_channels
        out = self.model(images)
        attributions = integrated_gradients(
            self.model.reference, out.features, labels, cfg.ig_steps, cfg.second_order, cfg.ig_target
        )
        importance = channel_importance(attributions)
        rate_bits = symbol_entropy_bits(out.soft_assignment)
        loss = (
            cfg.lam * F.cross_entropy(out.logits, labels)
            + (1.0 - cfg.lam)
            * (skewness_loss(importance, k, cfg.rho) + disorder_loss(importance, k))
            + cfg.local_ce_weight * F.cross_entropy(out.local_logits, labels)
            + cfg.rate_weight * rate_bits
        )
        return loss, {
            "accuracy": _accuracy(out.logits, labels),
            "local_accuracy": _accuracy(out.local_logits, labels),
            "skewness": float(skewness(importance.detach(), k).mean()),
            "rate_bits": float(rate_bits.detach()),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "model_config": self.model.config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "completed_epochs": self.completed_epochs,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": [asdict(m) for m in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["model_config"] != self.model.config.to_dict():
            raise ValueError("cannot resume: the saved model config differs from this one")
        # Parsed, not compared as dicts: a state saved before a TrainConfig
        # field existed (ig_target, say) takes that field's default.
        if TrainConfig.from_dict(state["train_config"]) != self.train_config:
            raise ValueError("cannot resume: the saved training config differs from this one")
        self.completed_epochs = int(state["completed_epochs"])
        self.model.load_state_dict(state["model"])
        # A state saved right at the stage boundary still holds the reference
        # stage's optimizer; run() enters the AgileNN stage next.
        entered = self.completed_epochs > self.train_config.reference_epochs
        if entered:
            self.model.freeze_reference()
        self.optimizer = self._make_optimizer(agilenn_stage=entered)
        self.optimizer.load_state_dict(state["optimizer"])
        self.history = [EpochMetrics(**m) for m in state["history"]]
