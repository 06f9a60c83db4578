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
from typing import Any

import torch

from agilenn.errors import CodecError
from transports.broker import BrokerWorkerTransport
from transports.curve import CurveServerConfig
from transports.errors import TransportError
from transports.messages import (
    Message,
    MessageType,
    ProtocolError,
    decode_message,
    encode_message,
    error_reply,
    salvage_header,
)
from transports.zmq_transport import ZmqServerTransport

from .config import ServerConfig
from .metrics import ServerMetrics
from .served import load_served_model

log = logging.getLogger("agilenn.server")


@dataclass
class _Pending:
    identity: bytes
    request: Message
    prepared: Any  # what the served model's prepare() made of the body
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
        self.served = load_served_model(self.config.model)
        self.model_hash = self.served.model_hash
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
            log.info("serving %s on %s (batch %d, delay %d us)", self.served.description, self.endpoint,
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
            prepared = self.served.prepare(request.body)
        except CodecError as exc:
            self._fail(identity, request, "bad-payload", str(exc))
            return
        except Exception:  # a decoder bug must cost one request, never the serving loop
            log.exception("preparing a request from %s failed", request.device_id)
            self._fail(identity, request, "bad-payload", "the server could not decode this payload")
            return
        pending.append(_Pending(identity, request, prepared, time.monotonic()))

    def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        bodies = self.served.run([item.prepared for item in batch])
        if len(bodies) != len(batch):  # checked before any reply goes out, so none is answered twice
            raise RuntimeError(f"the model gave {len(bodies)} results for a batch of {len(batch)}")
        compute = time.monotonic() - started
        self.metrics.batch_size.observe(len(batch))
        self.metrics.compute_seconds.observe(compute)
        compute_us = round(1e6 * compute)
        for item, body in zip(batch, bodies, strict=True):
            queued = started - item.arrived
            self.metrics.queue_seconds.observe(queued)
            # Whole microseconds under one-letter keys: 14 bytes instead of 49 on the downlink.
            body["tm"] = {"q": round(1e6 * queued), "s": compute_us, "b": len(batch)}
            reply = Message(MessageType.INFER_REPLY, item.request.request_id, item.request.device_id,
                            self.model_hash, body)
            try:
                data = encode_message(reply)  # per request: one invalid result fails only its own
            except ProtocolError as exc:
                self._fail(item.identity, item.request, "internal", f"the model's result is invalid: {exc}")
                continue
            self._deliver(item.identity, data, reply)

    def _fail(self, identity: bytes, request: Message | None, code: str, reason: str) -> None:
        self.metrics.failures.labels(reason=code).inc()
        log.info("rejected a request from %s: %s: %s",
                 request.device_id if request else identity.hex(), code, reason)
        self._send(identity, error_reply(request, code, reason))

    def _send(self, identity: bytes, message: Message) -> None:
        self._deliver(identity, encode_message(message), message)

    def _deliver(self, identity: bytes, data: bytes, message: Message) -> None:
        try:
            self.transport.send(identity, data)
        except TransportError as exc:
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
