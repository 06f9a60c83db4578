"""The ZeroMQ pipes, the Lazy Pirate Requester above them, CURVE and ``agilenn keygen``.

Everything binds 127.0.0.1 port 0. Servers run in a thread that creates, uses
and closes its own transport, so no socket is shared between threads.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from agilenn.cli import main
from transports.curve import CurveClientConfig, CurveServerConfig
from transports.emulator import EmulatedTransport, LinkProfile
from transports.errors import (
    ConnectionDropped,
    DeliveryFailed,
    OversizedMessage,
    PeerUnreachable,
    QueueFull,
    RequestTimeout,
    TransportClosed,
)
from transports.zmq_transport import MAX_WIRE_MESSAGE_BYTES, Requester, ZmqClientTransport, ZmqServerTransport

LOCAL = "tcp://127.0.0.1:0"
Handler = Callable[[bytes], list[bytes]]


def framed(request_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", request_id) + payload


def answers(request: bytes) -> Callable[[bytes], bool]:
    return lambda message: message[:4] == request[:4]


def echo(message: bytes) -> list[bytes]:
    return [message + b"!"]


class EchoServer:
    """A ROUTER server thread that answers each message with ``handler(message)``."""

    def __init__(self, endpoint: str = LOCAL, handler: Handler = echo, *,
                 curve: CurveServerConfig | None = None, start_delay: float = 0.0,
                 max_message_bytes: int = MAX_WIRE_MESSAGE_BYTES) -> None:
        self.endpoint = ""
        self._max_message_bytes = max_message_bytes
        self.received: list[bytes] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._start_delay = start_delay
        self._thread = threading.Thread(target=self._run, args=(endpoint, handler, curve),
                                        name="echo-server")

    def __enter__(self) -> EchoServer:
        self._thread.start()
        if not self._start_delay:
            assert self._ready.wait(5), "server did not start"
            if self.error:
                raise self.error
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive()
        if self.error and kind is None:
            raise self.error

    def _run(self, endpoint: str, handler: Handler, curve: CurveServerConfig | None) -> None:
        if self._stop.wait(self._start_delay):
            return
        try:
            server = ZmqServerTransport(endpoint, curve=curve, max_message_bytes=self._max_message_bytes)
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            return
        try:
            self.endpoint = server.bind()
            self._ready.set()
            while not self._stop.is_set():
                item = server.recv(0.02)
                if item is not None:
                    self.received.append(item[1])
                    for reply in handler(item[1]):
                        try:
                            server.send(item[0], reply)
                        except PeerUnreachable:
                            pass  # the client reconnected; its new socket will resend
        except BaseException as exc:
            self.error = exc
        finally:
            server.close()
            self._ready.set()


def requester(endpoint: str, **options: Any) -> Requester:
    return Requester(ZmqClientTransport(endpoint), **options)


def test_round_trip_many_requests_matched_by_id() -> None:
    with EchoServer() as server:
        client = requester(server.endpoint, timeout=1.0)
        try:
            for request_id in range(200):
                request = framed(request_id, b"features" * request_id)
                assert client.request(request, answers(request)) == request + b"!"
        finally:
            client.client.close()
    assert len(server.received) == 200
    assert (client.stats.sent, client.stats.replies, client.stats.retries) == (200, 200, 0)


def test_two_clients_on_one_router_each_get_their_own_replies() -> None:
    replies: dict[str, list[bytes]] = {"a": [], "b": []}
    errors: list[BaseException] = []

    def device(name: str, endpoint: str) -> None:
        client = requester(endpoint, timeout=1.0)
        try:
            for request_id in range(100):
                request = framed(request_id, name.encode())
                replies[name].append(client.request(request, answers(request)))
        except BaseException as exc:
            errors.append(exc)
        finally:
            client.client.close()

    with EchoServer() as server:
        threads = [threading.Thread(target=device, args=(name, server.endpoint)) for name in replies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert not errors
    for name, received in replies.items():
        assert received == [framed(i, name.encode()) + b"!" for i in range(100)]


def test_silent_server_times_out_after_every_attempt_on_fresh_connections() -> None:
    server = ZmqServerTransport(LOCAL)
    client = requester(server.bind(), timeout=0.2, attempts=3, backoff_initial=0.05)
    try:
        started = time.monotonic()
        with pytest.raises(RequestTimeout, match="after 3 attempts over 0.[0-9]+ s"):
            client.request(framed(1), answers(framed(1)))
        elapsed = time.monotonic() - started
        copies = [server.recv(0.5) for _ in range(3)]
    finally:
        client.client.close()
        server.close()
    assert 3 * 0.2 + 0.05 + 0.1 <= elapsed < 3 * 0.2 + 0.15 + 0.5
    assert (client.stats.sent, client.stats.retries, client.stats.timeouts) == (3, 2, 3)
    assert all(copy is not None and copy[1] == framed(1) for copy in copies)
    # Each resend came from a new socket: Lazy Pirate reconnected in between.
    assert len({copy[0] for copy in copies if copy is not None}) == 3


def test_lazy_pirate_recovers_when_the_server_comes_back_on_the_same_port() -> None:
    with EchoServer() as first:
        endpoint = first.endpoint
        client = requester(endpoint, timeout=0.2, attempts=6, backoff_initial=0.05, backoff_max=0.2)
        try:
            assert client.request(framed(1), answers(framed(1))) == framed(1) + b"!"
        except BaseException:
            client.client.close()
            raise
    try:
        # The first server is gone; its successor binds the same port after a first timeout.
        with EchoServer(endpoint, start_delay=0.3) as second:
            assert client.request(framed(2), answers(framed(2))) == framed(2) + b"!"
    finally:
        client.client.close()
    assert second.endpoint == endpoint
    assert client.stats.retries >= 1 and client.stats.timeouts == client.stats.retries


def test_late_reply_to_a_timed_out_request_is_discarded() -> None:
    def slow_first(message: bytes) -> list[bytes]:
        if message == framed(1):
            time.sleep(0.35)
        return echo(message)

    with EchoServer(handler=slow_first) as server:
        client = requester(server.endpoint, timeout=0.2, attempts=1)
        try:
            with pytest.raises(RequestTimeout, match="after 1 attempts"):
                client.request(framed(1), answers(framed(1)))
            client.timeout = 2.0  # reply 2 comes after the late reply 1, at about 0.35 s
            # Reply 1 arrives on this same connection first; it must not answer request 2.
            assert client.request(framed(2), answers(framed(2))) == framed(2) + b"!"
        finally:
            client.client.close()
    assert client.stats.stale_discarded == 1


def test_send_to_unknown_or_departed_peer_raises_peer_unreachable() -> None:
    server = ZmqServerTransport(LOCAL)
    client = ZmqClientTransport(server.bind())
    try:
        with pytest.raises(PeerUnreachable):
            server.send(b"nobody", b"x")
        client.send(b"hello")
        item = server.recv(2.0)
        assert item is not None and item[1] == b"hello"
        server.send(item[0], b"welcome")
        assert client.recv(2.0) == b"welcome"
        client.close()
        deadline = time.monotonic() + 2.0
        with pytest.raises(PeerUnreachable):  # once ZeroMQ has seen the disconnect
            while time.monotonic() < deadline:
                server.send(item[0], b"anyone there?")
                time.sleep(0.01)
    finally:
        client.close()
        server.close()


def test_full_send_queue_raises_queue_full_and_drops_nothing() -> None:
    server = ZmqServerTransport(LOCAL, send_hwm=1)
    client = ZmqClientTransport(server.bind(), hwm=1)
    chunk = bytes(256 * 1024)
    try:
        client.send(b"hello")
        item = server.recv(2.0)
        assert item is not None
        queued = 0
        with pytest.raises(QueueFull):  # kernel buffers hold a few MiB at most, 100 MiB is far
            for _ in range(400):
                server.send(item[0], chunk)
                queued += 1
        delivered = 0
        while client.recv(0.5) == chunk:
            delivered += 1
    finally:
        client.close()
        server.close()
    assert queued >= 1 and delivered == queued


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Path]:
    """Key pairs written by ``agilenn keygen``; only device "good" is in the allowlist."""
    found: dict[str, Path] = {}
    for folder, name in [("server", "server"), ("devices", "good"), ("devices", "bad")]:
        assert main(["keygen", "--dir", str(tmp_path / folder), "--name", name]) == 0
        written = json.loads(capsys.readouterr().out)
        found[name], found[name + "_secret"] = Path(written["public"]), Path(written["secret"])
    found["allowed"] = tmp_path / "allowed"
    found["allowed"].mkdir()
    shutil.copy(found["good"], found["allowed"])
    return found


def curve_requester(endpoint: str, keys: dict[str, Path], device: str, **options: Any) -> Requester:
    curve = CurveClientConfig(keys[device + "_secret"], keys["server"])
    return Requester(ZmqClientTransport(endpoint, curve=curve), **options)


def test_curve_serves_allowed_device_and_refuses_unknown_key(
    keys: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agilenn.transports.curve")
    config = CurveServerConfig(keys["server_secret"], keys["allowed"])
    with EchoServer(curve=config) as server:
        good = curve_requester(server.endpoint, keys, "good", timeout=1.0)
        bad = curve_requester(server.endpoint, keys, "bad", timeout=0.5, attempts=2)
        try:
            assert good.request(framed(1), answers(framed(1))) == framed(1) + b"!"
            with pytest.raises(DeliveryFailed, match="refused this device's CURVE key"):
                bad.request(framed(7), answers(framed(7)))
            bad.client.reconnect()  # a fresh handshake, refused again
            with pytest.raises(DeliveryFailed, match="refused this device's CURVE key"):
                bad.request(framed(8), answers(framed(8)))
            assert good.request(framed(2), answers(framed(2))) == framed(2) + b"!"
        finally:
            good.client.close()
            bad.client.close()
    assert server.received == [framed(1), framed(2)]
    assert bad.stats.replies == 0
    refusals = [r for r in caplog.records if r.name == "agilenn.transports.curve" and "refused" in r.message]
    assert refusals and refusals[0].levelno == logging.WARNING


def test_plain_client_gets_no_service_from_a_curve_server(keys: dict[str, Path]) -> None:
    config = CurveServerConfig(keys["server_secret"], keys["allowed"])
    with EchoServer(curve=config) as server:
        client = requester(server.endpoint, timeout=0.5, attempts=2)
        try:
            # libzmq reports the mismatch as a protocol error (DeliveryFailed) or, depending
            # on timing, just drops the connection (RequestTimeout); either way, no service.
            with pytest.raises((DeliveryFailed, RequestTimeout)):
                client.request(framed(1), answers(framed(1)))
        finally:
            client.client.close()
    assert server.received == []


def test_keygen_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["keygen", "--dir", str(tmp_path), "--name", "device"]
    assert main(command) == 0
    written = json.loads(capsys.readouterr().out)
    public, secret = Path(written["public"]), Path(written["secret"])
    assert (public.name, secret.name) == ("device.key", "device.key_secret")
    assert secret.stat().st_mode & 0o777 == 0o600
    before = public.read_text()
    assert main(command) == 2
    assert "already exists" in capsys.readouterr().err
    assert public.read_text() == before
    assert main([*command, "--force"]) == 0
    assert public.read_text() != before


def test_missing_allowlist_is_refused_and_leaves_no_thread(keys: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="allowlist folder does not exist"):
        ZmqServerTransport(LOCAL, curve=CurveServerConfig(keys["server_secret"], tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no secret key"):
        ZmqServerTransport(LOCAL, curve=CurveServerConfig(keys["server"], keys["allowed"]))


def test_closed_transports_raise_transport_closed_and_close_twice() -> None:
    server = ZmqServerTransport(LOCAL)
    client = ZmqClientTransport(server.bind())
    server.close()
    server.close()
    client.close()
    client.close()
    for use in (server.bind, lambda: server.recv(0.01), lambda: server.send(b"id", b"x"),
                lambda: client.send(b"x"), lambda: client.recv(0.01), client.reconnect,
                lambda: Requester(client).request(b"x", answers(b"x"))):
        with pytest.raises(TransportClosed):
            use()


def test_requester_rejects_nonsense_settings() -> None:
    client = ZmqClientTransport("tcp://127.0.0.1:1")
    try:
        options: list[dict[str, Any]] = [{"timeout": 0.0}, {"attempts": 0},
                                         {"backoff_initial": 3.0, "backoff_max": 2.0}]
        for option in options:
            with pytest.raises(ValueError):
                Requester(client, **option)
    finally:
        client.close()


# ------------------------------------------------------------ emulated links over ZeroMQ
def test_emulated_link_paces_requests_at_the_line_rate() -> None:
    slow = LinkProfile("slow", bandwidth_bytes_per_s=10_000.0, delay_s=0.005)
    with EchoServer() as server:
        client = EmulatedTransport(ZmqClientTransport(server.endpoint), slow, seed=1)
        client_requester = Requester(client, timeout=2.0)
        request = framed(1, bytes(496))  # 500 bytes up, 501 back: 0.1 s on the wire
        started = time.monotonic()
        reply = client_requester.request(request, answers(request))
        elapsed = time.monotonic() - started
        client.close()
    assert reply == request + b"!"
    assert 0.1 <= elapsed < 0.5  # both directions serialised, plus 2 x 5 ms delay
    assert client.stats.delivered_chunks == 1 and client.stats.dropped_chunks == 0


def test_emulated_loss_is_recovered_by_the_lazy_pirate_retries() -> None:
    lossy = LinkProfile("lossy", loss_rate=0.5)
    with EchoServer() as server:
        client = EmulatedTransport(ZmqClientTransport(server.endpoint), lossy, LinkProfile("clean"), seed=3)
        # The fixed timeout alone, so that each loss costs one Lazy Pirate retry (the adaptive
        # retransmission timer, on by default, has its own tests in test_rto.py).
        client_requester = Requester(client, timeout=0.1, attempts=12, backoff_initial=0.0,
                                     backoff_max=0.0, adaptive_timeout=False)
        replies = [client_requester.request(framed(i), answers(framed(i))) for i in range(10)]
        client.close()
    assert replies == [framed(i) + b"!" for i in range(10)]
    assert client.stats.dropped_chunks > 0  # the link really lost requests
    assert client_requester.stats.retries == client.stats.dropped_chunks


def test_emulated_byte_errors_reach_the_server_as_corrupted_messages() -> None:
    noisy = LinkProfile("noisy", byte_error_rate=0.2)
    with EchoServer(handler=lambda message: [b"seen"]) as server:
        client = EmulatedTransport(ZmqClientTransport(server.endpoint), noisy, LinkProfile("clean"))
        request = bytes(100)
        assert Requester(client).request(request, lambda reply: reply == b"seen") == b"seen"
        client.close()
        assert server.received[0] != request and len(server.received[0]) == 100
    assert client.stats.corrupted_bytes == sum(1 for byte in server.received[0] if byte)


def test_oversized_message_is_cut_at_the_socket_and_the_server_keeps_serving() -> None:
    """Review finding: without MAXMSGSIZE one client could queue messages of any size."""
    import zmq

    with EchoServer() as server:
        context = zmq.Context()
        flooder = context.socket(zmq.DEALER)  # a raw socket: agilenn's client would refuse to send
        flooder.connect(server.endpoint)
        flooder.send(bytes(MAX_WIRE_MESSAGE_BYTES + 1))
        honest = requester(server.endpoint, timeout=2.0)
        assert honest.request(framed(1), answers(framed(1))) == framed(1) + b"!"
        flooder.close(0)
        context.term()
        honest.client.close()
        assert all(len(message) <= MAX_WIRE_MESSAGE_BYTES for message in server.received)
        assert len(server.received) == 1


def test_the_client_refuses_a_message_over_the_hard_cap() -> None:
    with EchoServer() as server:
        client = ZmqClientTransport(server.endpoint)
        try:
            with pytest.raises(OversizedMessage, match="nothing was sent"):
                client.send(bytes(MAX_WIRE_MESSAGE_BYTES + 1))
            client.send(framed(2))  # the connection is untouched
            assert client.recv(2.0) == framed(2) + b"!"
        finally:
            client.close()


def test_a_dropped_connection_is_noticed_at_once_and_the_request_resent() -> None:
    """A server with a lower cap than the client's drops the connection; the client must not wait
    out its timeout, and the Requester resends the request on the connection libzmq makes anew."""
    with EchoServer(max_message_bytes=64 * 1024) as server:
        client = requester(server.endpoint, timeout=10.0)
        try:
            assert client.request(framed(1), answers(framed(1))) == framed(1) + b"!"
            client.client.send(bytes(100 * 1024))  # over this server's cap: it drops us
            started = time.monotonic()
            assert client.request(framed(2), answers(framed(2))) == framed(2) + b"!"
            assert time.monotonic() - started < 3.0  # far below the 10 s timeout
            # 0 when the drop was already noticed before the send (the request then went out on
            # the new connection), 1 when it was noticed after and the request resent.
            assert client.stats.drops <= 1
            # A drop can be reported just after the next send, which then went out on the new
            # connection anyway: the resend's twin reply may follow. The Requester discards such
            # stale replies; here they are drained by hand.
            while client.client.recv(0.3) is not None:
                pass
            client.client.send(bytes(100 * 1024))
            with pytest.raises(ConnectionDropped):  # the raw transport says so at once, too
                client.client.recv(10.0)
        finally:
            client.client.close()


class _DroppingOnce:
    """A client transport whose first wait for a reply reports a dropped connection."""

    endpoint = "fake://server"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.dropped = False

    def send(self, message: bytes) -> None:
        self.sent.append(message)

    def recv(self, timeout: float) -> bytes | None:
        if not self.dropped:
            self.dropped = True
            raise ConnectionDropped("dropped")
        return self.sent[-1] + b"!"

    def reconnect(self) -> None:
        raise AssertionError("a drop is resent on the connection libzmq remakes, without reconnect()")

    def close(self) -> None:
        pass


def test_the_requester_resends_at_once_after_a_drop_and_gives_up_after_its_resends() -> None:
    transport = _DroppingOnce()
    requester = Requester(transport, timeout=10.0, attempts=1)
    assert requester.request(b"ask", lambda reply: reply == b"ask!") == b"ask!"
    assert transport.sent == [b"ask", b"ask"] and requester.stats.drops == 1
    always = _DroppingOnce()
    always.recv = lambda timeout: (_ for _ in ()).throw(ConnectionDropped("again"))  # type: ignore[method-assign]
    with pytest.raises(ConnectionDropped):
        Requester(always, timeout=10.0, attempts=1, drop_resends=2).request(b"x", lambda reply: True)
    assert always.sent == [b"x"] * 3  # the request and its two resends
