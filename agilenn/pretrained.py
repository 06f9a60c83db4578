"""Models that ship inside the package, addressed as ``pretrained:NAME``."""

from __future__ import annotations

from importlib import resources

from .checkpoint import Checkpoint

PRETRAINED = {"mnist": "mnist.agnn"}
PREFIX = "pretrained:"


def load_pretrained(name: str) -> Checkpoint:
    if name not in PRETRAINED:
        raise ValueError(f"no pretrained model {name!r}; shipped: {', '.join(sorted(PRETRAINED))}")
    data = resources.files("agilenn.assets").joinpath(PRETRAINED[name]).read_bytes()
    return Checkpoint.from_bytes(data)
