"""Server configuration: a TOML file, then ``AGILENN_*`` variables, then flags.

``ServerConfig`` only holds and normalises values; loading the model and
binding sockets happen later, in :class:`server_node.server.Server`.
"""

from __future__ import annotations

from dataclasses import dataclass

from agilenn.daemon import DaemonConfig
from agilenn.pretrained import DEFAULT_MODEL


@dataclass(frozen=True)
class ServerConfig(DaemonConfig):
    model: str = DEFAULT_MODEL
    models: str = ""  # more versions served beside model, comma-separated; SIGHUP re-reads the list
    bind: str = "tcp://127.0.0.1:5555"
    connect: str = ""  # a broker's backend: run as one of its workers instead of binding
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    torch_threads: int = 1
    curve_secret_key: str = ""
    curve_allowlist: str = ""  # binding: the device keys let in
    curve_server_key: str = ""  # with connect: the broker backend's public key
    adapt_sessions: int = 4  # split-learning sessions open at once; 0: refuse adaptation
    adapt_idle_s: float = 600.0  # an adaptation session idle this long is dropped

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adapt_sessions < 0 or not self.adapt_idle_s > 0:
            raise ValueError("adapt_sessions cannot be negative and adapt_idle_s must be positive")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue_delay_us < 0:
            raise ValueError("max_queue_delay_us cannot be negative")
        if self.torch_threads < 1:
            raise ValueError("torch_threads must be at least 1")
        peer_key = self.curve_server_key if self.connect else self.curve_allowlist
        if bool(self.curve_secret_key) != bool(peer_key):
            needed = "curve_server_key" if self.connect else "curve_allowlist"
            raise ValueError(f"CURVE needs both curve_secret_key and {needed}")


def served_specs(config: ServerConfig) -> list[str]:
    """The model versions a server config names: ``model`` first, then ``models``."""
    specs = [config.model, *(spec.strip() for spec in config.models.split(",") if spec.strip())]
    return list(dict.fromkeys(specs))


@dataclass(frozen=True)
class BrokerConfig(DaemonConfig):
    frontend: str = "tcp://127.0.0.1:5555"  # devices connect here
    backend: str = "tcp://127.0.0.1:5556"  # workers (agilenn server --connect) connect here
    max_attempts: int = 3
    max_queue: int = 100_000
    curve_secret_key: str = ""  # the broker's key pair, on both sockets
    curve_allowlist: str = ""  # device public keys let in at the frontend
    curve_worker_allowlist: str = ""  # worker public keys let in at the backend

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_attempts < 1 or self.max_queue < 1:
            raise ValueError("max_attempts and max_queue must be at least 1")
        if bool(self.curve_secret_key) != bool(self.curve_allowlist):
            raise ValueError("CURVE needs both curve_secret_key and curve_allowlist")
        if self.curve_worker_allowlist and not self.curve_secret_key:
            raise ValueError("curve_worker_allowlist needs curve_secret_key")
