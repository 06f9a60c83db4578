"""``agilenn demo``: the whole system on loopback, offline, in well under a minute.

Starts ``agilenn server`` and ``agilenn edge`` as real processes talking over
real ZeroMQ sockets, with the ``serial-115200`` link emulator under the edge,
on the pretrained model and the MNIST sample that ship in the package. Prints
accuracy, latency percentiles, bytes per request and the fallback count.

Then an MCU joins: a simulated MCU on one end of a real pty pair runs the
device part itself and offloads through a second ``agilenn edge --serial``
daemon (gateway mode) on the other end, to the same server. With
``--mcu-firmware FW`` (a folder ``agilenn export`` wrote) the MCU is the C
firmware instead, booted in QEMU (or as a host process) behind an emulated
``serial-115200`` cable, fed the sample images through its console.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from transports.errors import TransportError
from transports.zmq_transport import free_loopback_endpoint

from ..bench.stats import latency_percentiles
from ..daemon import stop_process
from ..errors import AgileNNError
from ..firmware.toolchain import Target
from ..pretrained import DEFAULT_MODEL, load_checkpoint
from .common import fail, print_json


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signals can only be caught on the main thread
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    original = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, original)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--link", default="serial-115200")
    parser.add_argument("--deadline-ms", type=float, default=500.0)
    parser.add_argument("--mcu-count", type=int, default=30,
                        help="inferences from the simulated MCU through the serial gateway (0: skip)")
    parser.add_argument("--mcu-firmware", type=Path, metavar="FW",
                        help="the MCU runs this exported C firmware (agilenn export), not the simulation")
    parser.add_argument("--mcu-emulator", choices=("cortex-m4", "host"), default="cortex-m4",
                        help="where --mcu-firmware runs: QEMU's Cortex-M4, or a host process")
    parser.add_argument("--json", action="store_true")
    return parser


def summarise(lines: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    latencies = np.array([line["latency_ms"] for line in lines])
    offloaded = [line for line in lines if line["source"] == "offloaded"]
    return {
        "requests": len(lines),
        "accuracy": float(np.mean([line["predicted"] == line["label"] for line in lines])),
        "latency_ms": latency_percentiles(latencies, digits=2),
        "bytes_up_mean": round(float(np.mean([line["bytes_up"] for line in offloaded] or [0])), 1),
        "bytes_down_mean": round(float(np.mean([line["bytes_down"] for line in offloaded] or [0])), 1),
        "fallbacks": len(lines) - len(offloaded),
        "fallback_reasons": sorted({line["reason"] for line in lines if line["reason"]}),
        "seconds": round(seconds, 1),
    }


@contextlib.contextmanager
def serial_gateway(port: str, server: str) -> Iterator[dict[str, Any]]:
    """``agilenn edge --serial port`` as a daemon for the block; its stats and exit code fill the dict."""
    gateway = subprocess.Popen(
        [sys.executable, "-m", "agilenn", "edge", "--serial", port, "--server", server,
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True)
    outcome: dict[str, Any] = {}
    try:
        yield outcome
        # Stop the gateway while the MCU is still on the line: it may be waiting for the
        # MCU's acknowledgement of the last answer.
        stop_process(gateway)
    finally:
        outcome["gateway_exit_code"] = stop_process(gateway)  # a no-op if already stopped
        with gateway:  # closes its stdout pipe
            outcome["gateway"] = json.loads((gateway.stdout.read() if gateway.stdout else "") or "{}")


def run_mcu(model: str, server: str, count: int) -> dict[str, Any]:
    """A simulated MCU on a pty offloads ``count`` sample images through a gateway daemon."""
    from agilenn.codec import FeatureCodec
    from agilenn.data import load_mnist_sample
    from edge_node.pairing import McuSimulator
    from transports.arq import ArqConfig
    from transports.reliable import ReliableLink
    from transports.serial_pipe import open_pty

    checkpoint = load_checkpoint(model)
    network, codec = checkpoint.build_model(), FeatureCodec(checkpoint.codec)
    images, labels = load_mnist_sample().batch(slice(0, count))
    mcu_end, path = open_pty()
    # The gateway's block inside the link's: it is stopped while the MCU is still on the line.
    with ReliableLink(mcu_end, ArqConfig.for_line_rate(11_520)) as link, \
            serial_gateway(path, server) as gateway:
        mcu = McuSimulator(link, "mcu-demo-0", "0.1.0", bytes.fromhex(checkpoint.model_hash))
        results = [mcu.infer(network, codec, image, request_id=index + 1, timeout=10)
                   for index, image in enumerate(images)]
    correct = [label == int(truth) for (label, _), truth in zip(results, labels, strict=True)]
    return {"requests": len(results), "accuracy": float(np.mean(correct)),
            "offloaded": sum(source == "offloaded" for _, source in results), "device": "simulated",
            **gateway}


def run_firmware_mcu(fw_dir: Path, emulator: Target, server: str, count: int) -> dict[str, Any]:
    """The exported C firmware, booted on ``emulator`` behind a serial-115200 cable, offloads ``count``
    sample images through a gateway daemon."""
    from agilenn.data import load_mnist_sample

    from .mcu import classify_images, running

    sample = load_mnist_sample().head(count)
    with running(fw_dir, emulator, "serial-115200") as (firmware, port), \
            serial_gateway(port, server) as gateway:
        result = classify_images(firmware.console, sample.images, sample.labels)
    return {**result, "device": f"C firmware on {emulator}", **gateway}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mcu_firmware is not None:  # before any daemon starts
        from ..firmware.export import read_manifest

        try:
            read_manifest(args.mcu_firmware)
        except ValueError as exc:
            return fail(str(exc))
    endpoint = free_loopback_endpoint()
    launcher = [sys.executable, "-m", "agilenn"]
    started = time.monotonic()
    server = subprocess.Popen([*launcher, "server", "--model", args.model, "--bind", endpoint,
                               "--log-format", "text", "--log-level", "WARNING"])
    mcu: dict[str, Any] = {}
    try:
        with _terminate_raises():  # so a SIGTERM to the demo still stops every daemon
            edge = subprocess.run(  # run() kills the edge if anything interrupts it
                [*launcher, "edge", "--model", args.model, "--server", endpoint, "--link", args.link,
                 "--deadline-ms", str(args.deadline_ms), "--limit", str(args.count), "--timeout-s", "2",
                 "--log-level", "WARNING"],
                capture_output=True, text=True, timeout=300,
            )
            if edge.returncode == 0 and args.mcu_count > 0:
                mcu = run_firmware_mcu(args.mcu_firmware, args.mcu_emulator, endpoint, args.mcu_count) \
                    if args.mcu_firmware else run_mcu(args.model, endpoint, args.mcu_count)
    except (AgileNNError, OSError, TransportError, ValueError) as exc:
        return fail(f"the MCU part failed: {exc}")  # the finally below still stops the server
    finally:
        server_exit = stop_process(server)
    if edge.returncode != 0:
        return fail(f"edge node failed: {edge.stderr.strip()}")
    summary = summarise([json.loads(line) for line in edge.stdout.splitlines()], time.monotonic() - started)
    summary.update({"link": args.link, "server_exit_code": server_exit, "mcu": mcu})
    if args.json:
        print_json(summary)
    else:
        reasons = f" {summary['fallback_reasons']}" if summary["fallbacks"] else ""
        print(f"{summary['requests']} inferences over {args.link} in {summary['seconds']} s\n"
              f"  accuracy     {summary['accuracy']:.3f}\n"
              f"  latency ms   p50 {summary['latency_ms']['p50']}  p95 {summary['latency_ms']['p95']}"
              f"  p99 {summary['latency_ms']['p99']}\n"
              f"  bytes/request  {summary['bytes_up_mean']} up, {summary['bytes_down_mean']} down\n"
              f"  fallbacks    {summary['fallbacks']}{reasons}\n"
              f"  server exit  {server_exit}")
        if mcu:
            print(f"{mcu['requests']} inferences from an MCU ({mcu['device']}), through the serial gateway\n"
                  f"  accuracy     {mcu['accuracy']:.3f}\n"
                  f"  offloaded    {mcu['offloaded']} (the rest answered locally on the MCU)\n"
                  + (f"  latency ms   p50 {mcu['device_latency_ms']['p50']} on the MCU's clock, "
                     f"{mcu['latency_ms']['p50']} from the console; lost {mcu['lost']}\n"
                     if mcu.get("device_latency_ms") else "") +
                  f"  gateway      {mcu['gateway']} exit {mcu['gateway_exit_code']}")
    return 0 if server_exit == 0 and mcu.get("gateway_exit_code", 0) == 0 else 1
