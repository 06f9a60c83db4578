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

from agilenn.codec import FeatureCodec
from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint
from transports.curve import CurveClientConfig
from transports.emulator import LinkProfile, emulated, last_uplink_seconds
from transports.errors import RequestTimeout, TransportError
from transports.messages import (
    ErrorReply,
    InferReply,
    InferRequest,
    MessageType,
    decode_message,
    encode_message,
    request_id_of,
)
from transports.pipe import MessageTransport
from transports.sessions import CompactClient, slow_link
from transports.zmq_transport import Requester, ZmqClientTransport

PROBE_INTERVAL_S = 1.0
OFFLOADED = "offloaded"
LOCAL_FALLBACK = "local-fallback"


@dataclass(frozen=True)
class Prediction:
    label: int
    probabilities: np.ndarray
    source: str  # OFFLOADED or LOCAL_FALLBACK
    reason: str = ""
    # Why it fell back, as a word fit for a metric label: no-server, deadline-spent,
    # deadline-predicted, deadline-late, link, bad-reply, or server: and the error code.
    reason_code: str = ""
    latency_ms: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    # The server's queue_ms, compute_ms and batch; this side's device, encode (of which codec is
    # the feature codec alone, the rest the message framing), transmit (on an emulated link, the
    # uplink's serialisation and delay; else 0), round_trip (transmit included) and merge.
    timings_ms: dict[str, float] = field(default_factory=dict)
    stages_ms: dict[str, float] = field(default_factory=dict)
    model_hash: str = ""  # the model version that answered (this client's when it answered alone)


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


def as_image_batch(image: np.ndarray | torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """One image as a (1, C, H, W) float batch in [0, 1].

    Takes (C, H, W), or (H, W) for a single-channel model, as uint8 in
    [0, 255] or float in [0, 1]; any other shape is a ValueError naming the
    shape expected.
    """
    x = torch.tensor(np.asarray(image))  # a copy: read-only arrays (PIL, mmap) are fine
    if x.dim() == 2 and channels == 1:
        x = x.unsqueeze(0)
    if tuple(x.shape) != (channels, size, size):
        grayscale = f" or ({size}, {size})" if channels == 1 else ""
        raise ValueError(f"image of shape {tuple(x.shape)}; this model takes ({channels}, {size}, {size})"
                         f"{grayscale}, uint8 or float")
    return (x.float() / 255.0 if x.dtype == torch.uint8 else x.float()).unsqueeze(0)


class EdgeClient:
    def __init__(self, model: str = DEFAULT_MODEL, server: str | None = None,
                 deadline_ms: float | None = None, link: str | LinkProfile | None = None,
                 device_id: str = "edge-0", timeout_s: float = 1.0,
                 curve: CurveClientConfig | None = None, seed: int = 0, merge: str = "device",
                 transport: MessageTransport | None = None, compact: bool | None = None,
                 server_timings: bool = False, adaptive_timeout: bool = True) -> None:
        """``transport``: talk to the server over it instead of connecting to ``server`` (the
        test seam: a :class:`~transports.memory.MemoryClientTransport`, say); ``link`` emulates
        a link under either. ``compact``: use compact sessions (transports/compact.py); by
        default on links below 1 Mbit/s. ``server_timings``: ask for the server's timings in
        compact replies (full replies always carry them). ``adaptive_timeout``: resend after the
        RFC 6298 timeout estimated from measured round trips, within ``timeout_s`` (else wait it
        out once)."""
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
        if transport is None and server is not None:
            transport = ZmqClientTransport(server, curve=curve)
        if transport is not None:
            self._transport = emulated(transport, link, seed)
            self._compact: CompactClient | None = None
            if compact or (compact is None and slow_link(link)):
                self._compact = CompactClient(self._transport, timings=server_timings)
            self._requester = Requester(self._compact or self._transport, timeout=timeout_s, attempts=1,
                                        adaptive_timeout=adaptive_timeout)

    @property
    def requester(self) -> Requester | None:
        """The request/reply machinery to the server (its stats and retransmission timer), if any."""
        return self._requester

    def switch_model(self, model: str) -> None:
        """Run ``model`` from the next request on (a rollout). It loads first, so a bad file
        changes nothing; a request in flight finishes, merged, with the version it was encoded
        with, because a request holds the lock from encoding to merging."""
        checkpoint = load_checkpoint(model)
        built, codec = checkpoint.build_model(), FeatureCodec(checkpoint.codec)
        old = self.model.config
        if (built.config.in_channels, built.config.image_size) != (old.in_channels, old.image_size):
            raise ValueError(f"{model} takes other images than the model it would replace")
        with self._lock:
            self.model, self.codec = built, codec
            self.model_hash = bytes.fromhex(checkpoint.model_hash)
            self.num_classes = checkpoint.config.num_classes

    def infer(self, image: np.ndarray | torch.Tensor) -> Prediction:
        """Classify one image: (C, H, W), or (H, W) for a single-channel model; uint8 in
        [0, 255] or float in [0, 1]."""
        config = self.model.config
        x = as_image_batch(image, config.in_channels, config.image_size)
        with self._lock:
            started = time.monotonic()
            device = self.model.device_forward(x)
            local_logits = device.local_logits[0]
            if self._requester is None:
                probabilities = torch.softmax(local_logits, dim=0).numpy()
                return self._local(probabilities, "no-server", "no server configured", started)
            encoding = time.monotonic()
            request_id = next(self._ids) % 2**32
            payload = self.codec.encode(device.symbols[0].numpy())
            coded = time.monotonic()
            request = InferRequest(payload, None if self.merge_on_device else local_logits.numpy())
            wire = encode_message(request.message(request_id, self.device_id, self.model_hash))
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
                return self._local(local, "deadline-spent", "deadline: spent on the device", started, stages)
            predicted = self.estimator.predict(len(wire) + int(self._reply_bytes))
            # Now and then send anyway: an estimate is only corrected by new samples,
            # so a link that got faster would otherwise never be used again.
            probing = time.monotonic() - self._last_sent > PROBE_INTERVAL_S
            if predicted is not None and predicted > remaining and not probing:
                return self._local(local, "deadline-predicted", f"deadline: link predicted "
                                   f"{1e3 * predicted:.1f} ms", started, stages)
            timeout = min(timeout, remaining)
        self._requester.timeout = timeout
        sent = self._last_sent = time.monotonic()
        try:
            data = self._requester.request(wire, lambda d: request_id_of(d) == request_id)
        except (TransportError, zmq.ZMQError) as exc:
            # Lazy Pirate: drop the connection so a queued stale request is not served later.
            with contextlib.suppress(TransportError, zmq.ZMQError):
                self._transport.reconnect()
            if timeout < self.timeout_s and isinstance(exc, RequestTimeout):  # the deadline cut it short
                return self._local(local, "deadline-late", f"deadline: no reply within {self.deadline_ms} ms",
                                   started, stages, sent, len(wire))
            return self._local(local, "link", f"link: {exc}", started, stages, sent, len(wire))
        received = time.monotonic()
        # What the link carried: a compact session's frames, not the full messages they stand for.
        up, down = (len(wire), len(data)) if self._compact is None else \
            (self._compact.last_sent_bytes, self._compact.last_received_bytes)
        self.estimator.observe(up + down, received - sent)
        self._reply_bytes = 0.8 * self._reply_bytes + 0.2 * down if self._reply_bytes else down
        sizes = (sent, up, down)
        message = decode_message(data)
        if message.type is MessageType.ERROR:
            error = ErrorReply.parse(message)
            return self._local(local, f"server:{error.code}", f"server: {error.code}: {error.reason}",
                               started, stages, *sizes)
        if message.model_hash != self.model_hash:  # another version's answer must not be merged with ours
            return self._local(local, "wrong-version", f"server: answered as {message.model_hash.hex()}, "
                               f"asked as {self.model_hash.hex()}", started, stages, *sizes)
        reply = InferReply.parse(message) if message.type is MessageType.INFER_REPLY else None
        merged = self._merged(reply, local_logits)
        if reply is None or merged is None:
            wanted = "remote logits" if self.merge_on_device else "probabilities"
            return self._local(local, "bad-reply", f"server: unexpected {message.type.name} reply "
                               f"(no {self.num_classes} {wanted})", started, stages, *sizes)
        finished = time.monotonic()
        elapsed_ms = 1e3 * (finished - started)
        if self.deadline_ms is not None and elapsed_ms > self.deadline_ms:
            return self._local(local, "deadline-late", f"deadline: reply came after {elapsed_ms:.1f} ms",
                               started, stages, *sizes)
        stages.update(transmit=last_uplink_seconds(self._transport), round_trip=received - sent,
                      merge=finished - received)
        return Prediction(int(merged.argmax()), merged, OFFLOADED, latency_ms=elapsed_ms,
                          bytes_up=up, bytes_down=down, timings_ms=reply.timings.as_ms(),
                          stages_ms={name: 1e3 * seconds for name, seconds in stages.items()},
                          model_hash=message.model_hash.hex())

    def _merged(self, reply: InferReply | None, local_logits: torch.Tensor) -> np.ndarray | None:
        """The merged class probabilities from the reply, or None if it lacks what this client needs."""
        if reply is None:
            return None
        wanted = reply.remote_logits if self.merge_on_device else reply.probabilities
        if wanted is None or wanted.shape != (self.num_classes,):
            return None
        if not self.merge_on_device:
            return wanted
        with torch.no_grad():
            merged = self.model.merge(local_logits, torch.from_numpy(wanted))
            return torch.softmax(merged, dim=0).numpy()

    def _local(self, probabilities: np.ndarray, reason_code: str, reason: str, started: float,
               stages: dict[str, float] | None = None, sent: float | None = None,
               bytes_up: int = 0, bytes_down: int = 0) -> Prediction:
        """The local prediction; ``stages`` so far, plus the wait for a reply if one was sent,
        and the bytes that did cross the link."""
        now = time.monotonic()
        stages = dict(stages or {})
        if sent is not None:
            stages["round_trip"] = now - sent
        return Prediction(int(probabilities.argmax()), probabilities, LOCAL_FALLBACK, reason, reason_code,
                          latency_ms=1e3 * (now - started), bytes_up=bytes_up, bytes_down=bytes_down,
                          stages_ms={name: 1e3 * seconds for name, seconds in stages.items()},
                          model_hash=self.model_hash.hex())

    def close(self) -> None:
        with self._lock:  # never under an infer() that is using the socket
            if self._requester is not None:
                self._transport.close()
                self._requester = None

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

