"""Selective-repeat ARQ over serial frames. Sans-IO: no threads, no clock.

The caller feeds received bytes and the current time, and collects bytes to
write and events. Guarantees: each message is delivered to the peer exactly
once and in order, or it is reported failed to the sender. A message is split
into DATA frames of at most ``max_frame_payload`` bytes (FLAG_MORE on all but
the last) and reassembled on the other side.

* Sender: at most ``window`` frames in flight. A cumulative ACK(n) confirms
  everything before n; NAK(n) asks for frame n again at once; a frame unanswered
  for the retransmission timeout is sent again, up to ``max_retries`` times, after
  which its message and every message with frames in flight are reported
  failed and the stream is RESET so the receiver drops partial messages.
* The retransmission timeout is estimated from measured round trips (RFC 6298,
  :class:`~transports.rto.RetransmitTimer`): each ACK that newly confirms frames
  none of which was ever resent gives one sample, the newest of those frames'
  (Karn's rule: a resent frame's ACK may answer either copy, and a NAK answers a
  later frame's arrival, so neither gives one); so does a RESET_ACK to a RESET
  sent once. It starts at ``retransmit_timeout``, stays within
  [``min_retransmit_timeout``, ``max_retransmit_timeout``] and doubles at every
  timeout until the next sample.
* Receiver: buffers out-of-order frames inside the window, suppresses
  duplicates by sequence number, NAKs a gap once, and ACKs every DATA frame.
* Every sender starts with a RESET handshake carrying a fresh 32-bit epoch,
  so a peer that rebooted cannot mistake a new stream's frames for old
  duplicates, and a late copy of an old RESET cannot rewind the receiver.
* A receiver accepts no DATA before its first RESET: a receiver that restarted
  mid-stream answers the old stream's frames with RESYNC, and the sender fails
  what it had in flight and resets, instead of being acknowledged by a peer that
  never saw the start of the message.
* While a RESET goes unanswered (the peer is gone), queued messages wait; the
  driver's per-message timeout (:meth:`abandon`) reports them failed.
"""

from __future__ import annotations

import random
import struct
from collections import deque
from dataclasses import dataclass, field

from .framing import Frame, FrameKind, decode_frame, encode_frame, max_wire_size
from .rto import RetransmitTimer, RtoConfig

SEQ_SPACE = 256
_EPOCH = struct.Struct("<I")
# G in RFC 6298: ReliableLink runs the timers at least every 5 ms (its read slice) on a quiet line.
TIMER_GRANULARITY = 0.005


@dataclass(frozen=True)
class ArqConfig:
    max_frame_payload: int = 240
    window: int = 8
    retransmit_timeout: float = 0.25  # before the first round trip is measured
    max_retries: int = 10
    max_message_bytes: int = 256 * 1024
    min_retransmit_timeout: float = 0.01  # two of ReliableLink's 5 ms timer rounds
    max_retransmit_timeout: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.window <= SEQ_SPACE // 2:
            raise ValueError("window must lie in [1, 128] for 8-bit selective repeat")
        if not 1 <= self.max_frame_payload <= 0xFFFF:
            raise ValueError("max_frame_payload must lie in [1, 65535]")
        _ = self.rto_config  # raises ValueError unless min <= retransmit_timeout <= max

    @property
    def rto_config(self) -> RtoConfig:
        return RtoConfig(initial=self.retransmit_timeout, floor=self.min_retransmit_timeout,
                         ceiling=self.max_retransmit_timeout, granularity=TIMER_GRANULARITY)

    @classmethod
    def for_line_rate(cls, bytes_per_second: float, **overrides: object) -> ArqConfig:
        """Timeouts for a line whose only delay is serialisation (a UART).

        Initial and ceiling: 50 ms plus 2.5 times a full window's serialisation,
        the longest a frame's ACK can take (behind the whole window) with margin;
        backing off further would only delay recovery. Floor: 50 ms plus two full frames, one
        for the frame itself and one that the ACK may queue behind at the peer; a
        window of steady samples would otherwise shrink RTTVAR and with it the RTO
        below what the next frame queued behind the peer's own traffic takes.
        """
        base = cls(**overrides)  # type: ignore[arg-type]
        frame_seconds = max_wire_size(base.max_frame_payload) / bytes_per_second
        window_timeout = 0.05 + 2.5 * base.window * frame_seconds
        return cls(**{**base.__dict__, "retransmit_timeout": window_timeout,
                      "max_retransmit_timeout": window_timeout,
                      "min_retransmit_timeout": 0.05 + 2 * frame_seconds})


@dataclass
class _InFlight:
    wire: bytes
    message_id: int
    sent_at: float
    retries: int = 0


@dataclass
class ArqStats:
    frames_sent: int = 0
    retransmissions: int = 0
    bad_frames: int = 0
    duplicates: int = 0
    messages_delivered: int = 0
    messages_failed: int = 0
    resets: int = 0


def _distance(a: int, b: int) -> int:
    """How far ``b`` lies ahead of ``a`` in sequence space."""
    return (b - a) % SEQ_SPACE


@dataclass
class ArqEndpoint:
    config: ArqConfig = field(default_factory=ArqConfig)

    def __post_init__(self) -> None:
        self.stats = ArqStats()
        self._rx_buffer = bytearray()
        self._output: list[bytes] = []
        self._delivered: list[bytes] = []
        self._acknowledged: list[int] = []
        self._failed: list[int] = []
        # sender
        self._next_message_id = 0
        self._next_seq = 0
        self._pending: deque[tuple[int, bytes, bool]] = deque()
        self._inflight: dict[int, _InFlight] = {}
        self._fragments_left: dict[int, int] = {}  # not yet acknowledged
        self._fragment_totals: dict[int, int] = {}
        self._resetting = True
        self._reset_sent_at: float | None = None
        self._reset_resent = False
        self.retransmit_timer = RetransmitTimer(self.config.rto_config)
        self._epoch = random.SystemRandom().getrandbits(32)
        # receiver
        self._peer_epoch: bytes | None = None  # None until the first RESET: no stream yet
        self._expected = 0
        self._out_of_order: dict[int, Frame] = {}
        self._assembly = bytearray()
        self._discarding = False  # inside a message that broke max_message_bytes
        self._nak_sent_for: int | None = None

    # ----------------------------------------------------------- public API
    def check_size(self, message: bytes) -> None:
        if len(message) > self.config.max_message_bytes:
            raise ValueError(
                f"message of {len(message)} bytes exceeds max_message_bytes {self.config.max_message_bytes}"
            )

    def send(self, message: bytes, now: float) -> int:
        """Queue a message; returns its id for the acknowledged/failed events."""
        self.check_size(message)
        message_id = self._next_message_id
        self._next_message_id += 1
        size = self.config.max_frame_payload
        pieces = [message[i : i + size] for i in range(0, len(message), size)] or [b""]
        for index, piece in enumerate(pieces):
            self._pending.append((message_id, piece, index < len(pieces) - 1))
        self._fragments_left[message_id] = self._fragment_totals[message_id] = len(pieces)
        self._pump(now)
        return message_id

    def abandon(self, message_id: int, now: float) -> bool:
        """Give up on a message not yet fully sent (caller timeout); True if it was pending."""
        if message_id not in self._fragments_left:
            return False
        self._fail({message_id}, now)
        return True

    def receive(self, data: bytes, now: float) -> None:
        self._rx_buffer += data
        view, offset = bytes(self._rx_buffer), 0
        while offset < len(view):
            end = view.find(b"\x00", offset)
            # decode_frame sees one candidate frame at a time: parsing stays linear.
            decoded = decode_frame(view[offset : len(view) if end < 0 else end + 1],
                                   self.config.max_frame_payload)
            if decoded.consumed == 0:
                break
            offset += decoded.consumed
            if decoded.error:
                self.stats.bad_frames += 1
            elif decoded.frame is not None:
                self._on_frame(decoded.frame, now)
        del self._rx_buffer[:offset]
        self._pump(now)

    def poll(self, now: float) -> None:
        """Run the retransmission timers."""
        timeout = self.retransmit_timer.rto
        if self._resetting:
            if self._reset_sent_at is not None and now - self._reset_sent_at >= timeout:
                self.retransmit_timer.back_off()
                self._send_reset(now, resend=True)
            return
        expired = [seq for seq, entry in self._inflight.items() if now - entry.sent_at >= timeout]
        for seq in expired:
            if self._inflight[seq].retries >= self.config.max_retries:
                failed = {e.message_id for e in self._inflight.values()}
                self._fail(failed, now)
                return
            self._retransmit(seq, now)
        if expired:  # one timeout, however many frames it caught: back off once
            self.retransmit_timer.back_off()
        self._pump(now)

    @property
    def retransmit_timeout(self) -> float:
        """The current retransmission timeout, in seconds."""
        return self.retransmit_timer.rto

    def take_frames(self) -> list[bytes]:
        """Encoded frames to write, oldest first."""
        out, self._output = self._output, []
        return out

    def take_output(self) -> bytes:
        """The same as :meth:`take_frames`, joined into one write."""
        return b"".join(self.take_frames())

    def take_delivered(self) -> list[bytes]:
        out, self._delivered = self._delivered, []
        return out

    def take_acknowledged(self) -> list[int]:
        out, self._acknowledged = self._acknowledged, []
        return out

    def take_failed(self) -> list[int]:
        out, self._failed = self._failed, []
        return out

    @property
    def idle(self) -> bool:
        return not self._pending and not self._inflight

    # ----------------------------------------------------------- sender side
    def _emit(self, frame: Frame) -> bytes:
        wire = encode_frame(frame)
        self._output.append(wire)
        self.stats.frames_sent += 1
        return wire

    def _send_reset(self, now: float, resend: bool = False) -> None:
        self._reset_sent_at, self._reset_resent = now, resend
        self._emit(Frame(FrameKind.RESET, self._next_seq, _EPOCH.pack(self._epoch)))

    def _pump(self, now: float) -> None:
        if self._resetting:
            if self._reset_sent_at is None and (self._pending or self._inflight):
                self._send_reset(now)
            return
        while self._pending and len(self._inflight) < self.config.window:
            message_id, piece, more = self._pending.popleft()
            seq = self._next_seq
            self._next_seq = (seq + 1) % SEQ_SPACE
            wire = self._emit(Frame(FrameKind.DATA, seq, piece, more))
            self._inflight[seq] = _InFlight(wire, message_id, now)

    def _retransmit(self, seq: int, now: float) -> None:
        entry = self._inflight[seq]
        entry.retries += 1
        entry.sent_at = now
        self._output.append(entry.wire)
        self.stats.frames_sent += 1
        self.stats.retransmissions += 1

    def _fail(self, message_ids: set[int], now: float) -> None:
        partly_sent = any(
            sum(1 for p in self._pending if p[0] == message_id) < self._fragment_totals[message_id]
            for message_id in message_ids
            if message_id in self._fragment_totals
        )
        if partly_sent:
            # The receiver may hold fragments of these messages, and the stream
            # is ordered: restart it, which fails whatever else is in flight too.
            message_ids = message_ids | {e.message_id for e in self._inflight.values()}
            self._inflight.clear()
            self._resetting, self._reset_sent_at = True, None
            self._epoch = (self._epoch + 1) % 2**32
            self.stats.resets += 1
        for message_id in sorted(message_ids):
            if self._fragments_left.pop(message_id, None) is not None:
                del self._fragment_totals[message_id]
                self._failed.append(message_id)
                self.stats.messages_failed += 1
        self._pending = deque(p for p in self._pending if p[0] not in message_ids)
        self._pump(now)

    def _on_ack(self, next_expected: int, now: float, sample: bool = True) -> None:
        confirmed = [self._inflight.pop(seq) for seq in list(self._inflight)
                     if 0 < _distance(seq, next_expected) <= self.config.window]
        if sample and confirmed:
            newest = max(entry.sent_at for entry in confirmed)
            self.retransmit_timer.observe(max(0.0, now - newest),
                                          retransmitted=any(entry.retries for entry in confirmed))
        for entry in confirmed:
            message_id = entry.message_id
            left = self._fragments_left[message_id] - 1
            if left:
                self._fragments_left[message_id] = left
            else:
                del self._fragments_left[message_id], self._fragment_totals[message_id]
                self._acknowledged.append(message_id)

    # ----------------------------------------------------------- receiver side
    def _on_frame(self, frame: Frame, now: float) -> None:
        if frame.kind is FrameKind.DATA:
            self._on_data(frame)
        elif frame.kind is FrameKind.ACK:
            self._on_ack(frame.seq, now)
        elif frame.kind is FrameKind.NAK:
            self._on_ack(frame.seq, now, sample=False)
            if frame.seq in self._inflight:
                self._retransmit(frame.seq, now)
        elif frame.kind is FrameKind.RESET:
            self._on_reset(frame)
        elif frame.kind is FrameKind.RESET_ACK:
            if (self._resetting and frame.seq == self._next_seq
                    and frame.payload == _EPOCH.pack(self._epoch)):
                if self._reset_sent_at is not None:
                    self.retransmit_timer.observe(max(0.0, now - self._reset_sent_at),
                                                  retransmitted=self._reset_resent)
                self._resetting, self._reset_sent_at = False, None
        elif frame.kind is FrameKind.RESYNC:
            if not self._resetting and self._inflight:
                # The peer lost our stream (it restarted): nothing in flight is confirmed.
                self._fail({e.message_id for e in self._inflight.values()}, now)

    def _on_reset(self, frame: Frame) -> None:
        if len(frame.payload) != _EPOCH.size:
            self.stats.bad_frames += 1
            return
        if frame.payload != self._peer_epoch:
            # A new stream. A late copy of the RESET we already applied must not
            # rewind us: it would deliver the frames after it a second time.
            self._peer_epoch = frame.payload
            self._expected = frame.seq
            self._out_of_order.clear()
            self._assembly.clear()
            self._discarding = False
            self._nak_sent_for = None
        self._emit(Frame(FrameKind.RESET_ACK, frame.seq, frame.payload))

    def _on_data(self, frame: Frame) -> None:
        if self._peer_epoch is None:
            self._emit(Frame(FrameKind.RESYNC, frame.seq))
            return
        ahead = _distance(self._expected, frame.seq)
        if ahead >= self.config.window:
            self.stats.duplicates += 1  # behind the window: already delivered
        elif frame.seq in self._out_of_order:
            self.stats.duplicates += 1
        else:
            self._out_of_order[frame.seq] = frame
            while self._expected in self._out_of_order:
                self._accept(self._out_of_order.pop(self._expected))
                self._expected = (self._expected + 1) % SEQ_SPACE
            if not self._out_of_order:
                self._nak_sent_for = None  # gap filled: a later gap here gets its own NAK
            elif self._nak_sent_for != self._expected:
                self._nak_sent_for = self._expected
                self._emit(Frame(FrameKind.NAK, self._expected))
        self._emit(Frame(FrameKind.ACK, self._expected))

    def _accept(self, frame: Frame) -> None:
        if self._discarding:
            self._discarding = frame.more  # skip the rest of the oversized message
            return
        self._assembly += frame.payload
        if len(self._assembly) > self.config.max_message_bytes:
            # A peer breaking the size limit: drop the whole message, not just its head.
            self._assembly.clear()
            self._discarding = frame.more
            self.stats.bad_frames += 1
            return
        if not frame.more:
            self._delivered.append(bytes(self._assembly))
            self._assembly.clear()
            self.stats.messages_delivered += 1
