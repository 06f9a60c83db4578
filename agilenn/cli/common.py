"""Helpers shared by the subcommands: model loading, atomic writes, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint
from ..pretrained import PREFIX, load_pretrained

DEFAULT_MODEL = PREFIX + "mnist"


def load_checkpoint(spec: str) -> Checkpoint:
    """``pretrained:NAME`` for a shipped model, otherwise a path to a ``.agnn`` file."""
    if spec.startswith(PREFIX):
        return load_pretrained(spec[len(PREFIX) :])
    return Checkpoint.from_bytes(Path(spec).read_bytes())


def write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary sibling, then rename, so a crash never leaves half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def print_json(value: dict[str, Any]) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def fail(message: str) -> int:
    print(f"agilenn: error: {message}", file=sys.stderr)
    return 2


def stop_process(process: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """SIGTERM (a graceful stop), then SIGKILL if it does not exit in time; the exit code."""
    process.terminate()
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -signal.SIGKILL
