"""Write the real MNIST sample that ships in the package (first N test images).

    python tools/make_mnist_sample.py --data-dir ../shared/data/mnist --count 1000
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from agilenn.data import load_dataset

ASSET = Path(__file__).resolve().parents[1] / "agilenn" / "assets" / "mnist-test-sample.npz"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir")
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args(argv)
    test = load_dataset("mnist", "test", args.data_dir).head(args.count)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=test.images, labels=test.labels.astype(np.uint8))
    ASSET.write_bytes(buffer.getvalue())
    print(f"wrote {len(test)} images to {ASSET} ({ASSET.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
