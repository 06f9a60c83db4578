"""The contracts every transport implements, and an in-memory byte pipe pair.

A pipe moves bytes and does not care what they mean. Byte-stream pipes
(serial) may split or merge writes; message pipes (ZeroMQ) keep boundaries.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol

from .errors import TransportClosed

# A manipulator sees each write and returns what actually goes on the wire
# (split into several chunks, changed, or dropped with an empty list).
Manipulator = Callable[[bytes], list[bytes]]


def unchanged(data: bytes) -> list[bytes]:
    return [data]


class Pipe(Protocol):
    def write(self, data: bytes) -> None:
        """Send bytes; raises TransportClosed once closed."""

    def read(self, timeout: float) -> bytes:
        """Bytes that arrived, waiting up to ``timeout`` s; b"" if none came."""

    def close(self) -> None:
        """Release the pipe; idempotent."""


class MessageTransport(Protocol):
    """The client side of a message link (ZeroMQ DEALER, in-memory, emulated): boundaries kept."""

    endpoint: str

    def send(self, message: bytes) -> None: ...

    def recv(self, timeout: float) -> bytes | None: ...

    def reconnect(self) -> None: ...

    def close(self) -> None: ...


class ServerTransport(Protocol):
    """The server side of a message link: ``recv`` gives ``(identity, message)``, ``send`` answers one."""

    def bind(self) -> str: ...

    def recv(self, timeout: float) -> tuple[bytes, bytes] | None: ...

    def send(self, identity: bytes, message: bytes) -> None: ...

    def close(self) -> None: ...


class MemoryPipe:
    """One end of an in-process byte pipe; make two with :meth:`pair`.

    The manipulator hook lets tests split, drop, duplicate and corrupt bytes
    on their way to the other end, so every recovery path runs without hardware.
    """

    def __init__(self, inbox: queue.Queue[bytes | None], outbox: queue.Queue[bytes | None],
                 manipulator: Manipulator = unchanged) -> None:
        self._inbox = inbox
        self._outbox = outbox
        self.manipulator = manipulator
        self._closed = threading.Event()

    @classmethod
    def pair(cls, a_to_b: Manipulator = unchanged,
             b_to_a: Manipulator = unchanged) -> tuple[MemoryPipe, MemoryPipe]:
        first: queue.Queue[bytes | None] = queue.Queue()
        second: queue.Queue[bytes | None] = queue.Queue()
        return cls(second, first, a_to_b), cls(first, second, b_to_a)

    def write(self, data: bytes) -> None:
        if self._closed.is_set():
            raise TransportClosed("memory pipe is closed")
        for chunk in self.manipulator(bytes(data)):
            if chunk:
                self._outbox.put(chunk)

    def read(self, timeout: float) -> bytes:
        if self._closed.is_set():
            raise TransportClosed("memory pipe is closed")
        try:
            chunk = self._inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return b""
        if chunk is None:
            self._closed.set()
            raise TransportClosed("peer closed the memory pipe")
        return chunk

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._outbox.put(None)
