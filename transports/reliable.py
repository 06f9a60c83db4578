"""A reliable message link: the ARQ state machine driven over any byte pipe.

One background thread reads the pipe and runs the retransmission timers;
callers block in :meth:`ReliableLink.send` until their message is
acknowledged or reported failed, and take received messages with :meth:`recv`.
Received messages wait in memory until taken: a consumer must keep calling
:meth:`recv` (the link has no receive-side flow control).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence

from .arq import ArqConfig, ArqEndpoint, ArqStats
from .errors import DeliveryFailed, TransportClosed
from .pipe import Pipe
from .serial_pipe import SerialPipe

log = logging.getLogger("agilenn.transports.reliable")
_READ_SLICE = 0.005  # how often timers run when the line is quiet


def open_serial_link(url: str, baudrate: int = 115200) -> ReliableLink:
    """A reliable link over a serial port, its timers sized for the line rate (8N1: 10 bits a byte)."""
    return ReliableLink(SerialPipe(url, baudrate), ArqConfig.for_line_rate(baudrate / 10))


class ReliableLink:
    def __init__(self, pipe: Pipe, config: ArqConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._pipe = pipe
        self._clock = clock
        self._endpoint = ArqEndpoint(config or ArqConfig())
        self._state = threading.Condition()
        self._write_lock = threading.Lock()
        self._inbox: collections.deque[bytes] = collections.deque()
        self._outcomes: dict[int, bool] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="agilenn-reliable-link", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> ArqStats:
        return self._endpoint.stats

    def send(self, message: bytes, timeout: float = 10.0) -> None:
        """Block until the peer acknowledged ``message``; DeliveryFailed otherwise."""
        if not self.send_many([message], timeout)[0]:
            raise DeliveryFailed(f"a {len(message)}-byte message was not acknowledged")

    def send_many(self, messages: Sequence[bytes], timeout: float = 10.0) -> list[bool]:
        """Queue all messages at once (pipelined) and wait for each one's outcome.

        Returns, in order, whether each was acknowledged; those still unconfirmed
        after ``timeout`` seconds are abandoned and reported False.
        """
        for message in messages:  # all or nothing: no half-queued batch
            self._endpoint.check_size(message)
        with self._write_lock:
            with self._state:
                if self._closed:
                    raise TransportClosed("reliable link is closed")
                now = self._clock()
                ids = [self._endpoint.send(message, now) for message in messages]
                frames = self._endpoint.take_frames()
            self._write(frames)
        deadline = self._clock() + timeout
        with self._state:
            while not self._closed and any(i not in self._outcomes for i in ids):
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                self._state.wait(remaining)
            for message_id in ids:
                if message_id not in self._outcomes:
                    self._endpoint.abandon(message_id, self._clock())
            self._collect()
            return [self._outcomes.pop(message_id, False) for message_id in ids]

    def recv(self, timeout: float) -> bytes | None:
        """The next message from the peer, in order; None after ``timeout`` s."""
        deadline = self._clock() + timeout
        with self._state:
            while not self._inbox:
                remaining = deadline - self._clock()
                if self._closed or remaining <= 0:
                    return None
                self._state.wait(remaining)
            return self._inbox.popleft()

    @property
    def closed(self) -> bool:
        """Closed here, or by the peer's end of the pipe (unplugged, hung up)."""
        return self._closed

    def close(self) -> None:
        with self._state:
            self._closed = True
            self._state.notify_all()
        self._thread.join()
        self._pipe.close()

    def __enter__(self) -> ReliableLink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _collect(self) -> None:
        """Move the endpoint's events into caller-visible state (lock held)."""
        self._inbox.extend(self._endpoint.take_delivered())
        for message_id in self._endpoint.take_acknowledged():
            self._outcomes[message_id] = True
        for message_id in self._endpoint.take_failed():
            self._outcomes[message_id] = False
        self._state.notify_all()

    def _run(self) -> None:
        try:
            while self._step():
                pass
        except TransportClosed as exc:
            log.info("link closed: %s", exc)
        except Exception:  # a dead driver must not leave senders waiting on a live-looking link
            log.exception("reliable link driver failed; closing the link")
        with self._state:
            self._closed = True
            self._state.notify_all()

    def _step(self) -> bool:
        """Read, run the timers, write; False once the link is closed."""
        with self._state:
            if self._closed:
                return False
        data = self._pipe.read(_READ_SLICE)
        # Lock order write -> state everywhere: output leaves in the order it was made.
        with self._write_lock:
            with self._state:
                now = self._clock()
                if data:
                    self._endpoint.receive(data, now)
                self._endpoint.poll(now)
                frames = self._endpoint.take_frames()
                self._collect()
            self._write(frames)
        return True

    def _write(self, frames: list[bytes]) -> None:
        # One write per frame: a byte pipe may deliver a write only once all of
        # it is sent, and the peer should ACK frame 1 while frame 8 is on the line.
        for frame in frames:
            self._pipe.write(frame)
