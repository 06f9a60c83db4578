"""The check anyone can run: build the firmware, run the test set through it, compare.

Three answers for every test image: PyTorch in float, the Python int8 reference
(:mod:`agilenn.firmware.int8`) and the firmware itself, booted on the host or in
QEMU and fed over its console port. The firmware must match the reference
byte for byte; against float it is judged by agreement and accuracy, the
combined class coming from the server's half run on what the firmware sent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..codec import FeatureCodec
from .int8 import Int8Model
from .runner import boot
from .toolchain import Target, build

FLOAT_BATCH = 500


@dataclass(frozen=True)
class FirmwareOutputs:
    """What the firmware answered for each image, in order."""

    payloads: list[bytes]
    accumulators: np.ndarray  # (N, classes) int32
    logits_f16: np.ndarray  # (N, classes) uint16: the IEEE half bits it sends
    instructions: np.ndarray  # (N,) 0 where the target cannot count them

    @property
    def local_logits(self) -> np.ndarray:
        return self.logits_f16.view(np.float16).astype(np.float32)

    @property
    def local_class(self) -> np.ndarray:
        return self.local_logits.argmax(1)


def run_firmware(fw_dir: Path, target: Target, images: np.ndarray,
                 progress: Callable[[int], None] = lambda done: None) -> FirmwareOutputs:
    answers = []
    with boot(fw_dir, target, count_instructions=True) as firmware:
        classes = firmware.console.classes
        for index, image in enumerate(images):
            answers.append(firmware.console.verify(np.ascontiguousarray(image, dtype=np.uint8).tobytes()))
            progress(index + 1)
    return FirmwareOutputs([a.payload for a in answers],
                           np.asarray([a.accumulators for a in answers], dtype=np.int32).reshape(-1, classes),
                           np.asarray([a.logits_f16 for a in answers], dtype=np.uint16).reshape(-1, classes),
                           np.asarray([a.instructions for a in answers], dtype=np.int64))


@torch.no_grad()
def float_classes(checkpoint: Checkpoint, images: np.ndarray) -> np.ndarray:
    network = checkpoint.build_model().eval()
    batches = (torch.from_numpy(images[start:start + FLOAT_BATCH]).float().div_(255.0)
               for start in range(0, len(images), FLOAT_BATCH))
    classes = [network(batch).logits.argmax(1) for batch in batches]
    return torch.cat(classes).numpy()


@torch.no_grad()
def combined_classes(checkpoint: Checkpoint, payloads: list[bytes], local_logits: np.ndarray) -> np.ndarray:
    """What the server merges from the device's payloads and float16 local logits."""
    network, codec = checkpoint.build_model().eval(), FeatureCodec(checkpoint.codec)
    symbols = torch.from_numpy(np.stack([codec.decode(payload) for payload in payloads]).astype(np.int64))
    classes = [network.server_forward(symbols[start:start + FLOAT_BATCH],
                                      torch.from_numpy(local_logits[start:start + FLOAT_BATCH])).argmax(1)
               for start in range(0, len(payloads), FLOAT_BATCH)]
    return torch.cat(classes).numpy()


def verify_firmware(fw_dir: Path, target: Target, checkpoint: Checkpoint, model: Int8Model,
                    images: np.ndarray, labels: np.ndarray,
                    progress: Callable[[int], None] = lambda done: None) -> dict[str, Any]:
    """Build for ``target``, run ``images`` through the firmware and report the figures."""
    build(fw_dir, target)
    firmware = run_firmware(fw_dir, target, images, progress)
    reference = model.run(images)
    reference_payloads = model.payloads(reference)
    float_class = float_classes(checkpoint, images)
    int8_class = combined_classes(checkpoint, firmware.payloads, firmware.local_logits)
    counted = firmware.instructions[firmware.instructions > 0]
    return {
        "target": target,
        "images": int(len(images)),
        "agreement": float(np.mean(int8_class == float_class)),
        "accuracy_float": float(np.mean(float_class == labels)),
        "accuracy_int8": float(np.mean(int8_class == labels)),
        "local_agreement_with_reference": float(np.mean(firmware.local_class == reference.local_class)),
        "payload_identical": firmware.payloads == reference_payloads,
        "payloads_differing": sum(mine != theirs for mine, theirs
                                  in zip(firmware.payloads, reference_payloads, strict=True)),
        "logits_identical": bool(np.array_equal(firmware.logits_f16, reference.logits_f16)
                                 and np.array_equal(firmware.accumulators, reference.acc)),
        "payload_bytes_mean": round(float(np.mean([len(p) for p in firmware.payloads])), 2),
        "instructions_per_inference": int(np.median(counted)) if counted.size else None,
        "instructions_max": int(counted.max()) if counted.size else None,
    }

