"""The inference server: ``Server(config).run()``.

One thread owns the ROUTER socket and the model. Requests are batched the way
Triton's dynamic batcher does it: a batch runs as soon as it holds
``max_batch_size`` requests or its oldest request has waited
``max_queue_delay_us``. Every request gets a reply: the prediction, or an
ERROR naming what was wrong with it. On SIGTERM the server stops taking
requests (new ones get ``shutting-down``), runs the batches it holds up to
``shutdown_timeout_s``, answers the rest with ``shutting-down`` and closes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from agilenn.daemon import Daemon
from agilenn.errors import CodecError
from transports.sessions import CompactServer
from transports.broker import BrokerWorkerTransport
from transports.curve import CurveClientConfig, CurveServerConfig
from transports.errors import TransportError
from transports.messages import (
    AdaptFetch,
    AdaptGradient,
    AdaptState,
    AdaptStep,
    InferReply,
    InferRequest,
    Message,
    MessageType,
    Pong,
    ProtocolError,
    ServerTimings,
    answer_to_invalid,
    decode_message,
    encode_message,
    error_reply,
)
from transports.pipe import ServerTransport
from transports.zmq_transport import ZmqServerTransport

from .config import ServerConfig, served_specs
from .metrics import ServerMetrics
from .adaptation import Adaptation, AdaptationError
from .served import ServedModel
from .versions import Versions

log = logging.getLogger("agilenn.server")


@dataclass
class _Pending:
    identity: bytes
    request: Message
    prepared: Any  # what the served model's prepare() made of the body
    arrived: float
    served: ServedModel  # the version's: a version retired meanwhile still answers it


class Server(Daemon):
    """``transport``: serve on this instead of the socket the config names (the test seam).
    ``reloader``: gives the config anew on SIGHUP (or :meth:`reload_later`); the versions it
    names (``model`` and ``models``) are then served, the others retired."""

    def __init__(self, config: ServerConfig, transport: ServerTransport | None = None,
                 reloader: Callable[[], ServerConfig] | None = None) -> None:
        self.metrics: ServerMetrics = ServerMetrics()
        super().__init__(config, self.metrics)
        self.config: ServerConfig = config
        self.endpoint = ""
        self.pending: list[_Pending] = []
        self._transport = transport
        self._reloader = reloader
        self.versions = Versions()
        self.adaptations: dict[bytes, Adaptation] = {}

    def load(self) -> None:
        torch.set_num_threads(self.config.torch_threads)
        self._serve_versions(self.config)
        transport = self._transport or self._open_transport()
        # Behind a broker, which reads full messages only, devices keep to full messages: a worker
        # answers their session HELLO "unsupported".
        self.transport = transport if self.config.connect else CompactServer(transport)
        self.endpoint = self.transport.bind()
        super().load()
        log.info("serving %s on %s (batch %d, delay %d us)", self.versions.describe(), self.endpoint,
                 self.config.max_batch_size, self.config.max_queue_delay_us)

    def _serve_versions(self, config: ServerConfig) -> None:
        self.versions.update(served_specs(config))
        primary = next(iter(self.versions.by_hash.values()))  # the config's ``model``: what PONG names
        self.served: ServedModel = primary.served
        self.model_hash = primary.model_hash
        for retired in set(self.adaptations) - set(self.versions.by_hash):
            del self.adaptations[retired]

    def reload(self) -> None:
        if self._reloader is None:
            log.info("no config to reload: serving %s as before", self.versions.describe())
            return
        self._serve_versions(self._reloader())

    def _adaptation(self, model_hash: bytes) -> Adaptation | None:
        version = self.versions.get(model_hash)
        if version is None or version.checkpoint is None or not self.config.adapt_sessions:
            return None
        if model_hash not in self.adaptations:
            self.adaptations[model_hash] = Adaptation(version.checkpoint, self.config.adapt_sessions,
                                                      self.config.adapt_idle_s)
        return self.adaptations[model_hash]

    def _open_transport(self) -> ServerTransport:
        config = self.config
        if config.connect:
            curve = None
            if config.curve_secret_key:
                curve = CurveClientConfig(Path(config.curve_secret_key), Path(config.curve_server_key))
            return BrokerWorkerTransport(config.connect, capacity=2 * config.max_batch_size, curve=curve)
        allowlist = None
        if config.curve_secret_key:
            allowlist = CurveServerConfig(Path(config.curve_secret_key), Path(config.curve_allowlist))
        return ZmqServerTransport(config.bind, curve=allowlist)

    # --------------------------------------------------------------- serving
    def serve_step(self) -> None:
        # At most 0.1 s: a stop request is noticed that soon even while a batch waits.
        received = self.transport.recv(min(self._wait_time(), 0.1))
        for adaptation in self.adaptations.values():
            if adaptation.sessions:
                adaptation.expire()
        if received is not None:
            self._accept(*received)
        full = len(self.pending) >= self.config.max_batch_size
        if self.pending and (full or self._wait_time() <= 0):
            self._answer(self._next_batch())

    def _wait_time(self) -> float:
        if not self.pending:
            return 0.1
        due = self.pending[0].arrived + self.config.max_queue_delay_us / 1e6
        return max(0.0, due - time.monotonic())

    def _next_batch(self) -> list[_Pending]:
        batch = self.pending[: self.config.max_batch_size]
        del self.pending[: self.config.max_batch_size]
        return batch

    def _answer(self, batch: list[_Pending]) -> None:
        """Run a batch; if the model itself fails, every request in it still gets a reply."""
        try:
            self._run_batch(batch)
        except Exception:
            log.exception("batch of %d failed in the model", len(batch))
            for item in batch:
                self._fail(item.identity, item.request, "internal", "the server failed to run this batch")

    def _decode(self, identity: bytes, data: bytes) -> Message | None:
        """The valid message in ``data``; else answers it with its defect (an ERROR never) and gives None."""
        try:
            message = decode_message(data)
        except ProtocolError as exc:
            self.metrics.failures.labels(reason=exc.code).inc()
            answer = answer_to_invalid(data, exc)
            log.info("rejected a message from %s: %s: %s", identity.hex(), exc.code, exc)
            if answer is not None:
                self._send(identity, answer)
            return None
        if message.type is MessageType.ERROR:
            # Never answered, or two peers could bounce ERRORs forever.
            log.info("ignored an ERROR from %s: %s", message.device_id, dict(message.body))
            return None
        self.metrics.saw_device(message.device_id)
        return message

    def _accept(self, identity: bytes, data: bytes) -> None:
        request = self._decode(identity, data)
        if request is None:
            return
        if request.type is MessageType.PING:
            self._send(identity, Pong().message(request.request_id, request.device_id, self.model_hash))
            return
        if request.type in (MessageType.ADAPT_STEP, MessageType.ADAPT_FETCH):
            self._adapt(identity, request)
            return
        if request.type is not MessageType.INFER_REQUEST:
            self._fail(identity, request, "unsupported", f"{request.type.name} is not served here")
            return
        self.metrics.requests.inc()
        version = self.versions.get(request.model_hash)
        if version is None:
            self._fail(identity, request, "model-mismatch", self._not_served(request.model_hash))
            return
        try:
            prepared = version.served.prepare(InferRequest.parse(request))
        except CodecError as exc:
            self._fail(identity, request, "bad-payload", str(exc))
            return
        except Exception:  # a decoder bug must cost one request, never the serving loop
            log.exception("preparing a request from %s failed", request.device_id)
            self._fail(identity, request, "bad-payload", "the server could not decode this payload")
            return
        self.pending.append(_Pending(identity, request, prepared, time.monotonic(), version.served))

    def _not_served(self, model_hash: bytes) -> str:
        state = "was retired" if model_hash in self.versions.retired else "is not served here"
        served = ", ".join(h.hex() for h in self.versions.by_hash)
        return f"device model {model_hash.hex() or '(none)'} {state}; this server serves {served}"

    def _adapt(self, identity: bytes, request: Message) -> None:
        """Split learning, answered at once: a step is one batch, and the device waits on it."""
        if self.versions.get(request.model_hash) is None:
            self._fail(identity, request, "model-mismatch", self._not_served(request.model_hash))
            return
        adaptation = self._adaptation(request.model_hash)
        if adaptation is None:
            self._fail(identity, request, "unsupported", "this server takes no adaptation (it serves a "
                       "baseline, or adapt_sessions is 0)")
            return
        self.metrics.adapt_requests.inc()
        try:
            if request.type is MessageType.ADAPT_STEP:
                answer: AdaptGradient | AdaptState = adaptation.step(request.device_id,
                                                                     AdaptStep.parse(request))
            else:
                answer = adaptation.fetch(request.device_id, AdaptFetch.parse(request))
            reply = answer.message(request.request_id, request.device_id, request.model_hash)
            data = encode_message(reply)
        except (ProtocolError, AdaptationError) as exc:
            self._fail(identity, request, exc.code, str(exc))
            return
        except Exception:  # a bug in one step must cost that step, never the serving loop
            log.exception("an adaptation request from %s failed", request.device_id)
            self._fail(identity, request, "internal", "the server failed to run this adaptation step")
            return
        self._deliver(identity, data, reply)

    def _run_batch(self, batch: list[_Pending]) -> None:
        started = time.monotonic()
        results = self._results(batch)
        if len(results) != len(batch):  # checked before any reply goes out, so none is answered twice
            raise RuntimeError(f"the model gave {len(results)} results for a batch of {len(batch)}")
        compute = time.monotonic() - started
        self.metrics.batch_size.observe(len(batch))
        self.metrics.compute_seconds.observe(compute)
        compute_us = round(1e6 * compute)
        for item, result in zip(batch, results, strict=True):
            queued = started - item.arrived
            self.metrics.queue_seconds.observe(queued)
            timings = ServerTimings(round(1e6 * queued), compute_us, len(batch))
            try:  # per request: one invalid result fails only its own, and nothing is answered twice
                reply = dataclasses.replace(result, timings=timings).message(
                    item.request.request_id, item.request.device_id, item.request.model_hash)
                data = encode_message(reply)
            except Exception as exc:
                self._fail(item.identity, item.request, "internal", f"the model's result is invalid: {exc}")
                continue
            self._deliver(item.identity, data, reply)

    def _results(self, batch: list[_Pending]) -> list[InferReply]:
        """One forward pass a served model: versions that share a remote part share the pass."""
        results: list[InferReply | None] = [None] * len(batch)
        groups: dict[int, list[int]] = {}
        for position, item in enumerate(batch):
            groups.setdefault(id(item.served), []).append(position)
        for positions in groups.values():
            served = batch[positions[0]].served
            answers = served.run([batch[p].prepared for p in positions])
            if len(answers) != len(positions):
                raise RuntimeError(f"the model gave {len(answers)} results for {len(positions)} requests")
            for position, answer in zip(positions, answers, strict=True):
                results[position] = answer
        return [result for result in results if result is not None]

    def _fail(self, identity: bytes, request: Message, code: str, reason: str) -> None:
        self.metrics.failures.labels(reason=code).inc()
        log.info("rejected a request from %s: %s: %s", request.device_id, code, reason)
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
    def drain_step(self) -> bool:
        """Refuse what arrives now with ``shutting-down``; run the batches already held."""
        received = self.transport.recv(0.0)
        if received is not None:
            identity, data = received
            request = self._decode(identity, data)
            if request is not None:
                self._fail(identity, request, "shutting-down", "the server is stopping; try another")
        if self.pending:
            self._answer(self._next_batch())
        return received is not None or bool(self.pending)

    def cancel_remaining(self) -> None:
        for item in self.pending:  # past the timeout or forced: still answered, never dropped silently
            self._fail(item.identity, item.request, "shutting-down", "the server stopped before this ran")
        self.pending.clear()

    def close(self) -> None:
        transport = getattr(self, "transport", None) or self._transport
        if transport is not None:
            transport.close()
        super().close()
        log.info("server on %s stopped", self.endpoint or self.config.bind)
