"""``agilenn server``: the inference server daemon.

Settings come from ``--config FILE`` (TOML), then ``AGILENN_*`` environment
variables (``AGILENN_MAX_BATCH_SIZE=64``), then flags. SIGTERM or Ctrl-C stop
it gracefully: new requests get a ``shutting-down`` error, those already
batched are answered; a second one cancels what is left, and the socket and
the metrics port are closed either way. SIGHUP re-reads the settings and serves
the model versions they name (``model`` and ``models``), retiring the others:
a rollout without a restart.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from server_node.config import ServerConfig
from server_node.server import Server

from .common import add_config_flags, fail, load_config, run_daemon


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(parser, ServerConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(ServerConfig, args)
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    # SIGHUP reads the config anew (file, environment, these flags): the model versions it names
    # are served from then on, the others retired.
    return run_daemon(Server(config, reloader=lambda: load_config(ServerConfig, args)))
