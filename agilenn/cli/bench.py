"""``agilenn bench``: end-to-end latency of AgileNN against the alternatives, on your link and device.

Starts real ``agilenn server`` daemons on loopback, puts the link emulator
between them and each scheme's client, and classifies the same test images
with every scheme listed below.

Each request's latency is split into device, encode, transmit, queue,
server, reply and merge. With --device other than host, the device-side
stages are MODELLED from multiply-accumulate counts (see docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from typing import Any
from pathlib import Path

from transports.emulator import PROFILES

from ..bench.devices import DEVICE_PROFILES
from ..bench.config import BenchConfig
from ..bench.report import format_table
from ..bench.runner import run_bench
from ..bench.schemes import FAMILIES, family_names, select_families
from ..data import DATASET_HELP, dataset_spec
from ..errors import AgileNNError
from ..pretrained import DEFAULT_MODEL
from .common import fail, write_atomically


def _integers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _split_layers(text: str) -> tuple[int, ...]:
    """``auto`` (the empty tuple: the planner picks the latency-optimal cut) or integers."""
    return () if text == "auto" else _integers(text)


def _words(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def _families(text: str) -> tuple[str, ...]:
    try:
        return select_families([part for part in text.split(",") if part])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scheme_list() -> str:
    """The registered families and what each runs, for --help."""
    width = max(map(len, FAMILIES), default=0) + 2
    return "schemes:\n" + "\n".join(
        textwrap.fill(FAMILIES[name].summary, 78, initial_indent=f"  {name.ljust(width)}",
                      subsequent_indent=" " * (width + 2))
        for name in family_names()
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agilenn bench", description=f"{__doc__}\n{_scheme_list()}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the AgileNN model")
    parser.add_argument("--baseline", default="pretrained:mnist-full-cnn", help="the full CNN (.agbl)")
    parser.add_argument(
        "--tiny", default="pretrained:mnist-tiny-cnn", help="the standalone local CNN (.agbl)"
    )
    parser.add_argument("--link", default="serial-115200", choices=sorted(PROFILES))
    parser.add_argument("--device", default="host", choices=sorted(DEVICE_PROFILES))
    parser.add_argument("--firmware-report", metavar="JSON",
                        help="agilenn export --verify --json output for --model: price AgileNN's device part "
                             "from the instructions the emulator counted (a modelled --device only)")
    parser.add_argument("--cpi", type=float, default=1.0,
                        help="cycles per instruction assumed with --firmware-report (default 1.0)")
    parser.add_argument("--n", type=int, default=500, help="measured requests per scheme")
    parser.add_argument("--warmup", type=int, default=20, help="requests per scheme before measuring")
    parser.add_argument(
        "--schemes",
        type=_families,
        default=family_names(),
        help=f"comma-separated from {', '.join(family_names())}, or all",
    )
    parser.add_argument("--jpeg-quality", type=_integers, default=(10, 50, 90), help="e.g. 10,50,90")
    parser.add_argument(
        "--split-layer",
        type=_split_layers,
        default=(2, 4, 5),
        help="split8 cut points (1-5: after that many blocks of the full CNN), or auto: the cut "
        "agilenn plan finds fastest for this link and device (Neurosurgeon-style, from measured costs)",
    )
    parser.add_argument("--dataset", default="mnist-sample", type=dataset_spec, help=DATASET_HELP)
    parser.add_argument("--data-dir", help="for --dataset mnist; or set AGILENN_DATA")
    parser.add_argument("--window", type=int, default=100, help="requests per stability window")
    parser.add_argument("--stability-percentage", type=float, default=10.0)
    parser.add_argument(
        "--until-stable",
        action="store_true",
        help="add windows until the last three agree (at most --max-windows)",
    )
    parser.add_argument("--max-windows", type=int, default=20)
    parser.add_argument("--sweep", action="store_true",
                        help="run AgileNN, raw offload and split8 at its best cut over --sweep-links and "
                        "--sweep-workloads, and report where AgileNN wins (with --plot: sweep.png)")
    parser.add_argument("--sweep-links", type=_words, default=("serial-115200", "ble-1m", "wifi-10m"),
                        help="comma-separated link profiles (default: serial-115200,ble-1m,wifi-10m)")
    parser.add_argument("--sweep-workloads", type=_words, default=("mnist", "cluttered-mnist"),
                        help="comma-separated workloads W: pretrained:W with pretrained:W-full-cnn on the "
                        "test set W (default: mnist,cluttered-mnist)")
    parser.add_argument("--timeout-s", type=float, default=2.0, help="per attempt; lost messages cost this")
    parser.add_argument("--seed", type=int, default=0, help="the link emulator's loss and jitter")
    parser.add_argument("--json", type=Path, help="write the full report here")
    parser.add_argument("--plot", type=Path, help="write the three PNG figures into this folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = "agilenn bench " + " ".join(sys.argv[1:] if argv is None else argv)
    config = BenchConfig(
        model=args.model,
        baseline=args.baseline,
        tiny=args.tiny,
        link=args.link,
        device=args.device,
        firmware_report=args.firmware_report,
        cpi=args.cpi,
        n=args.n,
        warmup=args.warmup,
        families=args.schemes,
        jpeg_qualities=args.jpeg_quality,
        split_layers=args.split_layer,
        dataset=args.dataset,
        data_dir=args.data_dir,
        window=args.window,
        stability_percentage=args.stability_percentage,
        until_stable=args.until_stable,
        max_windows=args.max_windows,
        timeout_s=args.timeout_s,
        seed=args.seed,
        progress=not args.quiet,
        extra={"command": command},
    )
    if args.sweep:
        return _sweep(config, args)
    try:
        report = run_bench(config, on_scheme=None if args.quiet else _announce)
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.json, json.dumps(report, indent=2).encode())
        print(f"report: {args.json}")
    if args.plot:
        from ..bench.plots import write_plots  # matplotlib only when asked for

        for path in write_plots(report, args.plot):
            print(f"plot: {path}")
    return 0


def _sweep(config: BenchConfig, args: argparse.Namespace) -> int:
    from ..bench.sweep import plot_sweep, run_sweep

    unknown = [link for link in args.sweep_links if link not in PROFILES]
    if unknown:
        return fail(f"unknown link profiles {unknown}; known: {', '.join(sorted(PROFILES))}")

    def announce(point: dict[str, Any]) -> None:
        print(f"{point['workload']} on {point['link']}: AgileNN p50 {point['agilenn_p50_ms']:.2f} ms, "
              f"{point['p50_vs_raw']:.3f}x raw offload's, {point['p50_vs_best_split8']:.3f}x "
              f"{point['split8']}'s", flush=True)

    try:
        sweep = run_sweep(config, list(args.sweep_workloads), list(args.sweep_links), announce)
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    sweep["command"] = config.extra.get("command", "")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.json, json.dumps(sweep, indent=2).encode())
        print(f"report: {args.json}")
    if args.plot:
        print(f"plot: {plot_sweep(sweep, args.plot)}")
    return 0


def _announce(name: str, values: dict[str, object]) -> None:
    latency = values["latency_ms"]
    assert isinstance(latency, dict)
    print(f"{name}: p50 {latency['p50']:.2f} ms, accuracy {values['accuracy']}", file=sys.stderr, flush=True)
