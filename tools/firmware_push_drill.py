"""Weight pushes to the emulated MCU through a bad cable: cut mid-push, and bytes corrupted on the line.

Boots exported firmware (QEMU's Cortex-M4 by default) behind a ``serial-115200``
line that corrupts bytes at ``--byte-error-rate`` (frames that fail their
CRC-32, which the ARQ sends again). Each trial pushes the other of two model
versions (the exported one and a copy whose local bias is nudged, so its hash
differs) with ``agilenn pair``'s retry loop, and in ``--cut-share`` of the
trials cuts the line for ``--cut-s`` at a random moment of the push. After
every trial the device must run one of the two versions, and its VERIFY output
on a test image must be that version's int8 reference, byte for byte; anything
else counts as bricked.

    python tools/firmware_push_drill.py --firmware FW --trials 20 --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agilenn.checkpoint import Checkpoint
from agilenn.cli.mcu import running
from agilenn.cli.pair import pair_until_done
from agilenn.data import load_dataset
from agilenn.firmware.export import read_manifest
from agilenn.firmware.image import pack_image
from agilenn.firmware.int8 import Int8Model, quantize_model
from agilenn.firmware.runner import Console, Firmware
from agilenn.pretrained import load_checkpoint
from edge_node.pairing import PairingError, PairingHost
from transports.emulator import get_profile
from transports.errors import TransportError
from transports.line import SerialLine
from transports.reliable import open_serial_link
from transports.serial_pipe import SerialPipe


def nudged(checkpoint: Checkpoint, step: float = 0.01) -> Checkpoint:
    """A second version of the model: the same network with its local bias moved a little."""
    state = dict(checkpoint.state_dict)
    state["local_predictor.linear.bias"] = state["local_predictor.linear.bias"] + step
    return Checkpoint(checkpoint.config, checkpoint.codec, state, dict(checkpoint.metadata))


def push(port: str, checkpoint: Checkpoint, image: bytes, attempts: int, outcome: dict[str, Any],
         listening: threading.Event) -> None:
    """The host's side of one trial: answer HELLOs until a push is applied or attempts run out."""
    try:
        with open_serial_link(port, 115200) as link:
            host = PairingHost(link, checkpoint, push_weights=True, timeout=5.0, int8_image=image)
            listening.set()
            outcome["record"] = pair_until_done(host, attempts, wait=15.0)
    except (PairingError, TransportError) as exc:
        outcome["error"] = str(exc)
    finally:
        listening.set()


def healthy(console: Console, versions: dict[bytes, Int8Model], probe: bytes) -> tuple[bool, bytes]:
    """Whether the device runs one of ``versions`` exactly as its reference does; and which."""
    status = console.status()
    model = versions.get(status.model_hash)
    if model is None:
        return False, status.model_hash
    answer = console.verify(probe)
    dims = model.dims
    reference = model.run(np.frombuffer(probe, np.uint8).reshape(1, dims.in_ch, dims.in_h, dims.in_w))
    return answer.payload == model.payloads(reference)[0] and \
        bool((answer.accumulators == reference.acc[0]).all()), status.model_hash


def drill(firmware: Firmware, cable: SerialLine, plan: dict[bytes, tuple[Checkpoint, bytes]],
          versions: dict[bytes, Int8Model], probe: bytes, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    counts = {"trials": 0, "cut": 0, "applied_first_try": 0, "applied_after_retry": 0, "not_applied": 0,
              "bricked": 0, "device_attempts": 0}
    for _ in range(args.trials):
        active = firmware.console.status().model_hash
        target = next(h for h in plan if h != active)
        checkpoint, image = plan[target]
        host_outcome: dict[str, Any] = {}
        listening = threading.Event()
        host = threading.Thread(target=push, args=(cable.host_port, checkpoint, image, args.attempts,
                                                   host_outcome, listening))
        host.start()
        listening.wait(10.0)  # a HELLO sent before the host listens is lost, and costs the device a retry
        cut = rng.random() < args.cut_share
        if cut:  # somewhere in the ~1 s a 10 KB image takes on the line
            threading.Timer(rng.uniform(0.2, 1.0), cable.cut, args=(args.cut_s,)).start()
        result = firmware.console.pair(args.attempts, args.timeout_ms)
        host.join()
        ok, running_hash = healthy(firmware.console, versions, probe)
        counts["trials"] += 1
        counts["cut"] += cut
        counts["device_attempts"] += result.attempts
        if not ok:
            counts["bricked"] += 1
        elif running_hash == target:
            counts["applied_first_try" if result.attempts == 1 else "applied_after_retry"] += 1
        else:
            counts["not_applied"] += 1
        print(json.dumps({"trial": counts["trials"], "cut": cut, "outcome": result.outcome,
                          "device_attempts": result.attempts, "running": running_hash.hex(),
                          "target": target.hex(), "healthy": ok, "host": host_outcome.get("error", "ok")}),
              flush=True)
    status = firmware.console.status()
    return {**counts, "pushes_applied": status.pushes_applied, "pushes_failed": status.pushes_failed,
            "line_bytes_dropped_by_cuts": cable.dropped_bytes, "line_bytes_corrupted": cable.corrupted_bytes}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--firmware", type=Path, required=True, help="a folder agilenn export wrote")
    parser.add_argument("--emulator", choices=("cortex-m4", "host"), default="cortex-m4")
    parser.add_argument("--data-dir")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--timeout-ms", type=int, default=3000, help="the device's wait for each message")
    parser.add_argument("--cut-share", type=float, default=0.5)
    parser.add_argument("--cut-s", type=float, default=4.0, help="longer than the device's wait: a real cut")
    parser.add_argument("--byte-error-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    manifest = read_manifest(args.firmware)
    original = load_checkpoint(manifest.model)
    calibration = load_dataset("mnist", "train", args.data_dir).head(manifest.calibration_images).images
    probe = load_dataset("mnist", "test", args.data_dir).images[0].tobytes()
    plan, versions = {}, {}
    for checkpoint in (original, nudged(original)):
        model = quantize_model(checkpoint, calibration)
        plan[model.model_hash] = (checkpoint, pack_image(model))
        versions[model.model_hash] = model
    line = get_profile("serial-115200").with_overrides(byte_error_rate=args.byte_error_rate)
    started = time.monotonic()
    with running(args.firmware, args.emulator, "none") as (firmware, port), \
            SerialLine(SerialPipe(port), line, seed=args.seed) as cable:
        report = drill(firmware, cable, plan, versions, probe, args)
    report |= {"emulator": args.emulator, "byte_error_rate": args.byte_error_rate, "cut_s": args.cut_s,
               "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(report, indent=2))
    return 0 if report["bricked"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
