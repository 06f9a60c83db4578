"""``agilenn plan``: which scheme, and which split, to run on a link and a device.

Measures each candidate's costs once on the first ``--n`` test images of the
workload (the device part's time and multiply-accumulates, its mean payload,
the server part's time) and predicts every candidate's latency on each
``--link`` and ``--device`` (:mod:`agilenn.bench.planner`): AgileNN, raw
offload, and each split8 cut, Neurosurgeon-style. Prints the ranking and the
recommendation; ``agilenn bench --split-layer auto`` runs split8 at the cut
recommended here. Predictions leave out Python's own overheads, so read them as
the floor of what ``agilenn bench`` measures.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from transports.emulator import PROFILES, get_profile

from ..bench.devices import DEVICE_PROFILES, DeviceModel, get_device, host_macs_per_second
from ..bench.planner import measure_costs, plan
from ..bench.schemes.offload import Baseline
from ..data import DATASET_HELP, dataset_spec, load_dataset
from ..errors import AgileNNError
from ..pretrained import DEFAULT_MODEL
from .common import fail, write_atomically


def _names(known: Sequence[str]) -> type:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(part for part in text.split(",") if part)
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {unknown or text!r}; pick from {', '.join(known)}")
        return names
    return parse  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--link", type=_names(sorted(PROFILES)), default=("serial-115200",),
                        help=f"comma-separated from {', '.join(sorted(PROFILES))}")
    parser.add_argument("--device", type=_names(sorted(DEVICE_PROFILES)), default=("host",),
                        help=f"comma-separated from {', '.join(sorted(DEVICE_PROFILES))}")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the AgileNN model")
    parser.add_argument("--baseline", default="pretrained:mnist-full-cnn", help="the full CNN (.agbl)")
    parser.add_argument("--dataset", default="mnist-sample", type=dataset_spec, help=DATASET_HELP)
    parser.add_argument("--data-dir", help="for --dataset mnist; or set AGILENN_DATA")
    parser.add_argument("--n", type=int, default=200, help="calibration images")
    parser.add_argument("--accuracy-tolerance", type=float, default=1.0, metavar="PP",
                        help="recommend the fastest within PP points of the most accurate")
    parser.add_argument("--json", type=Path, help="also write every prediction and measured cost here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.n < 1:
            raise ValueError("--n must be at least 1")
        images = load_dataset(args.dataset, "test", args.data_dir)
        images = images.head(min(args.n, len(images)))
        splits = list(Baseline.load(args.baseline).model.split_points)
        costs = measure_costs(args.model, args.baseline, images, splits)
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    host = host_macs_per_second()
    plans = [plan(costs, get_profile(link), DeviceModel(get_device(device), host), args.accuracy_tolerance)
             for device in args.device for link in args.link]
    for entry in plans:
        ranking = ", ".join(f"{c['name']} {c['predicted_ms']:.1f} ms ({100 * c['accuracy']:.1f}%)"
                            for c in entry["candidates"])
        print(f"{entry['link']} on {entry['device']}: run {entry['recommended']} "
              f"(split8 at its best: {entry['best_split8']}); {ranking}")
    if args.json:
        report = {"model": args.model, "baseline": args.baseline, "dataset": args.dataset,
                  "calibration_images": len(images), "plans": plans}
        write_atomically(args.json, (json.dumps(report, indent=2) + "\n").encode())
    return 0
