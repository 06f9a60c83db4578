"""ReliableLink over real pyserial ports (pty pair, socket://) and a faulty fake line."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from transports.arq import ArqConfig
from transports.errors import DeliveryFailed, TransportClosed
from transports.pipe import MemoryPipe
from transports.reliable import ReliableLink
from transports.serial_pipe import PtyPipe, SerialPipe, open_pty

from .fakes import noisy_line

FAST = ArqConfig(max_frame_payload=64, retransmit_timeout=0.05, max_retries=30)


def _exchange(a: ReliableLink, b: ReliableLink, messages: list[bytes]) -> list[bytes]:
    received: list[bytes] = []

    def receive() -> None:
        while len(received) < len(messages):
            message = b.recv(timeout=10.0)
            if message is None:
                return
            received.append(message)

    reader = threading.Thread(target=receive)
    reader.start()
    for message in messages:
        a.send(message, timeout=20.0)
    reader.join(timeout=30.0)
    return received


def test_faulty_line_delivers_exactly_once_in_order() -> None:
    pipe_a, pipe_b = MemoryPipe.pair(
        noisy_line(1, byte_error_rate=1e-2, split=True, drop_rate=1e-3, duplicate_rate=1e-3),
        noisy_line(2, byte_error_rate=1e-2, split=True),
    )
    messages = [bytes([i]) * (i * 7 % 300) for i in range(40)]
    with ReliableLink(pipe_a, FAST) as a, ReliableLink(pipe_b, FAST) as b:
        assert _exchange(a, b, messages) == messages
        assert a.stats.retransmissions > 0


def test_both_directions_at_once() -> None:
    pipe_a, pipe_b = MemoryPipe.pair()
    with ReliableLink(pipe_a, FAST) as a, ReliableLink(pipe_b, FAST) as b:
        forward = [b"ping %d" % i for i in range(30)]
        backward = [b"pong %d" % i for i in range(30)]
        results: dict[str, list[bytes]] = {}
        other = threading.Thread(target=lambda: results.setdefault("b", _exchange(b, a, backward)))
        other.start()
        results["a"] = _exchange(a, b, forward)
        other.join(timeout=30)
        assert results == {"a": forward, "b": backward}


def test_send_without_a_peer_is_reported_failed_not_lost() -> None:
    pipe_a, pipe_b = MemoryPipe.pair()
    with ReliableLink(pipe_a, ArqConfig(retransmit_timeout=0.02, max_retries=2)) as a:
        with pytest.raises(DeliveryFailed):
            a.send(b"nobody listens", timeout=0.5)
    pipe_b.close()


def test_closed_link_refuses_sends() -> None:
    pipe_a, pipe_b = MemoryPipe.pair()
    link = ReliableLink(pipe_a, FAST)
    link.close()
    with pytest.raises(TransportClosed):
        link.send(b"late")
    assert link.recv(0.01) is None
    pipe_b.close()


@pytest.fixture
def pty_pair() -> Iterator[tuple[PtyPipe, SerialPipe]]:
    host, path = open_pty()
    yield host, SerialPipe(path)


def test_real_pty_serial_port(pty_pair: tuple[PtyPipe, SerialPipe]) -> None:
    host, device = pty_pair
    messages = [bytes(range(256)) * 3, b"", b"\x00" * 100, b"end"]
    with ReliableLink(host, FAST) as a, ReliableLink(device, FAST) as b:
        assert _exchange(a, b, messages) == messages
        assert _exchange(b, a, messages[::-1]) == messages[::-1]


def test_socket_url_serial_port() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    accepted: list[socket.socket] = []
    acceptor = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
    acceptor.start()
    client = SerialPipe(f"socket://127.0.0.1:{port}")
    acceptor.join(timeout=5)
    server.close()

    class _SocketPipe:
        def __init__(self, sock: socket.socket) -> None:
            self.sock = sock

        def write(self, data: bytes) -> None:
            self.sock.sendall(data)

        def read(self, timeout: float) -> bytes:
            self.sock.settimeout(timeout)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return b""
            if not data:
                raise TransportClosed("socket closed")
            return data

        def close(self) -> None:
            self.sock.close()

    with ReliableLink(client, FAST) as a, ReliableLink(_SocketPipe(accepted[0]), FAST) as b:
        assert _exchange(a, b, [b"over", b"socket://"]) == [b"over", b"socket://"]


def test_loop_url_opens_and_echoes() -> None:
    pipe = SerialPipe("loop://")
    pipe.write(b"echo")
    assert pipe.read(0.5) == b"echo"
    pipe.close()


def test_bad_serial_url_is_a_clear_error() -> None:
    with pytest.raises(TransportClosed, match="cannot open serial port"):
        SerialPipe("/dev/does-not-exist-agilenn")


def test_send_many_checks_every_size_before_queueing_anything() -> None:
    pipe_a, pipe_b = MemoryPipe.pair()
    config = ArqConfig(max_message_bytes=100)
    with ReliableLink(pipe_a, config) as a, ReliableLink(pipe_b, config) as b:
        with pytest.raises(ValueError, match="exceeds max_message_bytes"):
            a.send_many([b"first", bytes(101), b"third"])
        assert b.recv(0.2) is None  # nothing of the rejected batch went out


def test_a_crashing_pipe_closes_the_link_instead_of_hanging_senders() -> None:
    class Exploding(MemoryPipe):
        def read(self, timeout: float) -> bytes:
            raise RuntimeError("driver bug")

    pipe_a, pipe_b = MemoryPipe.pair()
    exploding = Exploding(pipe_a._inbox, pipe_a._outbox)
    link = ReliableLink(exploding, FAST)
    with pytest.raises((TransportClosed, DeliveryFailed)):
        link.send(b"x", timeout=5.0)
    link.close()
    pipe_b.close()
