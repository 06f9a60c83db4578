"""A pipe over any pyserial URL: a real port, a pty, ``loop://``, ``socket://``."""

from __future__ import annotations

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
