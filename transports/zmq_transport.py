"""ZeroMQ pipes (ROUTER server, DEALER client) and the Lazy Pirate transaction layer.

The transports move opaque ``bytes`` and keep message boundaries; they do not
parse messages, match replies or retry. :class:`Requester` does that, once, above
the client pipe.

Framing: the ROUTER side sees ``[identity, message]`` and the DEALER side sees
``[message]``. No empty delimiter frame is used: that frame exists for REQ/REP
envelopes, and neither end here is a REQ or REP socket.

Sockets are not thread-safe: use each transport from one thread at a time
(handing it to another thread across a start/join is fine).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from .curve import (
    CurveClientConfig,
    CurveServerConfig,
    configure_client,
    configure_server,
    start_authenticator,
)
from .emulator import LinkProfile, emulated
from .errors import (
    ConnectionDropped,
    DeliveryFailed,
    OversizedMessage,
    PeerUnreachable,
    QueueFull,
    RequestTimeout,
    TransportClosed,
    TransportError,
)
from .pipe import MessageTransport
from .rto import RetransmitTimer, RtoConfig

log = logging.getLogger("agilenn.transports.zmq")
# The hard cap, far above the schema's 256 KiB limit: anything up to it reaches
# the server, which answers "too-large" and keeps the connection, so the other
# requests on it survive. libzmq drops a connection that carries more (without
# a cap one peer could make the server allocate any size); the client transport
# refuses to send such a message, and notices a drop at once.
MAX_WIRE_MESSAGE_BYTES = 4 * 1024 * 1024


def open_client(endpoint: str, link: str | LinkProfile | None = None, *, seed: int = 0,
                curve: CurveClientConfig | None = None) -> MessageTransport:
    """A client transport to ``endpoint``; with ``link``, behind that emulated link."""
    return emulated(ZmqClientTransport(endpoint, curve=curve), link, seed)


def free_loopback_endpoint() -> str:
    """``tcp://127.0.0.1:PORT`` with a port free right now, for a process that must be told where to bind."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def _ms(timeout: float) -> int:
    # Round up: a wait must never end before the timeout the caller asked for.
    return max(0, math.ceil(timeout * 1000))


class ZmqServerTransport:
    """A ROUTER socket: receives ``(identity, message)`` and replies to an identity.

    ROUTER_MANDATORY is on, so a message for a peer that is gone raises
    :class:`PeerUnreachable` and one that would pass the send high-water mark
    raises :class:`QueueFull`, instead of ZeroMQ dropping either silently.
    Without a ``context`` the transport owns a private one (and terminates it on
    close); CURVE needs its own ZAP handler, so only one CURVE server per context.
    """

    def __init__(self, endpoint: str, *, curve: CurveServerConfig | None = None,
                 send_hwm: int = 1000, recv_hwm: int = 1000, context: zmq.Context | None = None,
                 max_message_bytes: int = MAX_WIRE_MESSAGE_BYTES) -> None:
        self.endpoint = endpoint
        self._own_context = context is None
        self._context: zmq.Context = zmq.Context() if context is None else context
        self._closed = False
        self._authenticator: ThreadAuthenticator | None = None
        self._socket: zmq.Socket = self._context.socket(zmq.ROUTER)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._socket.setsockopt(zmq.SNDHWM, send_hwm)
            self._socket.setsockopt(zmq.RCVHWM, recv_hwm)
            # libzmq drops a peer that sends more; without a cap one client could
            # queue recv_hwm messages of any size and exhaust memory.
            self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
            if curve is not None:
                # The ZAP handler must be up before bind: without one, libzmq lets every key in.
                self._authenticator = start_authenticator(self._context, curve)
                configure_server(self._socket, curve)
        except BaseException:
            self.close()
            raise

    def bind(self) -> str:
        """Bind to the endpoint; returns the actual one (port 0 and ``*`` resolved)."""
        self._check_open()
        try:
            self._socket.bind(self.endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot bind {self.endpoint}: {exc}") from exc
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, timeout: float) -> tuple[bytes, bytes] | None:
        """The next ``(identity, message)``, waiting up to ``timeout`` s; None if none came."""
        self._check_open()
        deadline = time.monotonic() + timeout
        while self._socket.poll(_ms(deadline - time.monotonic()), zmq.POLLIN):
            frames = self._socket.recv_multipart(zmq.NOBLOCK)
            if len(frames) == 2:
                return frames[0], frames[1]
            log.warning("dropped a %d-frame message from %r: expected one frame", len(frames) - 1,
                        frames[0])
        return None

    def send(self, identity: bytes, message: bytes) -> None:
        """Queue ``message`` for the peer ``identity`` without blocking."""
        self._check_open()
        try:
            self._socket.send_multipart([identity, message], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                raise PeerUnreachable(f"peer {identity!r} is not connected") from exc
            if exc.errno == zmq.EAGAIN:
                raise QueueFull(f"send queue to peer {identity!r} is full (high-water mark)") from exc
            raise TransportError(f"send to peer {identity!r} failed: {exc}") from exc

    def close(self) -> None:
        """Close the socket, stop the CURVE authenticator thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
        if self._own_context:
            self._context.term()

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosed(f"server transport on {self.endpoint} is closed")


class ZmqClientTransport:
    """A DEALER socket connected to one server; :meth:`reconnect` starts afresh.

    A monitor on the socket notices a handshake that failed for good (the
    server refused this device's CURVE key, or the two ends disagree on
    security). ZeroMQ does not retry those, so from then on :meth:`send` and
    :meth:`recv` raise :class:`DeliveryFailed` until :meth:`reconnect`. It
    also notices a connection the server dropped after :meth:`send`: the next
    :meth:`recv` raises :class:`ConnectionDropped` at once, since whatever was
    in flight on it is lost (libzmq reconnects by itself).
    """

    # The handshake failures after which libzmq drops the connection and does not retry.
    _FATAL = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    _WATCHED = _FATAL | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED

    def __init__(self, endpoint: str, *, curve: CurveClientConfig | None = None,
                 hwm: int = 1000, context: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self._curve = curve
        self._hwm = hwm
        self._own_context = context is None
        self._context: zmq.Context = zmq.Context() if context is None else context
        self._closed = False
        self._sockets: tuple[zmq.Socket, zmq.Socket] | None = None  # (DEALER, its monitor)
        self._failure = ""
        self._established = False  # a handshake succeeded on the current connection
        self._dropped = False
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def send(self, message: bytes) -> None:
        """Queue ``message`` for the server without blocking."""
        socket, monitor = self._check_open()
        if len(message) > MAX_WIRE_MESSAGE_BYTES:
            raise OversizedMessage(f"a {len(message)}-byte message is over the {MAX_WIRE_MESSAGE_BYTES}-byte "
                                   "hard cap: the server would drop the connection; nothing was sent")
        self._read_monitor(monitor)
        self._dropped = False  # a drop before this send lost nothing sent from now on
        try:
            socket.send(message, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EAGAIN:
                # After a failed handshake the DEALER has no peer left to queue for.
                self._read_monitor(monitor)
                raise QueueFull(f"send queue to {self.endpoint} is full (high-water mark)") from exc
            raise TransportError(f"send to {self.endpoint} failed: {exc}") from exc

    def recv(self, timeout: float) -> bytes | None:
        """The next message, waiting up to ``timeout`` s; None if none came."""
        socket, monitor = self._check_open()
        if self._failure:  # monitor events are read below, as they come
            raise DeliveryFailed(self._failure)
        deadline = time.monotonic() + timeout
        while events := dict(self._poller.poll(_ms(deadline - time.monotonic()))):
            if monitor in events:
                self._read_monitor(monitor)
                if self._dropped and socket not in events:
                    self._dropped = False
                    raise ConnectionDropped(f"{self.endpoint} dropped the connection; what was in "
                                            "flight on it is lost")
            if socket in events:
                frames = socket.recv_multipart(zmq.NOBLOCK)
                if len(frames) == 1:
                    return frames[0]
                log.warning("dropped a %d-frame message from %s: expected one", len(frames), self.endpoint)
        return None

    def reconnect(self) -> None:
        """Drop the connection and anything queued on it, and connect a fresh socket (Lazy Pirate)."""
        self._check_open()
        self._close_sockets()
        self._open()

    def close(self) -> None:
        """Close the socket; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._close_sockets()
        if self._own_context:
            self._context.term()

    def _open(self) -> None:
        socket = self._context.socket(zmq.DEALER)
        monitor = socket.get_monitor_socket(self._WATCHED)
        self._sockets, self._failure = (socket, monitor), ""
        self._established = self._dropped = False
        # Built once per connection: a Poller per recv() cost more than the payload's schema work.
        self._poller = zmq.Poller()
        self._poller.register(socket, zmq.POLLIN)
        self._poller.register(monitor, zmq.POLLIN)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, self._hwm)
        socket.setsockopt(zmq.RCVHWM, self._hwm)
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_WIRE_MESSAGE_BYTES)
        if self._curve is not None:
            configure_client(socket, self._curve)
        try:
            socket.connect(self.endpoint)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot connect to {self.endpoint}: {exc}") from exc

    def _read_monitor(self, monitor: zmq.Socket) -> None:
        """Note drops; raise DeliveryFailed once the handshake failed for good (sticky until reconnect())."""
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._established = True
            elif event["event"] == zmq.EVENT_DISCONNECTED:
                # Only an established connection can have carried a message: a refused
                # handshake ends in a failure event instead.
                self._dropped, self._established = self._dropped or self._established, False
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._failure = (f"server {self.endpoint} refused this device's CURVE key "
                                 f"(ZAP status {event['value']}); is its public key in the "
                                 "server's allowlist?")
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                self._failure = (f"handshake with {self.endpoint} failed (ZMTP protocol error "
                                 f"{event['value']:#x}); do both ends agree on CURVE?")
        if self._failure:
            raise DeliveryFailed(self._failure)

    def _close_sockets(self) -> None:
        if self._sockets is not None:
            socket, monitor = self._sockets
            socket.disable_monitor()
            monitor.close(linger=0)
            socket.close(linger=0)
        self._sockets = None

    def _check_open(self) -> tuple[zmq.Socket, zmq.Socket]:
        if self._closed or self._sockets is None:
            raise TransportClosed(f"client transport to {self.endpoint} is closed")
        return self._sockets


@dataclass
class RequesterStats:
    sent: int = 0
    """Messages sent, resends included."""
    replies: int = 0
    retries: int = 0
    """Resends after a timeout (each preceded by a reconnect)."""
    retransmits: int = 0
    """Resends after the retransmission timeout, on the same connection (``adaptive_timeout``)."""
    timeouts: int = 0
    """Attempts that got no matching reply in time."""
    stale_discarded: int = 0
    """Messages received while waiting that ``is_reply`` rejected (late replies to earlier requests)."""
    drops: int = 0
    """Connections the server dropped while a request was in flight (each resent at once)."""


# The ZeroMQ client's retransmission timer (see docs/LINKS.md, "The retransmission timer"): 1 s
# until the first round trip is measured; a 20 ms floor, far under RFC 6298's 1 s, which exists
# for delayed ACKs (up to 500 ms) and coarse clocks, neither of which a request/reply here has;
# G = 1 ms, the resolution of ZeroMQ's poll.
REQUEST_RTO = RtoConfig(initial=1.0, floor=0.02, ceiling=60.0, granularity=0.001)


class Requester:
    """Request/reply over a :class:`ZmqClientTransport`, the Lazy Pirate way.

    Each attempt sends the request and waits ``timeout`` s for a message that
    ``is_reply`` accepts; other messages are late replies to earlier requests
    and are discarded. After a timeout the client reconnects (dropping the stale
    connection), waits an exponential backoff, and resends, ``attempts`` times
    in all. The request must therefore be safe to repeat. A connection the
    server drops while the request is in flight is noticed at once, and the
    request is resent within the same attempt (up to ``drop_resends`` times).

    With ``adaptive_timeout`` (the default), a request also goes out again on
    the same connection whenever the retransmission timeout passes without a
    reply, inside the attempt: a lost message then costs the RTO, a few round
    trips, not ``timeout``. The timeout is estimated from measured round trips by
    RFC 6298 (:class:`~transports.rto.RetransmitTimer`, bounded by ``rto``),
    doubled on each such resend, and no round trip is measured on a request
    that was sent more than once (Karn), since a resend carries the same bytes,
    request id included, and so its reply cannot be told from the original's.
    ``timeout`` still bounds each attempt, resends included. Without it, an
    attempt waits the whole ``timeout`` before the Lazy Pirate retry.

    Thread-safety: one lock around :meth:`request`, so concurrent callers are
    served one at a time and only one request is ever outstanding on the
    socket. Use one Requester per client transport, and that transport only
    through it.
    """

    def __init__(self, client: MessageTransport, *, timeout: float = 1.0, attempts: int = 3,
                 backoff_initial: float = 0.05, backoff_max: float = 2.0, drop_resends: int = 2,
                 adaptive_timeout: bool = True, rto: RtoConfig = REQUEST_RTO) -> None:
        if timeout <= 0 or attempts < 1 or backoff_initial < 0 or backoff_max < backoff_initial:
            raise ValueError("need timeout > 0, attempts >= 1 and 0 <= backoff_initial <= backoff_max")
        self.client = client
        self.timeout = timeout
        self.attempts = attempts
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.drop_resends = drop_resends
        self.adaptive_timeout = adaptive_timeout
        self.retransmit_timer = RetransmitTimer(rto)
        self.stats = RequesterStats()
        self._lock = threading.Lock()

    def request(self, message: bytes, is_reply: Callable[[bytes], bool]) -> bytes:
        """Send ``message`` and return the first message for which ``is_reply`` is True.

        Raises RequestTimeout when every attempt timed out (with CURVE, a wrong
        server public key looks like this too), DeliveryFailed when the server
        refused this device's key or the handshake failed for good (not retried:
        a resend would not help), TransportClosed once the client is closed.
        """
        with self._lock:
            started = time.monotonic()
            for attempt in range(1, self.attempts + 1):
                if attempt > 1:
                    self.client.reconnect()
                    time.sleep(self._backoff(attempt))
                    self.stats.retries += 1
                reply = self._attempt(message, is_reply)
                if reply is not None:
                    self.stats.replies += 1
                    return reply
                self.stats.timeouts += 1
                log.info("no reply from %s in %.3f s (attempt %d of %d)", self.client.endpoint,
                         self.timeout, attempt, self.attempts)
            elapsed = time.monotonic() - started
            raise RequestTimeout(f"no reply from {self.client.endpoint} after {self.attempts} attempts "
                                 f"over {elapsed:.2f} s (timeout {self.timeout} s each)")

    def _backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 2))

    def _send(self, message: bytes) -> float:
        """Send ``message``; returns when the send began, where its round trip starts."""
        began = time.monotonic()
        self.client.send(message)
        self.stats.sent += 1
        return began

    def _attempt(self, request: bytes, is_reply: Callable[[bytes], bool]) -> bytes | None:
        """One attempt: send, then wait ``timeout``, resending when the RTO passes or the connection
        drops; the round trip is timed from the start of the send, the link's own time included."""
        timer = self.retransmit_timer
        sent_at = self._send(request)
        deadline = time.monotonic() + self.timeout  # after the send, which an emulated link blocks
        resent = False
        drops_left = self.drop_resends
        while (now := time.monotonic()) < deadline:
            resend_at = sent_at + timer.rto if self.adaptive_timeout else deadline
            if now >= resend_at:
                timer.back_off()
                self.stats.retransmits += 1
                log.debug("no reply from %s within the %.3f s RTO; resending", self.client.endpoint,
                          resend_at - sent_at)
                sent_at, resent = self._send(request), True
                continue
            try:
                message = self.client.recv(min(deadline, resend_at) - now)
            except ConnectionDropped:
                if not drops_left:
                    raise
                drops_left -= 1
                self.stats.drops += 1
                log.info("%s dropped the connection; resending the request", self.client.endpoint)
                sent_at, resent = self._send(request), True
                continue
            if message is None:
                continue
            if is_reply(message):
                if self.adaptive_timeout:
                    timer.observe(time.monotonic() - sent_at, retransmitted=resent)
                return message
            self.stats.stale_discarded += 1
            log.debug("discarded a message that is not the awaited reply (%d bytes)", len(message))
        return None
