"""Train the baseline networks that ``agilenn bench`` compares AgileNN against, and ship them.

- ``mnist-full-cnn.agbl``: the full CNN that raw-offload, jpeg-offload and
  split8 run on the server, plus a 2 KB zstd dictionary trained on training
  images for raw-offload (AgileNN's codec gets the same kind of dictionary).
- ``mnist-tiny-cnn.agbl``: the standalone local-only CNN, within the AgileNN
  device part's multiply-accumulate and parameter budget.

Same data, augmentation (2-pixel shifts) and seed as the shipped AgileNN model.
Records accuracy on the full test set and the wall time in the metadata.

    python tools/train_baselines.py --data-dir ../shared/data/mnist
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
from agilenn.data import load_dataset

ASSETS = Path(__file__).resolve().parents[1] / "agilenn" / "assets"
RAW_DICTIONARY_BYTES = 2048


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir")
    parser.add_argument("--full-epochs", type=int, default=4)
    parser.add_argument("--tiny-epochs", type=int, default=8)
    parser.add_argument("--out-dir", type=Path, default=ASSETS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train = load_dataset("mnist", "train", args.data_dir)
    test = load_dataset("mnist", "test", args.data_dir)
    example = torch.zeros(1, 1, 28, 28)
    samples = [image.tobytes() for image in train.images[:20000]]
    dictionary = zstandard.train_dictionary(RAW_DICTIONARY_BYTES, samples).as_bytes()
    for name, arch, kwargs, epochs, raw_dictionary in (
        ("mnist-full-cnn", "full-cnn", {"width": 16}, args.full_epochs, dictionary),
        ("mnist-tiny-cnn", "tiny-cnn", {"width": 11}, args.tiny_epochs, b""),
    ):
        started = time.perf_counter()
        model = train_classifier(BASELINE_ARCHS[arch](**kwargs), train, epochs=epochs, progress=True)
        seconds = time.perf_counter() - started
        metadata = {
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "epochs": epochs, "train_seconds": round(seconds, 1), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
            "test_accuracy": classifier_accuracy(model, test), "macs": count_macs(model, example),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        checkpoint = BaselineCheckpoint.from_model(arch, kwargs, model, raw_dictionary, metadata)
        write_atomically(args.out_dir / PRETRAINED[name], checkpoint.to_bytes())
        print(f"{name}: accuracy {metadata['test_accuracy']:.4f}, {metadata['macs']:,} MACs, "
              f"{seconds:.0f} s, hash {checkpoint.model_hash}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
