"""An emulated serial line between two ports: what a real UART cable at a given rate would do.

A pty (or QEMU's emulated UART behind one) moves bytes as fast as the host can
copy them; a real ``serial-115200`` line moves 11,520 bytes a second. A
:class:`SerialLine` stands between the device's port and a new pty that the
host side opens instead: every byte crossing it, either way, goes through a
:class:`~transports.emulator.LinkEmulator` with the line's profile (rate, and
the byte errors and losses of a drill). :meth:`SerialLine.cut` drops everything
for a while, as an unplugged cable does.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from .emulator import LinkEmulator, LinkProfile
from .errors import TransportClosed
from .pipe import Pipe
from .serial_pipe import open_pty

_READ_SLICE_S = 0.02


class SerialLine:
    """Relays ``device`` <-> a new pty (``host_port``) through the emulated ``profile``, both ways."""

    def __init__(self, device: Pipe, profile: LinkProfile, seed: int = 0) -> None:
        self.profile = profile
        self._device = device
        try:
            self._host, self.host_port = open_pty()
        except OSError:
            device.close()  # the line owns the device's pipe from here on
            raise
        self._cut_until = 0.0
        self._stop = threading.Event()
        self.dropped_bytes = 0
        self._to_host = LinkEmulator(profile, self._host.write, seed)
        self._to_device = LinkEmulator(profile, device.write, seed + 1)
        self._threads = [
            threading.Thread(target=self._pump, args=(device, self._to_host), name="serial-line-up",
                             daemon=True),
            threading.Thread(target=self._pump, args=(self._host, self._to_device), name="serial-line-down",
                             daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def corrupted_bytes(self) -> int:
        """Bytes the line's byte errors changed, both ways."""
        return self._to_host.stats.corrupted_bytes + self._to_device.stats.corrupted_bytes

    def cut(self, seconds: float) -> None:
        """Drop every byte, both ways, for ``seconds`` from now."""
        self._cut_until = time.monotonic() + seconds

    def _pump(self, source: Pipe, line: LinkEmulator) -> None:
        while not self._stop.is_set():
            try:
                data = source.read(_READ_SLICE_S)
            except TransportClosed:
                return  # one end went away: the line is dead, as a cable with no one on it
            if not data:
                continue
            if time.monotonic() < self._cut_until:
                self.dropped_bytes += len(data)
                continue
            try:
                line.submit(data)
            except TransportClosed:
                return  # closing: what was still to cross is lost, as on a cable pulled out

    def close(self) -> None:
        self._stop.set()
        # The ends first: an emulator's delivery may be blocked writing into a pty nobody reads,
        # and only a closed pipe lets it go.
        self._host.close()
        self._device.close()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._to_host.close()
        self._to_device.close()

    def __enter__(self) -> SerialLine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
