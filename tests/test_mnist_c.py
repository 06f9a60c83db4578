"""MNIST-C corruptions, the mnist-c: and npz: dataset specs, and the --dataset argparse type."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from agilenn.cli import bench as bench_cli
from agilenn.cli import evaluate as evaluate_cli
from agilenn.data import dataset_spec, load_dataset, load_mnist_sample
from agilenn.data.mnist import load_mnist
from agilenn.data.mnist_c import CORRUPTIONS, corrupt, split_seed
from agilenn.errors import DataError

from .conftest import mnist_dir

DETERMINISTIC = {"scale", "brightness", "stripe", "canny_edges"}
RANDOM = sorted(set(CORRUPTIONS) - DETERMINISTIC)


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """64 real MNIST test digits, uint8 (64, 1, 28, 28)."""
    return load_mnist_sample().images[:64]


def blob(row: int, col: int) -> np.ndarray:
    """One image holding a bright 3x3 square centred on (row, col)."""
    image = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    image[0, 0, row - 1 : row + 2, col - 1 : col + 2] = 255
    return image


def centre_of_mass(image: np.ndarray) -> np.ndarray:
    return np.array(ndimage.center_of_mass(image[0, 0].astype(np.float64)))


# --------------------------------------------------------------------------- every corruption


def test_all_fifteen_mnist_c_corruptions_are_registered() -> None:
    assert len(CORRUPTIONS) == 15
    assert {"shot_noise", "glass_blur", "motion_blur", "fog", "canny_edges", "zigzag"} <= set(CORRUPTIONS)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corruption_changes_images_but_not_shape_or_dtype(digits: np.ndarray, name: str) -> None:
    out = corrupt(digits, name, seed=0)
    assert out.shape == digits.shape and out.dtype == np.uint8
    changed = (out != digits).reshape(len(digits), -1).any(axis=1)
    assert changed.mean() > 0.9, f"{name} left {np.sum(~changed)} of {len(digits)} images unchanged"


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_seed_gives_the_same_bytes(digits: np.ndarray, name: str) -> None:
    assert corrupt(digits, name, seed=7).tobytes() == corrupt(digits, name, seed=7).tobytes()


@pytest.mark.parametrize("name", RANDOM)
def test_random_corruptions_differ_across_seeds(digits: np.ndarray, name: str) -> None:
    assert not np.array_equal(corrupt(digits, name, seed=1), corrupt(digits, name, seed=2))


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_corruptions_ignore_the_seed(digits: np.ndarray, name: str) -> None:
    assert np.array_equal(corrupt(digits, name, seed=1), corrupt(digits, name, seed=2))


@pytest.mark.parametrize("name", sorted(DETERMINISTIC))
def test_deterministic_corruptions_treat_each_image_alone(digits: np.ndarray, name: str) -> None:
    whole = corrupt(digits[:8], name, seed=0)
    one_by_one = np.concatenate([corrupt(digits[i : i + 1], name, seed=0) for i in range(8)])
    assert np.array_equal(whole, one_by_one)


def test_corrupt_refuses_bad_arguments(digits: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown MNIST-C corruption 'snow'.*shot_noise"):
        corrupt(digits, "snow", 0)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(digits.astype(np.float32), "rotate", 0)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        corrupt(digits[:, 0], "rotate", 0)
    assert corrupt(digits[:0], "fog", 0).shape == (0, 1, 28, 28)


# --------------------------------------------------------------------------- geometry


def test_rotate_matches_scipy_rotation_by_plus_or_minus_0_4_rad(digits: np.ndarray) -> None:
    degrees = math.degrees(0.4)
    out = corrupt(digits[:16], "rotate", seed=3)
    signs = set()
    for image, rotated in zip(digits[:16, 0] / 255.0, out[:, 0].astype(np.float64), strict=True):
        candidates = {s: ndimage.rotate(image, s * degrees, reshape=False, order=1) * 255 for s in (-1, 1)}
        errors = {s: np.abs(reference - rotated).max() for s, reference in candidates.items()}
        sign = min(errors, key=errors.__getitem__)
        assert errors[sign] <= 1.0  # same bilinear resampling, up to rounding
        signs.add(sign)
    assert signs == {-1, 1}


def test_rotate_moves_an_off_centre_blob_along_a_circle() -> None:
    image = blob(5, 13)  # 8.5 rows above the centre (13.5, 13.5), half a column left of it
    before = centre_of_mass(image) - 13.5
    turns = set()
    for rotated in corrupt(np.repeat(image, 8, axis=0), "rotate", 0):
        after = centre_of_mass(rotated[None]) - 13.5
        assert np.linalg.norm(after) == pytest.approx(np.linalg.norm(before), abs=0.3)
        turned = math.atan2(after[0], after[1]) - math.atan2(before[0], before[1])
        assert abs(turned) == pytest.approx(0.4, abs=0.05)
        turns.add(np.sign(turned))
    assert turns == {-1, 1}


def test_translate_shifts_by_three_pixels_on_each_axis() -> None:
    image = blob(13, 13)
    moves = set()
    for moved in corrupt(np.repeat(image, 16, axis=0), "translate", 0):
        shift = centre_of_mass(moved[None]) - centre_of_mass(image)
        assert np.allclose(np.abs(shift), 3.0)
        moves.add(tuple(np.sign(shift)))
    assert len(moves) == 4


def test_scale_shrinks_about_the_centre() -> None:
    image = blob(4, 13)
    out = corrupt(image, "scale", 0)
    assert centre_of_mass(out) - 13.5 == pytest.approx(0.7 * (centre_of_mass(image) - 13.5), abs=0.2)
    assert out.sum() < image.sum()


def test_shear_keeps_the_centre_and_moves_the_top() -> None:
    image = blob(4, 13)
    sheared = corrupt(np.repeat(image, 8, axis=0), "shear", 0)
    cols = {round(centre_of_mass(one[None])[1], 3) for one in sheared}
    assert len(cols) == 2 and all(abs(col - 13) > 3 for col in cols)  # sheared left or right
    centre = blob(13, 13)
    assert np.allclose(centre_of_mass(corrupt(centre, "shear", 0)), centre_of_mass(centre), atol=0.6)


# --------------------------------------------------------------------------- intensities


def test_brightness_adds_half_the_range(digits: np.ndarray) -> None:
    out = corrupt(digits, "brightness", 0).astype(np.int64)
    assert out.mean() > digits.mean() + 100
    assert np.all(np.abs(out - np.minimum(digits + 127.5, 255.0)) <= 0.5)  # + 0.5 of the range, rounded


def test_shot_noise_keeps_black_black_and_four_grey_levels(digits: np.ndarray) -> None:
    out = corrupt(digits, "shot_noise", 0)
    assert np.all(out[digits == 0] == 0)
    assert set(np.unique(out)) <= {0, 85, 170, 255}


def test_impulse_noise_flips_17_percent_to_black_or_white(digits: np.ndarray) -> None:
    out = corrupt(digits, "impulse_noise", 0)
    changed = out != digits
    assert set(np.unique(out[changed])) <= {0, 255}
    # background pixels only change when salted: 0.17 * 0.5
    assert (out[digits == 0] == 255).mean() == pytest.approx(0.085, abs=0.01)


def test_stripe_inverts_the_outer_seven_columns(digits: np.ndarray) -> None:
    out = corrupt(digits, "stripe", 0)
    assert np.array_equal(out[..., :7], 255 - digits[..., :7])
    assert np.array_equal(out[..., 21:], 255 - digits[..., 21:])
    assert np.array_equal(out[..., 7:21], digits[..., 7:21])


@pytest.mark.parametrize("name", ["dotted_line", "zigzag", "fog"])
def test_overlays_only_add_light_where_the_image_was_dark(digits: np.ndarray, name: str) -> None:
    out = corrupt(digits, name, 0)
    assert out.mean() > digits.mean()
    if name != "fog":  # fog also rescales the digit down
        assert np.all(out >= digits)


def test_canny_draws_binary_edges_inside_the_border(digits: np.ndarray) -> None:
    out = corrupt(digits, "canny_edges", 0)
    assert set(np.unique(out)) == {0, 255}
    assert not out[..., 0, :].any() and not out[..., :, 0].any()
    square = np.zeros((1, 1, 28, 28), dtype=np.uint8)
    square[..., 8:20, 10:16] = 255
    edges = corrupt(square, "canny_edges", 0)[0, 0] > 0
    assert edges[11, 10] and edges[11, 15] and not edges[11, 12]  # the outline, not the inside


def test_spatter_paints_mud_grey(digits: np.ndarray) -> None:
    out = corrupt(digits, "spatter", 0)
    muddy = (out != digits) & (digits == 0)
    assert muddy.any() and np.all(out[muddy] <= 63)


# --------------------------------------------------------------------------- the mnist-c: dataset


def test_mnist_c_test_set_is_the_whole_shifted_test_set() -> None:
    clean = load_mnist(mnist_dir(), "test")
    shifted = load_dataset("mnist-c:rotate", "test", mnist_dir())
    assert len(shifted) == 10_000 and shifted.num_classes == 10
    assert np.array_equal(shifted.labels, clean.labels)
    assert np.array_equal(shifted.images, corrupt(clean.images, "rotate", split_seed("rotate", "test")))
    assert shifted.name == "mnist-c:rotate-test"


def test_mnist_c_seeds_are_fixed_per_split_and_corruption() -> None:
    assert split_seed("rotate", "train") != split_seed("rotate", "test")
    assert split_seed("rotate", "test") != split_seed("shear", "test")
    assert split_seed("rotate", "test") == split_seed("rotate", "test")
    with pytest.raises(ValueError, match="split"):
        split_seed("rotate", "validation")


def test_mnist_c_refuses_an_unknown_corruption_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'snow'.*rotate.*canny_edges"):
        load_dataset("mnist-c:snow", "test", mnist_dir())


# --------------------------------------------------------------------------- the npz: dataset


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]  # the stub types allow_pickle in **kwds
    return path


def test_npz_with_n_h_w_images_loads_as_one_channel(tmp_path: Path) -> None:
    images = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28)
    path = write_npz(tmp_path / "mine.npz", images=images, labels=np.array([0, 1, 2, 3, 9], np.uint8))
    data = load_dataset(f"npz:{path}", "ignored-split")
    assert data.images.shape == (5, 1, 28, 28) and np.array_equal(data.images[:, 0], images)
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 1, 2, 3, 9]
    assert data.num_classes == 10 and str(path) in data.name


def test_npz_with_n_c_h_w_images_keeps_its_channels(tmp_path: Path) -> None:
    images = np.zeros((4, 3, 32, 32), dtype=np.uint8)
    path = write_npz(tmp_path / "rgb.npz", images=images, labels=np.array([0, 1, 11, 2]))
    data = load_dataset(f"npz:{path}", "test")
    assert data.images.shape == (4, 3, 32, 32) and data.num_classes == 12


BAD_NPZ: dict[str, tuple[dict[str, np.ndarray], str]] = {
    "wrong dtype": ({"images": np.zeros((2, 28, 28), np.float32), "labels": np.zeros(2, int)}, "uint8"),
    "wrong ndim": ({"images": np.zeros((2, 28), np.uint8), "labels": np.zeros(2, int)}, r"\(N, H, W\)"),
    "channels last": ({"images": np.zeros((2, 28, 28, 1), np.uint8), "labels": np.zeros(2, int)}, "C 1 or 3"),
    "no images": ({"labels": np.zeros(2, int)}, "no 'images'"),
    "no labels": ({"images": np.zeros((2, 28, 28), np.uint8)}, "no 'labels'"),
    "float labels": ({"images": np.zeros((2, 28, 28), np.uint8), "labels": np.zeros(2)}, "integer"),
    "count mismatch": ({"images": np.zeros((2, 28, 28), np.uint8), "labels": np.zeros(3, int)},
                       "3 labels for 2"),
    "negative": ({"images": np.zeros((2, 28, 28), np.uint8), "labels": np.array([0, -1])}, "negative"),
    "out of range": ({"images": np.zeros((2, 28, 28), np.uint8), "labels": np.array([0, 10])}, "0-9"),
    "empty": ({"images": np.zeros((0, 28, 28), np.uint8), "labels": np.zeros(0, int)}, "at least one"),
    "objects": ({"images": np.array([None, 1], dtype=object), "labels": np.zeros(2, int)}, "unreadable"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_a_bad_npz_raises_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    arrays, expected = BAD_NPZ[case]
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=expected) as info:
        load_dataset(f"npz:{path}", "test")
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a zip archive at all", b"PK\x03\x04truncated"])
def test_a_file_that_is_not_an_npz_raises_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not an .npz") as info:
        load_dataset(f"npz:{path}", "test")
    assert str(path) in str(info.value)


def test_a_single_npy_array_or_a_missing_file_raise_data_error(tmp_path: Path) -> None:
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=f"{npy}.*single .npy array"):
        load_dataset(f"npz:{npy}", "test")
    with pytest.raises(DataError, match=f"{tmp_path / 'absent.npz'}: missing"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}", "test")


# --------------------------------------------------------------------------- --dataset


@pytest.mark.parametrize("spec", ["mnist", "mnist-sample", "synthetic", "cifar10", "mnist-c:rotate",
                                  "mnist-c:canny_edges", "npz:samples.npz", "npz:/tmp/a b.npz"])
def test_dataset_spec_accepts_names_and_specs(spec: str) -> None:
    assert dataset_spec(spec) == spec


@pytest.mark.parametrize("spec, message", [
    ("imagenet", "unknown dataset"), ("mnist-c:snow", "shot_noise"), ("mnist-c:", "corruption ''"),
    ("npz:", "unknown dataset"), ("MNIST", "unknown dataset"), ("mnist-c", "unknown dataset"),
])
def test_dataset_spec_refuses_the_rest(spec: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        dataset_spec(spec)


@pytest.mark.parametrize("build", [evaluate_cli.build_parser, bench_cli.build_parser])
def test_the_cli_dataset_flags_take_specs(
    build: Callable[[], argparse.ArgumentParser], capsys: pytest.CaptureFixture[str]
) -> None:
    assert build().parse_args(["--dataset", "mnist-c:rotate"]).dataset == "mnist-c:rotate"
    assert build().parse_args(["--dataset", "npz:x.npz"]).dataset == "npz:x.npz"
    with pytest.raises(SystemExit):
        build().parse_args(["--dataset", "mnist-c:snow"])
    assert "unknown MNIST-C corruption 'snow'" in capsys.readouterr().err


def test_eval_runs_on_a_users_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sample = load_mnist_sample()
    path = write_npz(tmp_path / "mine.npz", images=sample.images[:40, 0], labels=sample.labels[:40])
    assert evaluate_cli.main(["--dataset", f"npz:{path}", "--ig-steps", "1", "--json"]) == 0
    assert f'"dataset": "npz:{path}"' in capsys.readouterr().out
