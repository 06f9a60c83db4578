"""A load-balancing broker for inference workers (ZeroMQ's Paranoid Pirate pattern).

Devices talk to the frontend ROUTER exactly as to a server. Workers
(``agilenn server --connect``) connect a DEALER to the backend ROUTER, announce
``READY`` with how many requests they take at once, and exchange heartbeats
with the broker. The broker remembers which worker holds which request; when
a worker stops heartbeating, its requests go to another worker, or, after
``max_attempts``, are answered with an ERROR. None is lost silently.

Backend frames (after the worker identity the ROUTER adds)::

    worker -> broker   READY <capacity>  |  HEARTBEAT  |  REPLY <client> <key> <message>
    broker -> worker   REQUEST <client> <key> <message>  |  HEARTBEAT
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field

import zmq

from .messages import encode_message, error_reply, salvage_header

log = logging.getLogger("agilenn.broker")

READY, HEARTBEAT, REQUEST, REPLY = b"READY", b"HEARTBEAT", b"REQUEST", b"REPLY"
HEARTBEAT_INTERVAL_S = 0.25
HEARTBEAT_LIVENESS = 4  # missed heartbeats before a peer is presumed dead


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
    worker: bytes = b""


class Broker:
    def __init__(self, frontend: str, backend: str, *, max_attempts: int = 3,
                 max_queue: int = 100_000) -> None:
        self.max_attempts = max_attempts
        self.max_queue = max_queue
        self.should_exit = threading.Event()
        self._context = zmq.Context()
        self._frontend = self._router(frontend)
        self._backend = self._router(backend)
        self.frontend_endpoint = self._frontend.getsockopt_string(zmq.LAST_ENDPOINT)
        self.backend_endpoint = self._backend.getsockopt_string(zmq.LAST_ENDPOINT)
        self._workers: dict[bytes, _Worker] = {}
        self._requests: dict[bytes, _Request] = {}
        self._queue: collections.deque[bytes] = collections.deque()
        self._keys = (str(n).encode() for n in itertools.count())
        self.stats = collections.Counter[str]()

    def _router(self, endpoint: str) -> zmq.Socket:
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.bind(endpoint)
        return sock

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._frontend, zmq.POLLIN)
        poller.register(self._backend, zmq.POLLIN)
        next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_S
        try:
            while not self.should_exit.is_set():
                events = dict(poller.poll(int(1000 * HEARTBEAT_INTERVAL_S / 2)))
                if self._backend in events:
                    self._from_worker(self._backend.recv_multipart())
                if self._frontend in events:
                    self._from_client(self._frontend.recv_multipart())
                if time.monotonic() >= next_heartbeat:
                    next_heartbeat = time.monotonic() + HEARTBEAT_INTERVAL_S
                    self._heartbeat()
                self._dispatch()
        finally:
            for key in list(self._requests):  # every request still held is answered
                self._give_up(key, "broker-stopping", "the broker stopped before a worker answered")
            self._frontend.close()
            self._backend.close()
            self._context.term()

    # --------------------------------------------------------------- clients
    def _from_client(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("dropped a %d-frame message from a client: expected one frame", len(frames) - 1)
            return
        key = next(self._keys)
        self._requests[key] = _Request(frames[0], frames[1])
        if len(self._queue) >= self.max_queue:
            self._give_up(key, "overloaded", f"{len(self._queue)} requests already wait for a worker")
            return
        self._queue.append(key)
        self.stats["requests"] += 1

    def _to_client(self, client: bytes, message: bytes) -> None:
        try:
            self._frontend.send_multipart([client, message])
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the device is gone; it will retry
            self.stats["undeliverable"] += 1
            log.info("reply for a departed client dropped: %s", exc)

    def _give_up(self, key: bytes, code: str, reason: str) -> None:
        request = self._requests.pop(key)
        self.stats[f"failed-{code}"] += 1
        reply = error_reply(salvage_header(request.message), code, reason)
        self._to_client(request.client, encode_message(reply))

    # --------------------------------------------------------------- workers
    def _from_worker(self, frames: list[bytes]) -> None:
        worker_id, kind, *rest = frames
        worker = self._workers.get(worker_id)
        if kind == READY and rest:
            capacity = int(rest[0]) if rest[0].isdigit() else 1
            self._workers[worker_id] = _Worker(max(capacity, 1), time.monotonic() + self._lifetime())
            log.info("worker %s ready (capacity %d)", worker_id.hex(), capacity)
            return
        if worker is None:
            return  # a worker we presumed dead: it must say READY again
        worker.expires = time.monotonic() + self._lifetime()
        if kind == REPLY and len(rest) == 3:
            client, key, message = rest
            if key in worker.held:
                worker.held.discard(key)
                self._requests.pop(key, None)
                self._to_client(client, message)
                self.stats["replies"] += 1

    def _heartbeat(self) -> None:
        now = time.monotonic()
        for worker_id, worker in list(self._workers.items()):
            if now > worker.expires:
                self._lose(worker_id, "stopped heartbeating")
                continue
            try:
                self._backend.send_multipart([worker_id, HEARTBEAT])
            except zmq.ZMQError:
                self._lose(worker_id, "disconnected")

    def _lose(self, worker_id: bytes, why: str) -> None:
        worker = self._workers.pop(worker_id)
        log.warning("worker %s %s; %d requests go elsewhere", worker_id.hex(), why, len(worker.held))
        self.stats["workers-lost"] += 1
        for key in sorted(worker.held, key=int):
            request = self._requests[key]
            if request.attempts >= self.max_attempts:
                self._give_up(key, "worker-lost", f"{request.attempts} workers failed on this request")
            else:
                self._queue.appendleft(key)
                self.stats["retried"] += 1

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
                self._backend.send_multipart([worker_id, REQUEST, request.client, key, request.message])
            except zmq.ZMQError:
                self._queue.appendleft(key)
                self._lose(worker_id, "disconnected")
                continue
            request.attempts += 1
            request.worker = worker_id
            self._workers[worker_id].held.add(key)

    @staticmethod
    def _lifetime() -> float:
        return HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS


class BrokerWorkerTransport:
    """The server side of a worker: same ``bind/recv/send/close`` as ZmqServerTransport.

    ``recv`` hands out ``(identity, message)`` where the identity packs the
    client and the broker's request key, so ``send`` can route the reply.
    Heartbeats run inside ``recv``; if the broker goes quiet the worker
    reconnects (Paranoid Pirate) and announces itself again.
    """

    def __init__(self, endpoint: str, capacity: int) -> None:
        self.endpoint = endpoint
        self.capacity = capacity
        self._context = zmq.Context()
        self._socket: zmq.Socket | None = None

    def bind(self) -> str:
        self._connect()
        return self.endpoint

    def _connect(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(self.endpoint)
        self._socket.send_multipart([READY, str(self.capacity).encode()])
        now = time.monotonic()
        self._broker_expires = now + HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
        self._next_heartbeat = now + HEARTBEAT_INTERVAL_S

    def recv(self, timeout: float) -> tuple[bytes, bytes] | None:
        assert self._socket is not None, "bind() first"
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now >= self._next_heartbeat:
                self._socket.send_multipart([HEARTBEAT])
                self._next_heartbeat = now + HEARTBEAT_INTERVAL_S
            if now > self._broker_expires:
                log.warning("broker %s went quiet; reconnecting", self.endpoint)
                self._connect()
            wait = min(deadline, self._next_heartbeat) - now
            if self._socket.poll(max(0, int(1000 * wait))):
                frames = self._socket.recv_multipart()
                self._broker_expires = time.monotonic() + HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
                if frames[0] == REQUEST and len(frames) == 4:
                    return b"%d:%s%s" % (len(frames[1]), frames[1], frames[2]), frames[3]
            if time.monotonic() >= deadline:
                return None

    def send(self, identity: bytes, message: bytes) -> None:
        assert self._socket is not None, "bind() first"
        length, _, rest = identity.partition(b":")
        client_length = int(length)
        self._socket.send_multipart([REPLY, rest[:client_length], rest[client_length:], message])

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        self._context.term()
