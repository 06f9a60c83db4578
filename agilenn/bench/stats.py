"""Latency statistics shared by ``agilenn bench`` and ``agilenn demo`` (numpy only, no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_percentiles(values: Sequence[float] | np.ndarray, digits: int = 3) -> dict[str, float]:
    """p50, p95 and p99 of ``values``, rounded to ``digits``."""
    return {
        name: round(float(np.percentile(values, q)), digits)
        for name, q in (("p50", 50), ("p95", 95), ("p99", 99))
    }
