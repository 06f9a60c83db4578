"""On-device adaptation: each method's selection, the budgets, and a short run on a real shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agilenn.adapt.adapter import AdaptConfig, adapt, choose_selection
from agilenn.adapt.memory import estimate_peak_memory
from agilenn.adapt.selection import DevicePart
from agilenn.data import ImageDataset, load_mnist_sample
from agilenn.data.mnist_c import corrupt
from agilenn.pretrained import load_checkpoint

MODEL = load_checkpoint("pretrained:mnist").build_model()
PART = DevicePart(MODEL)
DEVICE_PARAMETERS = {name for name, _ in PART.named_parameters()}


def _shifted(name: str, start: int, stop: int, seed: int) -> ImageDataset:
    sample = load_mnist_sample()
    images = corrupt(sample.images[start:stop], name, seed)
    return ImageDataset(f"mnist-sample:{name}", images, sample.labels[start:stop], 10)


TRAIN = _shifted("rotate", 0, 120, 0)


def _accuracy(model: torch.nn.Module, dataset: ImageDataset) -> float:
    with torch.no_grad():
        images, labels = dataset.batch(slice(0, len(dataset)))
        return float((model(images).logits.argmax(1) == labels).float().mean())


@pytest.mark.parametrize("method, expected", [
    ("full", DEVICE_PARAMETERS),
    ("last", {"local_predictor.linear.weight", "local_predictor.linear.bias"}),
    ("bias", {name for name in DEVICE_PARAMETERS if name.endswith("bias")}),
])
def test_the_fixed_methods_train_what_they_say(method: str, expected: set[str]) -> None:
    selection, _ = choose_selection(MODEL, TRAIN, AdaptConfig(method=method))
    assert set(selection.ratios) == expected and set(selection.ratios.values()) == {1.0}


def test_sparse_update_measures_each_candidate_and_honours_the_memory_budget() -> None:
    example, _ = TRAIN.batch(slice(0, 32))
    budget = 400_000
    config = AdaptConfig(method="sparse", memory_budget=budget, probe_epochs=1, lr=0.05)
    selection, details = choose_selection(MODEL, _shifted("rotate", 0, 200, 0), config)
    contributions = details["contributions"]
    assert len(contributions) >= len(DEVICE_PARAMETERS)  # every bias, every weight at several ratios
    assert any(c["accuracy_gain"] != 0 for c in contributions)  # measured, not assumed
    assert estimate_peak_memory(PART, example, selection, config.optimizer).peak <= budget
    assert set(selection.ratios) <= DEVICE_PARAMETERS


def test_elastic_selection_stays_within_its_time_budget() -> None:
    selection, details = choose_selection(MODEL, TRAIN, AdaptConfig(method="elastic", time_budget=0.3))
    assert details["backward_s_modelled"] <= 0.3 * details["full_backward_s_modelled"] + 1e-12
    assert 0 < details["importance_share"] <= 1
    assert set(selection.ratios) <= DEVICE_PARAMETERS
    assert all(importance >= 0 for importance in details["importance"].values())


def test_a_short_adaptation_to_rotated_digits_raises_accuracy_and_leaves_the_model_alone() -> None:
    test = _shifted("rotate", 500, 1000, 1)
    before = _accuracy(MODEL, test)
    original = {name: p.clone() for name, p in MODEL.state_dict().items()}
    result = adapt(MODEL, _shifted("rotate", 0, 300, 0), AdaptConfig(method="last", epochs=6, lr=3e-3))
    assert _accuracy(result.model, test) > before
    assert all(torch.equal(original[name], p) for name, p in MODEL.state_dict().items())  # a copy trained
    assert result.peak_memory_estimated == result.peak_memory_measured  # the estimator's own check
    assert result.peak_memory_estimated < result.full_update_peak_memory


def test_only_the_selection_and_the_server_side_change() -> None:
    """Review finding: the quantizer's centroids trained too, under every method, unreported."""
    result = adapt(MODEL, TRAIN, AdaptConfig(method="bias", epochs=1))
    before, after = MODEL.state_dict(), result.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    allowed = set(result.selection.ratios) | {name for name in before
                                              if name.startswith(("remote_predictor.", "merge."))}
    assert changed and changed <= allowed
    assert any(name.endswith("bias") and not name.startswith("remote") for name in changed)
    assert "quantizer.raw_centroids" not in changed
    assert not any("running_" in name for name in changed)  # BatchNorm statistics stay frozen


def test_a_memory_budget_nothing_fits_is_an_error_not_a_silent_overrun() -> None:
    with pytest.raises(ValueError, match="nothing trains within a memory budget of 1000 bytes"):
        choose_selection(MODEL, TRAIN, AdaptConfig(method="sparse", memory_budget=1000))


def test_unknown_methods_and_budgets_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown method 'all'"):
        AdaptConfig(method="all")
    with pytest.raises(ValueError, match="time_budget"):
        AdaptConfig(time_budget=1.5)


def test_replay_appends_the_last_shipped_samples_and_refuses_what_it_cannot() -> None:
    from agilenn.adapt.adapter import with_replay

    shipped = load_mnist_sample()
    mixed = with_replay(TRAIN, shipped, 50)
    assert len(mixed) == len(TRAIN) + 50
    assert np.array_equal(mixed.images[-50:], shipped.images[-50:])
    assert np.array_equal(mixed.labels[:len(TRAIN)], TRAIN.labels)
    assert with_replay(TRAIN, shipped, 0) is TRAIN
    with pytest.raises(ValueError, match="replay samples asked"):
        with_replay(TRAIN, shipped, len(shipped) + 1)
    wide = ImageDataset("wide", np.zeros((4, 1, 32, 32), np.uint8), np.zeros(4, np.int64), 10)
    with pytest.raises(ValueError, match="differ"):
        with_replay(TRAIN, wide, 2)


def test_a_selection_over_the_memory_budget_trains_by_a_schedule_to_the_same_model() -> None:
    whole_batches = TRAIN.head(96)  # a scheduled run drops a last, smaller batch; here there is none
    plain = adapt(MODEL, whole_batches, AdaptConfig(method="full", epochs=1))
    budget = 1_500_000
    assert plain.peak_memory_estimated > budget
    scheduled = adapt(MODEL, whole_batches, AdaptConfig(method="full", epochs=1, memory_budget=budget))
    schedule = scheduled.details["schedule"]
    assert schedule["gradients_match"] and schedule["recomputations_per_step"] > 0
    assert scheduled.peak_memory_estimated == scheduled.peak_memory_measured <= budget
    ours, theirs = scheduled.model.state_dict(), plain.model.state_dict()
    assert all(torch.allclose(ours[name], theirs[name], atol=1e-5) for name in ours)
    assert any(not torch.equal(ours[name], MODEL.state_dict()[name]) for name in ours)
    with pytest.raises(ValueError, match="even with a memory schedule"):
        adapt(MODEL, whole_batches, AdaptConfig(method="full", epochs=1, memory_budget=600_000))
