"""Does it matter whether Integrated Gradients explains the logit or the loss?

Trains two models side by side on a short MNIST schedule, identical (seed,
data, schedule) except for ``ig_target``: ``logit`` (agilenn's default, the
true-class logit) and ``loss`` (the per-sample cross-entropy, as the TensorFlow
reference does). Both are evaluated on the MNIST test set by
``agilenn.evaluate.evaluate``, the code behind ``agilenn eval``, whose
skewness explains the logit. Because a model trained to concentrate loss
importance should also be judged by that measure, the skewness under the loss
target is reported as well (same IG steps, same test images).

    python tools/compare_ig_target.py --data-dir ../shared/data/mnist

Prints a table, then one JSON line. ``train_seconds`` is wall time, so it
follows the machine's load; the two runs share their reference stage bit for
bit and differ only in which per-sample scalar IG differentiates.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

import torch

from agilenn.checkpoint import Checkpoint
from agilenn.codec import CodecSettings
from agilenn.config import IG_TARGETS, ModelConfig, TrainConfig
from agilenn.data import ImageDataset, load_dataset
from agilenn.evaluate import evaluate
from agilenn.importance import channel_importance, integrated_gradients
from agilenn.losses import skewness
from agilenn.model import AgileNN
from agilenn.training import Trainer

FIGURES = ("accuracy", "local_accuracy", "skewness", "skewness_loss_target")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=os.environ.get("AGILENN_DATA", "../shared/data/mnist"),
                        help="MNIST IDX folder (default: $AGILENN_DATA, else ../shared/data/mnist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-train-samples", type=int, default=20000)
    parser.add_argument("--reference-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--test-samples", type=int, default=0, help="first N test images (0: all)")
    parser.add_argument("--ig-steps", type=int, default=16, help="IG steps of the evaluation")
    return parser


def _loss_target_skewness(model: AgileNN, dataset: ImageDataset, ig_steps: int) -> float:
    # evaluate() measures skewness of the logit's importance only; this is the
    # same measure (same IG, importance and skewness functions) for the loss.
    k = model.config.local_channels
    skews = []
    for start in range(0, len(dataset), 500):
        images, labels = dataset.batch(slice(start, start + 500))
        with torch.no_grad():
            features = model.extractor(images)
        attributions = integrated_gradients(model.reference, features, labels, ig_steps, ig_target="loss")
        skews.append(skewness(channel_importance(attributions.detach()), k))
    return float(torch.cat(skews).mean())


def _train_and_evaluate(
    args: argparse.Namespace, ig_target: str, train: ImageDataset, test: ImageDataset
) -> dict[str, float]:
    _, channels, height, _ = train.images.shape
    model_config = ModelConfig(in_channels=channels, image_size=height, num_classes=train.num_classes)
    config = TrainConfig(seed=args.seed, reference_epochs=args.reference_epochs, epochs=args.epochs,
                         max_train_samples=args.max_train_samples, ig_target=ig_target)
    started = time.perf_counter()
    trainer = Trainer(model_config, config, train, progress=False)
    trainer.run()
    train_seconds = time.perf_counter() - started
    checkpoint = Checkpoint.from_model(trainer.model, CodecSettings(model_config.n_centroids))
    report = evaluate(checkpoint, test, ig_steps=args.ig_steps)
    report["skewness_loss_target"] = _loss_target_skewness(checkpoint.build_model(), test, args.ig_steps)
    return {**{name: report[name] for name in FIGURES}, "train_seconds": round(train_seconds, 1)}


def _print_table(results: dict[str, dict[str, float]]) -> None:
    columns = (*FIGURES, "train_seconds")
    print("ig_target  " + "  ".join(f"{name:>20}" for name in columns))
    for target, figures in results.items():
        print(f"{target:<9}  " + "  ".join(f"{figures[name]:>20.4f}" for name in columns))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.manual_seed(args.seed)
    train = load_dataset("mnist", "train", args.data_dir)
    test = load_dataset("mnist", "test", args.data_dir).head(args.test_samples)
    results = {target: _train_and_evaluate(args, target, train, test) for target in IG_TARGETS}
    _print_table(results)
    settings = {name: getattr(args, name) for name in
                ("seed", "max_train_samples", "reference_epochs", "epochs", "ig_steps")}
    print(json.dumps({**settings, "test_samples": len(test), "torch_threads": torch.get_num_threads(),
                      "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
