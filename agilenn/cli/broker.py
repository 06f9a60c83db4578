"""``agilenn broker``: spread devices' requests over ``agilenn server --connect`` workers.

Devices connect to ``--frontend`` as if it were a server; workers, on this or
other hosts, run ``agilenn server --connect tcp://BROKER:BACKEND_PORT``. A
worker that dies has its in-flight requests retried on another one, or
answered with an ERROR after ``--max-attempts`` tries.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from server_node.server import captured_signals
from transports.broker import Broker

from .server import configure_logging


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn broker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frontend", default="tcp://127.0.0.1:5555", help="devices connect here")
    parser.add_argument("--backend", default="tcp://127.0.0.1:5556", help="workers connect here")
    parser.add_argument("--max-attempts", type=int, default=3)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    broker = Broker(args.frontend, args.backend, max_attempts=args.max_attempts)
    with captured_signals(broker.should_exit):
        broker.run()
    print(json.dumps(dict(broker.stats)))
    return 0
