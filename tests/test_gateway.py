"""Gateway mode: a simulated MCU offloads through the edge to the server.

The gateway's logic runs on the seam (an in-memory serial pipe and an in-memory
server); one test runs the real daemon on a pty against a real ZeroMQ server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from agilenn.codec import FeatureCodec
from agilenn.data import load_mnist_sample
from agilenn.pretrained import load_pretrained
from edge_node.config import EdgeConfig
from edge_node.daemon import GatewayNode
from edge_node.gateway import SerialGateway
from edge_node.pairing import McuSimulator
from server_node.remote import RemoteServer
from transports.arq import ArqConfig
from transports.compact import SessionTable
from transports.errors import TransportClosed
from transports.messages import ErrorReply, MessageType, Ping, decode_message, encode_message
from transports.pipe import MemoryPipe
from transports.reliable import ReliableLink
from transports.serial_pipe import open_pty

from .conftest import reap

CHECKPOINT = load_pretrained("mnist")
MODEL, CODEC = CHECKPOINT.build_model(), FeatureCodec(CHECKPOINT.codec)
SAMPLE = load_mnist_sample().head(12)
FAST = ArqConfig(retransmit_timeout=0.1)


@pytest.fixture
def mcu_and_gateway() -> Iterator[tuple[McuSimulator, SerialGateway, RemoteServer]]:
    gateway_end, mcu_end = MemoryPipe.pair()
    with RemoteServer.in_memory() as server, ReliableLink(gateway_end, FAST) as edge_link, \
            ReliableLink(mcu_end, FAST) as mcu_link:
        gateway = SerialGateway(edge_link, client=server.connect(), timeout_s=0.5)
        stop = threading.Event()
        thread = threading.Thread(target=gateway.serve, args=(stop,))
        thread.start()
        try:
            mcu = McuSimulator(mcu_link, "mcu-gw", "1.0", bytes.fromhex(CHECKPOINT.model_hash))
            yield mcu, gateway, server
        finally:
            stop.set()
            thread.join()
            gateway.close()


def test_mcu_offloads_through_the_gateway(
    mcu_and_gateway: tuple[McuSimulator, SerialGateway, RemoteServer]
) -> None:
    mcu, gateway, _ = mcu_and_gateway
    images, labels = SAMPLE.batch(slice(None))
    results = [mcu.infer(MODEL, CODEC, image, request_id=i) for i, image in enumerate(images)]
    assert all(source == "offloaded" for _, source in results)
    assert sum(label == int(truth) for (label, _), truth in zip(results, labels, strict=True)) >= 11
    assert gateway.stats["forwarded"] == len(results)


def test_an_mcu_on_a_compact_session_gets_the_same_answers_through_the_gateway(
    mcu_and_gateway: tuple[McuSimulator, SerialGateway, RemoteServer]
) -> None:
    compact, gateway, _ = mcu_and_gateway
    images, _ = SAMPLE.batch(slice(0, 6))
    small = [compact.infer(MODEL, CODEC, image, request_id=i) for i, image in enumerate(images)]
    assert compact.session is not None and gateway.stats["session"] == 1
    compact.compact, compact.session = False, None  # the same MCU on full messages
    full = [compact.infer(MODEL, CODEC, image, request_id=10 + i) for i, image in enumerate(images)]
    assert small == full and all(source == "offloaded" for _, source in small)
    assert gateway.stats["forwarded"] == 12 and gateway.stats["session"] == 1
    gateway.sessions.sessions = SessionTable()  # the gateway restarted: the MCU's session is gone
    compact.compact = True
    compact.session = (5, compact.model_hash)
    assert compact.infer(MODEL, CODEC, images[0], request_id=30)[1] == "local-fallback"
    assert compact.session is None  # told unknown-session: the next request opens a new one
    assert compact.infer(MODEL, CODEC, images[0], request_id=31)[1] == "offloaded"
    assert gateway.stats["session"] == 2


def test_gateway_answers_garbage_from_the_mcu_with_a_reason(
    mcu_and_gateway: tuple[McuSimulator, SerialGateway, RemoteServer]
) -> None:
    _, gateway, _ = mcu_and_gateway
    answer = gateway.forward(b"\x93\x01\x02")
    assert answer is not None
    reply = decode_message(answer)
    assert reply.type is MessageType.ERROR and ErrorReply.parse(reply).code == "malformed"


@pytest.mark.parametrize("data", [
    pytest.param(encode_message(ErrorReply("internal", "mine").message(5, "mcu")), id="valid-error"),
    pytest.param(b"\x97\x01\x03\x05\xa3mcu\xc4\x00\x80\x80", id="error-with-a-bad-body"),
])
def test_gateway_never_answers_an_error_from_the_mcu(
    mcu_and_gateway: tuple[McuSimulator, SerialGateway, RemoteServer], data: bytes
) -> None:
    _, gateway, _ = mcu_and_gateway
    assert gateway.forward(data) is None
    assert gateway.stats["rejected"] == 1 and gateway.stats["forwarded"] == 0


def test_mcu_falls_back_when_the_server_is_gone(
    mcu_and_gateway: tuple[McuSimulator, SerialGateway, RemoteServer]
) -> None:
    mcu, gateway, server = mcu_and_gateway
    server.stop()
    images, labels = SAMPLE.batch(slice(0, 2))
    label, source = mcu.infer(MODEL, CODEC, images[0], request_id=99)
    assert source == "local-fallback" and label == int(labels[0])
    assert gateway.stats["server-unreachable"] == 1


def test_gateway_node_refuses_what_arrives_while_it_stops_and_counts_it() -> None:
    gateway_end, mcu_end = MemoryPipe.pair()
    with RemoteServer.in_memory() as server, ReliableLink(gateway_end, FAST) as edge_link, \
            ReliableLink(mcu_end, FAST) as mcu_link:
        node = GatewayNode(EdgeConfig(serial="memory", server="memory://server", timeout_s=0.5), edge_link,
                           server.connect())
        node.load()
        try:
            mcu_link.send(encode_message(Ping().message(1, "mcu")), timeout=5)
            node.serve_step()
            mcu_link.send(encode_message(Ping().message(2, "mcu")), timeout=5)
            node.should_exit.set()
            while node.drain_step():  # what arrived after the stop request gets shutting-down
                pass
            answers = {a.request_id: a for a in map(decode_message, iter(lambda: mcu_link.recv(1.0), None))}
        finally:
            node.close()
    assert answers[1].type is MessageType.PONG
    assert ErrorReply.parse(answers[2]).code == "shutting-down"
    assert node.stats == {"forwarded": 1, "shutting-down": 1}
    samples = {s.labels["outcome"]: s.value for metric in node.metrics.registry.collect()
               for s in metric.samples if s.name == "agilenn_gateway_messages_total"}
    assert samples == {"forwarded": 1.0, "shutting-down": 1.0}


def test_the_gateway_node_stops_when_the_serial_link_closes() -> None:
    """Review finding: a closed link made recv() return at once, and the loop spun at 100% CPU."""
    gateway_end, mcu_end = MemoryPipe.pair()
    with RemoteServer.in_memory() as server, ReliableLink(gateway_end, FAST) as edge_link:
        node = GatewayNode(EdgeConfig(serial="memory", server="memory://server"), edge_link, server.connect())
        node.load()
        try:
            node.serve_step()  # an open link: waits for the MCU, nothing arrives
            mcu_end.close()  # the MCU hangs up
            deadline = time.monotonic() + 5
            while not edge_link.closed and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(TransportClosed, match="serial link to the MCU closed"):
                node.serve_step()
        finally:
            node.close()


def test_edge_cli_gateway_process_relays_and_stops_on_sigterm() -> None:
    import json
    import signal
    import subprocess
    import sys

    mcu_end, path = open_pty()
    with RemoteServer() as server, ReliableLink(mcu_end, FAST) as mcu_link:
        gateway = subprocess.Popen([sys.executable, "-m", "agilenn", "edge", "--serial", path,
                                    "--server", server.endpoint], stdout=subprocess.PIPE, text=True)
        try:
            mcu = McuSimulator(mcu_link, "mcu-cli-gw", "1.0", bytes.fromhex(CHECKPOINT.model_hash))
            images, labels = SAMPLE.batch(slice(0, 3))
            results = [mcu.infer(MODEL, CODEC, image, request_id=i, timeout=30)
                       for i, image in enumerate(images)]
            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(timeout=20) == 0
            assert gateway.stdout is not None
            stats = json.loads(gateway.stdout.read())
        finally:
            reap(gateway)
    assert [source for _, source in results] == ["offloaded"] * 3
    assert [label for label, _ in results] == [int(label) for label in labels]
    assert stats == {"forwarded": 3, "session": 1}  # the MCU opened a compact session, then offloaded


def test_an_mcu_that_stops_acknowledging_costs_one_answer_not_the_gateway() -> None:
    """Review finding: an unacknowledged answer to the MCU ended the gateway daemon."""
    mute = threading.Event()  # while set, nothing from the MCU reaches the gateway (its ACKs included)
    gateway_end, mcu_end = MemoryPipe.pair(b_to_a=lambda data: [] if mute.is_set() else [data])
    with RemoteServer.in_memory() as server, ReliableLink(gateway_end, FAST) as edge_link, \
            ReliableLink(mcu_end, FAST) as mcu_link:
        gateway = SerialGateway(edge_link, client=server.connect(), timeout_s=0.5, reply_timeout_s=0.5)
        stop = threading.Event()
        thread = threading.Thread(target=gateway.serve, args=(stop,))
        thread.start()
        try:
            # The MCU goes quiet right after its PING is acknowledged. On a loaded machine the PONG
            # can be acknowledged first, so the drill is repeated until one answer is undeliverable.
            for request_id in (101, 102, 103):
                mcu_link.send(encode_message(Ping().message(request_id, "mcu-mute")), timeout=5)
                mute.set()
                for _ in range(60):  # up to 3 s for the 0.5 s reply timeout to pass
                    if gateway.stats["reply-undeliverable"] or not thread.is_alive():
                        break
                    time.sleep(0.05)
                if gateway.stats["reply-undeliverable"] or not thread.is_alive():
                    break
                mute.clear()
            assert thread.is_alive()  # still serving
            assert gateway.stats["reply-undeliverable"] == 1
            mute.clear()  # the MCU is back: it is answered again
            mcu_link.send(encode_message(Ping().message(2, "mcu-mute")), timeout=5)
            answers = (decode_message(data) for data in iter(lambda: mcu_link.recv(5.0), None))
            answer = next((a for a in answers if a.request_id == 2), None)  # skips the late PONG 1
            assert answer is not None and answer.type is MessageType.PONG
        finally:
            stop.set()
            thread.join()
            gateway.close()
