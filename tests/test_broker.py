"""The broker with real worker processes, one of them killed mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture
def bare_broker() -> Iterator[tuple[Broker, Any]]:
    """A broker with no real workers, and a function that opens raw DEALER sockets to it."""
    import zmq

    running = Broker(BrokerConfig(frontend="tcp://127.0.0.1:0", backend="tcp://127.0.0.1:0", max_queue=10))
    context = zmq.Context()
    sockets: list[Any] = []

    def connect(endpoint: str) -> Any:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sockets.append(sock)
        return sock

    try:
        with DaemonThread(running, name="broker"):
            yield running, connect
    finally:
        for sock in sockets:
            sock.close(0)
        context.term()


def test_hostile_worker_announcements_do_not_crash_the_broker(bare_broker: tuple[Broker, Any]) -> None:
    """Review finding: READY with 5,000 digits raised ValueError in int() and killed the broker."""
    broker, connect = bare_broker
    fake = connect(broker.backend_endpoint)
    fake.send_multipart([b"READY", b"9" * 5000])
    fake.send_multipart([b"READY", b"999999"])
    _wait_for_workers(broker, 1)
    (worker,) = broker._workers.values()
    assert worker.capacity == 4096  # capped, whatever it claims
    client = connect(broker.frontend_endpoint)
    client.send(encode_message(_request(0, 70)))
    frames = fake.recv_multipart() if fake.poll(5000) else []
    while frames and frames[0] != b"REQUEST":
        frames = fake.recv_multipart() if fake.poll(5000) else []
    assert frames[0] == b"REQUEST"
    _, _, key, message = frames
    fake.send_multipart([b"REPLY", b"someone-else", key, message])  # lies about the client
    assert client.poll(5000), "the reply went where the worker said, not to the requester"
    assert decode_message(client.recv()).request_id == 70


def test_a_worker_announcing_itself_again_has_its_requests_retried(bare_broker: tuple[Broker, Any]) -> None:
    broker, connect = bare_broker
    fake = connect(broker.backend_endpoint)
    fake.send_multipart([b"READY", b"1"])
    _wait_for_workers(broker, 1)
    client = connect(broker.frontend_endpoint)
    client.send(encode_message(_request(0, 71)))
    while fake.poll(5000) and fake.recv_multipart()[0] != b"REQUEST":
        pass
    fake.send_multipart([b"READY", b"1"])  # it restarted, forgetting request 71
    key = message = b""
    deadline = time.monotonic() + 5
    while not message and time.monotonic() < deadline and fake.poll(5000):
        frames = fake.recv_multipart()
        if frames[0] == b"REQUEST":
            _, _, key, message = frames
    assert decode_message(message).request_id == 71  # sent again, not orphaned
    assert broker.stats["retried"] == 1
    fake.send_multipart([b"REPLY", b"", key, message])
    assert client.poll(5000) and decode_message(client.recv()).request_id == 71


def test_an_oversized_request_is_answered_by_the_broker_itself(bare_broker: tuple[Broker, Any]) -> None:
    """Review finding: the broker held every message up to the 4 MiB cap, with no bound in bytes."""
    import msgpack

    broker, connect = bare_broker
    client = connect(broker.frontend_endpoint)
    client.send(msgpack.packb([1, 1, 72, "x" * 300_000, b"", {}, {}], use_bin_type=True))
    assert client.poll(5000)
    reply = decode_message(client.recv())
    assert reply.request_id == 72 and ErrorReply.parse(reply).code == "too-large"
    assert not broker._requests


def test_a_device_that_stops_reading_does_not_stall_the_broker(bare_broker: tuple[Broker, Any]) -> None:
    """Review finding: with ROUTER_MANDATORY a blocking send to a full peer froze the broker."""
    import zmq

    broker, connect = bare_broker
    stalled = connect(broker.frontend_endpoint)
    stalled.setsockopt(zmq.RCVHWM, 1)
    request = encode_message(_request(0, 73))
    sent, deadline = 0, time.monotonic() + 10
    while sent < 60_000 and time.monotonic() < deadline:  # every one gets "overloaded", none is read
        try:
            stalled.send(request, zmq.NOBLOCK)
            sent += 1
        except zmq.Again:
            time.sleep(0.001)
    deadline = time.monotonic() + 20
    while broker.stats["requests"] < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker.stats["requests"] == sent  # the broker kept reading
    assert broker.stats["undeliverable"] > 0  # the stalled device's answers were dropped, counted
    healthy = connect(broker.frontend_endpoint)
    healthy.send(encode_message(_request(1, 74)))
    assert healthy.poll(5000)  # still served (no worker: it waits, then the queue is full)
