"""``RemoteServer``: the inference server in a background thread, for tests and apps."""

from __future__ import annotations

import threading
from typing import Any

from .config import ServerConfig
from .server import Server


class RemoteServer:
    """Start with ``with RemoteServer() as server:``; connect clients to ``server.endpoint``."""

    def __init__(self, model: str = "pretrained:mnist", bind: str = "tcp://127.0.0.1:0",
                 **settings: Any) -> None:
        self.config = ServerConfig(model=model, bind=bind, **settings)
        self.server = Server(self.config)
        self._thread = threading.Thread(target=self._run, name="agilenn-remote-server", daemon=True)
        self._crash: BaseException | None = None

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def start(self) -> str:
        self._thread.start()
        self.server.started.wait()
        if self.server.load_error is not None:
            self._thread.join()
            raise self.server.load_error
        return self.endpoint

    def stop(self) -> None:
        """Stop gracefully; re-raises the error if the server died while running."""
        self.server.should_exit.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._crash is not None:
            raise self._crash

    def __enter__(self) -> RemoteServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self.server.run()
        except BaseException as exc:  # a thread has no caller: start() or stop() re-raise it
            if self.server.load_error is None:
                self._crash = exc
