"""Skewness, disorder and rate terms on hand-made importances with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from agilenn.losses import disorder_loss, skewness, skewness_loss, symbol_entropy_bits


def test_skewness_is_the_local_share_of_total_importance() -> None:
    importance = torch.tensor([[3.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    assert skewness(importance, 2).tolist() == pytest.approx([1.0, 0.5])
    assert skewness(importance, 1).tolist() == pytest.approx([0.75, 0.25])


def test_skewness_loss_is_the_mean_hinge_below_rho() -> None:
    importance = torch.tensor([[9.0, 1.0], [5.0, 5.0]])  # skewness 0.9 and 0.5
    # Only the second sample falls short of rho = 0.8, by 0.3: mean over 2 = 0.15.
    assert float(skewness_loss(importance, 1, rho=0.8)) == pytest.approx(0.15)
    assert float(skewness_loss(importance, 1, rho=0.5)) == pytest.approx(0.0)


def test_disorder_loss_penalises_a_remote_channel_above_a_local_one() -> None:
    ordered = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert float(disorder_loss(ordered, 2)) == 0.0
    # max remote 5, min local 1, total 10: (5 - 1) / 10.
    disordered = torch.tensor([[1.0, 3.0, 5.0, 1.0]])
    assert float(disorder_loss(disordered, 2)) == pytest.approx(0.4)


def test_disorder_loss_averages_over_the_batch() -> None:
    batch = torch.tensor([[2.0, 2.0], [1.0, 3.0]])  # (2-2)/4 -> 0 and (3-1)/4 -> 0.5
    assert float(disorder_loss(batch, 1)) == pytest.approx(0.25)


def test_losses_survive_an_all_zero_importance() -> None:
    zeros = torch.zeros(2, 4)
    assert torch.isfinite(skewness_loss(zeros, 1, 0.8))
    assert float(disorder_loss(zeros, 1)) == 0.0


def test_skewness_loss_gradient_moves_importance_to_the_local_channels() -> None:
    importance = torch.tensor([[1.0, 1.0, 1.0, 1.0]], requires_grad=True)
    skewness_loss(importance, 1, 0.8).backward()
    assert importance.grad is not None
    assert importance.grad[0, 0] < 0  # growing the local channel lowers the loss
    assert (importance.grad[0, 1:] > 0).all()


def test_symbol_entropy_of_soft_assignments() -> None:
    uniform = torch.full((10, 8), 1.0 / 8)
    assert float(symbol_entropy_bits(uniform)) == pytest.approx(3.0)
    one_hot = torch.zeros(10, 8)
    one_hot[:, 2] = 1.0
    assert float(symbol_entropy_bits(one_hot)) == pytest.approx(0.0, abs=1e-6)
    half = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert float(symbol_entropy_bits(half)) == pytest.approx(math.log2(2))
