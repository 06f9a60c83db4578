"""``agilenn edge``: run the device part on a stream of images, offload, print JSON lines.

One JSON object per prediction on stdout: the index, the label when known,
the predicted class, ``source`` (``offloaded`` or ``local-fallback``), the
fallback ``reason``, the latency, the bytes on the link and the server's
timings. Sources: ``mnist-sample`` (shipped), ``mnist`` (``--data-dir``), a
folder of images (PNG, JPEG, PGM, BMP or ``.npy``; converted to the model's
channels and size), or ``-`` for one ``.npy`` array of images on stdin.

Gateway mode (``--serial PORT --server ENDPOINT``): an MCU on the serial port
runs the device part itself; its requests are relayed to the server and the
answers sent back. It runs until SIGTERM or Ctrl-C, then prints its counters.

Settings come from ``--config FILE`` (TOML), then ``AGILENN_*`` variables,
then flags. Logs go to stderr (JSON lines, or ``--log-format text``);
``--metrics-port`` serves Prometheus metrics; ``--curve-secret-key`` with
``--curve-server-key`` reaches a CURVE-protected server or broker.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from edge_node.config import EdgeConfig
from edge_node.daemon import EdgeNode, GatewayNode
from transports.emulator import PROFILES

from .common import add_config_flags, fail, load_config, run_daemon

HELP = {
    "server": "tcp://host:port of agilenn server or broker (none: local only)",
    "source": "mnist-sample, mnist, a folder of images (png, jpg, pgm, bmp, npy), or - for stdin",
    "link": f"emulate this link under the client: {', '.join(sorted(PROFILES))}",
    "serial": "gateway mode: relay an MCU on this serial port to --server",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn edge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, EdgeConfig, HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(EdgeConfig, args)
        if config.link and config.link not in PROFILES:
            raise ValueError(f"unknown link {config.link!r}; pick from {', '.join(sorted(PROFILES))}")
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    if not config.serial:  # SIGHUP switches to the model the config names then (a rollout)
        return run_daemon(EdgeNode(config, reloader=lambda: load_config(EdgeConfig, args)))
    gateway = GatewayNode(config)
    code = run_daemon(gateway)
    print(json.dumps(gateway.stats), flush=True)
    return code
