"""Seconds-long training runs on synthetic data."""

from __future__ import annotations

import torch

from agilenn.config import ModelConfig, TrainConfig
from agilenn.data import make_synthetic
from agilenn.importance import channel_importance, integrated_gradients
from agilenn.losses import skewness
from agilenn.training import EpochMetrics, Trainer, random_shift

TINY_MODEL = ModelConfig(stem_channels=8, feature_channels=10, remote_width=16, reference_width=16)
TRAIN_SET = make_synthetic(1024, seed=0)
HELD_OUT = make_synthetic(256, seed=1)


def _tiny_run(**overrides: object) -> TrainConfig:
    # lam 0.5 weighs the importance losses more than the default so that three
    # short epochs show the effect clearly.
    values: dict[str, object] = {
        "reference_epochs": 2, "epochs": 3, "batch_size": 32, "ig_steps": 4, "lr": 1e-2, "lam": 0.5,
    }
    values.update(overrides)
    return TrainConfig(**values)  # type: ignore[arg-type]


def _held_out_skewness(trainer: Trainer) -> float:
    model = trainer.model.eval()
    images, labels = HELD_OUT.batch(slice(None))
    with torch.no_grad():
        features = model.extractor(images)
    attributions = integrated_gradients(model.reference, features, labels, n_steps=8)
    return float(skewness(channel_importance(attributions), model.config.local_channels).mean())


def test_agilenn_stage_raises_skewness_and_keeps_accuracy() -> None:
    trainer = Trainer(TINY_MODEL, _tiny_run(), TRAIN_SET, progress=False)
    measured: list[float] = []
    trainer.run(lambda t, _: measured.append(_held_out_skewness(t)))
    after_reference, final = measured[1], measured[-1]
    assert final > after_reference + 0.3, measured
    assert final > 0.6, measured
    first_agilenn, last = trainer.history[2], trainer.history[-1]
    assert first_agilenn.stage == last.stage == "agilenn"
    assert last.accuracy > 0.9
    assert last.skewness is not None and first_agilenn.skewness is not None
    assert last.skewness > first_agilenn.skewness


def test_without_the_importance_losses_skewness_stays_low() -> None:
    # Control for the test above: lam = 1 drops skewness and disorder terms.
    trainer = Trainer(TINY_MODEL, _tiny_run(lam=1.0, remap_channels=False), TRAIN_SET, progress=False)
    trainer.run()
    assert _held_out_skewness(trainer) < 0.5


def test_resume_continues_exactly_where_training_stopped() -> None:
    config = _tiny_run(epochs=2)
    subset = TRAIN_SET.head(256)
    straight = Trainer(TINY_MODEL, config, subset, progress=False)
    straight.run()

    interrupted = Trainer(TINY_MODEL, config, subset, progress=False)
    saved: list[dict[str, object]] = []

    def stop_after_two(trainer: Trainer, metrics: EpochMetrics) -> None:
        if metrics.epoch == 2:
            saved.append(trainer.state_dict())
            raise KeyboardInterrupt

    try:
        interrupted.run(stop_after_two)
    except KeyboardInterrupt:
        pass
    resumed = Trainer(TINY_MODEL, config, subset, progress=False)
    resumed.load_state_dict(saved[0])  # type: ignore[arg-type]
    resumed.run()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    assert [m.loss for m in resumed.history] == [m.loss for m in straight.history]


def test_random_shift_translates_with_zero_fill() -> None:
    image = torch.zeros(1, 1, 6, 6)
    image[0, 0, 2, 3] = 1.0
    shifted = random_shift(image.repeat(50, 1, 1, 1), 2, torch.Generator().manual_seed(0))
    positions = {tuple((s[0] == 1.0).nonzero()[0].tolist()) for s in shifted}
    assert all(abs(r - 2) <= 2 and abs(c - 3) <= 2 for r, c in positions)
    assert len(positions) > 5  # really random, not one fixed offset
    assert float(shifted.sum()) == 50.0  # nothing wraps around or duplicates
    assert random_shift(image, 0, torch.Generator()) is image
