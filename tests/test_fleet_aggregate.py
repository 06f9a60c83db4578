"""Fleet aggregation: element-wise averages over the devices that updated each element, bad
updates refused with a reason while the round completes, and absent devices skipped or reused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agilenn.fleet.aggregate import (
    Aggregator,
    Update,
    arrays_to_update,
    average,
    update_bytes,
    update_to_arrays,
)

SHAPES = {"weight": (2, 3), "bias": (2,)}


def _update(device: str, samples: int, weight: float, bias: float | None = None,
            mask: np.ndarray | None = None) -> Update:
    deltas = {"weight": np.full((2, 3), weight, np.float32)}
    if bias is not None:
        deltas["bias"] = np.full(2, bias, np.float32)
    return Update(device, samples, deltas, {} if mask is None else {"weight": mask})


def test_each_element_is_averaged_over_the_devices_that_updated_it_weighted_by_samples() -> None:
    first_column = np.zeros((2, 3), bool)
    first_column[:, 0] = True
    updates = [_update("a", 10, 1.0, bias=3.0), _update("b", 30, 2.0, mask=first_column)]
    merged = average(updates, SHAPES)
    # Column 0: both devices, (10 * 1 + 30 * 2) / 40; the other columns: only a's.
    assert np.allclose(merged["weight"][:, 0], 70 / 40) and np.allclose(merged["weight"][:, 1:], 1.0)
    assert np.allclose(merged["bias"], 3.0)  # b never sent a bias: not diluted towards zero


def test_no_device_updating_a_tensor_leaves_it_out() -> None:
    assert set(average([_update("a", 5, 1.0)], SHAPES)) == {"weight"}


@settings(max_examples=50, deadline=None, database=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(1, 100), st.floats(-5, 5, width=32)), min_size=1, max_size=6))
def test_full_updates_average_to_the_sample_weighted_mean(devices: list[tuple[int, float]]) -> None:
    updates = [_update(f"d{i}", samples, value) for i, (samples, value) in enumerate(devices)]
    expected = sum(s * v for s, v in devices) / sum(s for s, _ in devices)
    assert np.allclose(average(updates, SHAPES)["weight"], expected, atol=1e-4)


@pytest.mark.parametrize("bad, reason", [
    (Update("x", 10, {"weight": np.full((2, 3), np.nan, np.float32)}), "NaN or infinity"),
    (Update("x", 10, {"weight": np.full((2, 3), np.inf, np.float32)}), "NaN or infinity"),
    (Update("x", 10, {"weight": np.zeros((3, 2), np.float32)}), "has shape (3, 2)"),
    (Update("x", 10, {"conv": np.zeros(4, np.float32)}), "unknown tensor 'conv'"),
    (Update("x", 0, {"weight": np.zeros((2, 3), np.float32)}), "0 samples"),
    (_update("x", 10, 500.0), "the round's median"),
])
def test_a_bad_update_is_refused_with_its_reason_and_the_round_completes(bad: Update, reason: str) -> None:
    aggregator = Aggregator(SHAPES)
    honest = [_update(f"d{i}", 10, 1.0 + 0.1 * i) for i in range(4)]
    merged = aggregator.aggregate(1, [*honest, bad], [u.device for u in honest] + ["x"])
    assert np.allclose(merged["weight"], average(honest, SHAPES)["weight"])  # as if x had not sent
    [(round_number, rejection)] = aggregator.rejected
    assert round_number == 1 and rejection.device == "x" and reason in rejection.reason


def test_absent_devices_are_skipped_or_their_last_update_reused() -> None:
    fleet = ["a", "b"]
    skip, reuse = Aggregator(SHAPES, absent="skip"), Aggregator(SHAPES, absent="reuse")
    for aggregator in (skip, reuse):
        aggregator.aggregate(1, [_update("a", 10, 1.0), _update("b", 10, 3.0)], fleet)
    assert np.allclose(skip.aggregate(2, [_update("a", 10, 1.0)], fleet)["weight"], 1.0)
    assert np.allclose(reuse.aggregate(2, [_update("a", 10, 1.0)], fleet)["weight"], 2.0)  # b's round-1 3.0


def test_a_sparse_update_carries_a_quarter_of_the_bytes_or_less() -> None:
    scattered = np.zeros((2, 3), bool)
    scattered[0, 0] = True
    leading = np.zeros((2, 3), bool)
    leading[:, 0] = True  # the first input channel of each row: a slice, sent as its width
    full = _update("a", 1, 1.0)
    assert update_bytes(full) == 24
    assert update_bytes(_update("b", 1, 1.0, mask=scattered)) == 4 + 1  # one value, one byte of bits
    assert update_bytes(_update("c", 1, 1.0, mask=leading)) == 8 + 2
    with pytest.raises(ValueError):
        Aggregator(SHAPES, absent="sometimes")


def test_arrays_travel_and_come_back_as_the_same_update_and_a_short_list_is_refused() -> None:
    first_column = np.zeros((2, 3), bool)
    first_column[:, 0] = True
    sent = _update("a", 7, 0.5, bias=2.0, mask=first_column)
    arrays = update_to_arrays(sent, ["weight", "bias"], SHAPES)
    back = arrays_to_update("a", 7, arrays, ["weight", "bias"])
    assert set(back.deltas) == {"weight", "bias"} and np.array_equal(back.masks["weight"], first_column)
    assert "bias" not in back.masks  # wholly updated
    with pytest.raises(ValueError, match="3 arrays, not a delta and a mask for each of 2 tensors"):
        arrays_to_update("a", 7, arrays[:3], ["weight", "bias"])
