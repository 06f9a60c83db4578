"""``agilenn export``: the device part of a model as C99 int8 firmware sources.

``--target c --out FW`` quantises the extractor, local predictor and quantizer
to int8 (weight scales per channel, activation scales calibrated on training
images) and writes FW/: the C sources, ``agn_config.h`` and
``agn_default_image.c`` for this model, and ``weights.agw``, the image
``agilenn pair --image`` pushes. ``make -C FW host`` or ``make -C FW cortex-m4``
builds it; ``agilenn mcu --firmware FW`` boots it.

The output names the model hash and, where arm-none-eabi-gcc is installed,
flash and RAM from the Cortex-M4 linker map. ``--verify`` then builds the
firmware, boots it (``--emulator cortex-m4``: in QEMU, counting instructions;
``host``: a native process), runs the test set through it and prints
agreement with PyTorch float, both accuracies, whether every payload matches
the Python int8 reference byte for byte, and instructions per inference.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..data import load_dataset
from ..errors import AgileNNError
from ..firmware.export import write_firmware
from ..firmware.int8 import quantize_model
from ..firmware.toolchain import CORTEX_M4, HOST, ToolchainError, mcu_memory
from ..firmware.verify import verify_firmware
from ..pretrained import DEFAULT_MODEL, load_checkpoint
from .common import fail, print_json, print_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agilenn export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--target", choices=("c",), default="c", help="what to export to")
    parser.add_argument("--out", type=Path, required=True, help="the firmware folder to write")
    parser.add_argument("--data-dir", help="MNIST folder for calibration and --verify ($AGILENN_DATA)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--calibration", type=int, default=2000, help="training images to calibrate on")
    parser.add_argument("--device-id", default="agilenn-mcu-0", help="the id the firmware says HELLO with")
    parser.add_argument("--verify", action="store_true", help="build, run the test set through it, compare")
    parser.add_argument("--emulator", choices=(CORTEX_M4, HOST), default=CORTEX_M4,
                        help="where --verify runs the firmware")
    parser.add_argument("--limit", type=int, default=0, help="--verify on the first N test images (0: all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (and no progress bar)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        checkpoint = load_checkpoint(args.model)
        calibration = load_dataset(args.dataset, "train", args.data_dir).head(args.calibration)
        model = quantize_model(checkpoint, calibration.images)
        manifest = write_firmware(checkpoint, model, args.out, model_name=args.model,
                                  device_id=args.device_id, calibration_images=len(calibration))
        flash, ram = mcu_memory(args.out)  # from the Cortex-M4 linker map
        report: dict[str, Any] = {"out": str(args.out), "model_hash": manifest.model_hash,
                                     "image_bytes": manifest.image_bytes,
                                     "calibration_images": manifest.calibration_images,
                                     "flash_bytes": flash, "ram_bytes": ram}
        if args.verify:
            test = load_dataset(args.dataset, "test", args.data_dir).head(args.limit)
            with tqdm(total=len(test), desc=f"firmware on {args.emulator}", disable=args.json,
                      file=sys.stderr) as bar:
                report |= verify_firmware(args.out, args.emulator, checkpoint, model, test.images,
                                          test.labels, progress=lambda done: bar.update(done - bar.n))
    except (AgileNNError, OSError, ToolchainError, ValueError) as exc:
        return fail(str(exc))
    if args.json:
        print_json(report)
    else:
        print_table(report)
    return 0 if not args.verify or report["payload_identical"] else 1
