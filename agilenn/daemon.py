"""Plumbing every agilenn daemon shares: config layering, logging, signals, staged shutdown, metrics.

The server, the edge node (stream and gateway modes) and the broker are each
a :class:`Daemon` driven by a :class:`DaemonConfig` subclass. The run loop is
uvicorn's: load, serve until the first SIGTERM or Ctrl-C, then shut down in
stages (stop taking work, finish what is in flight up to
``shutdown_timeout_s``, answer the rest with an error) and always close
sockets and the metrics port, even after a second signal forced the exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar, cast
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

ENV_PREFIX = "AGILENN_"
LOG_FORMATS = ("json", "text")
ConfigT = TypeVar("ConfigT", bound="DaemonConfig")
log = logging.getLogger("agilenn.daemon")


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename, so a crash never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# ------------------------------------------------------------------ config
@dataclass(frozen=True)
class DaemonConfig:
    """Typed settings; subclasses add their own fields, every one with a default.

    A config only holds and normalises values; sockets and models are opened
    later, in the daemon's ``load()``.
    """

    log_level: str = "INFO"
    log_format: str = "json"
    metrics_port: int = -1  # -1: no metrics endpoint; 0: any free port
    metrics_addr: str = "127.0.0.1"
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value: Any = getattr(self, field.name)
            expected = type(field.default)
            if type(value) is not expected and not (expected is float and type(value) is int):
                raise ValueError(f"{field.name} must be a {expected.__name__}, not {value!r}")
            if expected is float and not math.isfinite(cast(float, value)):
                raise ValueError(f"{field.name} must be a finite number, not {value!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, not {self.log_format!r}")
        if self.shutdown_timeout_s < 0:
            raise ValueError("shutdown_timeout_s cannot be negative")

    @classmethod
    def load(cls: type[ConfigT], file: str | Path | None = None, env: Mapping[str, str] | None = None,
             **overrides: Any) -> ConfigT:
        """Merge, lowest precedence first: defaults, TOML file, ``AGILENN_*`` environment, overrides."""
        values: dict[str, Any] = {}
        if file is not None:
            with open(file, "rb") as handle:
                values.update(tomllib.load(handle))
        values.update(_from_env(cls, os.environ if env is None else env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
        return cls(**values)


def _from_env(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """``AGILENN_MAX_BATCH_SIZE=64`` -> ``{"max_batch_size": 64}``, typed like the default."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        raw = env.get(ENV_PREFIX + field.name.upper())
        if raw is None:
            continue
        kind: type = type(field.default)
        try:
            values[field.name] = raw if kind is str else kind(raw)
        except ValueError:
            raise ValueError(f"{ENV_PREFIX}{field.name.upper()}={raw!r} is not a {kind.__name__}") from None
    return values


# ------------------------------------------------------------------ logging
class JsonFormatter(logging.Formatter):
    """One JSON object a line, for journald, Loki and friends."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, log_format: str) -> None:
    """Send the ``agilenn`` loggers to stderr as JSON lines or as text; ValueError on a bad level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("agilenn")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# ------------------------------------------------------------------ signals
@contextlib.contextmanager
def captured_signals(should_exit: threading.Event, force_exit: threading.Event,
                     reload: threading.Event | None = None) -> Iterator[None]:
    """SIGINT/SIGTERM set ``should_exit`` (a graceful stop); a second one sets ``force_exit``;
    SIGHUP sets ``reload``, when given.

    Neither raises inside the interrupted code, so what is in flight is answered
    or cancelled with a reply, and the closing of sockets and ports always runs:
    the daemons' loops look at the flags at least every 0.1 s. The second signal
    also puts the original handlers back, so a third one stops a daemon that
    is blocked for good. They are restored on the way out in any case.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be caught on the main thread
        return
    originals = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    hangup = signal.getsignal(signal.SIGHUP) if reload is not None else None

    def handle_hangup(signum: int, frame: FrameType | None) -> None:
        log.info("received SIGHUP: reloading")
        assert reload is not None
        reload.set()

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if should_exit.is_set():
            log.warning("received %s again: cancelling what is left", name)
            force_exit.set()
            # A daemon stuck in a call that never returns still has a way out: a third
            # signal gets Python's own handling (KeyboardInterrupt, or termination).
            for sig, original in originals.items():
                signal.signal(sig, original)
        else:
            log.info("received %s: finishing in-flight work", name)
            should_exit.set()

    for sig in originals:
        signal.signal(sig, handle)
    if reload is not None:
        signal.signal(signal.SIGHUP, handle_hangup)
    try:
        yield
    finally:
        for sig, original in originals.items():
            signal.signal(sig, original)
        if reload is not None:
            signal.signal(signal.SIGHUP, hangup)


# ------------------------------------------------------------------ metrics
class DaemonMetrics:
    """A Prometheus registry of one daemon's own (tests run several in a process), served on demand."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def serve(self, port: int, addr: str) -> int:
        """Expose /metrics over HTTP; returns the bound port."""
        self._http = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._http[0].server_port)

    def close(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join()
            self._http = None


# ------------------------------------------------------------------ the run loop
class Daemon:
    """``load()``, then ``serve_step()`` until asked to stop, then a staged shutdown.

    Subclasses fill in the hooks. ``drain_step()`` returns whether work is
    still in flight; it runs until it says no, ``shutdown_timeout_s`` passes or
    a second signal arrives. ``cancel_remaining()`` then answers what is left
    with an error, and ``close()`` always runs last, on a failed load too, so
    it must cope with a half-loaded daemon and with being called twice.
    """

    def __init__(self, config: DaemonConfig, metrics: DaemonMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or DaemonMetrics()
        self.should_exit = threading.Event()
        self.force_exit = threading.Event()
        self.reload_requested = threading.Event()  # SIGHUP, or reload_later()
        self.started = threading.Event()
        self.load_error: BaseException | None = None
        self.metrics_port = -1

    def load(self) -> None:
        if self.config.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.metrics_addr)

    def serve_step(self) -> None:
        raise NotImplementedError

    def reload(self) -> None:
        """Re-read what can change while serving; by default nothing can."""
        log.info("%s has nothing to reload", type(self).__name__)

    def reload_later(self) -> None:
        """Ask the serving loop to reload, as SIGHUP does (for a daemon in a thread)."""
        self.reload_requested.set()

    def drain_step(self) -> bool:
        return False

    def cancel_remaining(self) -> None:
        pass

    def close(self) -> None:
        self.metrics.close()

    def run(self) -> int:
        """Load, serve until asked to stop, shut down in stages. Returns the exit code."""
        # Handlers first: a SIGTERM while the model loads must still stop us gracefully.
        with captured_signals(self.should_exit, self.force_exit, self.reload_requested):
            try:
                self.load()
            except BaseException as exc:
                self.load_error = exc
                self.close()  # a half-started daemon must not keep its ports
                raise
            finally:
                self.started.set()  # on failure too: waiters must not hang
            try:
                while not self.should_exit.is_set():
                    if self.reload_requested.is_set():
                        self.reload_requested.clear()
                        self._reload()
                    self.serve_step()
            finally:
                self._shut_down()
        return 0

    def _reload(self) -> None:
        try:
            self.reload()
        except Exception:  # a bad new setting must not stop what serves now
            log.exception("reload failed; serving on as before")

    def _shut_down(self) -> None:
        deadline = time.monotonic() + self.config.shutdown_timeout_s
        try:
            while not self.force_exit.is_set() and time.monotonic() < deadline and self.drain_step():
                pass
            self.cancel_remaining()
        finally:
            self.close()


class DaemonThread:
    """A daemon in a background thread, for tests and apps: ``with DaemonThread(daemon):``."""

    def __init__(self, daemon: Daemon, name: str = "agilenn-daemon") -> None:
        self.daemon = daemon
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._crash: BaseException | None = None

    def start(self) -> None:
        """Returns once the daemon serves; re-raises the error if it failed to load."""
        self._thread.start()
        self.daemon.started.wait()
        if self.daemon.load_error is not None:
            self._thread.join()
            raise self.daemon.load_error

    def stop(self) -> None:
        """Stop gracefully; re-raises the error if the daemon died while running."""
        self.daemon.should_exit.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._crash is not None:
            raise self._crash

    def __enter__(self) -> DaemonThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self.daemon.run()
        except BaseException as exc:  # a thread has no caller: start() or stop() re-raise it
            if self.daemon.load_error is None:
                self._crash = exc


def stop_process(process: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """SIGTERM (a graceful stop), then SIGKILL if it does not exit in time; the exit code."""
    process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -signal.SIGKILL
