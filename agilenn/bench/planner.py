"""Which scheme, and which split, for a link and a device: a Neurosurgeon-style plan from measured costs.

Neurosurgeon (Kang et al., ASPLOS'17) picks a DNN's partition point from a
per-layer cost model: device compute, the bytes that cross the link, server
compute. Here each candidate (AgileNN, raw offload, each split8 cut, the
device alone) is measured once on calibration images of the workload: the
device part's time on this host and its multiply-accumulates, its mean payload,
the server part's time on this host. A plan then predicts each candidate's
latency on any link profile and device profile without running them:

    device compute (host-measured, or MACs / the profile's MAC rate)
    + payload codec (host-measured, scaled like the bench scales it)
    + line time of the request and reply frames, both ways, and the link's delay
    + server compute (host-measured)

Frames are priced with the envelope the bench uses on that link: compact
frames below 1 Mbit/s, full messages above. The bench's ``--split-layer auto``
picks split8's cut this way, and ``agilenn plan`` prints the whole ranking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from transports.emulator import LinkProfile
from transports.sessions import slow_link

from ..baselines.models import count_macs
from ..data import ImageDataset
from ..codec import FeatureCodec
from ..pretrained import load_checkpoint
from .devices import DeviceModel
from .schemes.agilenn_edge import RANS_CYCLES_PER_SYMBOL
from .schemes.base import as_input, image_shape
from .schemes.offload import Baseline

COMPACT_ENVELOPE_BYTES = 4  # marker, kind, session (1 byte below 128), sequence
FULL_ENVELOPE_BYTES = 30  # msgpack: version, type, request id, device id, model hash, timestamps, body map
COMPACT_REPLY_BYTES = {"logits": 4 + 2 + 10 + 2, "merged": 4 + 3}  # ten classes, no timings
FULL_REPLY_BYTES = 67


@dataclass(frozen=True)
class Costs:
    """One candidate's costs, measured on this host on the calibration images."""

    name: str
    device_ms: float  # the device part's forward pass (0: nothing runs on the device)
    device_macs: int
    codec_ms: float
    payload_bytes: float  # mean (0: nothing is sent)
    server_ms: float
    reply: str  # "logits" (the device merges) or "merged"
    accuracy: float
    codec_cycles: int = 0  # the codec priced in MCU cycles (the rANS coder); 0: scale the host's time


def _timed_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - started))
    return float(np.median(times))


def measure_costs(model_spec: str, baseline_spec: str, images: ImageDataset, splits: list[int],
                  repeats: int = 20) -> list[Costs]:
    """Every candidate's costs on ``images`` (a few hundred are plenty)."""
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(model_spec)
    model = checkpoint.build_model().eval()
    codec = FeatureCodec(checkpoint.codec)
    first = as_input(images.images[0])
    layout = model.config
    quantize_ops = layout.remote_channels * layout.feature_size**2 * layout.n_centroids
    with torch.no_grad():
        device_ms = _timed_ms(lambda: model.device_forward(first), repeats)
        out = model.device_forward(images.batch(slice(0, len(images)))[0])
        merged = model.server_forward(out.symbols, out.local_logits).argmax(1).numpy()
        one = model.device_forward(first)
        server_ms = _timed_ms(lambda: model.server_forward(one.symbols, one.local_logits), repeats)
    codec_ms, mean_bytes = _payloads(codec.encode, list(out.symbols.numpy().astype(np.uint8)), repeats)
    macs = count_macs(model, torch.zeros(1, *image_shape(layout)), model.device_forward) + quantize_ops
    symbols = layout.remote_channels * layout.feature_size**2
    cycles = symbols * RANS_CYCLES_PER_SYMBOL if checkpoint.codec.layout == "rans" else 0
    costs = [Costs("agilenn", device_ms, macs, codec_ms, mean_bytes, server_ms, "logits",
                   float(np.mean(merged == images.labels)), cycles)]
    baseline = Baseline.load(baseline_spec)
    full = baseline.model.eval()
    with torch.no_grad():
        full_ms = _timed_ms(lambda: full(first), repeats)
        predicted = full(images.batch(slice(0, len(images)))[0]).argmax(1).numpy()
    full_accuracy = float(np.mean(predicted == images.labels))
    codec_ms, mean_bytes = _payloads(baseline.payloads.encode_raw, list(images.images), repeats)
    costs.append(Costs("raw-offload", 0.0, 0, codec_ms, mean_bytes, full_ms, "merged", full_accuracy))
    return costs + split8_costs(baseline, images, splits, repeats, full_accuracy)


def split8_costs(baseline: Baseline, images: ImageDataset, splits: list[int], repeats: int = 20,
                 accuracy: float = float("nan")) -> list[Costs]:
    """The costs of each split8 cut (``accuracy``: the full CNN's, when measured)."""
    return [_split_costs(baseline, split, images, repeats, accuracy) for split in splits]


def _payloads(encode: Callable[[Any], bytes], items: list[Any], repeats: int) -> tuple[float, float]:
    """(host milliseconds to encode one, mean payload bytes) of ``encode`` over ``items``."""
    return _timed_ms(lambda: encode(items[0]), repeats), float(np.mean([len(encode(item)) for item in items]))


def _split_costs(baseline: Baseline, split: int, images: ImageDataset, repeats: int,
                 accuracy: float) -> Costs:
    head, tail = baseline.model.head(split), baseline.model.tail(split)
    first = as_input(images.images[0])
    with torch.no_grad():
        activations = list(head(images.batch(slice(0, len(images)))[0]).numpy())
        head_ms = _timed_ms(lambda: head(first), repeats)
        activation = head(first)
        tail_ms = _timed_ms(lambda: tail(activation), repeats)
    encode = baseline.payloads.encode_split8
    codec_ms, mean_bytes = _payloads(lambda a: encode(a, split), activations, repeats)
    macs = count_macs(head, torch.zeros(1, *first.shape[1:]))
    return Costs(f"split8@{split}", head_ms, macs, codec_ms, mean_bytes, tail_ms, "merged", accuracy)


def predict_ms(costs: Costs, link: LinkProfile, device: DeviceModel) -> float:
    """The candidate's latency on ``link`` and ``device``, from its measured costs."""
    compute = device.compute_ms(costs.device_ms, costs.device_macs) + \
        device.encode_ms(costs.codec_ms, costs.codec_ms, costs.codec_cycles)
    if costs.payload_bytes == 0:
        return compute
    compact = slow_link(link)
    up = costs.payload_bytes + (COMPACT_ENVELOPE_BYTES if compact else FULL_ENVELOPE_BYTES)
    down = COMPACT_REPLY_BYTES[costs.reply] if compact else FULL_REPLY_BYTES
    line = (up + down) / link.bandwidth_bytes_per_s if link.rate_limited else 0.0
    return compute + 1e3 * (line + 2 * link.delay_s) + costs.server_ms


def plan(costs: list[Costs], link: LinkProfile, device: DeviceModel, tolerance_pp: float = 1.0,
         ) -> dict[str, Any]:
    """Every candidate's predicted latency, fastest first, and the recommendation: the fastest
    whose accuracy on the calibration images is within ``tolerance_pp`` of the most accurate."""
    ranked = sorted(({"name": c.name, "predicted_ms": round(predict_ms(c, link, device), 3),
                      **{k: v for k, v in asdict(c).items() if k != "name"}} for c in costs),
                    key=lambda row: row["predicted_ms"])
    best_accuracy = max(c.accuracy for c in costs if not np.isnan(c.accuracy))
    eligible = [row for row in ranked if not row["accuracy"] < best_accuracy - tolerance_pp / 100]
    splits = [row for row in ranked if row["name"].startswith("split8@")]
    return {"link": link.name, "device": device.profile.name, "recommended": eligible[0]["name"],
            "fastest": ranked[0]["name"], "accuracy_tolerance_pp": tolerance_pp,
            "best_split8": splits[0]["name"] if splits else None, "candidates": ranked}


def best_split(costs: list[Costs], link: LinkProfile, device: DeviceModel) -> int:
    """split8's latency-optimal cut for ``link`` and ``device``."""
    split8 = [c for c in costs if c.name.startswith("split8@")]
    if not split8:
        raise ValueError("no split8 cut was measured")
    fastest = min(split8, key=lambda c: predict_ms(c, link, device))
    return int(fastest.name.split("@")[1])
