"""Peak memory of one on-device training step of the device part: estimated vs measured.

For each selection (everything, biases only, the local predictor only, and a
sparse update: the last two biases plus the pointwise conv's weight, whole and
half of its input channels), optimizer and batch size, prints the analytic
estimate (PyTorch autograd rules), the measured peak and their ratio, and
beside them the estimate for a backward graph pruned to the trained elements
(what an on-device trainer such as Tiny Training needs). Then one JSON line.

    python tools/adapt_memory.py --model pretrained:mnist --batch-sizes 16,1 --optimizers sgd,adam
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from agilenn.adapt.memory import estimate_peak_memory, measure_peak_memory
from agilenn.adapt.selection import DevicePart, Selection, bias_only, full, sparse, under
from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint

TOLERANCE = 0.10
SPARSE_WEIGHT = "extractor.pointwise.0.weight"


def selections(part: nn.Module) -> dict[str, Selection]:
    return {
        "full": full(part),
        "bias-only": bias_only(part),
        "local-predictor": under(part, "local_predictor"),
        "sparse": sparse(part, 2, {SPARSE_WEIGHT: 1.0}),
        "sparse-half-channels": sparse(part, 2, {SPARSE_WEIGHT: 0.5}),
    }


def _row(part: nn.Module, x: Tensor, name: str, selection: Selection, optimizer: str) -> dict[str, object]:
    targets = torch.zeros(x.shape[0], dtype=torch.long)
    estimate = estimate_peak_memory(part, x, selection, optimizer)
    measured = measure_peak_memory(part, x, selection, lambda out: nn.functional.cross_entropy(out, targets),
                                   optimizer)
    pruned = estimate_peak_memory(part, x, selection, optimizer, rules="pruned")
    return {"selection": name, "optimizer": optimizer, "batch": x.shape[0], "estimated": estimate.peak,
            "measured": measured.peak, "ratio": round(estimate.peak / measured.peak, 4),
            "pruned_estimate": pruned.peak}


def _ratio(row: dict[str, object]) -> float:
    return int(str(row["estimated"])) / int(str(row["measured"]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--batch-sizes", default="16,1")
    parser.add_argument("--optimizers", default="sgd,adam")
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.model)
    part, config = DevicePart(checkpoint.build_model()), checkpoint.config
    generator = torch.Generator().manual_seed(0)
    rows = []
    for batch in map(int, args.batch_sizes.split(",")):
        x = torch.rand(batch, config.in_channels, config.image_size, config.image_size, generator=generator)
        for optimizer in args.optimizers.split(","):
            rows += [_row(part, x, name, s, optimizer) for name, s in selections(part).items()]
    print(f"{'selection':<22}{'optimizer':<10}{'batch':>6}{'estimated':>12}{'measured':>12}{'ratio':>8}"
          f"{'pruned':>12}")
    for r in rows:
        print(f"{r['selection']:<22}{r['optimizer']:<10}{r['batch']:>6}{r['estimated']:>12}{r['measured']:>12}"
              f"{r['ratio']:>8}{r['pruned_estimate']:>12}")
    worst = round(max(abs(_ratio(r) - 1.0) for r in rows), 4)
    print(json.dumps({"model": args.model, "rows": rows, "worst_ratio_error": worst, "tolerance": TOLERANCE}))
    return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
