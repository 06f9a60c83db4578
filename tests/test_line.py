"""The emulated serial line: bytes cross both ways, at the line's rate, and not while it is cut."""

from __future__ import annotations

import contextlib
import time

from transports.emulator import LinkProfile
from transports.errors import TransportClosed
from transports.line import SerialLine
from transports.serial_pipe import SerialPipe, open_pty


def _read_exactly(pipe: SerialPipe, count: int, timeout: float) -> bytes:
    deadline, data = time.monotonic() + timeout, b""
    while len(data) < count and time.monotonic() < deadline:
        data += pipe.read(0.05)
    return data


def test_bytes_cross_both_ways_at_the_line_rate() -> None:
    device_master, device_port = open_pty()
    profile = LinkProfile("slow", bandwidth_bytes_per_s=20_000.0, send_buffer_bytes=64)
    with SerialLine(device_master, profile) as line:
        device, host = SerialPipe(device_port), SerialPipe(line.host_port)
        try:
            message = bytes(range(256)) * 8  # 2,048 bytes: about 0.1 s at 20 kB/s
            started = time.monotonic()
            device.write(message)
            assert _read_exactly(host, len(message), 5.0) == message
            assert time.monotonic() - started >= 0.08  # the rate held it back
            host.write(b"answer")
            assert _read_exactly(device, 6, 5.0) == b"answer"
        finally:
            device.close()
            host.close()


def test_a_cut_line_drops_what_crosses_it_then_carries_again() -> None:
    device_master, device_port = open_pty()
    with SerialLine(device_master, LinkProfile("fast")) as line:
        device, host = SerialPipe(device_port), SerialPipe(line.host_port)
        try:
            line.cut(0.3)
            device.write(b"lost")
            assert _read_exactly(host, 4, 0.2) == b""
            time.sleep(0.2)
            device.write(b"kept")
            assert _read_exactly(host, 4, 5.0) == b"kept"
            assert line.dropped_bytes == 4
        finally:
            device.close()
            host.close()


def test_byte_errors_are_counted() -> None:
    device_master, device_port = open_pty()
    with SerialLine(device_master, LinkProfile("noisy", byte_error_rate=0.5), seed=3) as line:
        device, host = SerialPipe(device_port), SerialPipe(line.host_port)
        try:
            device.write(bytes(200))
            received = _read_exactly(host, 200, 5.0)
            assert len(received) == 200
            assert line.corrupted_bytes == sum(byte != 0 for byte in received) > 50
        finally:
            device.close()
            host.close()


def test_closing_a_line_nobody_reads_returns_promptly() -> None:
    device_master, device_port = open_pty()
    profile = LinkProfile("fast", bandwidth_bytes_per_s=1e7, send_buffer_bytes=64)  # a delivery thread
    line = SerialLine(device_master, profile)
    device = SerialPipe(device_port, write_timeout=0.5)
    try:
        with contextlib.suppress(TransportClosed):  # the device's write times out once all is full
            for _ in range(200):  # 200 KB toward a host port nobody opened: the pty's buffer fills up
                device.write(bytes(1024))
        time.sleep(0.3)
        started = time.monotonic()
        line.close()
        assert time.monotonic() - started < 5.0
    finally:
        device.close()
