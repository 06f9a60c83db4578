"""Choosing what trains: the knapsack, and ElasticTrainer-style selection under a time budget."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from agilenn.adapt.elastic import LayerTime, backward_time_model, select_within_time, taylor_importance
from agilenn.adapt.knapsack import knapsack

FAST = settings(deadline=None, database=None, derandomize=True, max_examples=60)


def _brute_force(values: list[float], costs: list[float], budget: float) -> float:
    best = 0.0
    for size in range(len(values) + 1):
        for chosen in itertools.combinations(range(len(values)), size):
            if sum(costs[i] for i in chosen) <= budget:
                best = max(best, sum(values[i] for i in chosen))
    return best


@FAST
@given(st.lists(st.tuples(st.floats(0, 10), st.floats(0, 10)), max_size=8), st.floats(0.1, 30))
def test_knapsack_finds_the_best_set_and_never_exceeds_the_budget(
    items: list[tuple[float, float]], budget: float
) -> None:
    values, costs = [v for v, _ in items], [c for _, c in items]
    chosen = knapsack(values, costs, budget)
    assert sum(costs[i] for i in chosen) <= budget
    # Costs are rounded to 1/100,000 of the budget, so only a set within that slack of the
    # budget may be missed: the choice is at least as good as the best with a little less budget.
    assert sum(values[i] for i in chosen) >= _brute_force(values, costs, budget * (1 - 1e-4)) - 1e-6


def test_knapsack_on_a_known_answer() -> None:
    assert knapsack([60, 100, 120], [10, 20, 30], 50) == [1, 2]
    assert knapsack([5, 0, -1], [0, 1, 1], 0) == [0]  # free and valuable: taken; worthless: never
    assert knapsack([1, 1], [0, 0.4], 0) == [0]  # review finding: a zero budget still takes free items
    with pytest.raises(ValueError):
        knapsack([1], [1, 2], 3)


def _layers() -> list[LayerTime]:
    # Loss end first. Reaching "early" needs the gradient through "late" and "middle" (3 + 2).
    return [LayerTime("late", 3.0, {"late.w": 1.0}),
            LayerTime("middle", 2.0, {"middle.w": 4.0, "middle.b": 0.5}),
            LayerTime("early", 1.0, {"early.w": 2.0})]


def _brute_force_choice(layers: list[LayerTime], importance: dict[str, float], budget: float) -> float:
    tensors = [(depth, name, s) for depth, layer in enumerate(layers)
               for name, s in layer.weight_grad_s.items()]
    best = 0.0
    for size in range(1, len(tensors) + 1):
        for chosen in itertools.combinations(tensors, size):
            deepest = max(depth for depth, _, _ in chosen)
            cost = sum(s for _, _, s in chosen) + sum(layer.activation_grad_s for layer in layers[:deepest])
            if cost <= budget:
                best = max(best, sum(importance[name] for _, name, _ in chosen))
    return best


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0])
def test_elastic_selection_matches_brute_force_and_charges_the_path_to_the_deepest_tensor(
    fraction: float,
) -> None:
    layers = _layers()
    importance = {"late.w": 1.0, "middle.w": 2.0, "middle.b": 0.5, "early.w": 6.0}
    choice = select_within_time(layers, importance, fraction)
    assert choice.full_backward_s == pytest.approx(1 + 4 + 0.5 + 2 + 3 + 2)
    assert choice.backward_s <= fraction * choice.full_backward_s + 1e-9
    total = sum(importance.values())
    expected = _brute_force_choice(layers, importance, fraction * choice.full_backward_s)
    assert choice.importance * total == pytest.approx(expected)
    if "early.w" in choice.tensors:  # the deepest tensor pays for the gradient's way down to it
        assert choice.backward_s >= 3 + 2 + 2


def test_taylor_importance_is_the_first_order_loss_change_of_one_step() -> None:
    layer = nn.Linear(3, 1, bias=True)
    with torch.no_grad():
        layer.weight.fill_(0.5)
        layer.bias.fill_(0.0)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    parameters = dict(layer.named_parameters())
    importance = taylor_importance(parameters, lambda: layer(x).sum(), lr=0.1)
    assert importance["weight"] == pytest.approx(0.1 * (1 + 4 + 9))  # lr * |g|^2 with g = x
    assert importance["bias"] == pytest.approx(0.1)
    assert torch.equal(layer.weight, torch.full((1, 3), 0.5))  # the probe changed nothing


def test_the_time_model_covers_every_leaf_on_the_path_and_scales_with_the_device() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10)).eval()
    x = torch.rand(8, 1, 28, 28)
    trainable = {"0.weight", "0.bias", "3.weight"}
    host = backward_time_model(model, x, trainable, repeats=3)
    assert [layer.name for layer in host] == ["3", "2", "1", "0"]  # the loss end first
    assert set(host[0].weight_grad_s) == {"3.weight"} and set(host[3].weight_grad_s) == {"0.weight", "0.bias"}
    slow = backward_time_model(model, x, trainable, slowdown=1000.0, repeats=3)
    assert sum(slow[0].weight_grad_s.values()) > 50 * sum(host[0].weight_grad_s.values())
    importance = taylor_importance(dict(model.named_parameters()),
                                   lambda: F.cross_entropy(model(x), torch.zeros(8).long()), 0.01)
    choice = select_within_time(host, importance, 0.5)
    assert choice.tensors and choice.backward_s <= 0.5 * choice.full_backward_s + 1e-12
