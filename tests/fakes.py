"""Seeded manipulators for MemoryPipe: the faults a real serial line produces."""

from __future__ import annotations

import random

from transports.pipe import Manipulator


def noisy_line(seed: int, byte_error_rate: float = 0.0, split: bool = False, drop_rate: float = 0.0,
               duplicate_rate: float = 0.0) -> Manipulator:
    """Corrupt bytes, drop or duplicate them, and split writes at random points."""
    rng = random.Random(seed)

    def manipulate(data: bytes) -> list[bytes]:
        out = bytearray()
        for byte in data:
            if rng.random() < drop_rate:
                continue
            if rng.random() < byte_error_rate:
                byte ^= rng.randint(1, 255)
            out.append(byte)
            if rng.random() < duplicate_rate:
                out.append(byte)
        if not split or len(out) < 2:
            return [bytes(out)]
        cuts = sorted(rng.sample(range(1, len(out)), k=min(3, len(out) - 1)))
        return [bytes(out[a:b]) for a, b in zip([0, *cuts], [*cuts, len(out)], strict=True)]

    return manipulate
