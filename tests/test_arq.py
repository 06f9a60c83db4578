"""The ARQ state machine on a simulated clock, through a faulty line."""

from __future__ import annotations

import random

import pytest

from transports.arq import ArqConfig, ArqEndpoint
from transports.framing import Frame, FrameKind, encode_frame

from .fakes import noisy_line

EPOCH = b"\x01\x02\x03\x04"
SMALL_FRAMES = ArqConfig(max_frame_payload=32, window=8, retransmit_timeout=0.05, max_retries=40)


def _messages(count: int, seed: int, max_size: int = 200) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(0, max_size)) for _ in range(count)]


def _exchange(messages: list[bytes], forward: object, backward: object,
              config: ArqConfig = SMALL_FRAMES, max_seconds: float = 120.0) -> tuple[
        list[bytes], list[int], list[int], ArqEndpoint]:
    """Send all messages from A to B over simulated time; returns B's deliveries and A's outcomes."""
    sender, receiver = ArqEndpoint(config), ArqEndpoint(config)
    ids = [sender.send(m, 0.0) for m in messages]
    delivered: list[bytes] = []
    acknowledged: list[int] = []
    failed: list[int] = []
    now = 0.0
    while now < max_seconds and len(acknowledged) + len(failed) < len(ids):
        now += 0.001
        for chunk in forward(sender.take_output()):  # type: ignore[operator]
            receiver.receive(chunk, now)
        for chunk in backward(receiver.take_output()):  # type: ignore[operator]
            sender.receive(chunk, now)
        sender.poll(now)
        receiver.poll(now)
        delivered += receiver.take_delivered()
        acknowledged += sender.take_acknowledged()
        failed += sender.take_failed()
    return delivered, acknowledged, failed, sender


def _clean(data: bytes) -> list[bytes]:
    return [data]


def test_clean_line_delivers_everything_in_order() -> None:
    messages = _messages(50, seed=1, max_size=500)
    delivered, acknowledged, failed, sender = _exchange(messages, _clean, _clean)
    assert delivered == messages
    assert sorted(acknowledged) == list(range(50)) and failed == []
    assert sender.stats.retransmissions == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_byte_error_rate_1e2_every_message_exactly_once_in_order(seed: int) -> None:
    messages = _messages(60, seed=seed)
    line = noisy_line(seed, byte_error_rate=1e-2, split=True)
    back = noisy_line(seed + 100, byte_error_rate=1e-2, split=True)
    delivered, acknowledged, failed, sender = _exchange(messages, line, back)
    assert failed == []
    assert delivered == messages  # exactly once, in order, unchanged
    assert sender.stats.retransmissions > 0  # the faults really happened


def test_dropped_and_duplicated_bytes_never_duplicate_or_reorder_messages() -> None:
    messages = _messages(60, seed=3)
    line = noisy_line(3, drop_rate=3e-3, duplicate_rate=3e-3, split=True)
    delivered, acknowledged, failed, _ = _exchange(messages, line, noisy_line(4, drop_rate=3e-3))
    assert failed == [] and delivered == messages


def test_a_dead_line_fails_messages_in_flight_and_queued_ones_on_abandon() -> None:
    config = ArqConfig(max_frame_payload=32, retransmit_timeout=0.01, max_retries=3)
    sender, receiver = ArqEndpoint(config), ArqEndpoint(config)
    ids = [sender.send(m, 0.0) for m in _messages(5, seed=5)]
    now, failed = 0.0, []
    # Let the RESET handshake through, then cut the line.
    receiver.receive(sender.take_output(), now)
    sender.receive(receiver.take_output(), now)
    sender.take_output()
    while now < 5.0 and len(failed) < len(ids):
        now += 0.005
        sender.poll(now)
        sender.take_output()  # lost
        failed += sender.take_failed()
    in_flight = sorted(failed)
    assert in_flight and in_flight == ids[: len(in_flight)]
    assert sender.stats.resets >= 1
    # Queued messages wait for the line (the RESET keeps retrying) until the
    # caller gives up on them; then they are reported failed too.
    queued = ids[len(in_flight) :]
    assert queued
    for message_id in queued:
        assert sender.abandon(message_id, now)
    assert sorted(sender.take_failed()) == queued
    assert sender.take_acknowledged() == []


def test_partial_message_is_discarded_after_a_reset() -> None:
    """A failed multi-frame message must not be glued onto the next one."""
    config = ArqConfig(max_frame_payload=4, window=2, retransmit_timeout=0.01, max_retries=1)
    sender, receiver = ArqEndpoint(config), ArqEndpoint(config)
    sender.send(b"first-message", 0.0)  # 4 frames
    receiver.receive(sender.take_output(), 0.0)  # RESET
    sender.receive(receiver.take_output(), 0.0)  # RESET_ACK, then 2 frames go out
    first_two = sender.take_output()
    receiver.receive(first_two, 0.0)  # receiver holds "firs" + "t-me"; ACKs are lost
    receiver.take_output()
    failed: list[int] = []
    now = 0.0
    while not failed and now < 1.0:  # retries exhaust with the line cut
        now += 0.01
        sender.poll(now)
        sender.take_output()
        failed += sender.take_failed()
    assert failed == [0]
    sender.send(b"second", now)
    for _ in range(20):
        now += 0.01
        receiver.receive(sender.take_output(), now)
        sender.receive(receiver.take_output(), now)
        sender.poll(now)
    assert receiver.take_delivered() == [b"second"]


def test_duplicate_data_frames_are_suppressed() -> None:
    receiver = ArqEndpoint(SMALL_FRAMES)
    receiver.receive(encode_frame(Frame(FrameKind.RESET, 10, EPOCH)), 0.0)
    frame = encode_frame(Frame(FrameKind.DATA, 10, b"once"))
    receiver.receive(frame + frame + frame, 0.0)
    assert receiver.take_delivered() == [b"once"]
    assert receiver.stats.duplicates == 2


def test_out_of_order_frames_are_buffered_and_nak_asks_for_the_gap() -> None:
    receiver = ArqEndpoint(SMALL_FRAMES)
    receiver.receive(encode_frame(Frame(FrameKind.RESET, 0, EPOCH)), 0.0)
    receiver.take_output()
    receiver.receive(encode_frame(Frame(FrameKind.DATA, 1, b"b")), 0.0)
    assert receiver.take_delivered() == []
    assert encode_frame(Frame(FrameKind.NAK, 0)) in receiver.take_output()
    receiver.receive(encode_frame(Frame(FrameKind.DATA, 0, b"a")), 0.0)
    assert receiver.take_delivered() == [b"a", b"b"]


def test_sequence_numbers_wrap_around() -> None:
    messages = _messages(600, seed=6, max_size=20)  # > 256 frames
    delivered, _, failed, _ = _exchange(messages, _clean, _clean)
    assert failed == [] and delivered == messages


def test_abandoning_a_queued_message_fails_only_that_message() -> None:
    config = ArqConfig(max_frame_payload=8, window=1)
    sender = ArqEndpoint(config)
    first, second = sender.send(b"a" * 8, 0.0), sender.send(b"b" * 8, 0.0)
    assert sender.abandon(second, 0.0)
    assert sender.take_failed() == [second]
    assert not sender.abandon(second, 0.0)
    assert first not in sender.take_failed()


def test_oversized_message_and_bad_config_are_refused() -> None:
    with pytest.raises(ValueError):
        ArqEndpoint(ArqConfig(max_message_bytes=10)).send(b"x" * 11, 0.0)
    with pytest.raises(ValueError):
        ArqConfig(window=129)
    timeout = ArqConfig.for_line_rate(11_520).retransmit_timeout
    assert 0.3 < timeout < 1.0  # covers 8 x ~250-byte frames at 115200 baud


def _settle(a: ArqEndpoint, b: ArqEndpoint, now: float, steps: int = 50) -> float:
    for _ in range(steps):
        now += 0.01
        b.receive(a.take_output(), now)
        a.receive(b.take_output(), now)
        a.poll(now)
        b.poll(now)
    return now


def test_receiver_restart_mid_message_fails_the_message_instead_of_faking_delivery() -> None:
    """Review finding: a rebooted receiver acked old-stream frames it never assembled."""
    config = ArqConfig(max_frame_payload=4, window=4, retransmit_timeout=0.02, max_retries=5)
    sender, receiver = ArqEndpoint(config), ArqEndpoint(config)
    sender.send(b"warm-up", 0.0)  # the stream exists: RESET handshake done
    now = _settle(sender, receiver, 0.0)
    assert receiver.take_delivered() == [b"warm-up"] and sender.take_acknowledged() == [0]
    message_id = sender.send(b"head-and-tail-of-a-message", now)
    receiver.receive(sender.take_output()[:20], now)  # the first frame arrives, then a reboot
    receiver = ArqEndpoint(config)
    now = _settle(sender, receiver, now, steps=200)
    assert sender.take_failed() == [message_id]
    assert receiver.take_delivered() == []  # no tail delivered as a message of its own
    after = sender.send(b"after", now)
    _settle(sender, receiver, now)
    assert receiver.take_delivered() == [b"after"] and sender.take_acknowledged() == [after]


def test_a_late_copy_of_an_old_reset_does_not_rewind_the_receiver() -> None:
    """Review finding: a duplicated RESET made the receiver deliver a message twice."""
    sender, receiver = ArqEndpoint(SMALL_FRAMES), ArqEndpoint(SMALL_FRAMES)
    sender.send(b"hello", 0.0)
    reset = sender.take_output()
    receiver.receive(reset, 0.0)
    sender.receive(receiver.take_output(), 0.0)
    receiver.receive(sender.take_output(), 0.0)  # DATA "hello"; its ACK is lost
    receiver.take_output()
    receiver.receive(reset, 0.1)  # the late duplicate
    sender.receive(receiver.take_output(), 0.1)
    sender.poll(1.0)  # retransmits "hello"
    receiver.receive(sender.take_output(), 1.0)
    assert receiver.take_delivered() == [b"hello"]


def test_an_oversized_message_is_dropped_whole() -> None:
    """Review finding: the tail of an over-long message was delivered as a message."""
    big_sender = ArqEndpoint(ArqConfig(max_frame_payload=16, max_message_bytes=10_000))
    small_receiver = ArqEndpoint(ArqConfig(max_frame_payload=16, max_message_bytes=100))
    big_sender.send(bytes(222), 0.0)
    big_sender.send(b"next", 0.0)
    _settle(big_sender, small_receiver, 0.0)
    assert small_receiver.take_delivered() == [b"next"]
    assert small_receiver.stats.bad_frames == 1


def test_parsing_a_flood_of_garbage_is_linear() -> None:
    import time

    receiver = ArqEndpoint(SMALL_FRAMES)
    started = time.perf_counter()
    receiver.receive(bytes(200_000), 0.0)  # 200,000 empty delimiters
    assert time.perf_counter() - started < 1.0  # was ~2 s when quadratic
    assert receiver.take_delivered() == []
