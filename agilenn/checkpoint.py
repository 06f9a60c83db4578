"""The ``.agnn`` checkpoint: weights, full config, codec settings, content hash.

Serialised with ``torch.save`` and read back with ``weights_only=True`` so a
checkpoint can never execute code. This module turns checkpoints into bytes
and back; callers own the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

import msgpack
import torch
from torch import Tensor

from .codec import CodecSettings
from .config import ModelConfig
from .errors import CheckpointError
from .model import AgileNN

FORMAT_NAME = "agilenn.checkpoint"
FORMAT_VERSION = 1
MODEL_HASH_HEX_DIGITS = 16  # 8 bytes on the wire are plenty to tell models apart


def model_hash(
    config: ModelConfig, codec: CodecSettings, state_dict: dict[str, Tensor]
) -> str:
    """SHA-256 over the config, codec settings and every tensor, in canonical order.

    Anything that changes what the server must do with a payload changes the hash.
    """
    return content_hash([config.to_dict(), codec.to_dict()], state_dict)


def content_hash(header: object, state_dict: Mapping[str, Tensor]) -> str:
    """SHA-256 over a msgpack-able header and every tensor, in canonical order."""
    digest = hashlib.sha256()
    digest.update(msgpack.packb(header, use_bin_type=True))
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(msgpack.packb([name, str(tensor.dtype), list(tensor.shape)]))
        # A uint8 view hashes the raw bytes of any dtype, bfloat16 included.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:MODEL_HASH_HEX_DIGITS]


@dataclass
class Checkpoint:
    config: ModelConfig
    codec: CodecSettings
    state_dict: dict[str, Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model(
        cls, model: AgileNN, codec: CodecSettings, metadata: dict[str, Any] | None = None
    ) -> Checkpoint:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return cls(model.config, codec, state, dict(metadata or {}))

    def to_half(self) -> Checkpoint:
        """A copy storing float32 tensors as float16: half the file, same model.

        ``build_model`` loads them back into float32 parameters, so inference is
        unchanged apart from the rounding of the weights, which the hash covers.
        """
        state = {
            name: tensor.half() if tensor.dtype == torch.float32 else tensor
            for name, tensor in self.state_dict.items()
        }
        return Checkpoint(self.config, self.codec, state, dict(self.metadata))

    @property
    def model_hash(self) -> str:
        return model_hash(self.config, self.codec, self.state_dict)

    def build_model(self) -> AgileNN:
        """An eval-mode model with these weights and a frozen reference."""
        model = AgileNN(self.config)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"weights do not fit the stored config: {exc}") from exc
        model.freeze_reference()
        return model.eval()

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "config": self.config.to_dict(),
                "codec": _codec_to_storable(self.codec),
                "state_dict": self.state_dict,
                "metadata_json": json.dumps(self.metadata, sort_keys=True),
                "model_hash": self.model_hash,
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        raw = read_weights_only(data, FORMAT_NAME, FORMAT_VERSION)
        try:
            checkpoint = cls(
                ModelConfig.from_dict(raw["config"]),
                _codec_from_storable(raw["codec"]),
                tensors_only(raw["state_dict"]),
                dict(json.loads(raw["metadata_json"])),
            )
        except (KeyError, TypeError, ValueError) as exc:  # JSONDecodeError is a ValueError
            raise CheckpointError(f"checkpoint fields are invalid: {exc}") from exc
        if checkpoint.model_hash != raw.get("model_hash"):
            raise CheckpointError(
                f"content hash {checkpoint.model_hash} does not match the stored "
                f"{raw.get('model_hash')}: the file is corrupt or was edited"
            )
        return checkpoint



# The codec's bytes fields. A prior exists only in layout rans, so older checkpoints have none.
_CODEC_BYTES = ("dictionary", "prior")


def _codec_to_storable(codec: CodecSettings) -> dict[str, Any]:
    # torch's weights-only loader refuses an empty bytes object, so the
    # dictionary (and a rans prior) travel as uint8 tensors.
    values = codec.to_dict()
    for name in _CODEC_BYTES:
        if name in values:
            values[name] = torch.tensor(list(values[name]), dtype=torch.uint8)
    return values


def _codec_from_storable(values: Mapping[str, Any]) -> CodecSettings:
    stored = dict(values)
    for name in _CODEC_BYTES:
        if name == "prior" and name not in stored:
            continue
        tensor = stored.get(name)
        if not isinstance(tensor, Tensor) or tensor.dtype != torch.uint8:
            raise ValueError(f"codec {name} must be a uint8 tensor")
        stored[name] = tensor.numpy().tobytes()
    return CodecSettings.from_dict(stored)


def read_weights_only(data: bytes, format_name: str, format_version: int) -> dict[str, Any]:
    """``torch.load`` in weights-only mode, checked for the format marker and version."""
    try:
        with warnings.catch_warnings():
            # torch only warns about some malformed pickles; treat them as bad.
            warnings.simplefilter("error")
            raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises a dozen types on garbage bytes
        raise CheckpointError(f"not a readable {format_name} file: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != format_name:
        raise CheckpointError(f"not a {format_name} file (format marker missing)")
    version = raw.get("format_version")
    if version != format_version:
        raise CheckpointError(f"{format_name} format version {version}; this agilenn reads version "
                              f"{format_version}")
    return raw


def tensors_only(state: Any) -> dict[str, Tensor]:
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise ValueError("state_dict must map parameter names to tensors")
    return dict(state)
