"""Typed, validated configuration of an AgileNN model and of its training run.

Both configs round-trip through plain dicts so that checkpoints can store them
and the content hash covers them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar
from collections.abc import Mapping

_C = TypeVar("_C", bound="_DictConfig")

# What Integrated Gradients explains; the functions behind these names live in
# agilenn.importance.EXPLAINED_OUTPUTS (a test keeps the two in step). Listed
# here so that config stays free of torch.
IG_TARGETS = ("logit", "loss")


class _DictConfig:
    """Dict round-trip that refuses unknown keys, so a typo never goes unnoticed."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls: type[_C], values: Mapping[str, Any]) -> _C:
        known = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
        return cls(**values)


@dataclass(frozen=True)
class ModelConfig(_DictConfig):
    """Shape of the split network. Defaults fit 28x28 single-channel images (MNIST)."""

    in_channels: int = 1
    image_size: int = 28
    num_classes: int = 10
    stem_channels: int = 16
    feature_channels: int = 20
    extractor_stride: int = 4
    split_ratio: float = 0.2
    n_centroids: int = 8
    quantizer_sharpness: float = 4.0
    local_pool: int = 7
    remote_arch: str = "cnn"
    remote_width: int = 64
    reference_width: int = 32

    def __post_init__(self) -> None:
        if self.extractor_stride not in (1, 2, 4):
            raise ValueError("extractor_stride must be 1, 2 or 4")
        if not 0.0 < self.split_ratio < 1.0:
            raise ValueError("split_ratio must lie strictly between 0 and 1")
        if self.feature_channels < 2:
            raise ValueError("feature_channels must be at least 2 (one local, one remote)")
        if not 2 <= self.n_centroids <= 256:
            raise ValueError("n_centroids must lie in [2, 256]")
        if self.image_size % self.extractor_stride:
            raise ValueError("image_size must be divisible by extractor_stride")

    @property
    def local_channels(self) -> int:
        """k = round(split_ratio * C), kept in [1, C - 1] so both sides exist."""
        k = round(self.split_ratio * self.feature_channels)
        return min(max(k, 1), self.feature_channels - 1)

    @property
    def remote_channels(self) -> int:
        return self.feature_channels - self.local_channels

    @property
    def feature_size(self) -> int:
        return self.image_size // self.extractor_stride


@dataclass(frozen=True)
class TrainConfig(_DictConfig):
    """Hyper-parameters of the two training stages (reference, then AgileNN)."""

    seed: int = 0
    reference_epochs: int = 2
    epochs: int = 6
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    rho: float = 0.8
    lam: float = 0.8
    local_ce_weight: float = 0.5
    rate_weight: float = 0.0
    ig_steps: int = 8
    second_order: bool = False
    # "logit": IG explains the true-class logit (our default); "loss": the
    # per-sample cross-entropy, as the TensorFlow reference does.
    ig_target: str = dataclasses.field(default="logit", metadata={"choices": IG_TARGETS})
    remap_channels: bool = True
    max_train_samples: int = 0
    augment_shift: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise ValueError("lam must lie in [0, 1]")
        if not 0.0 < self.rho <= 1.0:
            raise ValueError("rho must lie in (0, 1]")
        if self.ig_steps < 1 or self.batch_size < 1:
            raise ValueError("ig_steps and batch_size must be positive")
        if self.epochs < 0 or self.reference_epochs < 0:
            raise ValueError("epoch counts cannot be negative")
        if self.ig_target not in IG_TARGETS:
            raise ValueError(f"ig_target must be one of {', '.join(IG_TARGETS)}, not {self.ig_target!r}")
