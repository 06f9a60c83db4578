"""Evaluation through the real runtime path: device part, codec, server part.

Every accuracy here is measured on symbols that went through ``encode`` and
``decode``, so the figures include whatever the codec does to them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import zstandard
from torch import Tensor
from tqdm import tqdm

from .checkpoint import Checkpoint
from .codec import FeatureCodec, order0_entropy_bits
from .data import ImageDataset
from .importance import channel_importance, integrated_gradients
from .losses import skewness
from .model import AgileNN

RAW_IMAGE_ZSTD_LEVEL = 19


def device_symbols(model: AgileNN, dataset: ImageDataset, batch_size: int = 1000) -> np.ndarray:
    """The symbols the device would send for every image, as uint8 (N, C-k, H, W)."""
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images, _ = dataset.batch(slice(start, start + batch_size))
        chunks.append(model.device_forward(images).symbols.numpy().astype(np.uint8))
    return np.concatenate(chunks)


def evaluate(
    checkpoint: Checkpoint,
    dataset: ImageDataset,
    batch_size: int = 500,
    ig_steps: int = 16,
    progress: bool = False,
) -> dict[str, Any]:
    model = checkpoint.build_model()
    codec = FeatureCodec(checkpoint.codec)
    raw_compressor = zstandard.ZstdCompressor(level=RAW_IMAGE_ZSTD_LEVEL)
    k = model.config.local_channels
    correct = {"merged": 0, "local": 0, "remote": 0}
    skews: list[Tensor] = []
    payload_sizes: list[int] = []
    raw_sizes: list[int] = []
    symbol_counts = np.zeros(checkpoint.codec.n_centroids, dtype=np.int64)
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, disable=not progress, desc="eval", leave=False):
        images, labels = dataset.batch(slice(start, start + batch_size))
        device = model.device_forward(images)
        payloads = [codec.encode(symbols) for symbols in device.symbols.numpy()]
        received = torch.from_numpy(np.stack([codec.decode(p) for p in payloads])).long()
        with torch.no_grad():
            logits = model.server_forward(received, device.local_logits)
            remote_logits = model.remote_predictor(model.quantizer.dequantize(received))
            features = model.extractor(images)
        attributions = integrated_gradients(model.reference, features, labels, ig_steps)
        skews.append(skewness(channel_importance(attributions.detach()), k))
        correct["merged"] += int((logits.argmax(1) == labels).sum())
        correct["local"] += int((device.local_logits.argmax(1) == labels).sum())
        correct["remote"] += int((remote_logits.argmax(1) == labels).sum())
        payload_sizes += [len(p) for p in payloads]
        raw_sizes += [
            len(raw_compressor.compress(image.tobytes()))
            for image in dataset.images[start : start + batch_size]
        ]
        symbol_counts += np.bincount(received.numpy().ravel(), minlength=len(symbol_counts))
    n = len(dataset)
    symbols_per_sample = model.config.remote_channels * model.config.feature_size**2
    entropy_bits = order0_entropy_bits(symbol_counts)
    sizes = np.asarray(payload_sizes)
    return {
        "dataset": dataset.name,
        "n_samples": n,
        "model_hash": checkpoint.model_hash,
        "accuracy": correct["merged"] / n,
        "local_accuracy": correct["local"] / n,
        "remote_accuracy": correct["remote"] / n,
        "skewness": float(torch.cat(skews).mean()),
        "payload_bytes_mean": float(sizes.mean()),
        "payload_bytes_p95": float(np.percentile(sizes, 95)),
        "entropy_bound_bytes": entropy_bits * symbols_per_sample / 8.0,
        "entropy_bits_per_symbol": entropy_bits,
        "symbols_per_sample": symbols_per_sample,
        "raw_image_zstd_bytes_mean": float(np.mean(raw_sizes)),
        "codec_layout": checkpoint.codec.layout,
        "merge_weights": model.merge.weights().detach().tolist(),
    }
