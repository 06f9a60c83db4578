"""``agilenn pair``: pair an MCU over a serial port, optionally pushing weights.

Waits for the device's HELLO on ``--port`` (any pyserial URL), accepts it if
it runs this model (or, with ``--push``, sends it this model's device part),
and records the outcome in ``--registry`` (a JSON file of paired devices).
C firmware (``agilenn export``) takes the int8 image the export wrote: ``--image
FW/weights.agw``. A push that fails midway (a cut link, a refused commit) leaves
the device on its old weights; the device says HELLO again and, with
``--attempts``, the host pushes again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from edge_node.pairing import PairingError, PairingHost, PairingRecord
from transports.errors import TransportError
from transports.reliable import open_serial_link

from ..errors import AgileNNError
from ..pretrained import DEFAULT_MODEL, load_checkpoint
from .common import fail, print_json, write_atomically

log = logging.getLogger("agilenn.pair")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn pair", description=__doc__)
    parser.add_argument("--port", required=True, help="serial port or pyserial URL")
    parser.add_argument("--baudrate", type=int, default=115200)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--push", action="store_true", help="update a device that runs another model")
    parser.add_argument("--registry", type=Path, default=Path("paired-devices.json"))
    parser.add_argument("--image", type=Path, help="the int8 AGW1 image to push to C firmware")
    parser.add_argument("--attempts", type=int, default=1,
                        help="HELLOs to answer until a push is applied (a device retries a failed push)")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a HELLO")
    return parser


def pair_until_done(host: PairingHost, attempts: int, wait: float) -> PairingRecord:
    """Answer HELLOs until one pairs without a failed push, or ``attempts`` run out."""
    for attempt in range(1, attempts + 1):
        try:
            record = host.pair_one(wait=wait)
        except (PairingError, TransportError) as exc:
            if attempt == attempts:
                raise
            log.warning("attempt %d: %s; waiting for the device to try again", attempt, exc)
            continue
        if record.accepted or not record.reason.startswith("update:") or attempt == attempts:
            return record
        log.warning("attempt %d: %s; waiting for the device to try again", attempt, record.reason)
    raise AssertionError("unreachable: the last attempt returns or raises")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        checkpoint = load_checkpoint(args.model)
        image = args.image.read_bytes() if args.image else b""
        with open_serial_link(args.port, args.baudrate) as link:
            host = PairingHost(link, checkpoint, push_weights=args.push, int8_image=image)
            record = pair_until_done(host, max(1, args.attempts), args.wait)
    except (AgileNNError, OSError, PairingError, TransportError, ValueError) as exc:
        return fail(f"pairing failed: {exc}")
    registry = json.loads(args.registry.read_text()) if args.registry.exists() else {}
    registry[record.device_id] = dataclasses.asdict(record)
    write_atomically(args.registry, (json.dumps(registry, indent=2, sort_keys=True) + "\n").encode())
    print_json(dataclasses.asdict(record))
    return 0 if record.accepted else 1
