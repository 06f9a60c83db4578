"""``EdgeClient``: run the device part here, offload the rest, fall back in time.

``infer(x)`` always answers: with the merged prediction when the link
allows, otherwise with the local predictor's, flagged ``local-fallback`` with
the reason (no server, predicted or actual deadline miss, server error, link
down).

By default the local logits stay here: the server sends back its remote
logits and this client merges them with the model's learned weights
(``merge="device"``), which keeps 24 bytes a request off the uplink.
``merge="server"`` sends the local logits and lets the server merge.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import zmq

from agilenn.cli.common import load_checkpoint
from agilenn.codec import FeatureCodec
from transports.curve import CurveClientConfig
from transports.emulator import LinkProfile, last_uplink_seconds
from transports.errors import TransportError
from transports.messages import (
    Message,
    MessageType,
    decode_message,
    encode_message,
    logits_from_bytes,
    logits_to_bytes,
    request_id_of,
)
from transports.zmq_transport import Requester, open_client

PROBE_INTERVAL_S = 1.0
OFFLOADED = "offloaded"
LOCAL_FALLBACK = "local-fallback"


@dataclass(frozen=True)
class Prediction:
    label: int
    probabilities: np.ndarray
    source: str  # OFFLOADED or LOCAL_FALLBACK
    reason: str = ""
    latency_ms: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    # The server's queue_ms, compute_ms and batch; this side's device, encode (of which codec is
    # the feature codec alone, the rest the message framing), transmit (on an emulated link, the
    # uplink's serialisation and delay; else 0), round_trip (transmit included) and merge.
    timings_ms: dict[str, float] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)


class LinkEstimator:
    """Round-trip time as ``a + b * bytes``, fitted online with exponential forgetting."""

    def __init__(self, forgetting: float = 0.9) -> None:
        self._forgetting = forgetting
        self._sums = np.zeros(5)  # n, x, y, xx, xy

    def observe(self, size: int, seconds: float) -> None:
        self._sums = self._forgetting * self._sums + np.array(
            [1.0, size, seconds, size * size, size * seconds])

    def predict(self, size: int) -> float | None:
        n, x, y, xx, xy = self._sums
        if n < 1e-9:
            return None
        spread = n * xx - x * x
        slope = (n * xy - x * y) / spread if spread > 1e-6 * max(n * xx, 1.0) else 0.0
        slope = max(slope, 0.0)
        return float((y - slope * x) / n + slope * size)


_TIMING_NAMES = {"q": ("queue_ms", 1e-3), "s": ("compute_ms", 1e-3), "b": ("batch", 1)}


def server_timings_ms(compact: dict[str, float]) -> dict[str, float]:
    """The reply's ``tm`` (whole microseconds under one-letter keys) with readable names, in ms."""
    readable = {}
    for key, value in compact.items():
        name, scale = _TIMING_NAMES.get(key, (key, 1))
        readable[name] = value * scale
    return readable


class EdgeClient:
    def __init__(self, model: str = "pretrained:mnist", server: str | None = None,
                 deadline_ms: float | None = None, link: str | LinkProfile | None = None,
                 device_id: str = "edge-0", timeout_s: float = 1.0,
                 curve: CurveClientConfig | None = None, seed: int = 0, merge: str = "device") -> None:
        if merge not in ("device", "server"):
            raise ValueError(f"merge must be 'device' or 'server', not {merge!r}")
        self.merge_on_device = merge == "device"
        checkpoint = load_checkpoint(model)
        self.model = checkpoint.build_model()
        self.codec = FeatureCodec(checkpoint.codec)
        self.model_hash = bytes.fromhex(checkpoint.model_hash)
        self.device_id = device_id
        self.deadline_ms = deadline_ms
        self.timeout_s = timeout_s
        self.estimator = LinkEstimator()
        self.num_classes = checkpoint.config.num_classes
        self._reply_bytes = 0.0  # running mean of reply sizes, for the deadline estimate
        self._last_sent = 0.0
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._requester: Requester | None = None
        if server is not None:
            self._transport = open_client(server, link, seed=seed, curve=curve)
            self._requester = Requester(self._transport, timeout=timeout_s, attempts=1)

    def infer(self, image: np.ndarray | torch.Tensor) -> Prediction:
        """Classify one image (C, H, W): uint8 in [0, 255] or float in [0, 1]."""
        with self._lock:
            started = time.monotonic()
            x = torch.tensor(np.asarray(image))  # a copy: read-only arrays (PIL, mmap) are fine
            x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
            device = self.model.device_forward(x.unsqueeze(0))
            local_logits = device.local_logits[0]
            if self._requester is None:
                probabilities = torch.softmax(local_logits, dim=0).numpy()
                return self._local(probabilities, "no server configured", started)
            encoding = time.monotonic()
            request_id = next(self._ids) % 2**32
            body = {"p": self.codec.encode(device.symbols[0].numpy())}
            coded = time.monotonic()
            if not self.merge_on_device:
                body["l"] = logits_to_bytes(local_logits.numpy())
            wire = encode_message(Message(MessageType.INFER_REQUEST, request_id, self.device_id,
                                          self.model_hash, body))
            stages = {"device": encoding - started, "encode": time.monotonic() - encoding,
                      "codec": coded - encoding}
            return self._offload(wire, request_id, local_logits, stages, started)

    async def ainfer(self, image: np.ndarray | torch.Tensor) -> Prediction:
        return await asyncio.get_running_loop().run_in_executor(None, self.infer, image)

    def _offload(self, wire: bytes, request_id: int, local_logits: torch.Tensor, stages: dict[str, float],
                 started: float) -> Prediction:
        assert self._requester is not None
        local = torch.softmax(local_logits, dim=0).numpy()
        timeout = self.timeout_s
        if self.deadline_ms is not None:
            remaining = self.deadline_ms / 1e3 - (time.monotonic() - started)
            if remaining <= 0:
                return self._local(local, "deadline: spent on the device", started, stages)
            predicted = self.estimator.predict(len(wire) + int(self._reply_bytes))
            # Now and then send anyway: an estimate is only corrected by new samples,
            # so a link that got faster would otherwise never be used again.
            probing = time.monotonic() - self._last_sent > PROBE_INTERVAL_S
            if predicted is not None and predicted > remaining and not probing:
                return self._local(local, f"deadline: link predicted {1e3 * predicted:.1f} ms", started,
                                   stages)
            timeout = min(timeout, remaining)
        self._requester.timeout = timeout
        sent = self._last_sent = time.monotonic()
        try:
            data = self._requester.request(wire, lambda d: request_id_of(d) == request_id)
        except (TransportError, zmq.ZMQError) as exc:
            # Lazy Pirate: drop the connection so a queued stale request is not served later.
            with contextlib.suppress(TransportError, zmq.ZMQError):
                self._transport.reconnect()
            return self._local(local, f"link: {exc}", started, stages, sent, len(wire))
        received = time.monotonic()
        self.estimator.observe(len(wire) + len(data), received - sent)
        self._reply_bytes = 0.8 * self._reply_bytes + 0.2 * len(data) if self._reply_bytes else len(data)
        reply = decode_message(data)
        if reply.type is MessageType.ERROR:
            return self._local(local, f"server: {reply.body['code']}: {reply.body['reason']}", started,
                               stages, sent, len(wire), len(data))
        expected = "lg" if self.merge_on_device else "pr"
        if (reply.type is not MessageType.INFER_REPLY
                or len(reply.body.get(expected, b"")) != 2 * self.num_classes):
            return self._local(local, f"server: unexpected {reply.type.name} reply (no {expected!r})",
                               started, stages, sent, len(wire), len(data))
        if self.merge_on_device:
            remote = torch.from_numpy(logits_from_bytes(reply.body["lg"]))
            with torch.no_grad():
                probabilities = torch.softmax(self.model.merge(local_logits, remote), dim=0).numpy()
        else:
            probabilities = logits_from_bytes(reply.body["pr"])
        finished = time.monotonic()
        elapsed_ms = 1e3 * (finished - started)
        if self.deadline_ms is not None and elapsed_ms > self.deadline_ms:
            return self._local(local, f"deadline: reply came after {elapsed_ms:.1f} ms", started,
                               stages, sent, len(wire), len(data))
        stages.update(transmit=last_uplink_seconds(self._transport), round_trip=received - sent,
                      merge=finished - received)
        return Prediction(int(probabilities.argmax()), probabilities, OFFLOADED, latency_ms=elapsed_ms,
                          bytes_up=len(wire), bytes_down=len(data),
                          timings_ms=server_timings_ms(reply.body["tm"]),
                          stages_ms={name: 1e3 * seconds for name, seconds in stages.items()})

    def _local(self, probabilities: np.ndarray, reason: str, started: float,
               stages: dict[str, float] | None = None, sent: float | None = None,
               bytes_up: int = 0, bytes_down: int = 0) -> Prediction:
        """The local prediction; ``stages`` so far, plus the wait for a reply if one was sent,
        and the bytes that did cross the link."""
        now = time.monotonic()
        stages = dict(stages or {})
        if sent is not None:
            stages["round_trip"] = now - sent
        return Prediction(int(probabilities.argmax()), probabilities, LOCAL_FALLBACK, reason,
                          latency_ms=1e3 * (now - started), bytes_up=bytes_up, bytes_down=bytes_down,
                          stages_ms={name: 1e3 * seconds for name, seconds in stages.items()})

    def close(self) -> None:
        with self._lock:  # never under an infer() that is using the socket
            if self._requester is not None:
                self._transport.close()
                self._requester = None

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

