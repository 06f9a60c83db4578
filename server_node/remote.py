"""``RemoteServer``: the inference server in a background thread, for tests and apps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agilenn.daemon import DaemonThread
from agilenn.pretrained import DEFAULT_MODEL
from transports.memory import MemoryServerTransport
from transports.pipe import MessageTransport, ServerTransport
from transports.zmq_transport import ZmqClientTransport

from .config import ServerConfig
from .server import Server


class RemoteServer(DaemonThread):
    """Start with ``with RemoteServer() as server:``; connect clients to ``server.endpoint``.

    ``transport``: serve on it instead of a socket, e.g. a
    :class:`~transports.memory.MemoryServerTransport` in a test.
    """

    def __init__(self, model: str = DEFAULT_MODEL, bind: str = "tcp://127.0.0.1:0",
                 transport: ServerTransport | None = None,
                 reloader: Callable[[], ServerConfig] | None = None, **settings: Any) -> None:
        self.config = ServerConfig(model=model, bind=bind, **settings)
        self.server = Server(self.config, transport, reloader)
        self._memory = transport if isinstance(transport, MemoryServerTransport) else None
        super().__init__(self.server, name="agilenn-remote-server")

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def connect(self) -> MessageTransport:
        """A new client transport to this server: in memory if it serves in memory, else ZeroMQ."""
        if self._memory is not None:
            return self._memory.connect()
        return ZmqClientTransport(self.endpoint)

    @classmethod
    def in_memory(cls, model: str = DEFAULT_MODEL, **settings: Any) -> RemoteServer:
        """A server on a :class:`~transports.memory.MemoryServerTransport`: no socket, no port."""
        return cls(model, transport=MemoryServerTransport(), **settings)

    def __enter__(self) -> RemoteServer:
        self.start()
        return self
