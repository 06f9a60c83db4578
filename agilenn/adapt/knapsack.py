"""The 0/1 knapsack both selection methods solve: most value within a budget.

Tiny Training's sparse update picks the update candidates whose summed accuracy
gain is largest within a memory budget; ElasticTrainer picks the tensors whose
summed importance is largest within a time budget. Costs are real numbers, so
they are rounded to the nearest of ``resolution`` steps of the budget; a set the
rounding let over the budget is replaced by the best one a step smaller, so a
chosen set never exceeds the budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def knapsack(values: Sequence[float], costs: Sequence[float], budget: float,
             resolution: int = 100_000) -> list[int]:
    """Indices (ascending) of the items with the largest total value whose costs fit ``budget``.

    Items with no positive value are never chosen; an item that costs nothing
    and has value always is.
    """
    if len(values) != len(costs):
        raise ValueError("one cost per value")
    if budget < 0 or any(cost < 0 for cost in costs):
        raise ValueError("costs and the budget cannot be negative")
    if budget == 0:
        return [i for i, (value, cost) in enumerate(zip(values, costs, strict=True))
                if cost == 0 and value > 0]
    step = budget / resolution
    units = [round(cost / step) for cost in costs]
    capacity = resolution
    best = np.zeros(capacity + 1)  # best[c]: the most value within c units
    taken = np.zeros((len(values), capacity + 1), dtype=bool)
    for index, (value, unit) in enumerate(zip(values, units, strict=True)):
        if value <= 0 or unit > capacity:
            continue
        with_item = np.full(capacity + 1, -np.inf)
        with_item[unit:] = best[: capacity + 1 - unit] + value
        taken[index] = with_item > best
        best = np.maximum(best, with_item)
    for start in range(capacity, -1, -1):
        chosen = _recover(taken, units, start)
        if sum(costs[i] for i in chosen) <= budget:
            return chosen
    return []


def _recover(taken: np.ndarray, units: list[int], capacity: int) -> list[int]:
    chosen, c = [], capacity
    for index in range(len(units) - 1, -1, -1):
        if taken[index, c]:
            chosen.append(index)
            c -= units[index]
    return sorted(chosen)
