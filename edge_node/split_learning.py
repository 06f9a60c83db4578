"""Split learning with a real server: ``adapt(..., server=WireSplitServer(transport, ...))``.

Each training batch is one ADAPT_STEP over the transport (under a link
emulator if you like) and one ADAPT_GRADIENT back; after the last, the
adapted remote predictor and merge come back in ADAPT_STATE pieces. The
Requester resends a step that timed out; the server answers a resent step
from its cache, so it is never applied twice. Any ERROR becomes a
:class:`SplitLearningError` naming the server's code and reason.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from torch import Tensor

from agilenn.adapt.split import SplitGradients, state_from_bytes
from agilenn.data import ImageDataset
from agilenn.errors import AgileNNError
from agilenn.model import AgileNN
from transports.messages import (
    AdaptFetch,
    AdaptGradient,
    AdaptState,
    AdaptStep,
    Body,
    ErrorReply,
    MessageType,
    decode_message,
    encode_message,
    request_id_of,
)
from transports.pipe import MessageTransport
from transports.zmq_transport import Requester

from .client import OFFLOADED, EdgeClient


class SplitLearningError(AgileNNError):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"server: {code}: {reason}")
        self.code = code


class WireSplitServer:
    """Opens server halves on the agilenn server behind ``transport``."""

    def __init__(self, transport: MessageTransport, model_hash: str, lr: float, optimizer: str = "adam",
                 device_id: str = "adapt-0", timeout_s: float = 60.0, attempts: int = 3) -> None:
        self.requester = Requester(transport, timeout=timeout_s, attempts=attempts)
        self.model_hash = bytes.fromhex(model_hash)
        self.lr, self.optimizer, self.device_id = lr, optimizer, device_id
        self._request_ids = iter(range(1, 2**32))

    def close(self) -> None:
        self.requester.client.close()

    def __enter__(self) -> WireSplitServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self, model: AgileNN, train: bool) -> WirePeer:
        return WirePeer(self, model, secrets.token_hex(8) if train else "", train)

    def exchange(self, body: Body, expected: type[Body]) -> tuple[Body, int]:
        """Send ``body``, wait for its answer; the typed answer and the bytes both ways."""
        request_id = next(self._request_ids)
        wire = encode_message(body.message(request_id, self.device_id, self.model_hash))
        data = self.requester.request(wire, lambda reply: request_id_of(reply) == request_id)
        message = decode_message(data)
        if message.type is MessageType.ERROR:
            error = ErrorReply.parse(message)
            raise SplitLearningError(error.code, error.reason)
        return expected.parse(message), len(wire) + len(data)


class WirePeer:
    def __init__(self, server: WireSplitServer, model: AgileNN, session: str, train: bool) -> None:
        self.server, self.model, self.session, self.train = server, model, session, train
        self.steps = 0
        self.bytes_exchanged = 0

    def step(self, features: Tensor, local_logits: Tensor, labels: Tensor) -> SplitGradients:
        request = AdaptStep(self.session, self.steps, self.train, features.numpy(), local_logits.numpy(),
                            labels.numpy(), self.server.lr, self.server.optimizer)
        answer, size = self.server.exchange(request, AdaptGradient)
        assert isinstance(answer, AdaptGradient)
        self.steps += 1
        self.bytes_exchanged += size
        if answer.features.size != features.numel() or answer.local_logits.size != local_logits.numel():
            raise SplitLearningError("bad-reply", "the gradients do not match the step's shapes")
        return SplitGradients(torch.from_numpy(answer.features.reshape(features.shape)),
                              torch.from_numpy(answer.local_logits.reshape(local_logits.shape)), answer.loss)

    def trained_state(self) -> dict[str, Tensor]:
        """The session's adapted remote predictor and merge, fetched piece by piece."""
        pieces: list[bytes] = []
        received, total = 0, None
        while total is None or received < total:
            answer, size = self.server.exchange(AdaptFetch(self.session, received), AdaptState)
            assert isinstance(answer, AdaptState)
            self.bytes_exchanged += size
            if answer.offset != received or (total is not None and answer.total != total) or \
                    (not answer.data and answer.total > received):
                raise SplitLearningError("bad-reply", "the server's state pieces do not line up")
            total = answer.total
            pieces.append(answer.data)
            received += len(answer.data)
        return state_from_bytes(b"".join(pieces), self.model)

    def close(self) -> None:
        pass  # the server drops the session once fetched, or when it idles out


def server_pseudo_labels(client: EdgeClient, dataset: ImageDataset, threshold: float = 0.9) -> ImageDataset:
    """The samples the server's merged prediction is at least ``threshold`` sure of, labelled with
    it: each image is classified through ``client`` as in serving. Samples the server did not
    answer (a local fallback) are left out: their labels would be the device's own guess."""
    keep: list[int] = []
    labels: list[int] = []
    for index in range(len(dataset)):
        prediction = client.infer(dataset.images[index])
        if prediction.source == OFFLOADED and float(np.max(prediction.probabilities)) >= threshold:
            keep.append(index)
            labels.append(prediction.label)
    return ImageDataset(f"{dataset.name}:pseudo", dataset.images[keep], np.asarray(labels, dtype=np.int64),
                        dataset.num_classes)
