"""The one registry of models that ship inside the package, addressed as ``pretrained:NAME``.

AgileNN checkpoints (``.agnn``) and baseline CNNs (``.agbl``) live side by
side: a spec is ``pretrained:NAME`` or a path, and the file's suffix says
which kind it is.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .baselines.checkpoint import BaselineCheckpoint
from .checkpoint import Checkpoint

PREFIX = "pretrained:"
PRETRAINED = {
    "mnist": "mnist.agnn",
    "mnist-full-cnn": "mnist-full-cnn.agbl",
    "mnist-tiny-cnn": "mnist-tiny-cnn.agbl",
    "cluttered-mnist": "cluttered-mnist.agnn",
    "cluttered-mnist-full-cnn": "cluttered-mnist-full-cnn.agbl",
    "cluttered-mnist-tiny-cnn": "cluttered-mnist-tiny-cnn.agbl",
}
DEFAULT_MODEL = PREFIX + "mnist"
BASELINE_SUFFIX = ".agbl"


def _shipped_file(name: str, suffix: str) -> str:
    file = PRETRAINED.get(name)
    if file is None or not file.endswith(suffix):
        shipped = sorted(n for n, f in PRETRAINED.items() if f.endswith(suffix))
        what = "shipped baseline" if suffix == BASELINE_SUFFIX else "pretrained model"
        raise ValueError(f"no {what} {name!r}; shipped: {', '.join(shipped)}")
    return file


def _read(spec: str, suffix: str) -> bytes:
    if spec.startswith(PREFIX):
        file = _shipped_file(spec[len(PREFIX):], suffix)
        return resources.files("agilenn.assets").joinpath(file).read_bytes()
    return Path(spec).read_bytes()


def is_baseline_spec(spec: str) -> bool:
    """``pretrained:`` + a shipped baseline's name, or a path to an ``.agbl`` file."""
    file = PRETRAINED.get(spec[len(PREFIX):], "") if spec.startswith(PREFIX) else spec
    return Path(file).suffix == BASELINE_SUFFIX


def load_checkpoint(spec: str) -> Checkpoint:
    """``pretrained:NAME`` for a shipped AgileNN model, otherwise a path to a ``.agnn`` file."""
    return Checkpoint.from_bytes(_read(spec, ".agnn"))


def load_baseline_checkpoint(spec: str) -> BaselineCheckpoint:
    """``pretrained:NAME`` for a shipped baseline, otherwise a path to an ``.agbl`` file."""
    return BaselineCheckpoint.from_bytes(_read(spec, BASELINE_SUFFIX))


def load_pretrained(name: str) -> Checkpoint:
    return load_checkpoint(PREFIX + name)


def load_baseline(name: str) -> BaselineCheckpoint:
    return load_baseline_checkpoint(PREFIX + name)
