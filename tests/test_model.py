"""Model pieces: quantizer, splitter, merge, extractor, predictors, importance."""

from __future__ import annotations

import pytest
import torch

from agilenn.config import ModelConfig
from agilenn.extractor import FeatureExtractor
from agilenn.importance import channel_importance, integrated_gradients
from agilenn.model import AgileNN, split_channels
from agilenn.predictors import REMOTE_PREDICTORS, LogitMerge, SmallCNN
from agilenn.quantizer import RELU6_MAX, SoftHardQuantizer


def test_quantizer_forward_emits_the_nearest_centroid() -> None:
    quantizer = SoftHardQuantizer(4)  # centroids 0, 2, 4, 6
    x = torch.tensor([0.1, 0.9, 1.1, 3.2, 5.9])
    out = quantizer(x)
    assert out.symbols.tolist() == [0, 0, 1, 2, 3]
    assert out.values.tolist() == pytest.approx([0.0, 0.0, 2.0, 4.0, 6.0])
    assert torch.equal(quantizer.quantize(x), out.symbols)
    assert torch.equal(quantizer.dequantize(out.symbols), out.values.detach())


def test_quantizer_backward_uses_the_soft_value() -> None:
    quantizer = SoftHardQuantizer(4, sharpness=1.0)
    x = torch.tensor([1.0, 3.0], requires_grad=True)
    out = quantizer(x)
    soft = (out.soft_assignment * quantizer.centroids()).sum(-1)
    expected = torch.autograd.grad(soft.sum(), x, retain_graph=True)[0]
    out.values.sum().backward()
    # The gradient of the hard value would be 0; the soft mixture's is not.
    assert x.grad is not None and (x.grad.abs() > 1e-3).all()
    assert torch.allclose(x.grad, expected)
    assert quantizer.raw_centroids.grad is not None


def test_centroids_stay_inside_the_relu6_range() -> None:
    quantizer = SoftHardQuantizer(3)
    with torch.no_grad():
        quantizer.raw_centroids.copy_(torch.tensor([-2.0, 3.0, 9.0]))
    assert quantizer.centroids().tolist() == [0.0, 3.0, RELU6_MAX]


def test_splitter_keeps_the_first_k_channels_local() -> None:
    features = torch.arange(2 * 5 * 1 * 1, dtype=torch.float32).reshape(2, 5, 1, 1)
    local, remote = split_channels(features, 2)
    assert torch.equal(local, features[:, :2]) and torch.equal(remote, features[:, 2:])
    assert ModelConfig(feature_channels=20, split_ratio=0.2).local_channels == 4
    assert ModelConfig(feature_channels=3, split_ratio=0.01).local_channels == 1
    assert ModelConfig(feature_channels=3, split_ratio=0.99).local_channels == 2


def test_merge_is_a_softmax_weighted_sum() -> None:
    merge = LogitMerge()
    local, remote = torch.ones(1, 3), torch.full((1, 3), 3.0)
    assert torch.allclose(merge(local, remote), torch.full((1, 3), 2.0))
    with torch.no_grad():
        merge.weight_logits.copy_(torch.tensor([0.0, 100.0]))
    assert torch.allclose(merge(local, remote), remote)
    assert float(merge.weights().detach().sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("stride,size", [(1, 28), (2, 14), (4, 7)])
def test_extractor_stride_and_relu6_range(stride: int, size: int) -> None:
    extractor = FeatureExtractor(ModelConfig(extractor_stride=stride, feature_channels=6))
    features = extractor(torch.rand(3, 1, 28, 28) * 50)
    assert features.shape == (3, 6, size, size)
    assert features.min() >= 0.0 and features.max() <= RELU6_MAX


@pytest.mark.parametrize("arch", sorted(REMOTE_PREDICTORS))
def test_every_remote_architecture_builds_and_runs(arch: str) -> None:
    model = AgileNN(ModelConfig(remote_arch=arch)).eval()
    out = model(torch.rand(2, 1, 28, 28))
    assert out.logits.shape == out.remote_logits.shape == (2, 10)
    assert out.symbols.shape == (2, 16, 7, 7)


def test_unknown_remote_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown remote_arch"):
        AgileNN(ModelConfig(remote_arch="resnet9000"))


def test_device_and_server_halves_reproduce_the_full_forward() -> None:
    model = AgileNN(ModelConfig()).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        full = model(x)
    device = model.device_forward(x)
    assert torch.equal(device.symbols, full.symbols)
    assert torch.allclose(model.server_forward(device.symbols, device.local_logits), full.logits, atol=1e-6)


@pytest.mark.parametrize("arch", sorted(REMOTE_PREDICTORS))
def test_serving_layout_gives_the_same_predictions(arch: str) -> None:
    model = AgileNN(ModelConfig(remote_arch=arch)).eval()
    device = model.device_forward(torch.rand(16, 1, 28, 28))
    expected = model.server_forward(device.symbols, device.local_logits)
    served = model.prepare_for_serving()
    # Fails for the CNN without the conversion: its 3x3 kernels over many channels are NCHW.
    # (1x1 and depthwise kernels are the same bytes in both layouts.)
    assert all(p.is_contiguous(memory_format=torch.channels_last)
               for p in served.remote_predictor.parameters() if p.dim() == 4)
    assert not served.training
    assert torch.allclose(served.server_forward(device.symbols, device.local_logits), expected, atol=1e-5)


def test_channel_permutation_keeps_the_reference_function() -> None:
    model = AgileNN(ModelConfig(feature_channels=6)).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        before_features = model.extractor(x)
        before = model.reference(before_features)
    order = torch.tensor([5, 3, 1, 0, 2, 4])
    model.permute_feature_channels(order)
    with torch.no_grad():
        after_features = model.extractor(x)
        after = model.reference(after_features)
    assert torch.allclose(after_features, before_features[:, order], atol=1e-6)
    assert torch.allclose(after, before, atol=1e-5)


def _reference_and_features() -> tuple[SmallCNN, torch.Tensor, torch.Tensor]:
    reference = SmallCNN(6, 10, 8).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    features = torch.rand(4, 6, 7, 7) * 6
    return reference, features, torch.tensor([0, 3, 7, 9])


def test_integrated_gradients_satisfy_completeness() -> None:
    reference, features, target = _reference_and_features()
    attributions = integrated_gradients(reference, features, target, n_steps=64)
    with torch.no_grad():
        gap = reference(features).gather(1, target[:, None]) - reference(
            torch.zeros_like(features)
        ).gather(1, target[:, None])
    assert torch.allclose(attributions.sum(dim=(1, 2, 3)), gap[:, 0], rtol=0.05, atol=0.05)
    assert channel_importance(attributions).shape == (4, 6)


@pytest.mark.parametrize("second_order", [False, True])
def test_attributions_are_differentiable_with_respect_to_the_features(second_order: bool) -> None:
    reference, features, target = _reference_and_features()
    features.requires_grad_(True)
    attributions = integrated_gradients(reference, features, target, 4, second_order)
    attributions.abs().sum().backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_second_order_term_vanishes_for_a_piecewise_linear_reference() -> None:
    reference, features, target = _reference_and_features()
    gradients = []
    for second_order in (False, True):
        leaf = features.clone().requires_grad_(True)
        integrated_gradients(reference, leaf, target, 4, second_order).abs().sum().backward()
        gradients.append(leaf.grad)
    assert torch.allclose(gradients[0], gradients[1], atol=1e-5)
