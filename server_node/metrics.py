"""Prometheus metrics of one server, on a registry of its own (tests run several)."""

from __future__ import annotations

import time
from collections import OrderedDict

from prometheus_client import Counter, Gauge, Histogram

from agilenn.daemon import DaemonMetrics

_DEVICE_WINDOW_S = 60.0
_MAX_TRACKED_DEVICES = 10_000


class ServerMetrics(DaemonMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.requests = Counter("agilenn_requests", "Inference requests received", registry=self.registry)
        self.adapt_requests = Counter("agilenn_adapt_requests", "Split-learning steps and fetches received",
                                      registry=self.registry)
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
        self._last_seen: OrderedDict[str, float] = OrderedDict()  # oldest first

    def saw_device(self, device_id: str) -> None:
        now = time.monotonic()
        self._last_seen[device_id] = now
        self._last_seen.move_to_end(device_id)
        # Oldest first, so expiry pops from the front: O(1) a message, even when a
        # peer floods us with made-up device ids (the cap bounds the memory).
        while self._last_seen:
            oldest, seen = next(iter(self._last_seen.items()))
            if now - seen <= _DEVICE_WINDOW_S and len(self._last_seen) <= _MAX_TRACKED_DEVICES:
                break
            del self._last_seen[oldest]
        self.devices.set(len(self._last_seen))
