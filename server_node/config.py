"""Server configuration: a TOML file, then ``AGILENN_*`` variables, then flags.

``ServerConfig`` only holds and normalises values; loading the model and
binding sockets happen later, in :class:`server_node.server.Server`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_PREFIX = "AGILENN_"


@dataclass(frozen=True)
class ServerConfig:
    model: str = "pretrained:mnist"
    bind: str = "tcp://127.0.0.1:5555"
    connect: str = ""  # a broker's backend: run as one of its workers instead of binding
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    torch_threads: int = 1
    metrics_port: int = -1  # -1: no metrics endpoint; 0: any free port
    metrics_addr: str = "127.0.0.1"
    curve_secret_key: str = ""
    curve_allowlist: str = ""
    shutdown_timeout_s: float = 5.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value, expected = getattr(self, field.name), type(field.default)
            if type(value) is not expected and not (expected is float and type(value) is int):
                raise ValueError(f"{field.name} must be a {expected.__name__}, not {value!r}")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue_delay_us < 0:
            raise ValueError("max_queue_delay_us cannot be negative")
        if self.torch_threads < 1:
            raise ValueError("torch_threads must be at least 1")
        if bool(self.curve_secret_key) != bool(self.curve_allowlist):
            raise ValueError("CURVE needs both curve_secret_key and curve_allowlist")

    @classmethod
    def load(cls, file: str | Path | None = None, env: Mapping[str, str] | None = None,
             **overrides: Any) -> ServerConfig:
        """Merge, lowest precedence first: defaults, TOML file, environment, overrides."""
        values: dict[str, Any] = {}
        if file is not None:
            with open(file, "rb") as handle:
                values.update(tomllib.load(handle))
        values.update(_from_env(cls, os.environ if env is None else env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown server settings: {', '.join(unknown)}")
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
