"""The broker with real worker processes, one of them killed mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agilenn.daemon import DaemonThread
from server_node.broker import Broker
from server_node.config import BrokerConfig
from transports.messages import ErrorReply, MessageType, decode_message, encode_message

from .test_server import _request


@pytest.fixture
def broker() -> Iterator[Broker]:
    running = Broker(BrokerConfig(frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0"))
    with DaemonThread(running, name="broker"):
        yield running


def _worker(backend: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "agilenn", "server", "--connect", backend,
                             "--max-batch-size", "4", "--log-level", "WARNING"])


def _wait_for_workers(broker: Broker, count: int) -> None:
    deadline = time.monotonic() + 60
    while len(broker._workers) < count:
        assert time.monotonic() < deadline, "workers did not register"
        time.sleep(0.1)


def test_killed_worker_loses_no_request(broker: Broker) -> None:
    import zmq

    workers = [_worker(broker.backend_endpoint) for _ in range(2)]
    try:
        _wait_for_workers(broker, 2)
        context = zmq.Context()
        client = context.socket(zmq.DEALER)
        client.connect(broker.frontend_endpoint)
        requests = {i: encode_message(_request(i % 50, 4000 + i)) for i in range(120)}
        for index, data in requests.items():
            client.send(data)
            if index == 40:
                os.kill(workers[0].pid, signal.SIGKILL)  # a real crash, mid-stream
        replies = {}
        deadline = time.monotonic() + 60
        while len(replies) < len(requests) and time.monotonic() < deadline:
            if client.poll(200):
                reply = decode_message(client.recv())
                assert reply.request_id not in replies, "a request was answered twice"
                replies[reply.request_id] = reply
        client.close(0)
        context.term()
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    assert sorted(replies) == [4000 + i for i in requests]  # every request answered
    answered = [r for r in replies.values() if r.type is MessageType.INFER_REPLY]
    assert len(answered) >= 110  # at most the killed worker's in-flight ones may be errors
    errors = [ErrorReply.parse(r) for r in replies.values() if r.type is MessageType.ERROR]
    assert all(error.code == "worker-lost" for error in errors)
    assert broker.stats["workers-lost"] == 1
