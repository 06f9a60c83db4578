"""Device profiles: what a request's device-side stages would cost on a real device.

``host`` reports what was measured on this machine. Any other profile is a
**model, not a measurement**:

- device compute = the scheme's multiply-accumulates (counted by
  :func:`agilenn.baselines.models.count_macs`, plus one per centroid for
  every element AgileNN quantises) / the device's sustained MAC rate with its
  vendor's neural-network kernels;
- encode = the time this host spent in the payload codec (zstd, JPEG, 8-bit
  quantisation: C code, not MAC-bound) x (this host's MAC rate / the
  device's), i.e. the device is assumed slower at that work by the same
  factor. The Python message framing is left out: firmware writes the
  ~30-byte msgpack header directly, which costs microseconds;
- merge = the reply arithmetic (AgileNN's weighted sum of two logit vectors,
  2 MACs a class) / the MAC rate; decoding a ~70-byte reply is left out for
  the same reason.

With ``--firmware-report`` (what ``agilenn export --verify --json`` printed),
AgileNN's device part is priced from its real firmware instead: the
instructions per inference that QEMU counted running it (extractor, local
predictor, quantizer and rANS coder together) x ``cpi`` / the profile's clock.
``cpi`` is an assumption, 1.0 by default: most Thumb-2 instructions retire in
one cycle on a Cortex-M4 or M7, loads and taken branches in two or more, and
the M7 issues two at a time; flash wait states and caches move it either way.

The constants and where they come from are in :data:`DEVICE_PROFILES` and
docs/BENCHMARKS.md. They carry the uncertainty of any cross-paper figure
(int8 kernels versus the float32 that runs here, memory placement, clock
settings), so read modelled latencies as estimates within a factor of ~2.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..baselines.models import FullCNN, count_macs


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    macs_per_second: float  # 0 for host: measured, not modelled
    source: str
    clock_hz: float = 0.0  # for work priced in cycles (the rANS coder), not in MACs


    @property
    def modelled(self) -> bool:
        return self.macs_per_second > 0


DEVICE_PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile("host", 0.0, "measured on this machine"),
    DeviceProfile(
        "stm32f746", 124e6,
        "Cortex-M7 @ 216 MHz with CMSIS-NN int8 kernels: the CMSIS-NN paper (Lai, Suda, Chandra 2018, "
        "arXiv:1801.06601) runs its CIFAR-10 CNN (3 conv layers of 5x5, 12.3 M MACs by our count) in "
        "99.1 ms on this part, about 124 M MAC/s", 216e6),
    DeviceProfile(
        "esp32", 21e6,
        "Xtensa LX6 @ 240 MHz, no SIMD: the ESP-NN README's ANSI C convolution kernel runs a 1x1 "
        "conv of 10x10x64 -> 64 (409,600 MACs) in 4,663,012 cycles, 0.088 MAC/cycle (measured on "
        "ESP32-S3; ESP-NN only has generic C optimisations for the ESP32), so about 21 M MAC/s", 240e6),
    DeviceProfile(
        "rpi-zero", 250e6,
        "ARM1176JZF-S @ 1 GHz, VFPv2, no NEON: an assumption of 1 float MAC per 4 cycles (one VFP "
        "multiply-accumulate plus its loads); we found no published NN benchmark to cite", 1e9),
)}


def get_device(name: str) -> DeviceProfile:
    try:
        return DEVICE_PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(DEVICE_PROFILES))
        raise ValueError(f"unknown device profile {name!r}; known: {known}") from None


def host_macs_per_second(repeats: int = 50, warmup: int = 10) -> float:
    """This machine's MAC rate on a batch-1 CNN, the yardstick for scaling codec work.

    Median over ``repeats`` forward passes of the baseline full CNN
    (5.5 M MACs) after ``warmup`` unmeasured ones, run as the device would:
    one image at a time, on the caller's torch thread setting (the bench sets one).
    """
    model = FullCNN().eval()
    example = torch.rand(1, 1, 28, 28)
    macs = count_macs(model, example)
    timings = []
    with torch.no_grad():
        for _ in range(repeats + warmup):
            started = time.perf_counter()
            model(example)
            timings.append(time.perf_counter() - started)
    timings = sorted(timings[warmup:])
    return macs / timings[len(timings) // 2]


@dataclass(frozen=True)
class DeviceModel:
    """Turns host-measured device stages into a profile's modelled ones."""

    profile: DeviceProfile
    host_macs_per_second: float
    cpi: float = 1.0  # cycles per instruction, for work counted in instructions (the firmware)

    @property
    def slowdown(self) -> float:
        return self.host_macs_per_second / self.profile.macs_per_second if self.profile.modelled else 1.0

    def compute_ms(self, measured_ms: float, macs: int) -> float:
        return macs / self.profile.macs_per_second * 1e3 if self.profile.modelled else measured_ms

    def firmware_ms(self, instructions: int) -> float:
        """The time ``instructions`` take at the profile's clock and the assumed CPI."""
        return 1e3 * instructions * self.cpi / self.profile.clock_hz

    @property
    def prices_instructions(self) -> bool:
        return self.profile.modelled and self.profile.clock_hz > 0

    def other_ms(self, measured_ms: float) -> float:
        return measured_ms * self.slowdown

    def encode_ms(self, measured_ms: float, codec_ms: float, codec_cycles: int = 0) -> float:
        """Host: all of encode as measured. A device: its payload codec only, from its cycle count
        when the scheme gives one (a coder written in Python here runs as C there), else scaled."""
        if not self.profile.modelled:
            return measured_ms
        if codec_cycles and self.profile.clock_hz:
            return 1e3 * codec_cycles / self.profile.clock_hz
        return self.other_ms(codec_ms)


def firmware_instructions(report_path: str | Path, model_hash: str) -> int:
    """Instructions per inference from an ``agilenn export --verify --json`` report of this model."""
    try:
        report = json.loads(Path(report_path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the firmware report {report_path}: {exc}") from exc
    if report.get("model_hash") != model_hash:
        raise ValueError(f"the firmware report {report_path} is for model {report.get('model_hash')}, "
                         f"not {model_hash}")
    instructions = report.get("instructions_per_inference")
    if not isinstance(instructions, int) or instructions <= 0:
        raise ValueError(f"the firmware report {report_path} counted no instructions "
                         f"(target {report.get('target')!r}; --emulator cortex-m4 counts them)")
    return instructions
