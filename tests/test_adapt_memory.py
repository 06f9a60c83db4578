"""Peak memory of an on-device training step: hand-computed estimates, and estimate against measurement."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from agilenn.adapt.memory import estimate_peak_memory, measure_peak_memory
from agilenn.adapt.selection import (
    DevicePart,
    Selection,
    apply_selection,
    bias_only,
    full,
    remove_selection,
    sparse,
    under,
)
from agilenn.config import ModelConfig
from agilenn.model import AgileNN

F32 = 4
# Cross entropy, batch 2, 3 classes: its log-softmax, the int64 targets and a scalar.
LOSS_2x3 = 2 * 3 * F32 + 2 * 8 + F32


def _cross_entropy(output: Tensor) -> Tensor:
    return nn.functional.cross_entropy(output, torch.zeros(output.shape[0], dtype=torch.long))


def _relu_linear() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.ReLU(), nn.Linear(4, 3))


def _small_convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
    )


def test_linear_whose_weight_trains_keeps_its_input_by_hand() -> None:
    net, x = _relu_linear(), torch.randn(2, 4)
    estimate = estimate_peak_memory(net, x, full(net))
    assert estimate.weights == (12 + 3) * F32
    assert estimate.input == 2 * 4 * F32
    assert estimate.activations == 2 * 4 * F32  # the ReLU's output, the linear's input
    assert estimate.loss == LOSS_2x3
    assert estimate.gradients == (12 + 3) * F32
    assert estimate.optimizer_state == 0
    assert estimate.peak == 60 + 32 + 32 + LOSS_2x3 + 60


def test_linear_whose_bias_alone_trains_keeps_nothing_by_hand() -> None:
    net, x = _relu_linear(), torch.randn(2, 4)
    estimate = estimate_peak_memory(net, x, bias_only(net), optimizer="adam")
    assert estimate.activations == 0
    assert estimate.gradients == 3 * F32
    assert estimate.optimizer_state == 2 * 3 * F32 + F32  # exp_avg, exp_avg_sq and a step counter


def test_a_linear_input_that_is_the_batch_is_counted_once() -> None:
    net, x = nn.Linear(4, 3), torch.randn(2, 4)
    estimate = estimate_peak_memory(net, x, full(net), optimizer="momentum")
    assert (estimate.input, estimate.activations) == (2 * 4 * F32, 0)
    assert estimate.optimizer_state == estimate.gradients == 15 * F32


def test_int8_storage_is_one_byte_per_weight_and_activation() -> None:
    net, x = _relu_linear(), torch.randn(2, 4)
    estimate = estimate_peak_memory(net, x, full(net), dtype_bytes=1)
    assert (estimate.weights, estimate.input, estimate.activations) == (15, 8, 8)
    assert estimate.gradients == 15 * F32  # gradients stay float


def _conv_relu_conv() -> tuple[nn.Sequential, Selection, Tensor]:
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 3), nn.Flatten())
    return net, Selection({"2.bias": 1.0}), torch.randn(1, 2, 6, 6)


def test_training_only_the_last_conv_bias_needs_nothing_kept() -> None:
    net, selection, x = _conv_relu_conv()
    assert estimate_peak_memory(net, x, selection, rules="pruned").activations == 0


def test_pytorch_autograd_keeps_a_conv_input_even_when_only_its_bias_trains() -> None:
    """One backward formula covers a conv's input, weight and bias: the ReLU output (1x3x4x4) is kept."""
    net, selection, x = _conv_relu_conv()
    assert estimate_peak_memory(net, x, selection).activations == 3 * 4 * 4 * F32
    assert measure_peak_memory(net, x, selection, _cross_entropy).activations == 3 * 4 * 4 * F32


def test_a_channel_ratio_counts_only_the_selected_gradient_and_state() -> None:
    net, x = nn.Sequential(nn.ReLU(), nn.Linear(8, 4)), torch.randn(2, 8)
    half = Selection({"1.weight": 0.5})
    estimate = estimate_peak_memory(net, x, half, optimizer="adam")
    assert estimate.gradients == 4 * 4 * F32
    assert estimate.optimizer_state == 2 * 4 * 4 * F32 + F32
    assert estimate.weights == (32 + 4) * F32  # the frozen channels stay resident
    measured = measure_peak_memory(net, x, half, _cross_entropy, optimizer="adam")
    assert (measured.gradients, measured.optimizer_state) == (estimate.gradients, estimate.optimizer_state)


def test_a_sliced_weight_trains_only_its_leading_channels_and_bakes_back() -> None:
    net = nn.Linear(8, 4)
    before = net.weight.detach().clone()
    apply_selection(net, Selection({"weight": 0.5}))
    trained = [name for name, p in net.named_parameters() if p.requires_grad]
    assert trained == ["parametrizations.weight.original0"]
    torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=1.0).zero_grad()
    net(torch.randn(3, 8)).sum().backward()
    with torch.no_grad():
        net.parametrizations.weight.original0 -= net.parametrizations.weight.original0.grad
    remove_selection(net)
    assert net.weight.shape == (4, 8)
    assert torch.equal(net.weight[:, 4:], before[:, 4:])
    assert not torch.equal(net.weight[:, :4], before[:, :4])


def _selections(net: nn.Module) -> dict[str, Selection]:
    return {
        "full": full(net), "bias-only": bias_only(net), "head": under(net, "8"),
        "sparse": sparse(net, 2, {"3.weight": 1.0}), "sparse-ratio": sparse(net, 2, {"3.weight": 0.5}),
    }


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("kind", ["full", "bias-only", "head", "sparse", "sparse-ratio"])
def test_estimate_matches_measurement_within_ten_percent(kind: str, optimizer: str) -> None:
    net, x = _small_convnet(), torch.randn(4, 3, 8, 8)
    selection = _selections(net)[kind]
    estimate = estimate_peak_memory(net, x, selection, optimizer)
    measured = measure_peak_memory(net, x, selection, _cross_entropy, optimizer)
    assert abs(estimate.peak / measured.peak - 1.0) <= 0.10, (estimate, measured)


def test_a_selection_that_trains_more_measures_more() -> None:
    net, x = _small_convnet(), torch.randn(4, 3, 8, 8)
    measured = {k: measure_peak_memory(net, x, s, _cross_entropy).peak for k, s in _selections(net).items()}
    assert measured["full"] > measured["sparse"] > measured["head"]
    linear, batch = _relu_linear(), torch.randn(2, 4)
    weight = measure_peak_memory(linear, batch, Selection({"1.weight": 1.0}), _cross_entropy)
    bias = measure_peak_memory(linear, batch, Selection({"1.bias": 1.0}), _cross_entropy)
    assert (weight.activations, bias.activations) == (2 * 4 * F32, 0)


def test_measurement_leaves_the_module_untouched() -> None:
    net, x = _small_convnet(), torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    measure_peak_memory(net, x, sparse(net, 2, {"3.weight": 0.5}), _cross_entropy, "adam")
    assert net.training and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("selection, message", [
    (Selection({"nope": 1.0}), "unknown parameters"),
    (Selection({}), "trains nothing"),
    (Selection({"1.bias": 0.5}), "input channels"),
])
def test_bad_selections_are_refused(selection: Selection, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        estimate_peak_memory(_relu_linear(), torch.randn(2, 4), selection)


def test_bad_ratios_optimizers_and_unknown_layers_are_refused() -> None:
    with pytest.raises(ValueError, match="channel ratio"):
        Selection({"1.weight": 0.0})
    net, x = _relu_linear(), torch.randn(2, 4)
    with pytest.raises(ValueError, match="unknown optimizer"):
        estimate_peak_memory(net, x, full(net), optimizer="lion")
    gelu = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="no memory rule for GELU"):
        estimate_peak_memory(gelu, x, full(gelu))


def test_the_device_part_computes_the_local_logits() -> None:
    model = AgileNN(ModelConfig()).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(DevicePart(model)(x), model.device_forward(x).local_logits)


def test_the_tool_prints_a_table_and_agrees(capsys: pytest.CaptureFixture[str]) -> None:
    path = Path(__file__).resolve().parents[1] / "tools" / "adapt_memory.py"
    spec = importlib.util.spec_from_file_location("adapt_memory", path)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["--batch-sizes", "1", "--optimizers", "adam"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {row["selection"] for row in report["rows"]} >= {"full", "bias-only", "local-predictor", "sparse"}
    assert report["worst_ratio_error"] <= 0.10
