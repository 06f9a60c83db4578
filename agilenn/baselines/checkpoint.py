"""Baseline checkpoints (``.agbl``): a network, its arch, its raw-image dictionary, a hash.

The same safety as ``.agnn``: ``torch.save`` written, read back weights-only,
and a content hash that the device puts in every request.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import content_hash, read_weights_only, tensors_only
from ..errors import CheckpointError
from .models import BASELINE_ARCHS

FORMAT_NAME = "agilenn.baseline"
FORMAT_VERSION = 1


@dataclass
class BaselineCheckpoint:
    arch: str
    arch_kwargs: dict[str, int]
    state_dict: dict[str, Tensor]
    raw_dictionary: bytes = field(default=b"", repr=False)  # zstd dictionary for raw-offload images
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(cls, arch: str, arch_kwargs: dict[str, int], model: nn.Module,
                   raw_dictionary: bytes = b"", metadata: dict[str, Any] | None = None) -> BaselineCheckpoint:
        state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        return cls(arch, dict(arch_kwargs), state, raw_dictionary, dict(metadata or {}))

    @property
    def model_hash(self) -> str:
        return content_hash([self.arch, self.arch_kwargs, self.raw_dictionary], self.state_dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The image shape (C, H, W) the model was trained on; MNIST's where none was recorded."""
        shape = self.metadata.get("input_shape", (1, 28, 28))
        if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and
                all(isinstance(side, int) and side > 0 for side in shape)):
            raise CheckpointError(f"baseline metadata input_shape {shape!r} is not three positive integers")
        return int(shape[0]), int(shape[1]), int(shape[2])

    def build_model(self) -> nn.Module:
        try:
            factory = BASELINE_ARCHS[self.arch]
        except KeyError:
            raise CheckpointError(f"unknown baseline arch {self.arch!r}") from None
        try:
            model = factory(**self.arch_kwargs)
        except TypeError as exc:
            raise CheckpointError(f"arch {self.arch!r} does not take {self.arch_kwargs}: {exc}") from None
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit the stored arch: {exc}") from exc
        return model.eval()

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "arch": self.arch, "arch_kwargs": self.arch_kwargs, "state_dict": self.state_dict,
            # weights-only loading refuses an empty bytes object, so the dictionary is a tensor
            "raw_dictionary": torch.tensor(list(self.raw_dictionary), dtype=torch.uint8),
            "metadata_json": json.dumps(self.metadata, sort_keys=True),
            "model_hash": self.model_hash,
        }, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> BaselineCheckpoint:
        raw = read_weights_only(data, FORMAT_NAME, FORMAT_VERSION)
        try:
            dictionary = raw["raw_dictionary"]
            if not isinstance(dictionary, Tensor) or dictionary.dtype != torch.uint8:
                raise ValueError("raw_dictionary must be a uint8 tensor")
            kwargs = raw["arch_kwargs"]
            if not isinstance(kwargs, dict) or not all(type(v) is int for v in kwargs.values()):
                raise ValueError("arch_kwargs must map names to integers")
            checkpoint = cls(str(raw["arch"]), dict(kwargs), tensors_only(raw["state_dict"]),
                             dictionary.numpy().tobytes(), dict(json.loads(raw["metadata_json"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"baseline fields are invalid: {exc}") from exc
        if checkpoint.model_hash != raw.get("model_hash"):
            raise CheckpointError(f"content hash {checkpoint.model_hash} does not match the stored "
                                  f"{raw.get('model_hash')}: the file is corrupt or was edited")
        return checkpoint
