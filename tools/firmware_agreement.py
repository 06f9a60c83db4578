"""How closely the int8 firmware reference follows the float model, on the full MNIST test set.

Quantises the model on ``--calibration`` training images (docs/FIRMWARE.md section 1), runs the
integer reference (``agilenn.firmware.int8``, which the C firmware matches byte for byte) and the
float model on every test image, and compares:

- combined class: float ``model(x).logits`` argmax vs the server's merge of the int8 device's
  output, ``model.server_forward(int8 symbols, int8 float16 local logits)`` argmax;
- local class: float local-predictor argmax vs the int8 local class;
- accuracy of both, and the mean wire payload size of the int8 device.

    python tools/firmware_agreement.py --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agilenn.data import DATA_ENV
from agilenn.data.mnist import load_mnist
from agilenn.firmware.int8 import quantize_model
from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"a .agnn file or pretrained:NAME (default {DEFAULT_MODEL})")
    parser.add_argument("--data-dir", default=os.environ.get(DATA_ENV) or str(SHARED_MNIST),
                        help=f"MNIST folder (default ${DATA_ENV}, else {SHARED_MNIST})")
    parser.add_argument("--calibration", type=int, default=2000,
                        help="training images to calibrate activation scales on (default 2000)")
    parser.add_argument("--percentile", type=float, default=100.0,
                        help="activation percentile that sets each scale (default 100: the largest)")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    return parser


@torch.no_grad()
def measure(model_spec: str, data_dir: Path, calibration: int, percentile: float,
            batch_size: int) -> dict[str, Any]:
    started = time.perf_counter()
    checkpoint = load_checkpoint(model_spec)
    train, test = load_mnist(data_dir, "train"), load_mnist(data_dir, "test")
    int8 = quantize_model(checkpoint, train.images[:calibration], percentile=percentile)
    outputs = int8.run(test.images)
    payload_sizes = [len(p) for p in int8.payloads(outputs)]
    model = checkpoint.build_model()
    float_combined, float_local, int8_combined = [], [], []
    for start in range(0, len(test.images), batch_size):
        end = start + batch_size
        x = torch.from_numpy(test.images[start:end].astype(np.float32) / 255.0)
        result = model(x)
        float_combined.append(result.logits.argmax(1).numpy())
        float_local.append(result.local_logits.argmax(1).numpy())
        symbols = torch.from_numpy(outputs.symbols[start:end].astype(np.int64))
        # What the server sees: the half-precision logits the device sends, widened back to float32.
        local = torch.from_numpy(outputs.logits_f16[start:end].view(np.float16).astype(np.float32))
        int8_combined.append(model.server_forward(symbols, local).argmax(1).numpy())
    fc, fl, ic = (np.concatenate(a) for a in (float_combined, float_local, int8_combined))
    labels = test.labels
    return {
        "model": model_spec,
        "images": int(len(labels)),
        "calibration_images": int(min(calibration, len(train.images))),
        "percentile": percentile,
        "agreement_combined": float((fc == ic).mean()),
        "agreement_local": float((fl == outputs.local_class).mean()),
        "accuracy_float": float((fc == labels).mean()),
        "accuracy_int8": float((ic == labels).mean()),
        "accuracy_float_local": float((fl == labels).mean()),
        "accuracy_int8_local": float((outputs.local_class == labels).mean()),
        "payload_bytes_mean": float(np.mean(payload_sizes)),
        "payload_bytes_max": int(max(payload_sizes)),
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(1)
    report = measure(args.model, Path(args.data_dir), args.calibration, args.percentile, args.batch_size)
    if not args.json:
        print(f"{report['model']} on {report['images']} MNIST test images, calibrated on "
              f"{report['calibration_images']} training images (percentile {report['percentile']:g})")
        print(f"  combined class agreement int8 vs float: {100 * report['agreement_combined']:.2f}%")
        print(f"  local class agreement int8 vs float:    {100 * report['agreement_local']:.2f}%")
        print(f"  accuracy float {100 * report['accuracy_float']:.2f}%, "
              f"int8 {100 * report['accuracy_int8']:.2f}% "
              f"(local only: float {100 * report['accuracy_float_local']:.2f}%, "
              f"int8 {100 * report['accuracy_int8_local']:.2f}%)")
        print(f"  payload bytes: mean {report['payload_bytes_mean']:.1f}, max {report['payload_bytes_max']}")
        print(f"  {report['seconds']} s")
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
