"""Tests of the link emulator. Timing bounds are wide: CI machines are small and noisy."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from transports.emulator import (
    PROFILES,
    EmulatedPipe,
    LinkEmulator,
    LinkProfile,
    LinkStats,
    get_profile,
)
from transports.errors import TransportClosed
from transports.pipe import MemoryPipe

LOSSLESS = PROFILES["lossless"]


def _push(profile: LinkProfile, chunks: list[bytes], seed: int = 0) -> tuple[list[bytes], LinkStats]:
    """Submit every chunk, wait for the link to empty, return what arrived."""
    got: list[bytes] = []
    with LinkEmulator(profile, got.append, seed) as link:
        for chunk in chunks:
            link.submit(chunk)
        assert link.drain(timeout=5.0)
        return got, link.stats


def _indexed(count: int) -> list[bytes]:
    return [i.to_bytes(2, "big") for i in range(count)]


def test_serial_bandwidth_limits_the_writer_and_keeps_bytes() -> None:
    payload = bytes(range(256)) * 9 + bytes(range(4))  # 2,308 bytes
    chunks = [payload[i:i + 100] for i in range(0, len(payload), 100)]
    start = time.monotonic()
    got, stats = _push(PROFILES["serial-115200"], chunks)
    elapsed = time.monotonic() - start
    # the writer is released 256 B (the send buffer) early: (2308 - 256) / 11,520 B/s = 0.178 s
    assert 0.15 <= elapsed <= 0.5
    assert b"".join(got) == payload
    assert stats.delivered_bytes == len(payload) and stats.corrupted_bytes == 0


def test_two_writers_share_the_bandwidth() -> None:
    link = LinkEmulator(PROFILES["serial-115200"], lambda data: None)

    def write() -> None:
        for _ in range(10):
            link.submit(bytes(115))

    writers = [threading.Thread(target=write) for _ in range(2)]
    start = time.monotonic()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert link.drain(1.0)
    elapsed = time.monotonic() - start
    link.close()
    assert 0.15 <= elapsed <= 0.5  # 2,300 bytes at 11,520 B/s, not half that time
    assert link.stats.delivered_bytes == 2300


def test_delay_holds_a_chunk_back() -> None:
    arrived: list[float] = []
    delayed = LOSSLESS.with_overrides(delay_s=0.05)
    with LinkEmulator(delayed, lambda d: arrived.append(time.monotonic())) as link:
        start = time.monotonic()
        link.submit(b"x")
        assert arrived == []  # submit does not wait for the delay
        assert link.drain(timeout=2.0)
    assert 0.05 <= arrived[0] - start <= 0.5


def test_jitter_never_reorders() -> None:
    # Jitter (30 ms) is far larger than the gap between submissions, so any
    # reordering would show.
    chunks = _indexed(300)
    got: list[tuple[float, bytes]] = []
    jittery = LOSSLESS.with_overrides(delay_s=0.001, jitter_s=0.03)
    with LinkEmulator(jittery, lambda d: got.append((time.monotonic(), d))) as link:
        start = time.monotonic()
        for chunk in chunks:
            link.submit(chunk)
        assert link.drain(timeout=5.0)
    assert [d for _, d in got] == chunks
    # Jitter did apply: the largest of 300 uniform draws in [0, 30 ms] is near 30 ms.
    assert got[-1][0] - start >= 0.02


def _dropped(seed: int) -> tuple[set[int], LinkStats]:
    chunks = _indexed(1000)
    got, stats = _push(LOSSLESS.with_overrides(loss_rate=0.3), chunks, seed)
    assert got == sorted(got)  # survivors keep their order
    return set(range(1000)) - {int.from_bytes(c, "big") for c in got}, stats


def test_loss_rate_is_seeded_and_about_right() -> None:
    dropped, stats = _dropped(seed=1)
    assert 240 <= len(dropped) <= 360  # Binomial(1000, 0.3): 300 ± 4 sd
    assert stats.submitted_chunks == 1000
    assert stats.dropped_chunks == len(dropped)
    assert stats.delivered_chunks == 1000 - len(dropped)
    assert _dropped(seed=1)[0] == dropped
    assert _dropped(seed=2)[0] != dropped


def _corrupted(seed: int, rate: float) -> tuple[bytes, bytes, LinkStats]:
    sent = bytes(range(250)) * 80  # 20,000 bytes in 1,000-byte writes
    got, stats = _push(LOSSLESS.with_overrides(byte_error_rate=rate),
                       [sent[i:i + 1000] for i in range(0, len(sent), 1000)], seed)
    return sent, b"".join(got), stats


def test_byte_errors_are_seeded_and_about_right() -> None:
    sent, got, stats = _corrupted(seed=3, rate=0.01)
    differ = sum(a != b for a, b in zip(sent, got, strict=True))
    assert 140 <= differ <= 260  # Binomial(20000, 0.01): 200 ± 4 sd
    assert differ == stats.corrupted_bytes  # every hit changed its byte
    assert _corrupted(seed=3, rate=0.01)[1] == got
    assert _corrupted(seed=4, rate=0.01)[1] != got


def test_byte_error_rate_one_changes_every_byte() -> None:
    sent, got, stats = _corrupted(seed=0, rate=1.0)
    assert all(a != b for a, b in zip(sent, got, strict=True))
    assert stats.corrupted_bytes == len(sent)


def test_lossless_is_a_pass_through() -> None:
    threads_before = threading.active_count()
    got: list[bytes] = []
    link = LinkEmulator(LOSSLESS, got.append)
    assert threading.active_count() == threads_before  # no delivery thread
    start = time.monotonic()
    for chunk in _indexed(1000):
        link.submit(chunk)
        assert got[-1] == chunk  # delivered before submit returned
    assert time.monotonic() - start < 0.5
    link.close()


def test_named_profiles_and_their_numbers() -> None:
    assert set(PROFILES) == {"serial-115200", "ble-1m", "wifi-10m", "lte", "lossless"}
    assert all(name == p.name for name, p in PROFILES.items())
    assert PROFILES["serial-115200"].bandwidth_bytes_per_s == 115_200 / 10
    assert PROFILES["serial-115200"].delay_s == 0 and PROFILES["serial-115200"].loss_rate == 0
    assert PROFILES["ble-1m"].bandwidth_bytes_per_s == 87_500
    assert PROFILES["ble-1m"].delay_s == PROFILES["ble-1m"].jitter_s == 0.0075
    assert PROFILES["wifi-10m"].bandwidth_bytes_per_s == 1_250_000
    assert (PROFILES["wifi-10m"].delay_s, PROFILES["wifi-10m"].loss_rate) == (0.002, 0.001)
    assert PROFILES["lte"].bandwidth_bytes_per_s == 625_000
    assert (PROFILES["lte"].delay_s, PROFILES["lte"].jitter_s) == (0.025, 0.010)
    assert not LOSSLESS.rate_limited and LOSSLESS.delay_s == LOSSLESS.jitter_s == 0


def test_with_overrides_copies_and_validates() -> None:
    noisy = PROFILES["serial-115200"].with_overrides(byte_error_rate=1e-4)
    assert noisy.byte_error_rate == 1e-4
    assert noisy.bandwidth_bytes_per_s == 11_520
    assert PROFILES["serial-115200"].byte_error_rate == 0
    with pytest.raises(ValueError, match="loss_rate"):
        LOSSLESS.with_overrides(loss_rate=1.5)
    with pytest.raises(ValueError, match="delay_s"):
        LOSSLESS.with_overrides(delay_s=-1.0)


def test_get_profile() -> None:
    assert get_profile("lte") is PROFILES["lte"]
    with pytest.raises(ValueError, match="ble-1m.*lossless"):
        get_profile("carrier-pigeon")


def test_close_discards_pending_and_is_idempotent() -> None:
    got: list[bytes] = []
    link = LinkEmulator(LOSSLESS.with_overrides(delay_s=10.0), got.append)
    for chunk in _indexed(3):
        link.submit(chunk)
    start = time.monotonic()
    link.close()
    link.close()
    assert time.monotonic() - start < 1.0  # did not wait out the delay
    assert got == []
    assert link.stats.discarded_chunks == 3
    with pytest.raises(TransportClosed):
        link.submit(b"late")


def test_close_releases_a_blocked_writer() -> None:
    link = LinkEmulator(LOSSLESS.with_overrides(bandwidth_bytes_per_s=100.0), lambda d: None)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            link.submit(bytes(1000))  # 10 s of serialization at 100 B/s
        except TransportClosed as exc:
            errors.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.05)
    link.close()
    writer.join(timeout=2.0)
    assert not writer.is_alive()
    assert len(errors) == 1
    assert link.stats.discarded_chunks == 1 and link.stats.delivered_chunks == 0


def test_deliver_errors_are_logged_counted_and_survived(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="agilenn.transports.emulator")
    got: list[bytes] = []

    def deliver(data: bytes) -> None:
        if data == b"bad":
            raise RuntimeError("consumer broke")
        got.append(data)

    with LinkEmulator(LOSSLESS.with_overrides(delay_s=0.001), deliver) as link:
        for chunk in (b"bad", b"one", b"two"):
            link.submit(chunk)
        assert link.drain(timeout=2.0)
    assert got == [b"one", b"two"]
    assert link.stats.deliver_errors == 1 and link.stats.delivered_chunks == 2
    assert [r.name for r in caplog.records] == ["agilenn.transports.emulator"]
    assert "consumer broke" in caplog.text


def test_emulated_pipe_round_trip_and_close() -> None:
    a, b = MemoryPipe.pair()
    left = EmulatedPipe(a, PROFILES["wifi-10m"].with_overrides(loss_rate=0.0), seed=1)
    right = EmulatedPipe(b, PROFILES["lte"].with_overrides(loss_rate=0.0), seed=2)
    start = time.monotonic()
    left.write(b"ping")
    assert right.read(timeout=2.0) == b"ping"
    right.write(b"pong")
    assert left.read(timeout=2.0) == b"pong"
    assert time.monotonic() - start >= 0.002 + 0.025  # both one-way delays
    assert left.stats.delivered_chunks == right.stats.delivered_chunks == 1
    left.close()
    with pytest.raises(TransportClosed):
        right.read(timeout=1.0)
    with pytest.raises(TransportClosed):
        left.write(b"after close")
    right.close()
