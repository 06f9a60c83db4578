"""A pipe over any pyserial URL: a real port, a pty, ``loop://``, ``socket://``."""

from __future__ import annotations

import os
import select
import tty

import serial

from .errors import TransportClosed


class SerialPipe:
    def __init__(self, url: str, baudrate: int = 115200, write_timeout: float = 5.0) -> None:
        # A write timeout: a peer holding flow control must not hang close() forever.
        try:
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=0,
                                               write_timeout=write_timeout)
        except (serial.SerialException, ValueError) as exc:
            raise TransportClosed(f"cannot open serial port {url!r}: {exc}") from exc
        self.url = url

    def write(self, data: bytes) -> None:
        try:
            self._port.write(data)
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            # pyserial raises TypeError/AttributeError from some backends once closed.
            raise TransportClosed(f"{self.url}: write failed: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        try:
            self._port.timeout = max(timeout, 0.0)
            first = self._port.read(1)
            if not first:
                return b""
            self._port.timeout = 0
            return bytes(first + self._port.read(self._port.in_waiting))
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            raise TransportClosed(f"{self.url}: read failed: {exc}") from exc

    def close(self) -> None:
        self._port.close()


class PtyPipe:
    """The master side of a pseudo-terminal: an MCU simulator's end of a 'cable'.

    ``open_pty()`` returns this pipe and the path of the slave tty, which the
    host opens like any serial port (``SerialPipe(path)``).
    """

    def __init__(self, fd: int, slave_fd: int = -1) -> None:
        self.fd = fd
        # Holding the slave open keeps the pty from reporting a hang-up before
        # the host has opened its end.
        self._slave_fd = slave_fd
        os.set_blocking(fd, False)
        self._closed = False

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._closed:
                raise TransportClosed("pty closed")
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                select.select([], [self.fd], [], 0.05)  # the tty buffer is full: wait for room
            except OSError as exc:
                raise TransportClosed(f"pty write failed: {exc}") from exc

    def read(self, timeout: float) -> bytes:
        if self._closed:
            raise TransportClosed("pty closed")
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        if not ready:
            return b""
        try:
            return os.read(self.fd, 4096)
        except OSError as exc:  # EIO once the other side is gone
            raise TransportClosed(f"pty read failed: {exc}") from exc

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)
            if self._slave_fd >= 0:
                os.close(self._slave_fd)


def open_pty() -> tuple[PtyPipe, str]:
    """A new pty pair in raw mode: (master pipe, slave path)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    return PtyPipe(master, slave), os.ttyname(slave)
