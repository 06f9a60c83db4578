"""``agilenn eval``: accuracy, skewness and payload size of a trained model."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..data import DATASET_HELP, dataset_spec, load_dataset
from ..errors import AgileNNError
from ..evaluate import evaluate
from ..pretrained import DEFAULT_MODEL, load_checkpoint
from .common import fail, print_json, print_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn eval", description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"a .agnn file or pretrained:NAME (default {DEFAULT_MODEL})")
    parser.add_argument("--dataset", type=dataset_spec, default="mnist", help=DATASET_HELP)
    parser.add_argument("--data-dir", help="dataset folder (default: $AGILENN_DATA)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=0, help="first N samples only (0: all)")
    parser.add_argument("--ig-steps", type=int, default=16, help="Integrated Gradients steps")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        checkpoint = load_checkpoint(args.model)
        dataset = load_dataset(args.dataset, args.split, args.data_dir).head(args.limit)
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    report = evaluate(checkpoint, dataset, args.batch_size, args.ig_steps, progress=not args.json)
    if args.json:
        print_json(report)
    else:
        print_table(report)
    return 0
