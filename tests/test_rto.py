"""The RFC 6298 retransmission timer, alone and in its two users: the Requester and the serial ARQ.

The Requester tests run over real ZeroMQ sockets behind the link emulator, and
drop chosen requests with a wrapper, so that each loss is where the test wants
it; they assert on orderings and ratios, not on tight wall times.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
import time
from collections.abc import Callable
from types import TracebackType

import pytest

from transports.arq import ArqConfig, ArqEndpoint
from transports.emulator import EmulatedTransport, get_profile
from transports.errors import RequestTimeout
from transports.framing import FrameKind, decode_frame
from transports.pipe import MessageTransport
from transports.rto import RetransmitTimer, RtoConfig
from transports.zmq_transport import Requester, RequesterStats, ZmqClientTransport, ZmqServerTransport

EXACT = RtoConfig(initial=1.0, floor=0.001, ceiling=60.0, granularity=0.001)


# ------------------------------------------------------------------ the estimator alone
def test_the_estimator_follows_rfc_6298_on_a_hand_computed_sequence() -> None:
    timer = RetransmitTimer(EXACT)
    assert timer.rto == 1.0 and timer.srtt is None  # (2.1): the initial RTO before any sample
    timer.observe(0.100)  # (2.2): SRTT = R, RTTVAR = R/2, RTO = SRTT + max(G, 4 RTTVAR)
    assert (timer.srtt, timer.rttvar, timer.rto) == pytest.approx((0.100, 0.050, 0.300))
    timer.observe(0.120)  # (2.3): RTTVAR = 3/4 * 0.05 + 1/4 * |0.1 - 0.12|, SRTT = 7/8 * 0.1 + 1/8 * 0.12
    assert (timer.srtt, timer.rttvar, timer.rto) == pytest.approx((0.1025, 0.0425, 0.2725))
    timer.observe(0.080)  # RTTVAR = 3/4 * 0.0425 + 1/4 * |0.1025 - 0.08|, SRTT = 7/8 * 0.1025 + 1/8 * 0.08
    assert (timer.srtt, timer.rttvar, timer.rto) == pytest.approx((0.0996875, 0.0375, 0.2496875))


def test_granularity_floor_and_ceiling_bound_the_rto() -> None:
    steady = RetransmitTimer(RtoConfig(initial=1.0, floor=0.001, granularity=0.01))
    for _ in range(200):
        steady.observe(0.050)  # RTTVAR decays to ~0: G takes over from 4 RTTVAR
    assert steady.rto == pytest.approx(0.050 + 0.01)
    floored = RetransmitTimer(RtoConfig(initial=1.0, floor=0.2))
    floored.observe(0.001)
    assert floored.rto == 0.2
    capped = RetransmitTimer(RtoConfig(initial=1.0, floor=0.01, ceiling=2.0))
    capped.observe(5.0)
    assert capped.rto == 2.0


def test_each_timeout_doubles_the_rto_up_to_the_ceiling_and_a_sample_ends_the_backoff() -> None:
    timer = RetransmitTimer(RtoConfig(initial=0.3, floor=0.01, ceiling=2.0))
    seen = [timer.rto]
    for _ in range(6):
        timer.back_off()
        seen.append(timer.rto)
    assert seen == pytest.approx([0.3, 0.6, 1.2, 2.0, 2.0, 2.0, 2.0])
    timer.observe(0.1)
    assert timer.backoffs == 0 and timer.rto == pytest.approx(0.1 + 4 * 0.05)


def test_karn_a_retransmitted_exchange_gives_no_sample_and_keeps_the_backoff() -> None:
    timer = RetransmitTimer(EXACT)
    timer.observe(0.1)
    timer.back_off()
    before = (timer.srtt, timer.rttvar, timer.rto)
    assert not timer.observe(0.9, retransmitted=True)
    assert (timer.srtt, timer.rttvar, timer.rto) == before and timer.rto == pytest.approx(0.6)
    assert timer.observe(0.1)  # the next clean exchange: a sample, and the backoff is over
    assert timer.rto == pytest.approx(0.1 + 4 * 0.0375)


@pytest.mark.parametrize("bad", [
    {"floor": 0.0}, {"initial": 0.01, "floor": 0.02}, {"initial": 90.0}, {"granularity": -1.0},
    {"floor": float("nan")}, {"alpha": 1.0}, {"k": 0.0},
])
def test_bad_configurations_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RtoConfig(**bad)
    with pytest.raises(ValueError):
        RetransmitTimer().observe(-0.1)


# ------------------------------------------------------- the Requester over real sockets
def framed(request_id: int) -> bytes:
    return struct.pack(">I", request_id)


def answers(request: bytes) -> Callable[[bytes], bool]:
    return lambda message: message[:4] == request[:4]


class _Server:
    """A ROUTER thread that echoes each message with ``!`` after ``delay(message)`` seconds."""

    def __init__(self, delay: Callable[[bytes], float] = lambda message: 0.0, answer: bool = True) -> None:
        self._delay, self._answer = delay, answer
        self.received: list[tuple[bytes, bytes]] = []
        self._stop, self._ready = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="rto-server")
        self.endpoint = ""

    def __enter__(self) -> _Server:
        self._thread.start()
        assert self._ready.wait(5), "server did not start"
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        server = ZmqServerTransport("tcp://127.0.0.1:0")
        try:
            self.endpoint = server.bind()
            self._ready.set()
            while not self._stop.is_set():
                item = server.recv(0.02)
                if item is None:
                    continue
                self.received.append(item)
                time.sleep(self._delay(item[1]))
                if self._answer:
                    server.send(item[0], item[1] + b"!")
        finally:
            server.close()


class _Dropping:
    """A client transport that loses the first copy of each message in ``lose``, and times every send."""

    def __init__(self, inner: MessageTransport, lose: set[bytes]) -> None:
        self.inner, self.lose = inner, set(lose)
        self.endpoint = inner.endpoint
        self.sends: list[tuple[float, bytes]] = []

    def send(self, message: bytes) -> None:
        self.sends.append((time.monotonic(), message))
        if message in self.lose:
            self.lose.discard(message)
            return
        self.inner.send(message)

    def sent_at(self, message: bytes) -> list[float]:
        return [when for when, sent in self.sends if sent == message]

    def recv(self, timeout: float) -> bytes | None:
        return self.inner.recv(timeout)

    def reconnect(self) -> None:
        self.inner.reconnect()

    def close(self) -> None:
        self.inner.close()


def _lossy_wifi(endpoint: str, lose: set[bytes]) -> _Dropping:
    """Wi-Fi's delay and jitter both ways (its random loss off: the test picks the losses)."""
    wifi = get_profile("wifi-10m").with_overrides(loss_rate=0.0)
    return _Dropping(EmulatedTransport(ZmqClientTransport(endpoint), wifi, seed=7), lose)


WARM_UP = 20
FIXED_TIMEOUT = 1.0


LOST = framed(WARM_UP)


def _cost_of_one_loss(endpoint: str, adaptive: bool) -> tuple[float, float, RequesterStats, _Dropping]:
    """Warm up, then send one request whose first copy is lost. Returns how long that request took,
    the RTO just before it, the Requester's counts for it alone, and the transport."""
    transport = _lossy_wifi(endpoint, lose={LOST})
    requester = Requester(transport, timeout=FIXED_TIMEOUT, attempts=2, backoff_initial=0.0,
                          adaptive_timeout=adaptive)
    try:
        for request_id in range(WARM_UP):
            requester.request(framed(request_id), answers(framed(request_id)))
        rto, before = requester.retransmit_timer.rto, dataclasses.replace(requester.stats)
        started = time.monotonic()
        assert requester.request(LOST, answers(LOST)) == LOST + b"!"
        elapsed = time.monotonic() - started
    finally:
        transport.close()
    after = requester.stats
    counts = RequesterStats(**{name: getattr(after, name) - getattr(before, name)
                               for name in ("sent", "replies", "retries", "retransmits", "timeouts")})
    return elapsed, rto, counts, transport


def test_a_lost_request_is_resent_after_the_estimated_rto_not_the_fixed_timeout() -> None:
    # 30 ms of server time a request puts the round trip, and so the RTO, well above the floor.
    with _Server(delay=lambda message: 0.03) as server:
        adaptive, rto, counts, transport = _cost_of_one_loss(server.endpoint, adaptive=True)
        fixed, _, fixed_counts, _ = _cost_of_one_loss(server.endpoint, adaptive=False)
    # The RTO was estimated from the round trips: above the 30 ms they took, far below the timeout.
    assert 0.03 < rto < 0.5 * FIXED_TIMEOUT
    # The loss was noticed after the RTO: not before it, and long before the fixed timeout.
    first, again, *_ = transport.sent_at(LOST)
    assert rto <= again - first < 0.5 * FIXED_TIMEOUT
    assert counts.retransmits >= 1 and (counts.retries, counts.timeouts) == (0, 0)
    # Without the estimator the same loss costs the whole timeout and a Lazy Pirate retry.
    assert fixed >= FIXED_TIMEOUT > 2 * adaptive
    assert (fixed_counts.sent, fixed_counts.retransmits, fixed_counts.retries) == (2, 0, 1)


def test_karn_a_resent_request_leaves_the_estimate_alone_until_a_clean_one() -> None:
    with _Server() as server:
        transport = _lossy_wifi(server.endpoint, lose={framed(5)})
        # A floor far above the round trip, so that only the lost request is ever resent.
        requester = Requester(transport, timeout=FIXED_TIMEOUT, attempts=1, rto=RtoConfig(floor=0.1))
        timer = requester.retransmit_timer
        try:
            for request_id in range(5):
                requester.request(framed(request_id), answers(framed(request_id)))
            srtt, rto = timer.srtt, timer.rto
            assert rto == 0.1
            requester.request(framed(5), answers(framed(5)))  # its first copy is lost
            assert (timer.srtt, timer.backoffs) == (srtt, 1) and timer.rto == pytest.approx(2 * rto)
            requester.request(framed(6), answers(framed(6)))
            assert timer.srtt != srtt and timer.backoffs == 0
        finally:
            transport.close()
    assert requester.stats.retransmits == 1


def test_the_timeout_still_bounds_a_request_the_server_never_answers() -> None:
    fast = RtoConfig(initial=0.02, floor=0.01)
    with _Server(answer=False) as server:
        client = ZmqClientTransport(server.endpoint)
        requester = Requester(client, timeout=0.3, attempts=1, rto=fast)
        started = time.monotonic()
        try:
            with pytest.raises(RequestTimeout, match="after 1 attempts"):
                requester.request(framed(1), answers(framed(1)))
        finally:
            client.close()
        elapsed = time.monotonic() - started
        time.sleep(0.05)  # let the server thread read the last copy
    # Resent at 20, 60, 140 (and maybe 300) ms, each on the same connection; then it gave up.
    assert 0.3 <= elapsed < 0.3 + 0.25
    assert requester.stats.retransmits >= 3 and requester.stats.sent == 1 + requester.stats.retransmits
    assert len(server.received) == requester.stats.sent
    assert len({identity for identity, _ in server.received}) == 1


def test_replies_to_a_spurious_resend_are_discarded_as_stale() -> None:
    """The server is slow once: the request goes out again (the reply was only late), the first
    reply answers it, and the twin replies are discarded while the next request waits."""
    slow_once = threading.Event()

    def delay(message: bytes) -> float:
        if message == framed(1) and not slow_once.is_set():
            slow_once.set()
            return 0.2
        return 0.0

    with _Server(delay=delay) as server:
        client = ZmqClientTransport(server.endpoint)
        requester = Requester(client, timeout=2.0, attempts=1, rto=RtoConfig(initial=0.05, floor=0.01))
        try:
            assert requester.request(framed(1), answers(framed(1))) == framed(1) + b"!"
            resent = requester.stats.retransmits
            assert requester.request(framed(2), answers(framed(2))) == framed(2) + b"!"
        finally:
            client.close()
    assert resent >= 1 and requester.stats.stale_discarded == resent
    assert requester.retransmit_timer.srtt is not None  # request 2 was clean: a sample


# ------------------------------------------------------------------- the serial ARQ
class _Line:
    """Both directions between two endpoints, ``delay`` s each way, on a simulated clock."""

    def __init__(self, a: ArqEndpoint, b: ArqEndpoint, delay: float) -> None:
        self.a, self.b, self.delay = a, b, delay
        self.now = 0.0
        self.in_flight: list[tuple[float, ArqEndpoint, bytes]] = []
        self.data_sent: list[tuple[float, int]] = []  # (time, seq) of every DATA frame a sent

    def run(self, until: Callable[[], bool], drop_data: Callable[[int], bool] = lambda seq: False,
            limit: float = 10.0) -> None:
        while not until() and self.now < limit:
            self.now += 0.001
            for frame in self.a.take_frames():
                decoded = decode_frame(frame, 0xFFFF).frame
                if decoded is not None and decoded.kind is FrameKind.DATA:
                    self.data_sent.append((self.now, decoded.seq))
                    if drop_data(len(self.data_sent) - 1):
                        continue
                self.in_flight.append((self.now + self.delay, self.b, frame))
            for frame in self.b.take_frames():
                self.in_flight.append((self.now + self.delay, self.a, frame))
            due = [item for item in self.in_flight if item[0] <= self.now]
            self.in_flight = [item for item in self.in_flight if item[0] > self.now]
            for _, endpoint, frame in due:
                endpoint.receive(frame, self.now)
            self.a.poll(self.now)
            self.b.poll(self.now)


def test_the_arq_resends_a_lost_frame_after_the_estimated_rto_and_applies_karn() -> None:
    config = ArqConfig(retransmit_timeout=0.25, min_retransmit_timeout=0.005)
    sender, receiver = ArqEndpoint(config), ArqEndpoint(config)
    line = _Line(sender, receiver, delay=0.01)  # a 20 ms round trip
    timer = sender.retransmit_timer
    for index in range(20):
        sender.send(b"message %d" % index, line.now)
        line.run(until=lambda: bool(sender.take_acknowledged()))
    assert timer.srtt == pytest.approx(0.02, abs=0.004)
    rto = sender.retransmit_timeout
    assert 0.02 < rto < 0.05 < config.retransmit_timeout
    lost = len(line.data_sent)
    sender.send(b"lost once", line.now)
    line.run(until=lambda: bool(sender.take_acknowledged()), drop_data=lambda index: index == lost)
    (first, seq), (again, seq_again) = line.data_sent[lost:]
    assert seq == seq_again and rto - 1e-9 <= again - first <= rto + 0.002  # a 1 ms tick of polling
    assert receiver.take_delivered()[-1] == b"lost once"
    # Karn: the ACK of the resent frame gave no sample, and the backed-off RTO stays until one does.
    assert timer.backoffs == 1 and sender.retransmit_timeout == pytest.approx(2 * rto)
    sender.send(b"clean", line.now)
    line.run(until=lambda: bool(sender.take_acknowledged()))
    assert timer.backoffs == 0 and sender.retransmit_timeout < 2 * rto


def test_the_reset_handshake_gives_the_first_sample() -> None:
    sender, receiver = ArqEndpoint(ArqConfig()), ArqEndpoint(ArqConfig())
    line = _Line(sender, receiver, delay=0.03)
    sender.send(b"x", 0.0)
    line.run(until=lambda: sender.retransmit_timer.srtt is not None)
    assert sender.retransmit_timer.srtt == pytest.approx(0.06, abs=0.004)


def test_serial_line_rate_timeouts() -> None:
    config = ArqConfig.for_line_rate(11_520)  # 115200 baud, 8N1
    frame = 250 / 11_520  # a full 240-byte-payload frame on the wire
    assert config.retransmit_timeout == config.max_retransmit_timeout == pytest.approx(0.05 + 2.5 * 8 * frame)
    assert config.min_retransmit_timeout == pytest.approx(0.05 + 2 * frame)
    with pytest.raises(ValueError):
        ArqConfig(retransmit_timeout=0.005, min_retransmit_timeout=0.01)
