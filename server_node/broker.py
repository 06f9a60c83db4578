"""``Broker(config).run()``: spread devices' requests over inference workers (Paranoid Pirate).

Devices talk to the frontend ROUTER exactly as to a server. Workers
(``agilenn server --connect``, see :class:`transports.broker.BrokerWorkerTransport`)
connect to the backend, announce ``READY`` with their capacity and exchange
heartbeats. The broker remembers which worker holds which request; when a
worker stops heartbeating, its requests go to another worker, or, after
``max_attempts``, are answered with an ERROR. None is lost silently: on
shutdown new requests get ``shutting-down``, the held ones have
``shutdown_timeout_s`` to come back, and the rest get ``shutting-down`` too.
"""

from __future__ import annotations

import collections
import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from prometheus_client import Counter, Gauge
from zmq.auth.thread import ThreadAuthenticator

from agilenn.daemon import Daemon, DaemonMetrics
from transports.broker import HEARTBEAT, HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, READY, REPLY, REQUEST
from transports.curve import CurveServerConfig, allow_domain, configure_server, start_authenticator
from transports.messages import MAX_MESSAGE_BYTES, claims_error, encode_message, error_reply, salvage_header
from transports.zmq_transport import MAX_WIRE_MESSAGE_BYTES

from .config import BrokerConfig

log = logging.getLogger("agilenn.broker")
_LIFETIME_S = HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
MAX_CAPACITY = 4096  # requests one worker may hold, whatever its READY claims


@dataclass
class _Worker:
    capacity: int
    expires: float
    held: set[bytes] = field(default_factory=set)


@dataclass
class _Request:
    client: bytes
    message: bytes
    attempts: int = 0


class BrokerMetrics(DaemonMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.events = Counter("agilenn_broker_events", "Requests, replies, retries and failures, by kind",
                              ["kind"], registry=self.registry)
        self.workers = Gauge("agilenn_broker_workers", "Workers alive", registry=self.registry)
        self.waiting = Gauge("agilenn_broker_waiting", "Requests waiting for a worker",
                             registry=self.registry)


class Broker(Daemon):
    def __init__(self, config: BrokerConfig) -> None:
        self.metrics: BrokerMetrics = BrokerMetrics()
        super().__init__(config, self.metrics)
        self.config: BrokerConfig = config
        self.frontend_endpoint = ""
        self.backend_endpoint = ""
        self.stats = collections.Counter[str]()
        self._context: zmq.Context | None = None
        self._authenticator: ThreadAuthenticator | None = None
        self._sockets: list[zmq.Socket] = []
        self._workers: dict[bytes, _Worker] = {}
        self._requests: dict[bytes, _Request] = {}
        self._queue: collections.deque[bytes] = collections.deque()
        self._keys = (str(n).encode() for n in itertools.count())
        self._next_heartbeat = 0.0

    # --------------------------------------------------------------- lifecycle
    def load(self) -> None:
        config, curve = self.config, None
        self._context = zmq.Context()
        if config.curve_secret_key:
            curve = CurveServerConfig(Path(config.curve_secret_key), Path(config.curve_allowlist))
            self._authenticator = start_authenticator(self._context, curve)
            if config.curve_worker_allowlist:
                allow_domain(self._authenticator, "workers", Path(config.curve_worker_allowlist))
        self._frontend = self._router(config.frontend, curve, "")
        worker_curve = curve if config.curve_worker_allowlist else None
        self._backend = self._router(config.backend, worker_curve, "workers")
        self.frontend_endpoint = self._frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.backend_endpoint = self._backend.getsockopt_string(zmq.LAST_ENDPOINT)
        self._poller = zmq.Poller()
        self._poller.register(self._frontend, zmq.POLLIN)
        self._poller.register(self._backend, zmq.POLLIN)
        self._next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_S
        super().load()
        log.info("broker: devices on %s, workers on %s", self.frontend_endpoint, self.backend_endpoint)

    def _router(self, endpoint: str, curve: CurveServerConfig | None, domain: str) -> zmq.Socket:
        assert self._context is not None
        sock = self._context.socket(zmq.ROUTER)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_MESSAGE_BYTES)
        if curve is not None:
            configure_server(sock, curve, domain)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise OSError(f"cannot bind {endpoint}: {exc}") from exc
        return sock

    def serve_step(self) -> None:
        self._poll(accepting=True)

    def drain_step(self) -> bool:
        self._poll(accepting=False)
        return bool(self._requests)

    def cancel_remaining(self) -> None:
        for key in list(self._requests):  # every request still held is answered
            self._give_up(key, "shutting-down", "the broker stopped before a worker answered")

    def close(self) -> None:
        for sock in self._sockets:
            sock.close(0)
        self._sockets.clear()
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._context is not None:
            self._context.term()
            self._context = None
        super().close()

    def _poll(self, accepting: bool) -> None:
        events = dict(self._poller.poll(int(1000 * HEARTBEAT_INTERVAL_S / 2)))
        if self._backend in events:
            self._from_worker(self._backend.recv_multipart())
        if self._frontend in events:
            self._from_client(self._frontend.recv_multipart(), accepting)
        if time.monotonic() >= self._next_heartbeat:
            self._next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_S
            self._heartbeat()
        self._dispatch()
        self.metrics.workers.set(len(self._workers))
        self.metrics.waiting.set(len(self._queue))

    def _count(self, kind: str) -> None:
        self.stats[kind] += 1
        self.metrics.events.labels(kind=kind).inc()

    # --------------------------------------------------------------- clients
    def _from_client(self, frames: list[bytes], accepting: bool) -> None:
        if len(frames) != 2:
            log.warning("dropped a %d-frame message from a client: expected one frame", len(frames) - 1)
            return
        if claims_error(frames[1]):
            log.info("ignored an ERROR from a client: an ERROR is never answered")
            return
        key = next(self._keys)
        self._requests[key] = _Request(frames[0], frames[1])
        self._count("requests")
        if len(frames[1]) > MAX_MESSAGE_BYTES:  # held messages are bounded by what a worker accepts
            self._give_up(key, "too-large", f"message is {len(frames[1])} bytes, the limit is "
                                            f"{MAX_MESSAGE_BYTES}")
        elif not accepting:
            self._give_up(key, "shutting-down", "the broker is stopping; try another")
        elif len(self._queue) >= self.config.max_queue:
            self._give_up(key, "overloaded", f"{len(self._queue)} requests already wait for a worker")
        else:
            self._queue.append(key)

    def _to_client(self, client: bytes, message: bytes) -> None:
        # Never blocking: a device that stops reading must not stall every other one.
        try:
            self._frontend.send_multipart([client, message], zmq.NOBLOCK)
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the device is gone; EAGAIN: it does not read
            self._count("undeliverable")
            log.info("reply for a departed or stalled client dropped: %s", exc)

    def _give_up(self, key: bytes, code: str, reason: str) -> None:
        request = self._requests.pop(key)
        self._count(f"failed-{code}")
        reply = error_reply(salvage_header(request.message), code, reason)
        self._to_client(request.client, encode_message(reply))

    # --------------------------------------------------------------- workers
    def _from_worker(self, frames: list[bytes]) -> None:
        worker_id, kind, *rest = frames
        worker = self._workers.get(worker_id)
        if kind == READY and rest:
            if worker is not None:  # it restarted: what it held is retried elsewhere
                self._lose(worker_id, "announced itself again")
            capacity = min(int(rest[0]), MAX_CAPACITY) if rest[0].isdigit() and len(rest[0]) <= 6 else 1
            self._workers[worker_id] = _Worker(max(capacity, 1), time.monotonic() + _LIFETIME_S)
            log.info("worker %s ready (capacity %d)", worker_id.hex(), capacity)
            return
        if worker is None:
            return  # a worker we presumed dead: it must say READY again
        worker.expires = time.monotonic() + _LIFETIME_S
        if kind == REPLY and len(rest) == 3:
            _, key, message = rest
            if key in worker.held:
                worker.held.discard(key)
                request = self._requests.pop(key)
                self._to_client(request.client, message)  # to whom the broker says, not the worker
                self._count("replies")

    def _heartbeat(self) -> None:
        now = time.monotonic()
        for worker_id, worker in list(self._workers.items()):
            if now > worker.expires:
                self._lose(worker_id, "stopped heartbeating")
                continue
            try:
                self._backend.send_multipart([worker_id, HEARTBEAT], zmq.NOBLOCK)
            except zmq.ZMQError:
                self._lose(worker_id, "disconnected or not reading")

    def _lose(self, worker_id: bytes, why: str) -> None:
        worker = self._workers.pop(worker_id)
        log.warning("worker %s %s; %d requests go elsewhere", worker_id.hex(), why, len(worker.held))
        self._count("workers-lost")
        for key in sorted(worker.held, key=int):
            request = self._requests[key]
            if request.attempts >= self.config.max_attempts:
                self._give_up(key, "worker-lost", f"{request.attempts} workers failed on this request")
            else:
                self._queue.appendleft(key)
                self._count("retried")

    def _dispatch(self) -> None:
        while self._queue:
            free = [(w.capacity - len(w.held), wid) for wid, w in self._workers.items()
                    if len(w.held) < w.capacity]
            if not free:
                return
            _, worker_id = max(free)
            key = self._queue.popleft()
            request = self._requests[key]
            try:
                self._backend.send_multipart([worker_id, REQUEST, request.client, key, request.message],
                                             zmq.NOBLOCK)
            except zmq.ZMQError:
                self._queue.appendleft(key)
                self._lose(worker_id, "disconnected")
                continue
            request.attempts += 1
            self._workers[worker_id].held.add(key)
