"""``agilenn train``: train a model and write a ``.agnn`` checkpoint.

Every field of ModelConfig and TrainConfig is a flag (``--split-ratio``,
``--ig-steps``, ...). After each epoch the checkpoint, the resumable training
state (``OUT.train-state.pt``) and one JSON line of metrics (``OUT.log.jsonl``)
are written, so ``--resume`` continues an interrupted run where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import torch

from ..checkpoint import Checkpoint
from ..codec import LAYOUTS, CodecSettings
from ..config import ModelConfig, TrainConfig
from ..data import DATASET_HELP, dataset_spec, load_dataset
from ..errors import AgileNNError
from ..training import EpochMetrics, Trainer
from .common import fail, print_json, write_atomically

# Taken from the dataset, never from flags.
_DATASET_FIELDS = {"in_channels", "image_size", "num_classes"}


def _add_config_flags(parser: argparse.ArgumentParser, config_type: type) -> None:
    group = parser.add_argument_group(f"{config_type.__name__} fields")
    for field in dataclasses.fields(config_type):
        if field.name in _DATASET_FIELDS:
            continue
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif "choices" in field.metadata:
            group.add_argument(flag, choices=field.metadata["choices"], default=None,
                               help=f"default {field.default}")
        else:
            group.add_argument(flag, type=type(field.default), default=None, metavar=field.name.upper(),
                               help=f"default {field.default}")


def _config_from_args(config_type: type, args: argparse.Namespace, **fixed: Any) -> Any:
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(config_type)
        if getattr(args, f.name, None) is not None and f.name not in _DATASET_FIELDS
    }
    return config_type(**values, **fixed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=dataset_spec, default="mnist", help=DATASET_HELP)
    parser.add_argument("--data-dir", help="dataset folder (default: $AGILENN_DATA)")
    parser.add_argument("--out", required=True, type=Path, help="checkpoint to write (.agnn)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT.train-state.pt")
    # rans needs a prior fitted on the trained model's payloads: `agilenn codec --layout rans` afterwards.
    parser.add_argument("--codec-layout", choices=sorted(set(LAYOUTS) - {"rans"}), default="bytes")
    parser.add_argument("--codec-level", type=int, default=19, help="zstd level")
    parser.add_argument("--half", action="store_true", help="store weights as float16 (half the size)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_config_flags(parser, ModelConfig)
    _add_config_flags(parser, TrainConfig)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dataset = load_dataset(args.dataset, "train", args.data_dir)
        _, channels, height, _ = dataset.images.shape
        model_config = _config_from_args(
            ModelConfig, args, in_channels=channels, image_size=height,
            num_classes=dataset.num_classes,
        )
        train_config = _config_from_args(TrainConfig, args)
        codec = CodecSettings(model_config.n_centroids, args.codec_layout, args.codec_level)
    except (AgileNNError, ValueError) as exc:
        return fail(str(exc))
    trainer = Trainer(model_config, train_config, dataset, progress=not args.quiet)
    state_path = args.out.with_name(args.out.name + ".train-state.pt")
    log_path = args.out.with_name(args.out.name + ".log.jsonl")
    if args.resume:
        if not state_path.is_file():
            return fail(f"--resume: no training state at {state_path}")
        try:
            trainer.load_state_dict(torch.load(state_path, weights_only=True))
        except ValueError as exc:
            return fail(str(exc))
    elif log_path.exists():
        log_path.unlink()
    started = time.perf_counter()
    metadata = {"dataset": args.dataset, "train_config": train_config.to_dict()}

    def save(trainer: Trainer, metrics: EpochMetrics) -> None:
        checkpoint = Checkpoint.from_model(
            trainer.model, codec, {**metadata, "history": [asdict(m) for m in trainer.history]}
        )
        if args.half:
            checkpoint = checkpoint.to_half()
        write_atomically(args.out, checkpoint.to_bytes())
        buffer = io.BytesIO()
        torch.save(trainer.state_dict(), buffer)
        write_atomically(state_path, buffer.getvalue())
        with log_path.open("a") as log:
            log.write(json.dumps(asdict(metrics)) + "\n")
        if args.quiet:
            return
        shown = {k: round(v, 4) for k, v in asdict(metrics).items() if isinstance(v, float)}
        print(f"epoch {metrics.epoch} {metrics.stage}: {shown}", flush=True)

    trainer.run(save)
    if trainer.completed_epochs == 0:
        return fail("nothing to train: --epochs and --reference-epochs are both 0")
    checkpoint = Checkpoint.from_bytes(args.out.read_bytes())
    print_json({
        "out": str(args.out),
        "model_hash": checkpoint.model_hash,
        "epochs": trainer.completed_epochs,
        "seconds": round(time.perf_counter() - started, 1),
        "last_epoch": asdict(trainer.history[-1]),
    })
    return 0
