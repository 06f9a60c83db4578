"""``agilenn pair``: pair an MCU over a serial port, optionally pushing weights.

Waits for the device's HELLO on ``--port`` (any pyserial URL), accepts it if
it runs this model (or, with ``--push``, sends it this model's device part),
and records the outcome in ``--registry`` (a JSON file of paired devices).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from edge_node.pairing import PairingError, PairingHost
from transports.errors import TransportError
from transports.reliable import open_serial_link

from ..errors import AgileNNError
from ..pretrained import DEFAULT_MODEL, load_checkpoint
from .common import fail, print_json, write_atomically


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn pair", description=__doc__)
    parser.add_argument("--port", required=True, help="serial port or pyserial URL")
    parser.add_argument("--baudrate", type=int, default=115200)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--push", action="store_true", help="update a device that runs another model")
    parser.add_argument("--registry", type=Path, default=Path("paired-devices.json"))
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for a HELLO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        checkpoint = load_checkpoint(args.model)
        with open_serial_link(args.port, args.baudrate) as link:
            record = PairingHost(link, checkpoint, push_weights=args.push).pair_one(wait=args.wait)
    except (AgileNNError, OSError, PairingError, TransportError, ValueError) as exc:
        return fail(f"pairing failed: {exc}")
    registry = json.loads(args.registry.read_text()) if args.registry.exists() else {}
    registry[record.device_id] = dataclasses.asdict(record)
    write_atomically(args.registry, (json.dumps(registry, indent=2, sort_keys=True) + "\n").encode())
    print_json(dataclasses.asdict(record))
    return 0 if record.accepted else 1
