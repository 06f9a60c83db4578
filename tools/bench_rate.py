"""Does the rate term (entropy of the sent symbols) shrink the payload?

Trains two models with identical seeds and schedules, one with
``rate_weight`` 0 and one with the given weight, then evaluates both on the
MNIST test set through the real codec and prints their figures side by side.

    python tools/bench_rate.py --data-dir ../shared/data/mnist --rate-weight 0.05 --epochs 3
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from agilenn.checkpoint import Checkpoint
from agilenn.codec import CodecSettings
from agilenn.config import ModelConfig, TrainConfig
from agilenn.data import load_dataset
from agilenn.evaluate import evaluate
from agilenn.training import Trainer

FIGURES = ("accuracy", "local_accuracy", "skewness", "payload_bytes_mean",
           "entropy_bound_bytes", "entropy_bits_per_symbol")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--rate-weight", type=float, default=0.05)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--reference-epochs", type=int, default=2)
    args = parser.parse_args(argv)
    train = load_dataset("mnist", "train", args.data_dir)
    test = load_dataset("mnist", "test", args.data_dir)
    results = {}
    for weight in (0.0, args.rate_weight):
        config = TrainConfig(epochs=args.epochs, reference_epochs=args.reference_epochs, rate_weight=weight)
        trainer = Trainer(ModelConfig(), config, train, progress=False)
        trainer.run()
        report = evaluate(Checkpoint.from_model(trainer.model, CodecSettings()), test)
        results[f"rate_weight={weight}"] = {name: report[name] for name in FIGURES}
    print(json.dumps({"epochs": args.epochs, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
