"""What the offloading baselines share: the full CNN they offload to, and a request/reply client.

The families themselves are in ``raw.py``, ``jpeg.py`` and ``split8.py``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from transports.emulator import LinkProfile, last_uplink_seconds
from transports.errors import TransportError
from transports.messages import (
    ErrorReply,
    InferReply,
    InferRequest,
    MessageType,
    decode_message,
    encode_message,
)
from transports.sessions import CompactClient, slow_link
from transports.zmq_transport import Requester, open_client

from ...baselines.models import FullCNN, baseline_payloads
from ...baselines.payloads import BaselinePayloads
from ...pretrained import load_baseline_checkpoint
from ..config import BenchConfig
from .base import Family, Outcome, Scheme, SchemeContext, timed

# As long as AgileNN's device id, so both pay the same header bytes.
DEVICE_ID = "dev-b"


class Offloader:
    """Request/reply to a baseline server over the (emulated) link, timing each part."""

    def __init__(self, server: str, link: LinkProfile | None, timeout_s: float, seed: int,
                 device_id: str = DEVICE_ID) -> None:
        self.transport = open_client(server, link, seed=seed)
        # The same compact sessions as the AgileNN scheme's on a slow link, so both pay the same envelope.
        self.compact = CompactClient(self.transport, timings=True) if slow_link(link) else None
        self.requester = Requester(self.compact or self.transport, timeout=timeout_s, attempts=3)
        self.device_id = device_id
        self._ids = itertools.count(1)

    def exchange(self, payload: bytes, model_hash: bytes, device_ms: float, encode_started: float,
                 codec_ms: float) -> Outcome:
        request_id = next(self._ids)
        wire = encode_message(InferRequest(payload).message(request_id, self.device_id, model_hash))
        encode_ms = 1e3 * (time.perf_counter() - encode_started)
        sent = time.perf_counter()
        try:
            data = self.requester.request(wire, lambda d: decode_message(d).request_id == request_id)
        except TransportError as exc:
            return Outcome(-1, {"device": device_ms, "encode": encode_ms,
                                "reply": 1e3 * (time.perf_counter() - sent)}, len(wire), failure=str(exc))
        received = time.perf_counter()
        up, down = (len(wire), len(data)) if self.compact is None else \
            (self.compact.last_sent_bytes, self.compact.last_received_bytes)
        message = decode_message(data)
        reply = InferReply.parse(message) if message.type is MessageType.INFER_REPLY else None
        merge_ms = 1e3 * (time.perf_counter() - received)
        round_trip_ms = 1e3 * (received - sent)
        if reply is None or reply.probabilities is None:
            error = ErrorReply.parse(message) if message.type is MessageType.ERROR else None
            failure = f"server: {error.code}: {error.reason}" if error else f"server: {message.type.name}"
            return Outcome(-1, {"device": device_ms, "encode": encode_ms, "reply": round_trip_ms}, up, down,
                           failure=failure)
        predicted = int(np.argmax(reply.probabilities))
        transmit_ms = 1e3 * last_uplink_seconds(self.transport)
        timings = reply.timings.as_ms()
        queue_ms, server_ms = timings["queue_ms"], timings["compute_ms"]
        return Outcome(predicted, {
            "device": device_ms, "encode": encode_ms, "transmit": transmit_ms, "queue": queue_ms,
            "server": server_ms, "reply": round_trip_ms - transmit_ms - queue_ms - server_ms,
            "merge": merge_ms}, up, down, codec_ms=codec_ms)

    def close(self) -> None:
        self.transport.close()


@dataclass
class Baseline:
    """The full CNN the server runs, its payload codec and the hash requests must carry."""

    model: FullCNN
    payloads: BaselinePayloads
    model_hash: bytes

    @classmethod
    def load(cls, spec: str) -> Baseline:
        checkpoint = load_baseline_checkpoint(spec)
        model = checkpoint.build_model()
        assert isinstance(model, FullCNN)
        return cls(model, baseline_payloads(model, checkpoint.raw_dictionary, checkpoint.input_shape),
                   bytes.fromhex(checkpoint.model_hash))


class OffloadFamily(Family):
    """A family that offloads to the full CNN (``--baseline``); not a family by itself."""

    def served_model(self, config: BenchConfig) -> str | None:
        return config.baseline

    def offloader(self, context: SchemeContext) -> Offloader:
        """One client for the family's schemes, closed when the run ends."""
        config = context.config
        return context.own(Offloader(context.endpoint, context.link, config.timeout_s, config.seed))

    def image_scheme(self, name: str, baseline: Baseline, offloader: Offloader,
                     encode: Callable[[np.ndarray], bytes]) -> Scheme:
        """Nothing on the device but the image codec ``encode``; the whole CNN on the server."""

        def classify(image: np.ndarray) -> Outcome:
            started = time.perf_counter()
            payload, codec_ms = timed(lambda: encode(image))
            return offloader.exchange(payload, baseline.model_hash, 0.0, started, codec_ms)

        return Scheme(name, self.name, 0, True, classify)
