"""``agilenn broker``: spread devices' requests over ``agilenn server --connect`` workers.

Devices connect to ``--frontend`` as if it were a server; workers, on this or
other hosts, run ``agilenn server --connect tcp://BROKER:BACKEND_PORT``. A
worker that dies has its in-flight requests retried on another one, or
answered with an ERROR after ``--max-attempts`` tries. Settings layer like the
server's (``--config``, ``AGILENN_*``, flags). With ``--curve-secret-key`` and
``--curve-allowlist`` the frontend lets in only the listed devices; with
``--curve-worker-allowlist`` too, the backend lets in only the listed workers
(run them with ``--curve-secret-key`` and ``--curve-server-key``). On exit it
prints its counters as JSON.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from server_node.broker import Broker
from server_node.config import BrokerConfig

from .common import add_config_flags, fail, load_config, run_daemon


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn broker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, BrokerConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(BrokerConfig, args)
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    broker = Broker(config)
    code = run_daemon(broker)
    print(json.dumps(dict(broker.stats)), flush=True)
    return code
