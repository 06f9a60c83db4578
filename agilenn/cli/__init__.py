"""The ``agilenn`` command: git-style subcommands, each a ``main(argv)``.

Subcommand modules are imported only when chosen, so ``agilenn --help`` does
not pay for importing torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from .. import __version__

COMMANDS = {
    "train": ("agilenn.cli.train", "train an AgileNN model (reference + AgileNN stages)"),
    "eval": ("agilenn.cli.evaluate", "evaluate a model through the real codec path"),
    "codec": ("agilenn.cli.codec", "retune a model's feature codec (zstd level, dictionary)"),
    "adapt": ("agilenn.cli.adapt", "adapt the device part to drifted data within a memory/time budget"),
    "schedule": ("agilenn.cli.schedule", "plan a training step within a memory budget (recompute, page)"),
    "fleet": ("agilenn.cli.fleet", "fleet learning of the device part across devices, on Flower"),
    "server": ("agilenn.cli.server", "run the inference server daemon"),
    "broker": ("agilenn.cli.broker", "load-balance devices over server workers, with heartbeats"),
    "pair": ("agilenn.cli.pair", "pair an MCU over a serial port, optionally pushing weights"),
    "mcu-sim": ("agilenn.cli.mcu_sim", "a simulated MCU on a pty, for pairing and demos"),
    "export": ("agilenn.cli.export", "the device part as C99 int8 firmware; --verify runs it and compares"),
    "mcu": ("agilenn.cli.mcu", "boot exported firmware (QEMU Cortex-M4 or a host process) on serial ports"),
    "edge": ("agilenn.cli.edge", "run the device part on images, offload, print JSON lines"),
    "demo": ("agilenn.cli.demo", "server + edge on loopback over an emulated serial link"),
    "bench": ("agilenn.cli.bench", "end-to-end latency of AgileNN against the alternatives, per stage"),
    "plan": ("agilenn.cli.plan", "recommend a scheme and split for a link and a device, from measured costs"),
    "keygen": ("agilenn.cli.keygen", "write CURVE key pairs for servers and devices"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return (
        "usage: agilenn [--version] <command> [<args>]\n\ncommands:\n"
        + "\n".join(lines)
        + "\n\nRun 'agilenn <command> --help' for a command's options."
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"agilenn {__version__}")
        return 0
    if args[0] not in COMMANDS:
        print(f"agilenn: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args[0]][0])
    return int(module.main(args[1:]))
