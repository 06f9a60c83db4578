"""``agilenn server``: the inference server daemon.

Settings come from ``--config FILE`` (TOML), then ``AGILENN_*`` environment
variables (``AGILENN_MAX_BATCH_SIZE=64``), then flags. SIGTERM or Ctrl-C stop
it gracefully (in-flight requests are answered); a second one forces the exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from server_node.config import ServerConfig
from server_node.server import Server

from ..errors import AgileNNError
from .common import fail


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for journald, Loki and friends."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML file with ServerConfig fields")
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    for field in dataclasses.fields(ServerConfig):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                            default=None, metavar=field.name.upper(), help=f"default {field.default!r}")
    return parser


def configure_logging(level: str, log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("agilenn")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerConfig)}
    try:
        config = ServerConfig.load(args.config, **overrides)
    except (OSError, ValueError) as exc:
        return fail(str(exc))
    try:
        configure_logging(config.log_level, args.log_format)
        return Server(config).run()
    except (AgileNNError, OSError, ValueError) as exc:  # bad model, busy port, bad log level
        return fail(str(exc))
