"""The inference server: ``Server(config).run()``.

One thread owns the ROUTER socket and the model. Requests are batched the way
Triton's dynamic batcher does it: a batch runs as soon as it holds
``max_batch_size`` requests or its oldest request has waited
``max_queue_delay_us``. Every request gets a reply: the prediction, or an
ERROR naming what was wrong with it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import numpy as np
import torch

from agilenn.cli.common import load_checkpoint
from agilenn.codec import FeatureCodec
from agilenn.errors import CodecError
from transports.broker import BrokerWorkerTransport
from transports.curve import CurveServerConfig
from transports.errors import PeerUnreachable, QueueFull
from transports.messages import (
    Message,
    MessageType,
    ProtocolError,
    decode_message,
    encode_message,
    error_reply,
    logits_from_bytes,
    logits_to_bytes,
    salvage_header,
)
from transports.zmq_transport import ZmqServerTransport

from .config import ServerConfig
from .metrics import ServerMetrics

log = logging.getLogger("agilenn.server")


@dataclass
class _Pending:
    identity: bytes
    request: Message
    symbols: np.ndarray
    local_logits: np.ndarray
    arrived: float


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.should_exit = threading.Event()
        self.started = threading.Event()
        self.endpoint = ""
        self.metrics_port = -1
        self.metrics = ServerMetrics()
        self.load_error: BaseException | None = None

    def load(self) -> None:
        torch.set_num_threads(self.config.torch_threads)
        checkpoint = load_checkpoint(self.config.model)
        self.model = checkpoint.build_model().prepare_for_serving()
        self.codec = FeatureCodec(checkpoint.codec)
        self.model_hash = bytes.fromhex(checkpoint.model_hash)
        model_config = checkpoint.config
        self.symbol_shape = (model_config.remote_channels, model_config.feature_size,
                             model_config.feature_size)
        self.num_classes = model_config.num_classes
        curve = None
        if self.config.curve_secret_key:
            curve = CurveServerConfig(Path(self.config.curve_secret_key), Path(self.config.curve_allowlist))
        if self.config.connect:
            self.transport: ZmqServerTransport | BrokerWorkerTransport = BrokerWorkerTransport(
                self.config.connect, capacity=2 * self.config.max_batch_size)
        else:
            self.transport = ZmqServerTransport(self.config.bind, curve=curve)
        try:
            self.endpoint = self.transport.bind()
            if self.config.metrics_port >= 0:
                self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.metrics_addr)
        except BaseException:
            self.transport.close()  # a half-started server must not keep its port
            raise

    def run(self) -> int:
        """Load, serve until asked to stop, shut down in stages. Returns the exit code."""
        # Handlers first: a SIGTERM while the model loads must still stop us gracefully.
        with captured_signals(self.should_exit):
            try:
                self.load()
            except BaseException as exc:
                self.load_error = exc
                raise
            finally:
                self.started.set()  # on failure too: waiters must not hang
            log.info("serving model %s on %s (batch %d, delay %d us)", self.model_hash.hex(), self.endpoint,
                     self.config.max_batch_size, self.config.max_queue_delay_us)
            pending: list[_Pending] = []
            try:
                while not self.should_exit.is_set():
                    self._step(pending, self._wait_time(pending))
            finally:
                self._shutdown(pending)
        return 0

    # --------------------------------------------------------------- serving
    def _wait_time(self, pending: list[_Pending]) -> float:
        if not pending:
            return 0.1
        due = pending[0].arrived + self.config.max_queue_delay_us / 1e6
        return max(0.0, due - time.monotonic())

    def _step(self, pending: list[_Pending], timeout: float) -> None:
        received = self.transport.recv(timeout)
        if received is not None:
            self._accept(received[0], received[1], pending)
        full = len(pending) >= self.config.max_batch_size
        if pending and (full or self._wait_time(pending) <= 0):
            batch = pending[: self.config.max_batch_size]
            del pending[: self.config.max_batch_size]
            self._answer(batch)

    def _answer(self, batch: list[_Pending]) -> None:
        """Run a batch; if the model itself fails, every request in it still gets a reply."""
        try:
            self._run_batch(batch)
        except Exception:
            log.exception("batch of %d failed in the model", len(batch))
            for item in batch:
                self._fail(item.identity, item.request, "internal", "the server failed to run this batch")

    def _accept(self, identity: bytes, data: bytes, pending: list[_Pending]) -> None:
        try:
            request = decode_message(data)
        except ProtocolError as exc:
            self._fail(identity, salvage_header(data), exc.code, str(exc))
            return
        self.metrics.saw_device(request.device_id)
        if request.type is MessageType.PING:
            self._send(identity, Message(MessageType.PONG, request.request_id, request.device_id,
                                         self.model_hash))
            return
        if request.type is not MessageType.INFER_REQUEST:
            self._fail(identity, request, "unsupported", f"{request.type.name} is not served here")
            return
        self.metrics.requests.inc()
        if request.model_hash != self.model_hash:
            self._fail(identity, request, "model-mismatch",
                       f"device model {request.model_hash.hex() or '(none)'} != server model "
                       f"{self.model_hash.hex()}")
            return
        try:
            symbols = self.codec.decode(request.body["p"])
        except CodecError as exc:
            self._fail(identity, request, "bad-payload", str(exc))
            return
        local_logits = logits_from_bytes(request.body["l"])
        if symbols.shape != self.symbol_shape or local_logits.shape != (self.num_classes,):
            self._fail(identity, request, "bad-payload",
                       f"payload {symbols.shape} with {local_logits.size} logits; this model takes "
                       f"{self.symbol_shape} with {self.num_classes}")
            return
        pending.append(_Pending(identity, request, symbols, local_logits, time.monotonic()))

    def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        symbols = torch.from_numpy(np.stack([p.symbols for p in batch])).long()
        local = torch.from_numpy(np.stack([p.local_logits for p in batch]))
        probabilities = torch.softmax(self.model.server_forward(symbols, local), dim=1).numpy()
        compute = time.monotonic() - started
        self.metrics.batch_size.observe(len(batch))
        self.metrics.compute_seconds.observe(compute)
        for item, probs in zip(batch, probabilities, strict=True):
            queued = started - item.arrived
            self.metrics.queue_seconds.observe(queued)
            reply = Message(MessageType.INFER_REPLY, item.request.request_id, item.request.device_id,
                            self.model_hash, {
                                "c": int(probs.argmax()), "pr": logits_to_bytes(probs),
                                "tm": {"queue_ms": 1e3 * queued, "compute_ms": 1e3 * compute,
                                       "batch": len(batch)},
                            })
            self._send(item.identity, reply)

    def _fail(self, identity: bytes, request: Message | None, code: str, reason: str) -> None:
        self.metrics.failures.labels(reason=code).inc()
        log.info("rejected a request from %s: %s: %s",
                 request.device_id if request else identity.hex(), code, reason)
        self._send(identity, error_reply(request, code, reason))

    def _send(self, identity: bytes, message: Message) -> None:
        try:
            self.transport.send(identity, encode_message(message))
        except (PeerUnreachable, QueueFull) as exc:
            # The device is gone or not reading; its Requester retries on a new connection.
            self.metrics.failures.labels(reason="reply-undeliverable").inc()
            log.warning("reply %d to %s not delivered: %s", message.request_id, message.device_id, exc)

    # --------------------------------------------------------------- shutdown
    def _shutdown(self, pending: list[_Pending]) -> None:
        """Stage 2 of shutdown: answer what already arrived, then close."""
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        while time.monotonic() < deadline:
            received = self.transport.recv(0.0)
            if received is None:
                break
            self._accept(received[0], received[1], pending)
        while pending and time.monotonic() < deadline:
            batch = pending[: self.config.max_batch_size]
            del pending[: self.config.max_batch_size]
            self._answer(batch)
        for item in pending:  # past the timeout: still answered, never dropped silently
            self._fail(item.identity, item.request, "shutting-down", "the server stopped before this ran")
        self.transport.close()
        self.metrics.close()
        log.info("server on %s stopped", self.endpoint)


@contextlib.contextmanager
def captured_signals(should_exit: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM start a graceful stop; a second one forces the exit."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be caught on the main thread
        return
    originals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, frame: FrameType | None) -> None:
        if should_exit.is_set():
            raise KeyboardInterrupt  # second signal: stop now
        log.info("received %s: finishing in-flight requests", signal.Signals(signum).name)
        should_exit.set()

    for sig in originals:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, original in originals.items():
            signal.signal(sig, original)
