"""Issue #10's table: every adaptation method on several MNIST-C corruptions, and a plot.

    python tools/adapt_figures.py --data-dir ../shared/data/mnist --corruptions rotate,fog,shot_noise,stripe

For each corruption: the shipped model's accuracy on the clean and the full
shifted test sets; then each method adapts on ``--samples`` shifted training
images, and the adapted model is evaluated on the full shifted test set
(combined and local-only), on the clean test set, and for skewness on the
first ``--skew-samples`` shifted test images. Recovery is
``(after - before) / (clean - before)``. Prints a table and one JSON line, and
writes ``adapt_accuracy_vs_memory.png`` into ``--plot`` when given.
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

import torch

from agilenn.adapt.adapter import METHODS, AdaptConfig, accuracies, adapt
from agilenn.checkpoint import Checkpoint
from agilenn.data import load_dataset
from agilenn.evaluate import evaluate
from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint


def recovery(after: float, before: float, clean: float) -> float:
    return (after - before) / (clean - before) if clean > before else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("AGILENN_DATA", "../shared/data/mnist"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--corruptions", default="rotate,fog,shot_noise,stripe")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--memory-budget", type=int, default=400_000, help="bytes, for sparse")
    parser.add_argument("--time-budget", type=float, default=0.3, help="for elastic")
    parser.add_argument("--skew-samples", type=int, default=1000)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(args.model)
    model = checkpoint.build_model()
    clean = load_dataset("mnist", "test", args.data_dir)
    clean_before = accuracies(model, clean)
    rows: list[dict[str, Any]] = []
    for corruption in args.corruptions.split(","):
        train = load_dataset(f"mnist-c:{corruption}", "train", args.data_dir).head(args.samples)
        shifted = load_dataset(f"mnist-c:{corruption}", "test", args.data_dir)
        before = accuracies(model, shifted)
        for method in args.methods.split(","):
            config = AdaptConfig(method=method, epochs=args.epochs, lr=args.lr,
                                 memory_budget=args.memory_budget, time_budget=args.time_budget)
            started = time.perf_counter()
            result = adapt(model, train, config)
            after, clean_after = accuracies(result.model, shifted), accuracies(result.model, clean)
            adapted = Checkpoint.from_model(result.model, checkpoint.codec)
            skew = evaluate(adapted, shifted.head(args.skew_samples), ig_steps=8)["skewness"]
            rows.append({
                "corruption": corruption, "method": method, "clean": clean_before[0],
                "before": before[0], "after": after[0],
                "recovery": recovery(after[0], before[0], clean_before[0]),
                "local_before": before[1], "local_after": after[1],
                "local_recovery": recovery(after[1], before[1], clean_before[1]),
                "clean_after": clean_after[0], "clean_drop_pp": 100 * (clean_before[0] - clean_after[0]),
                "skewness_after": skew, "peak_memory_estimated": result.peak_memory_estimated,
                "peak_memory_measured": result.peak_memory_measured,
                "full_update_peak_memory": result.full_update_peak_memory,
                "train_seconds": result.train_seconds, "seconds": time.perf_counter() - started,
                "selection": dict(result.selection.ratios)})
            row = rows[-1]
            print(f"{corruption:12s} {method:8s} before {row['before']:.4f} after {row['after']:.4f} "
                  f"recovery {row['recovery']:6.1%} "
                  f"local {row['local_before']:.4f}->{row['local_after']:.4f} "
                  f"({row['local_recovery']:6.1%}) clean drop {row['clean_drop_pp']:5.2f} pp "
                  f"skew {skew:.3f} peak {row['peak_memory_estimated']:>9,} B "
                  f"train {row['train_seconds']:5.1f} s", file=sys.stderr, flush=True)
    summary = {method: {key: sum(r[key] for r in rows if r["method"] == method)
                        / max(1, sum(r["method"] == method for r in rows))
                        for key in ("recovery", "local_recovery", "clean_drop_pp", "skewness_after",
                                    "peak_memory_estimated", "train_seconds")}
               for method in args.methods.split(",")}
    for method, values in summary.items():
        print(f"{method:8s} mean recovery {values['recovery']:6.1%}  local {values['local_recovery']:6.1%}  "
              f"clean drop {values['clean_drop_pp']:5.2f} pp  skewness {values['skewness_after']:.3f}  "
              f"peak {values['peak_memory_estimated']:>11,.0f} B  train {values['train_seconds']:5.1f} s")
    print(json.dumps({"clean_accuracy": clean_before[0], "clean_local_accuracy": clean_before[1],
                      "summary": summary, "rows": rows}))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        for method in args.methods.split(","):
            mine = [r for r in rows if r["method"] == method]
            axis.scatter([r["peak_memory_estimated"] / 1024 for r in mine], [r["after"] for r in mine],
                         label=method)
        axis.set_xscale("log")
        axis.set_xlabel("peak training memory (KiB, estimated = measured)")
        axis.set_ylabel("accuracy on the shifted test set")
        axis.legend()
        args.plot.mkdir(parents=True, exist_ok=True)
        figure.savefig(args.plot / "adapt_accuracy_vs_memory.png", dpi=120, bbox_inches="tight")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
