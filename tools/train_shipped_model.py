"""Train the MNIST model that ships in the package, and record how.

Runs exactly the ``agilenn train`` command below, times it, retunes its codec
with ``agilenn codec``, evaluates the result on the full MNIST test set, and writes the model to
``agilenn/assets/mnist.agnn`` with a record of the command, the wall time and
the figures in ``agilenn/assets/mnist.train.json``.

    python tools/train_shipped_model.py --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from collections.abc import Sequence

import torch

from agilenn.checkpoint import Checkpoint
from agilenn.cli import main as agilenn_main
from agilenn.data import load_dataset
from agilenn.evaluate import evaluate

ASSETS = Path(__file__).resolve().parents[1] / "agilenn" / "assets"
# The rate term cut the payload by 15% at equal accuracy in tools/bench_rate.py.
TRAIN_ARGS = ["--dataset", "mnist", "--reference-epochs", "2", "--epochs", "8", "--seed", "0",
              "--rate-weight", "0.05", "--half", "--quiet"]
# Level 9 with a 2 KB dictionary is as small as level 19 without one, at about a
# tenth of the encode time (tools/bench_codec.py).
CODEC_ARGS = ["--level", "9", "--dictionary-size", "2048"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work-dir", type=Path, default=Path("runs"))
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    out = args.work_dir / "mnist.agnn"
    command = ["train", *TRAIN_ARGS, "--data-dir", args.data_dir, "--out", str(out)]
    started = time.perf_counter()
    if agilenn_main(command) != 0:
        return 1
    seconds = time.perf_counter() - started
    trained = args.work_dir / "mnist-trained.agnn"
    shutil.move(out, trained)
    codec_command = ["codec", "--model", str(trained), *CODEC_ARGS, "--data-dir", args.data_dir,
                     "--out", str(out)]
    if agilenn_main(codec_command) != 0:
        return 1
    checkpoint = Checkpoint.from_bytes(out.read_bytes())
    report = evaluate(checkpoint, load_dataset("mnist", "test", args.data_dir))
    shutil.copyfile(out, ASSETS / "mnist.agnn")
    record = {
        "command": "agilenn " + " ".join(command),
        "codec_command": "agilenn " + " ".join(codec_command),
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "model_bytes": out.stat().st_size,
        "eval": report,
    }
    (ASSETS / "mnist.train.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
