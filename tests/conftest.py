"""Shared fixtures. The leak guard fails any test that leaves threads behind."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from collections.abc import Iterator

import pytest
import torch
import tqdm

REPO = Path(__file__).resolve().parents[1]

# tqdm's monitor is a process-wide daemon thread started by the first bar; it
# would trip the leak guard below without being a leak of the code under test.
tqdm.tqdm.monitor_interval = 0


def mnist_dir() -> Path:
    """The shared MNIST copy: $AGILENN_DATA, else ../shared/data/mnist beside the repo."""
    return Path(os.environ.get("AGILENN_DATA") or REPO.parent / "shared" / "data" / "mnist")


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"test leaked threads: {leaked}"


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
