"""Helpers shared by the subcommands: daemon settings as flags, atomic writes, errors."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any, TypeVar

from ..daemon import Daemon, DaemonConfig, configure_logging, write_atomically
from ..errors import AgileNNError

__all__ = ["write_atomically"]  # the subcommands' atomic write, from the daemon plumbing

ConfigT = TypeVar("ConfigT", bound=DaemonConfig)


def print_json(value: dict[str, Any]) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def print_table(report: dict[str, Any]) -> None:
    """One ``key  value`` line per entry, floats to four places: the human form of a JSON report."""
    width = max(map(len, report), default=0)
    for key, value in report.items():
        shown = f"{value:.4f}" if isinstance(value, float) else value
        print(f"{key.ljust(width)}  {shown}")


def fail(message: str) -> int:
    print(f"agilenn: error: {message}", file=sys.stderr)
    return 2


def add_config_flags(parser: argparse.ArgumentParser, config_class: type[DaemonConfig],
                     help_texts: dict[str, str] | None = None) -> None:
    """``--config FILE`` and one flag per config field (``--max-batch-size``), typed like its default."""
    parser.add_argument("--config", help=f"TOML file with {config_class.__name__} fields")
    for field in dataclasses.fields(config_class):
        default = field.default
        extra = (help_texts or {}).get(field.name, "")
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(default), default=None,
                            metavar=field.name.upper(),
                            help=f"{extra}{'; ' if extra else ''}default {default!r}")


def load_config(config_class: type[ConfigT], args: argparse.Namespace) -> ConfigT:
    """Defaults, then the TOML file, then ``AGILENN_*`` variables, then the flags given."""
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)}
    return config_class.load(args.config, **overrides)


def run_daemon(daemon: Daemon) -> int:
    """Set up logging and run; a bad model, a busy port or a bad setting is one clean error line.

    The ``agilenn`` logger is put back as it was afterwards, for callers that run
    several commands in one process (tests, notebooks).
    """
    logger = logging.getLogger("agilenn")
    handlers, level = logger.handlers[:], logger.level
    try:
        configure_logging(daemon.config.log_level, daemon.config.log_format)
        return daemon.run()
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)
