"""The autouse leak guard must notice what it claims to notice."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from .conftest import _child_processes, _leaks, _open_sockets


def _snapshot() -> tuple[set[threading.Thread], set[str], set[int]]:
    return set(threading.enumerate()), _open_sockets(), _child_processes()


def test_guard_sees_an_open_socket() -> None:
    before = _snapshot()
    sock = socket.socket()
    try:
        assert any(leak.startswith("socket ") for leak in _leaks(*before))
    finally:
        sock.close()
    assert _leaks(*before) == []


def test_guard_sees_a_running_thread() -> None:
    before = _snapshot()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="leaky")
    thread.start()
    try:
        assert "thread leaky" in _leaks(*before)
    finally:
        stop.set()
        thread.join()
    assert _leaks(*before) == []


def test_guard_sees_a_child_process() -> None:
    before = _snapshot()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert f"process {child.pid}" in _leaks(*before)
    finally:
        child.kill()
        child.wait()
    assert _leaks(*before) == []
