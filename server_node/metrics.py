"""Prometheus metrics of one server, on a registry of its own (tests run several)."""

from __future__ import annotations

import threading
import time
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_DEVICE_WINDOW_S = 60.0


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("agilenn_requests", "Inference requests received", registry=self.registry)
        self.failures = Counter("agilenn_failures", "Requests answered with an error, by reason",
                                ["reason"], registry=self.registry)
        self.batch_size = Histogram("agilenn_batch_size", "Requests per forward pass",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=self.registry)
        self.queue_seconds = Histogram("agilenn_queue_seconds", "Time a request waited for its batch",
                                       registry=self.registry)
        self.compute_seconds = Histogram("agilenn_compute_seconds", "Forward pass time per batch",
                                         registry=self.registry)
        self.devices = Gauge("agilenn_connected_devices", "Devices seen in the last minute",
                             registry=self.registry)
        self._last_seen: dict[str, float] = {}
        self._next_prune = 0.0
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def saw_device(self, device_id: str) -> None:
        now = time.monotonic()
        self._last_seen[device_id] = now
        # Prune once a second (or when the map grows), not on every request.
        if now >= self._next_prune or len(self._last_seen) > 4096:
            self._last_seen = {d: t for d, t in self._last_seen.items() if now - t <= _DEVICE_WINDOW_S}
            self._next_prune = now + 1.0
        self.devices.set(len(self._last_seen))

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
