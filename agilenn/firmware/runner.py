"""Booting the firmware and talking to its console (docs/FIRMWARE.md section 3).

:func:`boot` starts the host build (``build/agn_host``, a process on two ptys) or the Cortex-M4
build in QEMU (``qemu-system-arm -M mps2-an386``), reads the two ``char device redirected to ...
(label serialK)`` lines (serial0: the link, serial1: the console) and returns a :class:`Firmware`.
Its :class:`Console` sends the console's requests and parses their responses.

Under ``count_instructions`` QEMU runs with ``-icount shift=7``: every guest instruction advances
the virtual clock by 128 ns, so the firmware's 25 MHz timer counts instructions exactly
(``round(ticks * 40 / 128)``). Without it the timer runs on host time and the counts mean nothing;
:attr:`Firmware.counts_instructions` says which mode it booted.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

import numpy as np
import serial

from ..errors import AgileNNError
from .toolchain import CORTEX_M4, HOST, Target, artifact, require

ICOUNT_SHIFT = 7  # the firmware's AGN_ICOUNT_SHIFT (port_mps2.c)
BOOT_TIMEOUT_S = 15.0
CONSOLE_TIMEOUT_S = 10.0
QEMU_MACHINE = "mps2-an386"
_REDIRECT = re.compile(r"char device redirected to (\S+) \(label serial(\d)\)")
_CONFIG_DEFINE = re.compile(r"^#define (AGN_\w+) (\d+)", re.MULTILINE)

CMD_VERIFY, CMD_CLASSIFY, CMD_PAIR, CMD_STATUS, CMD_CALIBRATE = 0x01, 0x02, 0x03, 0x04, 0x05
RSP_ERROR = 0xEE
PAIR_OUTCOMES = ("same-model", "updated", "refused", "failed")


class FirmwareError(AgileNNError):
    """The firmware did not boot, went silent, or answered what the console protocol does not allow."""


class ConsoleRefused(FirmwareError):
    """The firmware answered a request with 0xEE and a reason."""


@dataclass(frozen=True)
class VerifyResult:
    instructions: int  # 0 where not counted
    accumulators: np.ndarray  # (classes,) int32
    logits_f16: np.ndarray  # (classes,) uint16: IEEE half bits
    payload: bytes

    @property
    def local_logits(self) -> np.ndarray:
        return self.logits_f16.view(np.float16).astype(np.float32)


@dataclass(frozen=True)
class ClassifyResult:
    label: int
    offloaded: bool  # False: the local class (no session, an error, or no answer within 2 s)
    local_class: int
    instructions: int
    device_us: int  # the device's own clock from the image in to the answer out (meaningless under -icount)


@dataclass(frozen=True)
class PairResult:
    outcome: Literal["same-model", "updated", "refused", "failed"]
    attempts: int
    active_slot: int
    model_hash: bytes
    reason: str


@dataclass(frozen=True)
class Status:
    active_slot: int
    model_hash: bytes
    pushes_applied: int
    pushes_failed: int
    offloaded: int
    local: int


class Console:
    """The firmware's console UART: one request, one response, each read within a timeout."""

    def __init__(self, port: str, classes: int, image_bytes: int, timeout: float = CONSOLE_TIMEOUT_S) -> None:
        self.port_name = port
        self.classes = classes
        self.image_bytes = image_bytes
        self.timeout = timeout
        try:
            self._port = serial.Serial(port, 115200, timeout=0.05, write_timeout=timeout)
        except (serial.SerialException, OSError) as exc:
            raise FirmwareError(f"cannot open the console {port}: {exc}") from exc
        self._port.reset_input_buffer()

    def close(self) -> None:
        self._port.close()

    # ------------------------------------------------------------------ requests
    def verify(self, image: bytes, timeout: float | None = None) -> VerifyResult:
        self._request(CMD_VERIFY, self._image(image))
        head = self._answer("VERIFY", 0x81, 4 + 6 * self.classes + 2, timeout)
        instructions = struct.unpack_from("<I", head)[0]
        accumulators = np.frombuffer(head, "<i4", self.classes, 4).astype(np.int32)
        logits = np.frombuffer(head, "<u2", self.classes, 4 + 4 * self.classes).astype(np.uint16)
        (length,) = struct.unpack_from("<H", head, 4 + 6 * self.classes)
        payload = self._read(length, "VERIFY's payload", timeout)
        return VerifyResult(instructions, accumulators, logits, payload)

    def classify(self, image: bytes, timeout: float | None = None) -> ClassifyResult:
        self._request(CMD_CLASSIFY, self._image(image))
        body = self._answer("CLASSIFY", 0x82, 11, timeout)
        label, source, local, instructions, elapsed_us = struct.unpack("<BBBII", body)
        if source not in (0, 1) or label >= self.classes or local >= self.classes:
            raise FirmwareError(f"CLASSIFY answered class {label}, source {source}, local class {local}")
        return ClassifyResult(label, source == 0, local, instructions, elapsed_us)

    def pair(self, attempts: int = 3, timeout_ms: int = 2000, wait: float | None = None) -> PairResult:
        """Ask the firmware to pair over its link (HELLO, then a push if the host sends one)."""
        if not 0 <= attempts <= 255 or not 0 <= timeout_ms <= 0xFFFF:
            raise ValueError("attempts must fit a byte and timeout_ms 16 bits")
        # Each attempt waits at most timeout_ms per message; a push of a 16 KB image is ~20 of them.
        wait = wait if wait is not None else self.timeout + attempts * (24 * timeout_ms / 1000 + 0.5)
        self._request(CMD_PAIR, struct.pack("<BH", attempts, timeout_ms))
        head = self._answer("PAIR", 0x83, 3 + 8 + 1, wait)
        outcome, used, slot = head[0], head[1], head[2]
        if outcome >= len(PAIR_OUTCOMES) or slot > 1 or used > attempts:
            raise FirmwareError(f"PAIR answered outcome {outcome}, {used} attempts, slot {slot}")
        reason = self._read(head[11], "PAIR's reason", wait).decode(errors="replace")
        return PairResult(PAIR_OUTCOMES[outcome], used, slot, bytes(head[3:11]), reason)  # type: ignore[arg-type]

    def status(self, timeout: float | None = None) -> Status:
        self._request(CMD_STATUS, b"")
        body = self._answer("STATUS", 0x84, 1 + 8 + 16, timeout)
        applied, failed, offloaded, local = struct.unpack_from("<4I", body, 9)
        if body[0] > 1:
            raise FirmwareError(f"STATUS names slot {body[0]}")
        return Status(body[0], bytes(body[1:9]), applied, failed, offloaded, local)

    def calibrate(self, n: int, timeout: float | None = None) -> int:
        """Instructions counted for the firmware's calibration loop of ``n`` rounds (2 n + 2 on Cortex-M)."""
        self._request(CMD_CALIBRATE, struct.pack("<I", n))
        (count,) = struct.unpack("<I", self._answer("CALIBRATE", 0x85, 4, timeout))
        return int(count)

    def raw(self, request: bytes, expect: int, timeout: float | None = None) -> bytes:
        """Send bytes as they are and read ``expect`` bytes back (for tests of bad requests)."""
        self._request_bytes(request)
        return self._read(expect, "the answer", timeout)

    # ------------------------------------------------------------------ plumbing
    def _image(self, image: bytes) -> bytes:
        if len(image) != self.image_bytes:
            raise ValueError(f"an image is {self.image_bytes} bytes for this firmware, not {len(image)}")
        return bytes(image)

    def _request(self, command: int, fields: bytes) -> None:
        # A late answer to an abandoned request must not be read as this one's.
        self._port.reset_input_buffer()
        self._request_bytes(bytes((command,)) + fields)

    def _request_bytes(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (serial.SerialException, OSError) as exc:
            raise FirmwareError(f"console {self.port_name}: write failed: {exc}") from exc

    def _read(self, count: int, what: str, timeout: float | None) -> bytes:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        data = bytearray()
        while len(data) < count:
            try:
                data += self._port.read(count - len(data))
            except (serial.SerialException, OSError) as exc:
                raise FirmwareError(f"console {self.port_name}: read failed: {exc}") from exc
            if len(data) < count and time.monotonic() > deadline:
                raise FirmwareError(f"no complete answer for {what}: {len(data)} of {count} bytes "
                                    f"({bytes(data[:32]).hex() or 'nothing'}) within the timeout")
        return bytes(data)

    def _answer(self, name: str, code: int, size: int, timeout: float | None) -> bytes:
        first = self._read(1, name, timeout)[0]
        if first == RSP_ERROR:
            length = self._read(1, f"{name}'s refusal", timeout)[0]
            reason = self._read(length, f"{name}'s refusal", timeout).decode(errors="replace")
            raise ConsoleRefused(f"the firmware refused {name}: {reason}")
        if first != code:
            raise FirmwareError(f"{name} answered with 0x{first:02x}, not 0x{code:02x}")
        return self._read(size, name, timeout)


def read_config(fw_dir: Path) -> dict[str, int]:
    """The numeric #defines of the generated ``agn_config.h``."""
    path = Path(fw_dir) / "agn_config.h"
    try:
        return {name: int(value) for name, value in _CONFIG_DEFINE.findall(path.read_text())}
    except OSError as exc:
        raise FirmwareError(f"cannot read {path}: {exc}") from exc


class Firmware:
    """A running firmware: its link port (for the serial protocol) and its console."""

    def __init__(self, process: subprocess.Popen[bytes], log: IO[bytes], link_port: str, console: Console,
                 target: Target, counts_instructions: bool) -> None:
        self.process = process
        self._log = log
        self.link_port = link_port
        self.console = console
        self.target = target
        self.counts_instructions = counts_instructions

    @property
    def mode(self) -> str:
        """How it booted, for reports: the target and whether instruction counts are exact."""
        if self.target == HOST:
            return "host process (no instruction counts)"
        if self.counts_instructions:
            return f"qemu {QEMU_MACHINE} -icount shift={ICOUNT_SHIFT} (exact instruction counts)"
        return f"qemu {QEMU_MACHINE} in real time (instruction counts not meaningful)"

    def output(self) -> str:
        """What the process printed so far."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def close(self) -> None:
        self.console.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()

    def __enter__(self) -> Firmware:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def command(fw_dir: Path, target: Target, count_instructions: bool = False,
            flash_file: Path | None = None) -> list[str]:
    """The command line that boots ``target`` (built already). ``flash_file`` (host only): the flash
    persists there across restarts, so killing the process is a power cut."""
    program = artifact(fw_dir, target)
    if not program.is_file():
        raise FirmwareError(f"{program} is not built: run agilenn.firmware.toolchain.build first")
    if target == HOST:
        return [str(program)] + (["--flash", str(flash_file)] if flash_file is not None else [])
    if flash_file is not None:
        raise ValueError("QEMU's mps2 flash is RAM and starts afresh at every boot: flash_file is host-only")
    qemu = require("qemu-system-arm")
    line = [qemu, "-M", QEMU_MACHINE, "-nographic", "-monitor", "none", "-serial", "pty", "-serial", "pty",
            "-kernel", str(program)]
    if count_instructions:
        line += ["-icount", f"shift={ICOUNT_SHIFT}"]
    return line


def boot(fw_dir: Path, target: Target, count_instructions: bool = False,
         timeout: float = BOOT_TIMEOUT_S, flash_file: Path | None = None) -> Firmware:
    """Start the firmware and open its console; FirmwareError if it does not come up within ``timeout``."""
    if target not in (HOST, CORTEX_M4):
        raise ValueError(f"unknown firmware target {target!r}")
    config = read_config(fw_dir)
    line = command(fw_dir, target, count_instructions, flash_file)
    log = tempfile.TemporaryFile()
    try:
        process = subprocess.Popen(line, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    except OSError as exc:
        log.close()
        raise FirmwareError(f"cannot start {line[0]}: {exc}") from exc
    try:
        ports = _wait_for_ports(process, log, timeout)
        console = Console(ports[1], config["AGN_CLASSES"], config["AGN_IMAGE_BYTES"])
    except BaseException:
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()
        raise
    return Firmware(process, log, ports[0], console, target, count_instructions and target == CORTEX_M4)


def _wait_for_ports(process: subprocess.Popen[bytes], log: IO[bytes], timeout: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        log.flush()
        text = os.pread(log.fileno(), 1 << 16, 0).decode(errors="replace")
        ports = {int(label): path for path, label in _REDIRECT.findall(text)}
        if 0 in ports and 1 in ports:
            return ports
        if process.poll() is not None:
            raise FirmwareError(f"the firmware exited with {process.returncode} before opening its ports; "
                                f"it printed:\n{text[-4000:] or '(nothing)'}")
        if time.monotonic() > deadline:
            raise FirmwareError(f"the firmware named no link and console ports within {timeout:.0f} s; "
                                f"it printed:\n{text[-4000:] or '(nothing)'}")
        time.sleep(0.02)
