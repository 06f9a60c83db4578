"""``agilenn adapt``: adapt a model's device part to drifted data, within a memory and time budget.

Trains what ``--method`` chooses on ``--samples`` images of ``--dataset``'s
training split (for example ``mnist-c:rotate``, or ``npz:PATH`` for your own
labelled samples), evaluates on ``--eval-dataset`` (default: the same
dataset's test split) and on clean data, and prints one JSON object.

With ``--remote split`` (the default) the device part trains by split
learning: the server computes the gradient of its half of the loss (merged
cross-entropy, skewness and disorder against its reference network) and
adapts its remote predictor alongside. ``--server tcp://HOST:PORT`` runs that
half on a real ``agilenn server`` (over ``--link``'s emulated link, if given);
without it, in this process. ``--remote fixed`` keeps the remote channels'
filters fixed and trains on the device alone: the server needs no change.

  full     the whole device part
  last     the local predictor
  bias     every bias
  sparse   Tiny Training: measured accuracy gain per byte, a knapsack within --memory-budget
  elastic  ElasticTrainer: Taylor importance, a knapsack within --time-budget of the full backward
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from edge_node.client import EdgeClient
from edge_node.split_learning import WireSplitServer, server_pseudo_labels
from transports.emulator import PROFILES, emulated
from transports.zmq_transport import ZmqClientTransport

from ..adapt.adapter import METHODS, REMOTE_MODES, AdaptConfig, adapt, pseudo_labelled, with_replay
from ..adapt.split import SplitServer
from ..checkpoint import Checkpoint
from ..data import DATASET_HELP, NPZ_PREFIX, ImageDataset, dataset_spec, load_dataset
from ..errors import AgileNNError
from ..evaluate import evaluate
from ..model import AgileNN
from ..pretrained import DEFAULT_MODEL, load_checkpoint
from .common import fail, print_json, write_atomically

_UNITS = {"": 1, "b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2}


def memory_size(text: str) -> int:
    """``64KB``, ``1.5MB``, ``65536``: a size in bytes (KB = 1024 bytes)."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 64KB or 65536, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn adapt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--dataset", type=dataset_spec, required=True, help=DATASET_HELP)
    parser.add_argument("--eval-dataset", type=dataset_spec, help="default: --dataset's test split")
    parser.add_argument("--clean-dataset", type=dataset_spec, default="mnist")
    parser.add_argument("--data-dir", help="dataset folder (default: $AGILENN_DATA)")
    parser.add_argument("--samples", type=int, default=500, help="adaptation images")
    parser.add_argument("--method", choices=METHODS, default="sparse")
    parser.add_argument("--memory-budget", type=memory_size, default=0, help="e.g. 256KB (sparse)")
    parser.add_argument("--time-budget", type=float, default=0.3, help="fraction of full backward (elastic)")
    parser.add_argument("--labels", choices=("true", "server"), default="true",
                        help="the user's labels, or the server's confident predictions")
    parser.add_argument("--remote", choices=REMOTE_MODES, default="split",
                        help="split: the server adapts with the device; fixed: the remote channels stay put")
    parser.add_argument("--server", help="tcp://HOST:PORT of an agilenn server for split learning "
                        "and server labels (default: both in this process)")
    parser.add_argument("--link", choices=sorted(PROFILES), help="emulate this link to --server")
    parser.add_argument("--timeout-s", type=float, default=120.0, help="per split-learning step")
    parser.add_argument("--replay", type=int, default=0, help="also rehearse the last N samples of "
                        "--clean-dataset's training split, against forgetting clean data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-limit", type=int, default=0, help="first N evaluation images (0: all)")
    parser.add_argument("--ig-steps", type=int, default=8, help="for the skewness figures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the adapted model here (.agnn)")
    parser.add_argument("--json", action="store_true", help="no progress bars")
    return parser


def _figures(checkpoint: Checkpoint, dataset: Any, args: argparse.Namespace) -> dict[str, float]:
    report = evaluate(checkpoint, dataset.head(args.eval_limit), ig_steps=args.ig_steps)
    return {"accuracy": report["accuracy"], "local_accuracy": report["local_accuracy"],
            "skewness": report["skewness"]}


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse, before any training, what would fail after it."""
    if args.replay < 0:
        raise ValueError("--replay cannot be negative")
    if args.samples < 1 or args.epochs < 1 or args.ig_steps < 1 or args.torch_threads < 1:
        raise ValueError("--samples, --epochs, --ig-steps and --torch-threads must be at least 1")
    if args.dataset.startswith(NPZ_PREFIX) and not args.eval_dataset:
        raise ValueError("an npz: dataset is one file: name the held-out samples with --eval-dataset")
    if args.link and not args.server:
        raise ValueError("--link emulates the link to --server; name the server")
    if args.out is not None and not args.out.parent.is_dir():
        raise ValueError(f"--out: no folder {args.out.parent}")


def _fitting(dataset: ImageDataset, model: AgileNN) -> ImageDataset:
    config = model.config
    expected = (config.in_channels, config.image_size, config.image_size)
    if dataset.images.shape[1:] != expected:
        raise ValueError(f"{dataset.name} has images of shape {dataset.images.shape[1:]}; the model takes "
                         f"{expected}")
    return dataset


def _server_labelled(args: argparse.Namespace, train: ImageDataset, model: AgileNN) -> ImageDataset:
    """Pseudo-labels from the server's merged predictions: asked over the wire with --server."""
    if not args.server:
        return pseudo_labelled(model, train)
    with EdgeClient(args.model, args.server, link=args.link, timeout_s=args.timeout_s,
                    device_id="agilenn-adapt", merge="server") as client:
        return server_pseudo_labels(client, train)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_arguments(args)
        torch.set_num_threads(args.torch_threads)
        checkpoint = load_checkpoint(args.model)
        model = checkpoint.build_model()
        train = _fitting(load_dataset(args.dataset, "train", args.data_dir).head(args.samples), model)
        shifted = _fitting(load_dataset(args.eval_dataset or args.dataset, "test", args.data_dir), model)
        clean = _fitting(load_dataset(args.clean_dataset, "test", args.data_dir), model)
        config = AdaptConfig(method=args.method, epochs=args.epochs, lr=args.lr, seed=args.seed,
                             memory_budget=args.memory_budget, time_budget=args.time_budget,
                             remote=args.remote)
        if args.labels == "server":
            train = _server_labelled(args, train, model)
        if len(train) == 0:
            raise ValueError("no adaptation samples (none the server was sure enough of)")
        if args.replay:
            shipped = _fitting(load_dataset(args.clean_dataset, "train", args.data_dir), model)
            train = with_replay(train, shipped, args.replay)
        with contextlib.ExitStack() as stack:
            server: SplitServer | None = None
            if args.server:
                link = emulated(ZmqClientTransport(args.server), args.link)
                server = stack.enter_context(WireSplitServer(
                    link, checkpoint.model_hash, args.lr, device_id="agilenn-adapt",
                    timeout_s=args.timeout_s))
            result = adapt(model, train, config, progress=not args.json, server=server)
    except (AgileNNError, OSError, ValueError) as exc:
        return fail(str(exc))
    adapted = Checkpoint.from_model(result.model, checkpoint.codec, {
        **checkpoint.metadata, "adapted_from": checkpoint.model_hash, "adaptation": {
            "method": args.method, "dataset": args.dataset, "samples": len(train) - args.replay,
            "replay": args.replay, "labels": args.labels, "remote": args.remote,
            "selection": dict(result.selection.ratios)}})
    if any(t.dtype == torch.float16 for t in checkpoint.state_dict.values()):
        adapted = adapted.to_half()  # stored as the model it came from
    if args.out:
        write_atomically(args.out, adapted.to_bytes())
    before, after = _figures(checkpoint, shifted, args), _figures(adapted, shifted, args)
    clean_before, clean_after = _figures(checkpoint, clean, args), _figures(adapted, clean, args)
    print_json({
        "method": args.method, "corruption": args.dataset.removeprefix("mnist-c:"),
        "samples": len(train) - args.replay,
        "replay": args.replay, "labels": args.labels, "selection": dict(result.selection.ratios),
        "accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"],
        "local_accuracy_before": before["local_accuracy"], "local_accuracy_after": after["local_accuracy"],
        "clean_accuracy_before": clean_before["accuracy"], "clean_accuracy_after": clean_after["accuracy"],
        "skewness_before": before["skewness"], "skewness_after": after["skewness"],
        "peak_memory_bytes_estimated": result.peak_memory_estimated,
        "peak_memory_bytes_measured": result.peak_memory_measured,
        "full_update_peak_memory_bytes": result.full_update_peak_memory,
        # Set when the selection did not fit --memory-budget as plain training and ran by a memory
        # schedule (recomputation and paging); the peaks above are then the schedule's.
        "memory_schedule": result.details.get("schedule"),
        "train_seconds": round(result.train_seconds, 2), "server_seconds": round(result.server_seconds, 2),
        "remote": args.remote, "server": args.server or "in-process", "link": args.link or "none",
        "bytes_exchanged": result.bytes_exchanged,
        "bytes_exchanged_source": ("none: the device learns alone" if args.remote == "fixed" else
                                   "counted on the wire" if args.server else
                                   "modelled: float16 features and gradients, in process"),
        "model_hash": adapted.model_hash, "model_hash_before": checkpoint.model_hash,
    })
    return 0
