"""How much accuracy an AgileNN model loses on MNIST-C, combined and local-only.

Evaluates the model on the clean MNIST test set and on the full test set under
each MNIST-C corruption (``load_dataset("mnist-c:NAME", "test")``), through
``agilenn.evaluate.evaluate``, so every figure went through the device part,
the feature codec and the server part. Prints a table of accuracies and drops
in percentage points, then one JSON line.

    python tools/mnist_c_drop.py --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agilenn.data import DATA_ENV, load_dataset
from agilenn.data.mnist_c import CORRUPTIONS
from agilenn.errors import AgileNNError
from agilenn.evaluate import evaluate
from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def _corruption_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CORRUPTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown corruption(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(CORRUPTIONS)}"
        )
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"a .agnn file or pretrained:NAME (default {DEFAULT_MODEL})")
    parser.add_argument("--data-dir", default=os.environ.get(DATA_ENV) or str(SHARED_MNIST),
                        help=f"MNIST folder (default ${DATA_ENV}, else {SHARED_MNIST})")
    parser.add_argument("--corruptions", type=_corruption_list, default=list(CORRUPTIONS),
                        help="comma-separated MNIST-C names (default: all 15)")
    parser.add_argument("--ig-steps", type=int, default=16, help="Integrated Gradients steps (skewness only)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser


def _row(report: dict[str, Any], clean: dict[str, Any], seconds: float) -> dict[str, Any]:
    def drop(key: str) -> float:
        return round(100.0 * (clean[key] - report[key]), 2)

    return {
        "accuracy": report["accuracy"], "drop_pp": drop("accuracy"),
        "local_accuracy": report["local_accuracy"], "local_drop_pp": drop("local_accuracy"),
        "n_samples": report["n_samples"], "seconds": round(seconds, 1),
    }


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    width = max(len("corruption"), *map(len, rows))
    lines = [f"{'corruption':<{width}}  combined   drop pp  local-only   drop pp"]
    for name, row in rows.items():
        lines.append(f"{name:<{width}}  {100 * row['accuracy']:7.2f}%  {row['drop_pp']:8.2f}  "
                     f"{100 * row['local_accuracy']:9.2f}%  {row['local_drop_pp']:8.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        checkpoint = load_checkpoint(args.model)
        rows: dict[str, dict[str, Any]] = {}
        clean: dict[str, Any] = {}
        for name in ["clean", *args.corruptions]:
            began = time.perf_counter()
            spec = "mnist" if name == "clean" else f"mnist-c:{name}"
            dataset = load_dataset(spec, "test", args.data_dir)
            report = evaluate(checkpoint, dataset, args.batch_size, args.ig_steps)
            clean = clean or report
            rows[name] = _row(report, clean, time.perf_counter() - began)
    except (AgileNNError, OSError, ValueError) as exc:
        print(f"mnist_c_drop: error: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        print(format_table(rows))
    summary = {"model": args.model, "model_hash": checkpoint.model_hash, "split": "test",
               "seconds": round(time.perf_counter() - started, 1), "results": rows}
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
