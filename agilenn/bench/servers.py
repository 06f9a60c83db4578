"""Real ``agilenn server`` processes on loopback, one per served model, batching off."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from transports.errors import TransportError
from transports.messages import MessageType, Ping, decode_message, encode_message
from transports.zmq_transport import Requester, ZmqClientTransport, free_loopback_endpoint

from ..daemon import stop_process
from .config import BenchError

# One closed-loop device never fills a batch, and a queue delay would only add to every request.
SERVER_SETTINGS = {"max_batch_size": 1, "max_queue_delay_us": 0}


def wait_until_serving(endpoint: str, process: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """PING until a PONG comes back; a server that exits or stays silent is an error."""
    deadline = time.monotonic() + timeout
    client = ZmqClientTransport(endpoint)
    try:
        requester = Requester(client, timeout=0.5, attempts=1)
        ping = encode_message(Ping().message(1, "bench"))
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise BenchError(f"server {endpoint} exited with {process.returncode} while starting")
            try:
                requester.request(ping, lambda d: decode_message(d).type is MessageType.PONG)
                return
            except TransportError:
                client.reconnect()
    finally:
        client.close()
    raise BenchError(f"server {endpoint} did not answer a ping within {timeout:.0f} s")


@contextmanager
def running_server(model: str) -> Iterator[str]:
    """An ``agilenn server`` process for ``model``, batching off; yields its endpoint."""
    endpoint = free_loopback_endpoint()
    settings = [f"--{key.replace('_', '-')}={value}" for key, value in SERVER_SETTINGS.items()]
    process = subprocess.Popen([sys.executable, "-m", "agilenn", "server", "--model", model,
                                "--bind", endpoint, *settings, "--log-level", "WARNING"])
    try:
        wait_until_serving(endpoint, process)
        yield endpoint
    finally:
        stop_process(process)
