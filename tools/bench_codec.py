"""Payload size and speed of the feature codec's layouts on real MNIST payloads.

Side by side, in one run, on the same test payloads: zstd per layout (one byte
per symbol, bit-packed), level and with or without a zstd dictionary; rans with
an order-0 prior per channel and with the context prior, both fitted here on
*training-set* payloads; the shipped model's own codec; and the `constriction`
library's ANS coder with the same probabilities (if it is installed: it is a
benchmark dependency only, ``pip install constriction``; its stack starts
empty and is not self-delimiting, so its decoder must be told the symbol
count, and it writes whole 32-bit words). For each: the mean
and p95 payload size (every row counts agilenn's 5-byte header), its ratio to
the order-0 entropy bound, and encode + decode microseconds per payload, the
median of ``--repeats`` interleaved rounds, in wall-clock and in CPU time (this
process's, which other jobs on a shared machine do not inflate).

    python tools/bench_codec.py --model pretrained:mnist --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import zstandard

from agilenn.codec import CodecSettings, FeatureCodec, fit_rans, order0_entropy_bits
from agilenn.data import load_dataset
from agilenn.entropy import PROB_SCALE, Prior
from agilenn.evaluate import device_symbols
from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint

HEADER_BYTES = 5  # marker, layout, three one-byte varints: what every agilenn payload carries


@dataclass
class Coder:
    name: dict[str, Any]
    encode: Callable[[np.ndarray], bytes]
    decode: Callable[[bytes], np.ndarray] | None  # None: sizes only


def codec_coder(name: dict[str, Any], settings: CodecSettings) -> Coder:
    codec = FeatureCodec(settings)
    return Coder(name, codec.encode, codec.decode)


def constriction_coders(order0: Prior, context: Prior, shape: tuple[int, ...]) -> list[Coder]:
    """constriction's ANS (32-bit words) with the probabilities of the order-0 and the context prior."""
    try:
        import constriction  # a benchmark dependency only
    except ImportError:
        return []
    model = constriction.stream.model.Categorical(perfect=False)
    freqs = order0.tables()[0].astype(np.float64) / PROB_SCALE  # (C, n): one table per channel
    probabilities = np.repeat(freqs, int(np.prod(shape[1:])), axis=0)  # one row per symbol, raster order

    def encode(symbols: np.ndarray) -> bytes:
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(symbols.ravel().astype(np.int32), model, probabilities)
        return bytes(HEADER_BYTES) + coder.get_compressed().tobytes()

    def decode(payload: bytes) -> np.ndarray:
        words = np.frombuffer(payload[HEADER_BYTES:], dtype=np.uint32).copy()
        coder = constriction.stream.stack.AnsCoder(words)
        return coder.decode(model, probabilities).reshape(shape)

    def encode_context(symbols: np.ndarray) -> bytes:
        # The context prior's own events and probabilities. A decoder would need one call
        # per event, since each context depends on symbols decoded before: sizes only.
        # Each event is the middle of three categories: the slots below its own, its own, above.
        freqs, cums = context.events(symbols)
        thirds = np.stack([cums, freqs, PROB_SCALE - cums - freqs], axis=1).astype(np.float64)
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(np.ones(len(freqs), dtype=np.int32), model, thirds)
        return bytes(HEADER_BYTES) + coder.get_compressed().tobytes()

    name = {"coder": "constriction ANS"}
    return [Coder({**name, "prior": "order0"}, encode, decode),
            Coder({**name, "prior": "context", "note": "sizes only"}, encode_context, None)]


def zstd_coders(n_centroids: int, train: np.ndarray, dictionary_size: int, levels: list[int]) -> list[Coder]:
    coders = []
    for layout in ("bytes", "bitpacked"):
        plain = CodecSettings(n_centroids, layout)
        bodies: list[bytes | bytearray | memoryview] = [FeatureCodec(plain).raw_body(s) for s in train]
        dictionary = zstandard.train_dictionary(dictionary_size, bodies).as_bytes()
        for level in levels:
            for dict_bytes in (b"", dictionary):
                name = {"coder": "zstd", "layout": layout, "level": level,
                        "dictionary_bytes": len(dict_bytes)}
                coders.append(codec_coder(name, CodecSettings(n_centroids, layout, level, dict_bytes)))
    return coders


def measure(
    coders: list[Coder], test: np.ndarray, timed: int, repeats: int, bound: float
) -> list[dict[str, Any]]:
    rows = []
    for coder in coders:
        payloads = [coder.encode(s) for s in test]
        if coder.decode is not None:
            assert all(np.array_equal(coder.decode(p), s) for p, s in zip(payloads, test, strict=True))
        sizes = np.array([len(p) for p in payloads])
        rows.append({**coder.name, "bytes_mean": round(float(sizes.mean()), 2),
                     "bytes_p95": float(np.percentile(sizes, 95)),
                     "ratio_to_bound": round(float(sizes.mean()) / bound, 3), "wall": [], "cpu": []})
    for _ in range(repeats):  # interleaved, so a busy moment of the machine hits every coder alike
        for coder, row in zip(coders, rows, strict=True):
            if coder.decode is None:
                continue
            wall, cpu = time.perf_counter(), time.process_time()
            decode = coder.decode
            for s in test[:timed]:
                decode(coder.encode(s))
            row["wall"].append(1e6 * (time.perf_counter() - wall) / timed)
            row["cpu"].append(1e6 * (time.process_time() - cpu) / timed)
    for row in rows:
        wall, cpu = row.pop("wall"), row.pop("cpu")
        row["encode_decode_us"] = round(float(np.median(wall)), 1) if wall else None
        row["encode_decode_cpu_us"] = round(float(np.median(cpu)), 1) if cpu else None
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data-dir")
    parser.add_argument("--limit", type=int, default=10_000, help="test images to encode")
    parser.add_argument("--train-samples", type=int, default=10_000,
                        help="training payloads a dictionary or prior is fitted on")
    parser.add_argument("--timed", type=int, default=2_000, help="test payloads each timing round codes")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dictionary-size", type=int, default=2048)
    parser.add_argument("--levels", default="1,3,9,19")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    checkpoint = load_checkpoint(args.model)
    model = checkpoint.build_model()
    test = device_symbols(model, load_dataset("mnist", "test", args.data_dir).head(args.limit))
    train = device_symbols(model, load_dataset("mnist", "train", args.data_dir).head(args.train_samples))
    n_centroids = checkpoint.config.n_centroids
    entropy = order0_entropy_bits(np.bincount(test.ravel(), minlength=n_centroids))
    bound = entropy * test[0].size / 8
    plain = CodecSettings(n_centroids)
    rans = {kind: fit_rans(plain, train, kind) for kind in ("order0", "context")}
    coders = [
        *zstd_coders(n_centroids, train, args.dictionary_size, [int(v) for v in args.levels.split(",")]),
        *(codec_coder({"coder": "rans", "prior": kind, "prior_bytes": len(settings.prior)}, settings)
          for kind, settings in rans.items()),
        codec_coder({"coder": "shipped codec", "layout": checkpoint.codec.layout,
                     "prior_bytes": len(checkpoint.codec.prior)}, checkpoint.codec),
        *constriction_coders(rans["order0"].parsed_prior(), rans["context"].parsed_prior(), test.shape[1:]),
    ]
    print(json.dumps({
        "model_hash": checkpoint.model_hash,
        "n_payloads": len(test),
        "symbols_per_payload": int(test[0].size),
        "entropy_bits_per_symbol": round(entropy, 4),
        "entropy_bound_bytes": round(bound, 2),
        "rows": measure(coders, test, min(args.timed, len(test)), args.repeats, bound),
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
