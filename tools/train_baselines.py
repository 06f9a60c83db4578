"""Train the baseline networks that ``agilenn bench`` compares AgileNN against, and ship them.

For ``--dataset NAME`` (default ``mnist``) it writes two files, named after the dataset:

- ``NAME-full-cnn.agbl``: the full CNN that raw-offload, jpeg-offload and
  split8 run on the server, plus a 2 KB zstd dictionary trained on training
  images for raw-offload (AgileNN's codec gets the same kind of dictionary).
- ``NAME-tiny-cnn.agbl``: the standalone local-only CNN, within the AgileNN
  device part's multiply-accumulate and parameter budget.

Same data, augmentation (2-pixel shifts) and seed as the shipped AgileNN model.
Records accuracy on the full test set and the wall time in the metadata.

    python tools/train_baselines.py --data-dir ../shared/data/mnist
    python tools/train_baselines.py --dataset cluttered-mnist --full-epochs 3 --tiny-width 14 \
        --threads 1 --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import zstandard

from agilenn.baselines.checkpoint import BaselineCheckpoint
from agilenn.pretrained import PRETRAINED
from agilenn.baselines.models import BASELINE_ARCHS, count_macs
from agilenn.baselines.training import classifier_accuracy, train_classifier
from agilenn.cli.common import write_atomically
from agilenn.data import dataset_spec, load_dataset

ASSETS = Path(__file__).resolve().parents[1] / "agilenn" / "assets"
RAW_DICTIONARY_BYTES = 2048
ARCHS = ("full-cnn", "tiny-cnn")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=dataset_spec, default="mnist",
                        help="the files are NAME-full-cnn.agbl and NAME-tiny-cnn.agbl")
    parser.add_argument("--data-dir")
    parser.add_argument("--full-epochs", type=int, default=4)
    parser.add_argument("--tiny-epochs", type=int, default=8)
    parser.add_argument("--full-width", type=int, default=16)
    parser.add_argument("--tiny-width", type=int, default=11,
                        help="keep the tiny CNN within the AgileNN device part's MACs and parameters")
    parser.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS),
                        help="which of the two to train (default both)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out-dir", type=Path, default=ASSETS)
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    train = load_dataset(args.dataset, "train", args.data_dir)
    test = load_dataset(args.dataset, "test", args.data_dir)
    channels = int(train.images.shape[1])
    example = torch.zeros(1, *train.images.shape[1:])
    plan = {"full-cnn": (args.full_width, args.full_epochs), "tiny-cnn": (args.tiny_width, args.tiny_epochs)}
    for arch in [arch for arch in plan if arch in args.archs]:
        name, (width, epochs) = f"{args.dataset}-{arch}", plan[arch]
        kwargs = {"width": width} if channels == 1 else {"in_channels": channels, "width": width}
        raw_dictionary = b""
        if arch == "full-cnn":
            samples = [image.tobytes() for image in train.images[:20000]]
            raw_dictionary = zstandard.train_dictionary(RAW_DICTIONARY_BYTES, samples).as_bytes()
        started, cpu_started = time.perf_counter(), time.process_time()
        model = train_classifier(BASELINE_ARCHS[arch](**kwargs), train, epochs=epochs, progress=True)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        metadata = {
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "dataset": args.dataset, "input_shape": list(train.images.shape[1:]), "epochs": epochs,
            "train_seconds": round(seconds, 1), "train_cpu_seconds": round(cpu_seconds, 1),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "test_accuracy": classifier_accuracy(model, test), "macs": count_macs(model, example),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        checkpoint = BaselineCheckpoint.from_model(arch, kwargs, model, raw_dictionary, metadata)
        write_atomically(args.out_dir / PRETRAINED.get(name, f"{name}.agbl"), checkpoint.to_bytes())
        print(f"{name}: accuracy {metadata['test_accuracy']:.4f}, {metadata['macs']:,} MACs, "
              f"{seconds:.0f} s, hash {checkpoint.model_hash}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
