"""What a server can serve: the remote part of an AgileNN model, or a baseline CNN.

The server owns batching, transport and errors; a served model only turns a
request into a prepared input (``prepare``, which raises
:class:`~agilenn.errors.CodecError` with a reason for a bad one) and a batch of
those into replies (``run``; the server fills in the timings).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from agilenn.baselines.checkpoint import BaselineCheckpoint
from agilenn.pretrained import is_baseline_spec, load_baseline_checkpoint, load_checkpoint
from agilenn.baselines.models import FullCNN, baseline_payloads
from agilenn.checkpoint import Checkpoint
from agilenn.codec import FeatureCodec
from agilenn.errors import CheckpointError, CodecError
from transports.messages import InferReply, InferRequest


class ServedModel(Protocol):
    model_hash: bytes
    description: str

    def prepare(self, request: InferRequest) -> Any: ...

    def run(self, prepared: Sequence[Any]) -> list[InferReply]: ...


def _probabilities_reply(logits: torch.Tensor) -> list[InferReply]:
    probabilities = torch.softmax(logits, dim=1).numpy()
    return [InferReply(int(row.argmax()), probabilities=row) for row in probabilities]


class ServedAgileNN:
    """The remote predictor, and the merge when the device sends its local logits.

    A request with local logits is merged here and answered with the merged
    class and probabilities. A request without them keeps its local logits on
    the device: the reply carries the remote logits and the device merges,
    which saves 24 bytes on the uplink.
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self.model = checkpoint.build_model().prepare_for_serving()
        self.codec = FeatureCodec(checkpoint.codec)
        self.model_hash = bytes.fromhex(checkpoint.model_hash)
        config = checkpoint.config
        self.symbol_shape = (config.remote_channels, config.feature_size, config.feature_size)
        self.num_classes = config.num_classes
        self.description = f"agilenn {checkpoint.model_hash} ({config.remote_arch} remote)"

    def prepare(self, request: InferRequest) -> tuple[np.ndarray, np.ndarray | None]:
        symbols, local = self.codec.decode(request.payload), request.local_logits
        if symbols.shape != self.symbol_shape or (local is not None and local.shape != (self.num_classes,)):
            raise CodecError(f"payload {symbols.shape} with {'no' if local is None else local.size} logits; "
                             f"this model takes {self.symbol_shape} with {self.num_classes}")
        return symbols, local

    @torch.no_grad()
    def run(self, prepared: Sequence[tuple[np.ndarray, np.ndarray | None]]) -> list[InferReply]:
        symbols = torch.from_numpy(np.stack([item[0] for item in prepared])).long()
        remote = self.model.remote_logits(symbols)
        merged_rows = [i for i, (_, local) in enumerate(prepared) if local is not None]
        replies = [InferReply(int(row.argmax()), remote_logits=row.numpy()) for row in remote]
        if merged_rows:
            local = torch.from_numpy(np.stack([prepared[i][1] for i in merged_rows]))  # type: ignore[misc]
            merged = _probabilities_reply(self.model.merge(local, remote[merged_rows]))
            for row, reply in zip(merged_rows, merged, strict=True):
                replies[row] = reply
        return replies


class ServedBaseline:
    """A full CNN on raw-offload, jpeg-offload or split8 payloads (see baselines.payloads)."""

    def __init__(self, checkpoint: BaselineCheckpoint) -> None:
        model = checkpoint.build_model()
        if not isinstance(model, FullCNN):
            raise CheckpointError(f"a {checkpoint.arch} runs on the device; only a full-cnn can be served")
        self.model = model
        self.model_hash = bytes.fromhex(checkpoint.model_hash)
        self.payloads = baseline_payloads(model, checkpoint.raw_dictionary, checkpoint.input_shape)
        self.description = f"{checkpoint.arch} {checkpoint.model_hash} (raw, jpeg and split8 payloads)"

    def prepare(self, request: InferRequest) -> tuple[int, np.ndarray]:
        if request.local_logits is not None:
            raise CodecError("this server runs a baseline CNN, which takes no local logits")
        return self.payloads.decode(request.payload)

    @torch.no_grad()
    def run(self, prepared: Sequence[tuple[int, np.ndarray]]) -> list[InferReply]:
        replies: list[InferReply] = [InferReply(-1) for _ in prepared]
        for split in sorted({split for split, _ in prepared}):
            rows = [i for i, (s, _) in enumerate(prepared) if s == split]
            inputs = torch.from_numpy(np.stack([prepared[i][1] for i in rows]))
            for row, reply in zip(rows, _probabilities_reply(self.model.tail(split)(inputs)), strict=True):
                replies[row] = reply
        return replies


def load_served_model(spec: str) -> ServedModel:
    """``pretrained:NAME`` or a path: shipped baselines and ``.agbl`` files are baselines,
    anything else an AgileNN checkpoint."""
    if is_baseline_spec(spec):
        return ServedBaseline(load_baseline_checkpoint(spec))
    return ServedAgileNN(load_checkpoint(spec))
