"""Prometheus metrics of one edge node, on a registry of its own."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from agilenn.daemon import DaemonMetrics


class EdgeMetrics(DaemonMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.requests = Counter("agilenn_edge_requests", "Images classified", registry=self.registry)
        self.offloaded = Counter("agilenn_edge_offloaded", "Predictions merged with the server's",
                                 registry=self.registry)
        self.fallbacks = Counter("agilenn_edge_fallbacks", "Predictions answered locally, by reason",
                                 ["reason"], registry=self.registry)
        self.link_estimate = Gauge("agilenn_edge_link_estimate_seconds",
                                   "Predicted round trip of the last request's size", registry=self.registry)
        self.bytes_up = Counter("agilenn_edge_bytes_up", "Bytes sent to the server", registry=self.registry)
        self.bytes_down = Counter("agilenn_edge_bytes_down", "Bytes received from the server",
                                  registry=self.registry)
        # Gateway mode: what became of each message from the MCU.
        self.gateway = Counter("agilenn_gateway_messages", "MCU messages by outcome: forwarded, "
                               "reply-undeliverable, rejected, server-unreachable, shutting-down",
                               ["outcome"], registry=self.registry)
