"""In-process message transports: the ZeroMQ pair's behaviour without sockets.

:class:`MemoryServerTransport` stands in for the ROUTER side
(:class:`~transports.zmq_transport.ZmqServerTransport`) and
:class:`MemoryClientTransport` for the DEALER side, so the server, the edge
client and the gateway run their real logic in one process, without TCP or
subprocesses. As with ZeroMQ, a reply to a client that reconnected or closed
raises :class:`~transports.errors.PeerUnreachable`, and a reconnect drops the
replies queued for the old connection. A manipulator on the client can drop,
duplicate or corrupt what it sends.
"""

from __future__ import annotations

import itertools
import queue
import threading

from .errors import PeerUnreachable, TransportClosed
from .pipe import Manipulator, unchanged


class MemoryServerTransport:
    def __init__(self, endpoint: str = "memory://server") -> None:
        self.endpoint = endpoint
        self._inbox: queue.Queue[tuple[bytes, bytes]] = queue.Queue()
        self._clients: dict[bytes, queue.Queue[bytes]] = {}
        self._lock = threading.Lock()
        self._identities = (b"client-%d" % n for n in itertools.count(1))
        self._closed = False

    def bind(self) -> str:
        self._check_open()
        return self.endpoint

    def connect(self, manipulator: Manipulator = unchanged) -> MemoryClientTransport:
        """A client connected to this server."""
        return MemoryClientTransport(self, manipulator)

    def recv(self, timeout: float) -> tuple[bytes, bytes] | None:
        self._check_open()
        try:
            return self._inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def send(self, identity: bytes, message: bytes) -> None:
        self._check_open()
        with self._lock:
            inbox = self._clients.get(identity)
        if inbox is None:
            raise PeerUnreachable(f"peer {identity!r} is not connected")
        inbox.put(message)

    def close(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"server transport on {self.endpoint} is closed")

    def _attach(self) -> tuple[bytes, queue.Queue[bytes]]:
        inbox: queue.Queue[bytes] = queue.Queue()
        with self._lock:
            identity = next(self._identities)
            self._clients[identity] = inbox
        return identity, inbox

    def _detach(self, identity: bytes) -> None:
        with self._lock:
            self._clients.pop(identity, None)

    def _deliver(self, identity: bytes, message: bytes) -> None:
        if not self._closed:  # a closed server, like a dead one, never sees the message
            self._inbox.put((identity, message))


class MemoryClientTransport:
    def __init__(self, server: MemoryServerTransport, manipulator: Manipulator = unchanged) -> None:
        self.endpoint = server.endpoint
        self.manipulator = manipulator
        self._server = server
        self._identity, self._inbox = server._attach()
        self._closed = False

    def send(self, message: bytes) -> None:
        self._check_open()
        for chunk in self.manipulator(bytes(message)):
            self._server._deliver(self._identity, chunk)

    def recv(self, timeout: float) -> bytes | None:
        self._check_open()
        try:
            return self._inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def reconnect(self) -> None:
        self._check_open()
        self._server._detach(self._identity)
        self._identity, self._inbox = self._server._attach()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._server._detach(self._identity)

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"client transport to {self.endpoint} is closed")
