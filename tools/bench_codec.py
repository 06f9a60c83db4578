"""Payload size and speed of the feature codec's layouts on real MNIST payloads.

For each layout (one byte per symbol, bit-packed), zstd level and with or
without a zstd dictionary trained on *training-set* payloads, reports the mean
and p95 encoded size on the test set, the encode + decode time per payload, and
the order-0 entropy bound beside them.

    python tools/bench_codec.py --model pretrained:mnist --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import numpy as np
import zstandard

from agilenn.pretrained import DEFAULT_MODEL, load_checkpoint
from agilenn.codec import CodecSettings, FeatureCodec, order0_entropy_bits
from agilenn.data import load_dataset
from agilenn.evaluate import device_symbols


def _measure(settings: CodecSettings, symbols: np.ndarray) -> dict[str, float]:
    codec = FeatureCodec(settings)
    codec.decode(codec.encode(symbols[0]))  # build the zstd contexts outside the timing
    started = time.perf_counter()
    payloads = [codec.encode(s) for s in symbols]
    decoded = [codec.decode(p) for p in payloads]
    elapsed = time.perf_counter() - started
    assert all(np.array_equal(d, s) for d, s in zip(decoded, symbols, strict=True))
    sizes = np.array([len(p) for p in payloads])
    return {"bytes_mean": round(float(sizes.mean()), 2),
            "bytes_p95": float(np.percentile(sizes, 95)),
            "encode_decode_us": round(1e6 * elapsed / len(symbols), 1)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data-dir")
    parser.add_argument("--limit", type=int, default=10_000, help="test images to encode")
    parser.add_argument("--dictionary-size", type=int, default=2048)
    parser.add_argument("--levels", default="1,3,9,19")
    args = parser.parse_args(argv)
    checkpoint = load_checkpoint(args.model)
    model = checkpoint.build_model()
    test = device_symbols(model, load_dataset("mnist", "test", args.data_dir).head(args.limit))
    train = device_symbols(model, load_dataset("mnist", "train", args.data_dir).head(10_000))
    n_centroids = checkpoint.config.n_centroids
    entropy = order0_entropy_bits(np.bincount(test.ravel(), minlength=n_centroids))
    rows = []
    for layout in ("bytes", "bitpacked"):
        plain = CodecSettings(n_centroids, layout)
        bodies: list[bytes | bytearray | memoryview] = [FeatureCodec(plain).raw_body(s) for s in train]
        dictionary = zstandard.train_dictionary(args.dictionary_size, bodies).as_bytes()
        for level in map(int, args.levels.split(",")):
            for dict_bytes in (b"", dictionary):
                settings = CodecSettings(n_centroids, layout, level, dict_bytes)
                rows.append({"layout": layout, "level": level, "dictionary_bytes": len(dict_bytes),
                             **_measure(settings, test)})
    print(json.dumps({
        "model_hash": checkpoint.model_hash,
        "n_payloads": len(test),
        "symbols_per_payload": int(test[0].size),
        "entropy_bits_per_symbol": round(entropy, 4),
        "entropy_bound_bytes": round(entropy * test[0].size / 8, 2),
        "rows": rows,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
