"""Issue #10's table: every adaptation method on several MNIST-C corruptions, and a plot.

    python tools/adapt_figures.py --data-dir ../shared/data/mnist --corruptions rotate,fog,shot_noise,stripe

For each corruption: the shipped model's accuracy on the clean and the full
shifted test sets; then each method adapts on ``--samples`` shifted training
images (plus ``--replay`` clean training images it rehearses), in each
``--remote`` mode: ``split`` (split learning, the server adapting alongside, in
process) and ``fixed`` (the device alone, remote channels fixed). Each adapted
model is evaluated on the full shifted test set (combined and local-only), on
the clean test set, and for skewness on the first ``--skew-samples`` shifted
test images. Recovery is ``(after - before) / (clean - before)``.

``--time-to-accuracy`` also measures ElasticTrainer's figure: the training
time elastic selection needs to reach the full update's accuracy, against the
full update's, running elastic for 1, 2, ... epochs (up to 3x the full
update's) side by side. Prints a table and one JSON line, and writes
``adapt_accuracy_vs_memory.png`` into ``--plot`` when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from agilenn.adapt.adapter import METHODS, REMOTE_MODES, AdaptConfig, accuracies, adapt, with_replay
from agilenn.checkpoint import Checkpoint
from agilenn.data import ImageDataset, load_dataset
from agilenn.evaluate import evaluate
from agilenn.model import AgileNN
from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint

GOAL = 0.80


def recovery(after: float, before: float, clean: float) -> float:
    return (after - before) / (clean - before) if clean > before else float("nan")


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] for r in rows) / max(1, len(rows))


def _time_to_accuracy(model: AgileNN, train: ImageDataset, shifted: ImageDataset, config: AdaptConfig,
                      ) -> dict[str, Any]:
    """Elastic's training time to reach the full update's accuracy, and the full update's."""
    full = adapt(model, train, AdaptConfig(**{**config.__dict__, "method": "full"}))
    target = accuracies(full.model, shifted)[0]
    row: dict[str, Any] = {"full_accuracy": target, "full_seconds": full.train_seconds,
                           "full_device_seconds": full.train_seconds - full.server_seconds}
    for epochs in range(1, 3 * config.epochs + 1):
        settings = {**config.__dict__, "method": "elastic", "epochs": epochs}
        elastic = adapt(model, train, AdaptConfig(**settings))
        accuracy = accuracies(elastic.model, shifted)[0]
        row.update(elastic_epochs=epochs, elastic_accuracy=accuracy, elastic_seconds=elastic.train_seconds,
                   elastic_device_seconds=elastic.train_seconds - elastic.server_seconds)
        if accuracy >= target:
            row["speedup"] = full.train_seconds / elastic.train_seconds
            row["device_speedup"] = row["full_device_seconds"] / row["elastic_device_seconds"]
            return row
    row["speedup"] = row["device_speedup"] = None  # never reached it
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("AGILENN_DATA", "../shared/data/mnist"))
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--corruptions", default="rotate,fog,shot_noise,stripe")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--remote", default=",".join(REMOTE_MODES))
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--replay", type=int, default=0, help="clean training images rehearsed too")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--memory-budget", type=int, default=400_000, help="bytes, for sparse")
    parser.add_argument("--time-budget", type=float, default=0.3, help="for elastic")
    parser.add_argument("--skew-samples", type=int, default=1000)
    parser.add_argument("--time-to-accuracy", action="store_true")
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(args.model)
    model = checkpoint.build_model()
    clean = load_dataset("mnist", "test", args.data_dir)
    shipped = load_dataset("mnist", "train", args.data_dir)
    clean_before = accuracies(model, clean)
    rows: list[dict[str, Any]] = []
    timings: list[dict[str, Any]] = []
    for corruption in args.corruptions.split(","):
        train = load_dataset(f"mnist-c:{corruption}", "train", args.data_dir).head(args.samples)
        train = with_replay(train, shipped, args.replay)
        shifted = load_dataset(f"mnist-c:{corruption}", "test", args.data_dir)
        before = accuracies(model, shifted)
        for remote in args.remote.split(","):
            for method in args.methods.split(","):
                config = AdaptConfig(method=method, epochs=args.epochs, lr=args.lr, remote=remote,
                                     memory_budget=args.memory_budget, time_budget=args.time_budget)
                result = adapt(model, train, config)
                after, clean_after = accuracies(result.model, shifted), accuracies(result.model, clean)
                adapted = Checkpoint.from_model(result.model, checkpoint.codec)
                skew = evaluate(adapted, shifted.head(args.skew_samples), ig_steps=8)["skewness"]
                rows.append({
                    "corruption": corruption, "remote": remote, "method": method, "clean": clean_before[0],
                    "before": before[0], "after": after[0],
                    "recovery": recovery(after[0], before[0], clean_before[0]),
                    "local_before": before[1], "local_after": after[1],
                    "local_recovery": recovery(after[1], before[1], clean_before[1]),
                    "clean_after": clean_after[0], "clean_drop_pp": 100 * (clean_before[0] - clean_after[0]),
                    "skewness_after": skew, "peak_memory_estimated": result.peak_memory_estimated,
                    "peak_memory_measured": result.peak_memory_measured,
                    "full_update_peak_memory": result.full_update_peak_memory,
                    "train_seconds": result.train_seconds, "bytes_exchanged": result.bytes_exchanged,
                    "selection": dict(result.selection.ratios)})
                row = rows[-1]
                print(f"{corruption:11s} {remote:5s} {method:8s} before {row['before']:.4f} after "
                      f"{row['after']:.4f} recovery {row['recovery']:6.1%} local {row['local_before']:.4f}->"
                      f"{row['local_after']:.4f} ({row['local_recovery']:6.1%}) clean drop "
                      f"{row['clean_drop_pp']:5.2f} pp skew {skew:.3f} "
                      f"peak {row['peak_memory_estimated']:>9,} B "
                      f"train {row['train_seconds']:5.1f} s", file=sys.stderr, flush=True)
        if args.time_to_accuracy:
            config = AdaptConfig(epochs=args.epochs, lr=args.lr, time_budget=args.time_budget)
            timings.append({"corruption": corruption, **_time_to_accuracy(model, train, shifted, config)})
            print(f"{corruption:11s} time to the full update's accuracy: {timings[-1]}", file=sys.stderr)
    summary: dict[str, dict[str, float]] = {}
    for remote in args.remote.split(","):
        for method in args.methods.split(","):
            mine = [r for r in rows if r["method"] == method and r["remote"] == remote]
            summary[f"{remote}/{method}"] = {key: _mean(mine, key) for key in (
                "recovery", "local_recovery", "clean_drop_pp", "skewness_after", "peak_memory_estimated",
                "peak_memory_measured", "train_seconds", "bytes_exchanged")}
    full_peak = max(r["full_update_peak_memory"] for r in rows)
    for name, values in summary.items():
        print(f"{name:14s} mean recovery {values['recovery']:6.1%}  local {values['local_recovery']:6.1%}  "
              f"clean drop {values['clean_drop_pp']:5.2f} pp  skewness {values['skewness_after']:.3f}  "
              f"peak {values['peak_memory_estimated']:>11,.0f} B "
              f"({values['peak_memory_estimated'] / full_peak:.3f} of full)  "
              f"train {values['train_seconds']:5.1f} s")
    reaching = {name: v for name, v in summary.items()
                if v["recovery"] >= GOAL and v["local_recovery"] >= GOAL}
    cheapest = min(reaching, key=lambda n: reaching[n]["peak_memory_estimated"]) if reaching else None
    share = (f", {reaching[cheapest]['peak_memory_estimated'] / full_peak:.3f} of full's peak"
             if cheapest else "")
    print(f"cheapest method reaching {GOAL:.0%} recovery (combined and local): {cheapest or 'none'}{share}")
    if timings:
        reached = [t["speedup"] for t in timings if t["speedup"] is not None]
        print(f"elastic reached the full update's accuracy on {len(reached)} of {len(timings)} corruptions; "
              f"speedups {[round(s, 2) for s in reached]}")
    print(json.dumps({"clean_accuracy": clean_before[0], "clean_local_accuracy": clean_before[1],
                      "settings": {**vars(args), "plot": str(args.plot)},
                      "summary": summary, "cheapest_reaching_goal": cheapest, "time_to_accuracy": timings,
                      "rows": rows}))
    if args.plot:
        _plot(rows, args.plot)
    return 0


def _plot(rows: list[dict[str, Any]], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4))
    for remote, marker in (("split", "o"), ("fixed", "x")):
        for method in METHODS:
            mine = [r for r in rows if r["method"] == method and r["remote"] == remote]
            if mine:
                axis.scatter([r["peak_memory_estimated"] / 1024 for r in mine], [r["after"] for r in mine],
                             marker=marker, label=f"{method} ({remote})")
    axis.set_xscale("log")
    axis.set_xlabel("peak training memory (KiB, estimated = measured)")
    axis.set_ylabel("accuracy on the shifted test set")
    axis.legend(fontsize=7, ncol=2)
    folder.mkdir(parents=True, exist_ok=True)
    figure.savefig(folder / "adapt_accuracy_vs_memory.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    raise SystemExit(main())
