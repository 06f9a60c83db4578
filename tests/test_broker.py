"""The broker with real worker processes, one of them killed mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

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


def test_requests_arriving_while_the_broker_stops_get_shutting_down() -> None:
    import zmq

    broker = Broker(BrokerConfig(frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0",
                                 shutdown_timeout_s=0.3))
    context = zmq.Context()
    client = context.socket(zmq.DEALER)
    try:
        with DaemonThread(broker):
            client.connect(broker.frontend_endpoint)
            client.send(encode_message(_request(0, 80)))  # no worker: it waits in the queue
            time.sleep(0.3)
            broker.should_exit.set()
            time.sleep(0.1)  # draining: held requests still have shutdown_timeout_s to be answered
            client.send(encode_message(_request(1, 81)))
            replies = {}
            while len(replies) < 2 and client.poll(3000):
                reply = decode_message(client.recv())
                replies[reply.request_id] = ErrorReply.parse(reply).code
    finally:
        client.close(0)
        context.term()
    assert replies == {80: "shutting-down", 81: "shutting-down"}
    assert broker.stats["failed-shutting-down"] == 2


def test_curve_keeps_unknown_devices_and_workers_out(tmp_path: Path) -> None:
    """`agilenn broker` speaks CURVE on both sides: devices and workers need allowed keys."""
    import shutil

    from server_node.config import ServerConfig
    from server_node.server import Server
    from transports.curve import CurveClientConfig, generate_keypair
    from transports.errors import DeliveryFailed
    from transports.zmq_transport import Requester, ZmqClientTransport

    keys = {name: generate_keypair(tmp_path / name, name) for name in ("broker", "device", "worker", "other")}
    for role, name in (("devices", "device"), ("workers", "worker")):
        (tmp_path / role).mkdir()
        shutil.copy(keys[name][0], tmp_path / role)
    broker = Broker(BrokerConfig(frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0",
                                 curve_secret_key=str(keys["broker"][1]),
                                 curve_allowlist=str(tmp_path / "devices"),
                                 curve_worker_allowlist=str(tmp_path / "workers")))

    def worker(name: str) -> DaemonThread:
        return DaemonThread(Server(ServerConfig(
            connect=broker.backend_endpoint, curve_secret_key=str(keys[name][1]),
            curve_server_key=str(keys["broker"][0]), log_level="WARNING")))

    def device(name: str) -> ZmqClientTransport:
        return ZmqClientTransport(broker.frontend_endpoint,
                                  curve=CurveClientConfig(keys[name][1], keys["broker"][0]))

    with DaemonThread(broker), worker("worker"), worker("other"):
        _wait_for_workers(broker, 1)
        time.sleep(1.0)  # time enough for the unknown worker to have registered, were it let in
        assert len(broker._workers) == 1
        plain = ZmqClientTransport(broker.frontend_endpoint)
        allowed, unknown = device("device"), device("other")
        try:
            reply = Requester(allowed, timeout=10.0, attempts=1).request(
                encode_message(_request(0, 90)), lambda d: decode_message(d).request_id == 90)
            assert decode_message(reply).type is MessageType.INFER_REPLY
            for stranger in (unknown, plain):  # refused at the handshake, and told so at once
                with pytest.raises(DeliveryFailed):
                    Requester(stranger, timeout=5.0, attempts=1).request(
                        encode_message(_request(0, 91)), lambda d: True)
        finally:
            for transport in (allowed, unknown, plain):
                transport.close()
