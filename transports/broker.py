"""The worker side of the load-balancing broker (ZeroMQ's Paranoid Pirate pattern).

The broker itself is a daemon (:mod:`server_node.broker`). Workers
(``agilenn server --connect``) connect a DEALER to its backend ROUTER,
announce ``READY`` with how many requests they take at once, and exchange
heartbeats with it.

Backend frames (after the worker identity the ROUTER adds)::

    worker -> broker   READY <capacity>  |  HEARTBEAT  |  REPLY <client> <key> <message>
    broker -> worker   REQUEST <client> <key> <message>  |  HEARTBEAT
"""

from __future__ import annotations

import logging
import time

import zmq

from .curve import CurveClientConfig, configure_client
from .errors import QueueFull

log = logging.getLogger("agilenn.broker")

READY, HEARTBEAT, REQUEST, REPLY = b"READY", b"HEARTBEAT", b"REQUEST", b"REPLY"
HEARTBEAT_INTERVAL_S = 0.25
HEARTBEAT_LIVENESS = 4  # missed heartbeats before a peer is presumed dead


class BrokerWorkerTransport:
    """The server side of a worker: same ``bind/recv/send/close`` as ZmqServerTransport.

    ``recv`` hands out ``(identity, message)`` where the identity packs the
    client and the broker's request key, so ``send`` can route the reply.
    Heartbeats run inside ``recv``; if the broker goes quiet the worker
    reconnects (Paranoid Pirate) and announces itself again.
    """

    def __init__(self, endpoint: str, capacity: int, curve: CurveClientConfig | None = None) -> None:
        self.endpoint = endpoint
        self.capacity = capacity
        self._curve = curve
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
        if self._curve is not None:
            configure_client(self._socket, self._curve)
        self._socket.connect(self.endpoint)
        self._send([READY, str(self.capacity).encode()])
        now = time.monotonic()
        self._broker_expires = now + HEARTBEAT_INTERVAL_S * HEARTBEAT_LIVENESS
        self._next_heartbeat = now + HEARTBEAT_INTERVAL_S

    def recv(self, timeout: float) -> tuple[bytes, bytes] | None:
        assert self._socket is not None, "bind() first"
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            if now >= self._next_heartbeat:
                self._send([HEARTBEAT])
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
        if not self._send([REPLY, rest[:client_length], rest[client_length:], message]):
            raise QueueFull(f"no connection to the broker {self.endpoint} takes the reply")

    def _send(self, frames: list[bytes]) -> bool:
        """Send without blocking; False when no connection takes it (the broker is gone, or
        refused this worker's CURVE key): a blocked send would freeze the worker for good."""
        assert self._socket is not None
        try:
            self._socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
        self._context.term()
