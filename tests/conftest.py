"""Shared fixtures. The leak guard fails any test that leaves threads behind."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from collections.abc import Iterator

import pytest
import torch
import tqdm

REPO = Path(__file__).resolve().parents[1]

# One intra-op thread per test process: CI runs two pytest workers on two cores, and
# torch's spinning thread pools slow each other down by orders of magnitude when
# oversubscribed.
torch.set_num_threads(1)

# tqdm's monitor is a process-wide daemon thread started by the first bar; it
# would trip the leak guard below without being a leak of the code under test.
tqdm.tqdm.monitor_interval = 0


def mnist_dir() -> Path:
    """The shared MNIST copy: $AGILENN_DATA, else ../shared/data/mnist beside the repo."""
    return Path(os.environ.get("AGILENN_DATA") or REPO.parent / "shared" / "data" / "mnist")


def reap(process: subprocess.Popen[str]) -> None:
    """Kill a daemon a test started if it is still running, and close its pipes."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def _open_sockets() -> set[str]:
    """This process's socket descriptors (Linux /proc; empty elsewhere)."""
    found = set()
    fd_dir = Path("/proc/self/fd")
    for entry in fd_dir.iterdir() if fd_dir.is_dir() else []:
        try:
            target = os.readlink(entry)
        except OSError:
            continue  # closed while we looked
        if target.startswith("socket:"):
            found.add(f"{entry.name}->{target}")
    return found


def _child_processes() -> set[int]:
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


def _leaks(threads: set[threading.Thread], sockets: set[str], children: set[int]) -> list[str]:
    found = [f"thread {t.name}" for t in threading.enumerate() if t not in threads and t.is_alive()]
    found += [f"socket {s}" for s in _open_sockets() - sockets]
    found += [f"process {pid}" for pid in _child_processes() - children]
    return found


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that leaves a thread, a socket or a child process behind. A test marked
    ``leaves_threads(PREFIX, why)`` may leave threads named PREFIX... (a library's, not ours)."""
    marker = request.node.get_closest_marker("leaves_threads")
    allowed = f"thread {marker.args[0]}" if marker else None
    before = (set(threading.enumerate()), _open_sockets(), _child_processes())
    yield
    deadline = time.monotonic() + 2.0

    def leaks() -> list[str]:
        return [leak for leak in _leaks(*before) if allowed is None or not leak.startswith(allowed)]

    leaked = leaks()
    while leaked and time.monotonic() < deadline:  # closing is asynchronous in places
        time.sleep(0.05)
        leaked = leaks()
    assert not leaked, f"test leaked: {leaked}"


@pytest.fixture(autouse=True)
def _deterministic_torch() -> None:
    torch.manual_seed(0)
