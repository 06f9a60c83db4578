"""What Integrated Gradients explains: the true-class logit or the cross-entropy loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agilenn.cli.train import build_parser
from agilenn.config import IG_TARGETS, ModelConfig, TrainConfig
from agilenn.data import make_synthetic
from agilenn.importance import EXPLAINED_OUTPUTS, integrated_gradients
from agilenn.predictors import SmallCNN
from agilenn.training import Trainer

TINY_MODEL = ModelConfig(stem_channels=8, feature_channels=10, remote_width=16, reference_width=16)


def _reference_and_features(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    reference = SmallCNN(6, 10, 8).to(dtype).eval()
    features = torch.rand(4, 6, 7, 7, dtype=dtype) * 6.0  # ReLU6 range, like the extractor's
    return reference, features, torch.randint(0, 10, (4,))


def test_config_and_importance_name_the_same_targets() -> None:
    assert set(IG_TARGETS) == set(EXPLAINED_OUTPUTS)


@pytest.mark.parametrize("second_order", [False, True])
def test_loss_attributions_have_the_features_shape_and_differ_from_logit_ones(second_order: bool) -> None:
    reference, features, labels = _reference_and_features()
    logit = integrated_gradients(reference, features, labels, 8, second_order, "logit")
    loss = integrated_gradients(reference, features, labels, 8, second_order, "loss")
    assert loss.shape == logit.shape == features.shape
    assert torch.isfinite(loss).all()
    assert not torch.allclose(loss, logit, atol=1e-3)


def test_loss_attributions_satisfy_completeness() -> None:
    # With a zero baseline, sum(IG) = f(x) - f(0) for f = per-sample CE. Float64
    # and many steps keep the quadrature error well below the tolerance.
    reference, features, labels = _reference_and_features(torch.float64)
    with torch.no_grad():
        reference.head.weight.mul_(20.0)  # spread the logits so the loss gaps are large
        loss = F.cross_entropy(reference(features), labels, reduction="none")
        loss_at_zero = F.cross_entropy(reference(torch.zeros_like(features)), labels, reduction="none")
    attributions = integrated_gradients(reference, features, labels, n_steps=128, ig_target="loss")
    gap = loss - loss_at_zero
    assert gap.abs().min() > 0.1  # a real gap, so the check below means something
    assert torch.allclose(attributions.sum(dim=(1, 2, 3)), gap, rtol=1e-3, atol=1e-4)


def test_second_order_term_does_not_vanish_for_the_loss() -> None:
    # The softmax inside the cross-entropy is curved, unlike a ReLU net's logit.
    reference, features, labels = _reference_and_features()
    gradients = []
    for second_order in (False, True):
        leaf = features.clone().requires_grad_(True)
        integrated_gradients(reference, leaf, labels, 4, second_order, "loss").abs().sum().backward()
        assert leaf.grad is not None and leaf.grad.abs().sum() > 0
        gradients.append(leaf.grad)
    assert not torch.allclose(gradients[0], gradients[1], atol=1e-5)


def test_unknown_ig_target_is_refused() -> None:
    with pytest.raises(ValueError, match="logit, loss"):
        TrainConfig(ig_target="gradient")
    reference, features, labels = _reference_and_features()
    with pytest.raises(ValueError, match="logit, loss"):
        integrated_gradients(reference, features, labels, ig_target="gradient")


def test_train_flag_sets_ig_target() -> None:
    parser = build_parser()
    assert parser.parse_args(["--out", "m.agnn", "--ig-target", "loss"]).ig_target == "loss"
    assert parser.parse_args(["--out", "m.agnn"]).ig_target is None  # TrainConfig's default applies
    with pytest.raises(SystemExit):
        parser.parse_args(["--out", "m.agnn", "--ig-target", "gradient"])


@pytest.mark.parametrize("second_order", [False, True])
def test_short_training_run_explaining_the_loss_has_finite_losses(second_order: bool) -> None:
    config = TrainConfig(reference_epochs=1, epochs=1, batch_size=64, ig_steps=4,
                         ig_target="loss", second_order=second_order)
    trainer = Trainer(TINY_MODEL, config, make_synthetic(256, seed=0), progress=False)
    trainer.run()
    assert [m.stage for m in trainer.history] == ["reference", "agilenn"]
    agilenn = trainer.history[-1]
    assert all(math.isfinite(m.loss) for m in trainer.history)
    assert agilenn.skewness is not None and 0.0 <= agilenn.skewness <= 1.0


def test_training_state_saved_before_ig_target_existed_still_resumes() -> None:
    config = TrainConfig(reference_epochs=1, epochs=0, batch_size=64, ig_steps=4)
    dataset = make_synthetic(128, seed=0)
    trainer = Trainer(TINY_MODEL, config, dataset, progress=False)
    trainer.run()
    state = trainer.state_dict()
    del state["train_config"]["ig_target"]
    Trainer(TINY_MODEL, config, dataset, progress=False).load_state_dict(state)
    with pytest.raises(ValueError, match="training config differs"):
        Trainer(TINY_MODEL, TrainConfig(**{**config.to_dict(), "ig_target": "loss"}), dataset,
                progress=False).load_state_dict(state)
