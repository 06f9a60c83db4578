"""``agilenn mcu-sim``: a simulated MCU on a pty that pairs with ``agilenn pair``.

Prints the pty path to open on the host side as its first line, then sends
HELLO and follows the pairing protocol, and prints the outcome as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from edge_node.pairing import McuSimulator, PairingError
from transports.arq import ArqConfig
from transports.errors import TransportError
from transports.reliable import ReliableLink
from transports.serial_pipe import open_pty

from .common import fail


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn mcu-sim", description=__doc__)
    parser.add_argument("--device-id", default="mcu-sim-0")
    parser.add_argument("--firmware", default="0.1.0")
    parser.add_argument("--model-hash", default="", help="16 hex digits; empty: a blank device")
    parser.add_argument("--timeout", type=float, default=60.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pipe, path = open_pty()
    print(path, flush=True)
    try:
        with ReliableLink(pipe, ArqConfig.for_line_rate(11_520)) as link:
            device = McuSimulator(link, args.device_id, args.firmware, bytes.fromhex(args.model_hash))
            accepted, reason = device.pair(timeout=args.timeout)
    except (PairingError, TransportError, ValueError) as exc:
        return fail(f"pairing failed: {exc}")
    print(json.dumps({"accepted": accepted, "reason": reason, "model_hash": device.model_hash.hex(),
                      "weights_bytes": len(device.weights)}), flush=True)
    return 0 if accepted else 1
