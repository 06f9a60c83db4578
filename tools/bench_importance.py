"""Cost of Captum's first-order IG path against the second-order variant.

Times one full AgileNN training step (forward, IG, losses, backward, update)
on the same MNIST batch with each path, interleaved so both see the same
machine load, and extrapolates to one epoch of 60,000 images. Also reports how
far apart the two gradients are.

    python tools/bench_importance.py --model pretrained:mnist --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from collections.abc import Sequence

import torch

from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint
from agilenn.config import TrainConfig
from agilenn.data import load_dataset
from agilenn.training import Trainer

EPOCH_IMAGES = 60_000


def _step_seconds(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> float:
    started = time.perf_counter()
    trainer.train_step(images, labels)
    return time.perf_counter() - started


def _gradient(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.agilenn_loss(images, labels)[0].backward()
    return torch.cat([p.grad.flatten() for p in trainer.model.extractor.parameters() if p.grad is not None])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data-dir")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ig-steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.model)
    dataset = load_dataset("mnist", "train", args.data_dir)
    images, labels = dataset.batch(slice(0, args.batch_size))
    trainers = {}
    for second_order in (False, True):
        config = TrainConfig(reference_epochs=0, ig_steps=args.ig_steps, second_order=second_order,
                             batch_size=args.batch_size, remap_channels=False)
        trainer = Trainer(checkpoint.config, config, dataset, progress=False)
        trainer.model.load_state_dict(copy.deepcopy(checkpoint.state_dict))
        trainer.enter_agilenn_stage()
        trainer.model.train()
        trainers["second_order" if second_order else "first_order"] = trainer
    gradients = {name: _gradient(t, images, labels) for name, t in trainers.items()}
    timings: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.repeats):
        for name, trainer in trainers.items():
            timings[name].append(_step_seconds(trainer, images, labels))
    steps_per_epoch = math.ceil(EPOCH_IMAGES / args.batch_size)
    report: dict[str, object] = {"batch_size": args.batch_size, "ig_steps": args.ig_steps,
                                 "steps_per_epoch": steps_per_epoch}
    for name, samples in timings.items():
        median = statistics.median(samples)
        report[name] = {"step_ms_median": round(1000 * median, 1),
                        "epoch_seconds_estimate": round(median * steps_per_epoch, 1)}
    first, second = gradients["first_order"], gradients["second_order"]
    report["second_over_first_time"] = round(
        statistics.median(timings["second_order"]) / statistics.median(timings["first_order"]), 2
    )
    report["extractor_gradient_relative_difference"] = float((second - first).norm() / first.norm())
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
