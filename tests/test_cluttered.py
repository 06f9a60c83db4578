"""Cluttered MNIST: the generator, its loader specs, and the models shipped for it."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from agilenn.baselines.training import classifier_accuracy
from agilenn.cli import evaluate as evaluate_cli
import agilenn.data.cluttered as cluttered
from agilenn.data import DATASET_HELP, ImageDataset, dataset_spec, load_dataset, load_mnist_sample
from agilenn.data.cluttered import DIGIT, PATCH, clutter, default_patches, split_seed
from agilenn.data.mnist import FILES, load_mnist
from agilenn.errors import DataError
from agilenn.evaluate import evaluate
from agilenn.pretrained import load_baseline, load_pretrained

from .conftest import mnist_dir

SAMPLE = 48  # images the shipped models are checked on


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """64 real MNIST test digits, uint8 (64, 1, 28, 28)."""
    return load_mnist_sample().images[:64]


@pytest.fixture(scope="module")
def real_test() -> ImageDataset:
    if not (mnist_dir() / FILES["test"][0]).is_file():
        pytest.skip(f"no MNIST copy at {mnist_dir()} (set AGILENN_DATA to run this test)")
    return load_dataset("cluttered-mnist", "test", mnist_dir())


def windows(images: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The 28x28 window of each canvas where its digit was pasted, (N, 28, 28)."""
    return np.stack([image[0, r : r + DIGIT, c : c + DIGIT]
                     for image, (r, c) in zip(images, positions, strict=True)])


def outside(images: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Each canvas with its digit's window blanked: what is left is clutter."""
    rest = images[:, 0].copy()
    for canvas, (r, c) in zip(rest, positions, strict=True):
        canvas[r : r + DIGIT, c : c + DIGIT] = 0
    return rest


# --------------------------------------------------------------------------- the generator


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(digits: np.ndarray) -> None:
    first, where = clutter(digits, seed=7)
    again, where_again = clutter(digits, seed=7)
    other, _ = clutter(digits, seed=8)
    assert first.tobytes() == again.tobytes() and np.array_equal(where, where_again)
    assert (first != other).reshape(len(digits), -1).any(axis=1).all()


def test_shapes_dtypes_and_positions(digits: np.ndarray) -> None:
    for size in (28, 64, 100):
        images, positions = clutter(digits, size, seed=0)
        assert images.shape == (len(digits), 1, size, size) and images.dtype == np.uint8
        assert positions.shape == (len(digits), 2) and positions.dtype == np.int64
        assert positions.min() >= 0 and positions.max() <= size - DIGIT
    _, positions = clutter(digits, seed=0)
    assert len(np.unique(positions, axis=0)) > len(digits) // 2  # spread, not one place


def test_every_digit_is_on_its_canvas_in_full(digits: np.ndarray) -> None:
    images, positions = clutter(digits, seed=1)
    placed = windows(images, positions)
    assert (placed >= digits[:, 0]).all()  # overlaps keep the brighter pixel
    ink = digits[:, 0] > 0
    assert (placed[ink] == digits[:, 0][ink]).mean() > 0.97  # clutter rarely lands on the strokes


def test_clutter_is_there_and_cut_from_other_digits() -> None:
    # Digit i is filled with the value i + 1, so every clutter pixel says which digit it came from.
    count = 40
    flat = np.repeat(np.arange(1, count + 1, dtype=np.uint8), DIGIT * DIGIT).reshape(count, 1, DIGIT, DIGIT)
    images, positions = clutter(flat, seed=2)
    rest = outside(images, positions)
    assert (rest.reshape(count, -1) > 0).any(axis=1).all()
    for i, canvas in enumerate(rest):
        assert i + 1 not in set(np.unique(canvas).tolist())
    # 8 crops of 8x8 pixels, some overlapping each other or the digit
    assert 0 < (rest > 0).sum(axis=(1, 2)).max() <= default_patches(64) * PATCH * PATCH


def test_the_patch_count_scales_with_the_canvas_area() -> None:
    assert default_patches(64) == 8
    assert default_patches(128) == 32
    assert default_patches(28) == 2


def test_no_clutter_leaves_only_the_digit(digits: np.ndarray) -> None:
    images, positions = clutter(digits, patches=0, seed=3)
    assert np.array_equal(windows(images, positions), digits[:, 0])
    assert not outside(images, positions).any()


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 27}, "canvas size"), ({"size": 1000}, "canvas size"), ({"patches": -1}, "patch count"),
])
def test_bad_arguments_are_refused(digits: np.ndarray, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clutter(digits, **kwargs)
    with pytest.raises(ValueError, match="uint8 digits"):
        clutter(digits.astype(np.float32))


# --------------------------------------------------------------------------- the loader


def test_the_specs_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    assert dataset_spec("cluttered-mnist") == "cluttered-mnist"
    assert dataset_spec("cluttered-mnist:96") == "cluttered-mnist:96"
    assert "cluttered-mnist" in DATASET_HELP
    for bad, message in (("cluttered-mnist:20", "canvas size"), ("cluttered-mnist:big", "whole number"),
                         ("cluttered-mnist:", "whole number"), ("cluttered", "unknown dataset")):
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            dataset_spec(bad)
    parsed = evaluate_cli.build_parser().parse_args(["--dataset", "cluttered-mnist"])
    assert parsed.dataset == "cluttered-mnist"


def test_a_bad_split_or_a_missing_folder_is_refused_before_reading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset("cluttered-mnist", "valid", tmp_path)
    with pytest.raises(DataError, match="no MNIST files"):
        load_dataset("cluttered-mnist", "test", tmp_path)


def test_train_and_test_are_built_from_their_own_mnist_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in MNIST splits whose every pixel says which split it is from.
    marks = {"train": 100, "test": 200}

    def fake_mnist(folder: Path, split: str) -> ImageDataset:
        images = np.full((30, 1, DIGIT, DIGIT), marks[split], dtype=np.uint8)
        return ImageDataset(f"mnist-{split}", images, np.arange(30) % 10, 10)

    (tmp_path / FILES["test"][0]).touch()
    monkeypatch.setattr(cluttered, "load_mnist", fake_mnist)
    cluttered._built.cache_clear()
    try:
        for split, mark in marks.items():
            built = load_dataset("cluttered-mnist:32", split, tmp_path)
            assert set(np.unique(built.images).tolist()) == {0, mark}
            assert built.name == f"cluttered-mnist:32-{split}" and built.images.shape[-1] == 32
    finally:
        cluttered._built.cache_clear()


def test_the_real_test_split_holds_the_mnist_test_digits(real_test: ImageDataset) -> None:
    mnist = load_mnist(mnist_dir(), "test")
    assert real_test.name == "cluttered-mnist-test"
    assert real_test.images.shape == (10_000, 1, 64, 64) and real_test.images.dtype == np.uint8
    assert np.array_equal(real_test.labels, mnist.labels) and real_test.num_classes == 10
    head = mnist.images[:200]
    images, positions = clutter(head, seed=split_seed("test", 64))
    placed = windows(real_test.images[:200], positions)
    assert (placed >= head[:, 0]).all()
    assert load_dataset("cluttered-mnist", "test", mnist_dir()) is real_test  # built once, then cached


# --------------------------------------------------------------------------- the shipped models


def test_the_shipped_agilenn_model_beats_chance(real_test: ImageDataset) -> None:
    checkpoint = load_pretrained("cluttered-mnist")
    assert checkpoint.config.image_size == 64
    report = evaluate(checkpoint, real_test.head(SAMPLE), batch_size=SAMPLE, ig_steps=1)
    assert report["accuracy"] > 0.6
    assert report["payload_bytes_mean"] < 0.05 * 64 * 64


@pytest.mark.parametrize("name, floor", [
    ("cluttered-mnist-full-cnn", 0.6), ("cluttered-mnist-tiny-cnn", 0.2),
])
def test_the_shipped_baselines_beat_chance(real_test: ImageDataset, name: str, floor: float) -> None:
    model = load_baseline(name).build_model()
    with torch.no_grad():
        assert classifier_accuracy(model, real_test.head(SAMPLE)) > floor


def test_a_baseline_knows_the_image_shape_it_was_trained_on() -> None:
    import dataclasses

    from agilenn.errors import CheckpointError
    from agilenn.pretrained import load_baseline_checkpoint

    assert load_baseline_checkpoint("pretrained:cluttered-mnist-full-cnn").input_shape == (1, 64, 64)
    mnist = load_baseline_checkpoint("pretrained:mnist-full-cnn")
    assert mnist.input_shape == (1, 28, 28)  # recorded before shapes were: MNIST's
    broken = dataclasses.replace(mnist, metadata={"input_shape": [1, "64", 64]})
    with pytest.raises(CheckpointError, match="input_shape"):
        _ = broken.input_shape
