"""A seeded emulator of a constrained link (bandwidth, delay, jitter, loss, corruption).

It wraps any transport: :class:`LinkEmulator` is a conveyor that hands chunks to a
``deliver`` callback late, damaged or not at all; :class:`EmulatedPipe` puts one in
front of a :class:`~transports.pipe.Pipe`'s ``write``. The numbers of the named
profiles and their sources are in docs/LINKS.md.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .errors import TransportClosed
from .pipe import MessageTransport, Pipe

logger = logging.getLogger("agilenn.transports.emulator")


def _check(field: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:  # written this way so NaN fails too
        raise ValueError(f"{field} must be in [{low}, {high}], got {value!r}")


@dataclasses.dataclass(frozen=True)
class LinkProfile:
    """What one direction of a link does to the bytes written into it."""

    name: str
    bandwidth_bytes_per_s: float = math.inf  # 0 or inf: unlimited
    delay_s: float = 0.0  # one-way
    jitter_s: float = 0.0  # extra delay, uniform in [0, jitter_s]
    loss_rate: float = 0.0  # probability a whole write is dropped
    byte_error_rate: float = 0.0  # probability each byte is corrupted
    send_buffer_bytes: int = 1  # bytes a writer may queue before it blocks (driver buffer)

    def __post_init__(self) -> None:
        _check("bandwidth_bytes_per_s", self.bandwidth_bytes_per_s, 0.0, math.inf)
        _check("delay_s", self.delay_s, 0.0, sys.float_info.max)
        _check("jitter_s", self.jitter_s, 0.0, sys.float_info.max)
        _check("loss_rate", self.loss_rate, 0.0, 1.0)
        _check("byte_error_rate", self.byte_error_rate, 0.0, 1.0)
        _check("send_buffer_bytes", self.send_buffer_bytes, 1, sys.maxsize)

    @property
    def rate_limited(self) -> bool:
        return 0.0 < self.bandwidth_bytes_per_s < math.inf

    def with_overrides(self, **changes: Any) -> LinkProfile:
        """A copy with some fields changed (validated like a new profile)."""
        return dataclasses.replace(self, **changes)


PROFILES: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        LinkProfile("serial-115200", bandwidth_bytes_per_s=11_520.0, send_buffer_bytes=256),
        LinkProfile("ble-1m", bandwidth_bytes_per_s=87_500.0, delay_s=0.0075, jitter_s=0.0075,
                    send_buffer_bytes=251),
        LinkProfile("wifi-10m", bandwidth_bytes_per_s=1_250_000.0, delay_s=0.002, jitter_s=0.001,
                    loss_rate=0.001, send_buffer_bytes=1500),
        LinkProfile("lte", bandwidth_bytes_per_s=625_000.0, delay_s=0.025, jitter_s=0.010,
                    loss_rate=0.001, send_buffer_bytes=1500),
        LinkProfile("lossless"),
    )
}


def get_profile(name: str) -> LinkProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown link profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None


@dataclasses.dataclass
class LinkStats:
    """Counters of one emulator. Each submitted chunk ends up in exactly one of
    dropped / delivered / deliver_errors / discarded, or is still pending."""

    submitted_chunks: int = 0
    submitted_bytes: int = 0
    dropped_chunks: int = 0  # lost on the link (loss_rate)
    corrupted_bytes: int = 0
    delivered_chunks: int = 0
    delivered_bytes: int = 0
    deliver_errors: int = 0  # deliver() raised
    discarded_chunks: int = 0  # still in flight when the emulator closed


def corrupt_bytes(data: bytes, byte_error_rate: float, rng: random.Random) -> tuple[bytes, int]:
    """XOR bytes with a non-zero mask (so a hit always changes the byte); returns (data, hits)."""
    if byte_error_rate <= 0 or not data:
        return data, 0
    out = bytearray(data)
    # Jump straight to the next hit (geometric gaps) instead of one draw per byte,
    # so large payloads at realistic error rates stay cheap.
    log_miss = math.log1p(-byte_error_rate) if byte_error_rate < 1 else -math.inf
    pos, hits = -1, 0
    while True:
        gap = math.log(1.0 - rng.random()) / log_miss  # may be inf for tiny rates
        if pos + 1 + gap >= len(out):
            return bytes(out), hits
        pos += 1 + int(gap)
        out[pos] ^= rng.randrange(1, 256)
        hits += 1


class LinkEmulator:
    """Feeds chunks to ``deliver`` as the profile's link would: lost, corrupted, late.

    ``submit`` blocks the caller while the send buffer is full, like a writer on a
    full UART or radio buffer, so a producer cannot outrun the bandwidth. Deliveries
    keep submission order. A link with no bandwidth limit, delay or jitter calls
    ``deliver`` in the caller's thread; otherwise one delivery thread runs until ``close``.
    """

    def __init__(self, profile: LinkProfile, deliver: Callable[[bytes], None], seed: int = 0) -> None:
        self.profile = profile
        self._deliver = deliver
        self._rng = random.Random(seed)
        self._stats = LinkStats()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed = threading.Event()
        self._line_free_at = 0.0
        # deliver_at never decreases (no reordering), so a FIFO is already time-sorted.
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._last_due = 0.0
        self._in_flight = False
        self._thread: threading.Thread | None = None
        if profile.delay_s > 0 or profile.jitter_s > 0 or profile.rate_limited:
            self._thread = threading.Thread(target=self._run, name=f"link-{profile.name}", daemon=True)
            self._thread.start()

    @property
    def stats(self) -> LinkStats:
        with self._lock:
            return dataclasses.replace(self._stats)

    def submit(self, data: bytes) -> None:
        """Put ``data`` on the link; raises TransportClosed once closed."""
        if self._closed.is_set():
            raise TransportClosed("link emulator is closed")
        data = bytes(data)
        with self._lock:
            self._stats.submitted_chunks += 1
            self._stats.submitted_bytes += len(data)
            lost = self._rng.random() < self.profile.loss_rate
            data = self._corrupt(data)
            now = time.monotonic()
            sent_at, writer_free_at = self._schedule(now, len(data))
            due = sent_at + self.profile.delay_s
            if self.profile.jitter_s > 0:
                due += self._rng.uniform(0.0, self.profile.jitter_s)
        # A lost chunk still used the link's time: the sender cannot know it was lost.
        if writer_free_at > now:
            self._closed.wait(writer_free_at - now)
        with self._cond:
            if self._closed.is_set():
                self._stats.discarded_chunks += 1
                raise TransportClosed("link emulator closed while writing")
            if lost:
                self._stats.dropped_chunks += 1
                return
            if self._thread is not None:
                self._last_due = max(self._last_due, due)
                self._queue.append((self._last_due, data))
                self._cond.notify_all()
                return
        self._deliver_one(data)

    def drain(self, timeout: float) -> bool:
        """Wait until every scheduled chunk was handed to ``deliver``; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._in_flight, timeout)

    def close(self) -> None:
        """Stop the delivery thread; chunks not yet delivered are discarded and counted."""
        with self._cond:
            if self._closed.is_set():
                return
            self._closed.set()
            self._stats.discarded_chunks += len(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        # deliver() itself may close us; a thread cannot join itself.
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> LinkEmulator:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _corrupt(self, data: bytes) -> bytes:
        data, hits = corrupt_bytes(data, self.profile.byte_error_rate, self._rng)
        self._stats.corrupted_bytes += hits
        return data

    def _schedule(self, now: float, size: int) -> tuple[float, float]:
        """When the line finishes sending ``size`` more bytes, and when the writer may go on.

        The line keeps its own clock (``_line_free_at``) instead of the writer's
        wake-up times, so scheduler latency never slows the emulated link down;
        the writer blocks only while more than ``send_buffer_bytes`` wait in the
        send buffer, as with a UART driver's transmit buffer.
        """
        if not self.profile.rate_limited:
            return now, now
        rate = self.profile.bandwidth_bytes_per_s
        self._line_free_at = max(now, self._line_free_at) + size / rate
        return self._line_free_at, self._line_free_at - self.profile.send_buffer_bytes / rate

    def _run(self) -> None:
        while (data := self._next_due()) is not None:
            self._deliver_one(data)
            with self._cond:
                self._in_flight = False
                self._cond.notify_all()

    def _next_due(self) -> bytes | None:
        """Block until the head chunk is due and pop it; None once closed."""
        with self._cond:
            while not self._closed.is_set():
                if not self._queue:
                    self._cond.wait()
                    continue
                due, data = self._queue[0]
                wait = due - time.monotonic()
                if wait <= 0:
                    self._queue.popleft()
                    self._in_flight = True
                    return data
                self._cond.wait(wait)
            return None

    def _deliver_one(self, data: bytes) -> None:
        try:
            self._deliver(data)
        except Exception:
            # The link keeps running: a consumer error must not stall every later chunk.
            logger.exception("deliver failed on link %s (%d bytes)", self.profile.name, len(data))
            with self._lock:
                self._stats.deliver_errors += 1
            return
        with self._lock:
            self._stats.delivered_chunks += 1
            self._stats.delivered_bytes += len(data)


class EmulatedPipe:
    """A :class:`Pipe` whose writes cross an emulated link; reads pass straight through.

    It emulates one direction; wrap both ends of a pair to emulate both.
    """

    def __init__(self, inner: Pipe, profile: LinkProfile, seed: int = 0) -> None:
        self._inner = inner
        self.emulator = LinkEmulator(profile, inner.write, seed)

    @property
    def stats(self) -> LinkStats:
        return self.emulator.stats

    def write(self, data: bytes) -> None:
        self.emulator.submit(data)

    def read(self, timeout: float) -> bytes:
        return self._inner.read(timeout)

    def close(self) -> None:
        self.emulator.close()
        self._inner.close()


class EmulatedTransport:
    """A client transport whose messages cross an emulated link both ways.

    ZeroMQ sockets must stay in one thread, so unlike :class:`EmulatedPipe`
    this wrapper runs no thread: ``send`` applies the uplink's loss and byte
    errors and blocks the caller for its serialisation and one-way delay (a
    request/reply client waits for that anyway); ``recv`` holds each reply back
    for the downlink's serialisation and delay. Drop it in wherever the
    transport goes, for example under a :class:`Requester`.
    """

    def __init__(self, inner: MessageTransport, uplink: LinkProfile,
                 downlink: LinkProfile | None = None, seed: int = 0) -> None:
        self._inner = inner
        self.endpoint = inner.endpoint
        self._uplink = _LineClock(uplink, random.Random(seed))
        self._downlink = _LineClock(downlink or uplink, random.Random(seed + 1))
        self.stats = LinkStats()
        # The link's own time for the last message sent: serialisation (behind any earlier
        # messages), delay and jitter. Not the wall time of send(), which can include
        # scheduling delays that overlap the peer's work.
        self.last_uplink_seconds = 0.0

    def send(self, message: bytes) -> None:
        self.stats.submitted_chunks += 1
        self.stats.submitted_bytes += len(message)
        lost, data, due = self._uplink.carry(message, self.stats)
        self.last_uplink_seconds = max(0.0, due - time.monotonic())
        _sleep_until(due)
        if lost:
            self.stats.dropped_chunks += 1
            return
        self._inner.send(data)
        self.stats.delivered_chunks += 1
        self.stats.delivered_bytes += len(data)

    def recv(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            message = self._inner.recv(remaining)
            if message is None:
                return None
            lost, data, due = self._downlink.carry(message, self.stats)
            if lost:
                self.stats.dropped_chunks += 1
                continue
            _sleep_until(due)
            return data
        return None

    def reconnect(self) -> None:
        self._inner.reconnect()

    def close(self) -> None:
        self._inner.close()


def emulated(transport: MessageTransport, link: str | LinkProfile | None, seed: int = 0) -> MessageTransport:
    """``transport`` behind the emulated ``link`` (a profile or its name); unchanged for None."""
    if link is None:
        return transport
    return EmulatedTransport(transport, get_profile(link) if isinstance(link, str) else link, seed=seed)


def last_uplink_seconds(transport: object) -> float:
    """The emulated uplink time of the last message ``transport`` sent; 0 for a real link."""
    return transport.last_uplink_seconds if isinstance(transport, EmulatedTransport) else 0.0


class _LineClock:
    """One direction of a link, computed on a virtual line clock (no thread)."""

    def __init__(self, profile: LinkProfile, rng: random.Random) -> None:
        self.profile = profile
        self._rng = rng
        self._free_at = 0.0

    def carry(self, data: bytes, stats: LinkStats) -> tuple[bool, bytes, float]:
        """(lost, bytes as received, time of arrival) for one message sent now."""
        profile = self.profile
        lost = self._rng.random() < profile.loss_rate
        corrupted, hits = corrupt_bytes(data, profile.byte_error_rate, self._rng)
        stats.corrupted_bytes += hits
        now = time.monotonic()
        if profile.rate_limited:
            self._free_at = max(now, self._free_at) + len(data) / profile.bandwidth_bytes_per_s
        else:
            self._free_at = now
        arrival = self._free_at + profile.delay_s + self._rng.uniform(0.0, profile.jitter_s)
        return lost, corrupted, arrival


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)
