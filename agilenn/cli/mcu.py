"""``agilenn mcu``: boot exported firmware on an emulated Cortex-M4 (QEMU) or as a host process.

The firmware's link UART is the serial port to pair with (``agilenn pair``)
and to relay (``agilenn edge --serial``); its console UART plays the sensor.
The first line printed is JSON naming both ports. ``--line serial-115200``
puts an emulated cable of that rate between the firmware's UART and the port
printed (QEMU's UART itself runs as fast as the host copies bytes).

``--pair N`` has the device pair at boot (it says HELLO, takes a push into its
inactive weight slot, and tries again up to N times) and prints the outcome.
``--classify N`` then feeds N test images through the console, the device
offloading each through whatever answers on its link, prints accuracy, latency
percentiles (``latency_ms``: from the image's first byte on the console to the
answer; ``device_latency_ms``: the device's own clock, from the image in its
memory to the answer) and how many were offloaded, answered locally or lost,
and stops. Without it the device runs until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import threading
import time
from dataclasses import asdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from transports.emulator import get_profile
from transports.errors import TransportError
from transports.line import SerialLine
from transports.serial_pipe import SerialPipe

from ..bench.stats import latency_percentiles
from ..data import load_dataset
from ..errors import AgileNNError
from ..firmware.runner import Console, Firmware, FirmwareError, PairResult, Status, boot
from ..firmware.toolchain import CORTEX_M4, HOST, Target, ToolchainError, build
from .common import fail, print_json


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn mcu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firmware", type=Path, required=True, help="a folder agilenn export wrote")
    parser.add_argument("--emulator", choices=(CORTEX_M4, HOST), default=CORTEX_M4)
    parser.add_argument("--line", default="serial-115200",
                        help="link profile of the cable on the link UART ('none': the bare pty)")
    parser.add_argument("--pair", type=_in_range(0, 255), default=0, metavar="ATTEMPTS",
                        help="pair at boot, this many tries (0-255)")
    parser.add_argument("--pair-timeout-ms", type=_in_range(10, 65535), default=5000,
                        help="the device's wait for each answer (10-65535). The pairing host (agilenn pair) "
                             "must be listening within about ATTEMPTS x this after boot")
    parser.add_argument("--classify", type=int, default=0, metavar="N", help="feed N test images, then stop")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", help="dataset folder (default: $AGILENN_DATA)")
    return parser


def _in_range(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not in [{low}, {high}]")
        return value

    return parse


@contextlib.contextmanager
def running(fw_dir: Path, emulator: Target, line: str) -> Iterator[tuple[Firmware, str]]:
    """The booted firmware and the port its link is reached on (through the emulated line, if any)."""
    build(fw_dir, emulator)
    with boot(fw_dir, emulator) as firmware:
        if line == "none":
            yield firmware, firmware.link_port
            return
        with SerialLine(SerialPipe(firmware.link_port), get_profile(line)) as cable:
            yield firmware, cable.host_port


def classify_images(console: Console, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Feed ``images`` through the device's sensor port; what came back, and how fast."""
    latencies, on_device, outcomes = [], [], []
    lost = 0
    for image, label in zip(images, labels, strict=True):
        started = time.perf_counter()
        try:
            answer = console.classify(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
        except FirmwareError:
            lost += 1
            continue
        latencies.append(1e3 * (time.perf_counter() - started))
        on_device.append(answer.device_us / 1e3)
        outcomes.append((answer.label == int(label), answer.offloaded))
    return {
        "requests": len(images),
        "accuracy": float(np.mean([correct for correct, _ in outcomes])) if outcomes else 0.0,
        "offloaded": sum(offloaded for _, offloaded in outcomes),
        "local": sum(not offloaded for _, offloaded in outcomes),
        "lost": lost,
        "latency_ms": latency_percentiles(np.asarray(latencies), digits=1) if latencies else {},
        # From the image in the device's memory to its answer: what a sensor-driven device sees.
        "device_latency_ms": latency_percentiles(np.asarray(on_device), digits=1) if on_device else {},
    }


def _plain(answer: PairResult | Status) -> dict[str, Any]:
    """A console answer as JSON values: the model hash in hex."""
    return {key: value.hex() if isinstance(value, bytes) else value for key, value in asdict(answer).items()}


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        test = load_dataset(args.dataset, "test", args.data_dir).head(args.classify) \
            if args.classify else None
        with running(args.firmware, args.emulator, args.line) as (firmware, port):
            print(json.dumps({"link": port, "console": firmware.console.port_name, "mode": firmware.mode,
                              "line": args.line}), flush=True)
            if args.pair:  # printed at once: the device keeps running on what it paired with
                print(json.dumps({"pair": _plain(firmware.console.pair(args.pair, args.pair_timeout_ms))}),
                      flush=True)
            report: dict[str, Any] = {}
            if test is not None:
                report["classify"] = classify_images(firmware.console, test.images, test.labels)
            else:
                _wait_for_signal()
            report["status"] = _plain(firmware.console.status())
            print_json(report)
    except (AgileNNError, OSError, FirmwareError, ToolchainError, TransportError, ValueError) as exc:
        return fail(str(exc))
    return 0
