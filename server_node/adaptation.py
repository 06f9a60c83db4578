"""The server's side of split learning: answers ADAPT_STEP and ADAPT_FETCH.

A step with ``train`` false needs no state: it is answered from the served
model (contribution probes, Taylor importance). A training step runs in its
session, a private copy of the remote predictor and merge with its own
optimizer, so the model being served never changes under its clients. A
session is opened by its step 0 and answers a resent step from its cache, so
a step is never applied twice. Once trained, the device fetches the adapted
state in pieces. At most ``max_sessions`` live at once; one idle for
``idle_s`` is dropped, and at the limit a fully fetched one gives way.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from agilenn.adapt.split import ServerHalf, state_to_bytes
from agilenn.checkpoint import Checkpoint
from agilenn.config import TrainConfig
from agilenn.model import AgileNN
from transports.messages import MAX_STATE_CHUNK_BYTES, AdaptFetch, AdaptGradient, AdaptState, AdaptStep

log = logging.getLogger("agilenn.server.adaptation")
OPTIMIZERS = ("adam", "sgd", "momentum")


class AdaptationError(Exception):
    """A step or fetch the server refuses; ``code`` goes into the ERROR reply."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass
class _Session:
    half: ServerHalf
    last_step: int
    last_answer: AdaptGradient
    touched: float
    state: bytes | None = None
    fetched: bool = False


class Adaptation:
    """Split-learning sessions against one served checkpoint."""

    def __init__(self, checkpoint: Checkpoint, max_sessions: int = 4, idle_s: float = 600.0,
                 training: TrainConfig | None = None) -> None:
        self.checkpoint = checkpoint
        self.training = training or TrainConfig()
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self.sessions: dict[tuple[str, str], _Session] = {}
        config = checkpoint.config
        self.feature_shape = (config.feature_channels, config.feature_size, config.feature_size)
        self.num_classes = config.num_classes

    @functools.cached_property
    def model(self) -> AgileNN:
        """Built at the first adaptation request: a server that never adapts holds one model."""
        return self.checkpoint.build_model()

    @functools.cached_property
    def _probe(self) -> ServerHalf:
        return ServerHalf(self.model, self.training, train=False)

    def step(self, device_id: str, request: AdaptStep) -> AdaptGradient:
        features, local_logits, labels = self._tensors(request)
        if not request.train:
            return self._answer(self._probe, features, local_logits, labels)
        key = (device_id, request.session)
        session = self.sessions.get(key)
        if session is not None and request.step == session.last_step:
            session.touched = time.monotonic()
            return session.last_answer  # a resend: answered again, not applied twice
        if session is None:
            if request.step != 0:
                raise AdaptationError("unknown-session", f"no session {request.session!r} (it expired, "
                                      "or the server restarted); start again from step 0")
            session = self._open(key, request)
        elif request.step != session.last_step + 1:
            raise AdaptationError("bad-step", f"step {request.step} after step {session.last_step}")
        if session.state is not None:
            raise AdaptationError("bad-step", f"session {request.session!r} was already fetched")
        answer = self._answer(session.half, features, local_logits, labels)
        session.last_step, session.last_answer, session.touched = request.step, answer, time.monotonic()
        return answer

    def fetch(self, device_id: str, request: AdaptFetch) -> AdaptState:
        session = self.sessions.get((device_id, request.session))
        if session is None:
            raise AdaptationError("unknown-session", f"no session {request.session!r}")
        if session.state is None:
            session.state = state_to_bytes(session.half.trained_state())
        total = len(session.state)
        if request.offset > total:
            raise AdaptationError("bad-offset", f"offset {request.offset} beyond the state's {total} bytes")
        data = session.state[request.offset:request.offset + MAX_STATE_CHUNK_BYTES]
        session.touched = time.monotonic()
        session.fetched = request.offset + len(data) == total
        return AdaptState(request.offset, total, data)

    def expire(self) -> None:
        now = time.monotonic()
        for key in [key for key, session in self.sessions.items() if now - session.touched > self.idle_s]:
            log.info("dropped idle adaptation session %r of %s", key[1], key[0])
            del self.sessions[key]

    def _open(self, key: tuple[str, str], request: AdaptStep) -> _Session:
        self.expire()
        if request.optimizer not in OPTIMIZERS:
            raise AdaptationError("bad-payload", f"optimizer {request.optimizer!r}; pick one of "
                                  f"{', '.join(OPTIMIZERS)}")
        if not request.lr > 0:
            raise AdaptationError("bad-payload", "lr must be positive")
        if len(self.sessions) >= self.max_sessions:
            done = [k for k, session in self.sessions.items() if session.fetched]
            if not done:
                raise AdaptationError("busy", f"{self.max_sessions} adaptation sessions are open; try later")
            del self.sessions[done[0]]
        half = ServerHalf(self.model, self.training, train=True, lr=request.lr, optimizer=request.optimizer)
        placeholder = AdaptGradient(np.zeros(0), np.zeros(0), 0.0)
        session = _Session(half, -1, placeholder, time.monotonic())
        self.sessions[key] = session
        log.info("opened adaptation session %r for %s", key[1], key[0])
        return session

    def _tensors(self, request: AdaptStep) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = len(request.labels)
        channels, height, width = self.feature_shape
        if batch == 0 or request.features.size != batch * channels * height * width \
                or request.local_logits.size != batch * self.num_classes:
            raise AdaptationError("bad-payload", f"{request.features.size} feature values and "
                                  f"{request.local_logits.size} logits for {batch} labels; this model takes "
                                  f"{channels}x{height}x{width} features and {self.num_classes} logits each")
        if int(request.labels.max()) >= self.num_classes:
            raise AdaptationError("bad-payload", f"label {int(request.labels.max())} of "
                                  f"{self.num_classes} classes")
        return (torch.from_numpy(request.features.reshape(batch, channels, height, width).copy()),
                torch.from_numpy(request.local_logits.reshape(batch, self.num_classes).copy()),
                torch.from_numpy(request.labels.copy()))

    @staticmethod
    def _answer(half: ServerHalf, features: torch.Tensor, local_logits: torch.Tensor,
                labels: torch.Tensor) -> AdaptGradient:
        gradients = half.step(features, local_logits, labels)
        return AdaptGradient(gradients.features.numpy(), gradients.local_logits.numpy(), gradients.loss)
