"""Dataset loaders: the IDX parser, MNIST, CIFAR-10 binary, synthetic data, ImageDataset."""

from __future__ import annotations

import gzip
import os
import struct
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from agilenn.data import DATASETS, load_dataset, load_mnist_sample, resolve_data_dir
from agilenn.data.cifar10 import RECORD_BYTES, load_cifar10, parse_cifar10_batch
from agilenn.data.dataset import ImageDataset
from agilenn.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx
from agilenn.data.mnist import find_mnist_dir, load_mnist
from agilenn.data.synthetic import make_synthetic
from agilenn.errors import AgileNNError, DataError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR_TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]


# --------------------------------------------------------------------------- helpers


def idx_bytes(magic: int, shape: tuple[int, ...], body: bytes | None = None) -> bytes:
    """An IDX buffer: big-endian magic, one uint32 per dimension, then the body."""
    header = struct.pack(f">I{len(shape)}I", magic, *shape)
    if body is None:
        body = bytes(i % 256 for i in range(int(np.prod(shape))))
    return header + body


def write_gz(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw, compresslevel=1))
    return path


def real_mnist_base() -> Path:
    """$AGILENN_DATA if set, else ../shared/data/mnist beside the repository."""
    env = os.environ.get("AGILENN_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def cifar_record(label: int, pixels: dict[tuple[int, int, int], int]) -> bytes:
    """One record built by explicit offsets: label, then R plane, G plane, B plane."""
    record = bytearray(RECORD_BYTES)
    record[0] = label
    for (channel, row, col), value in pixels.items():
        record[1 + channel * 32 * 32 + row * 32 + col] = value
    return bytes(record)


def random_cifar_batch(rng: np.random.Generator, count: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count)
    raw = b"".join(bytes([int(labels[i])]) + images[i].tobytes() for i in range(count))
    return raw, images, labels


# --------------------------------------------------------------------------- parse_idx


def test_parse_idx_reads_a_valid_images_buffer() -> None:
    body = bytes(range(24))
    out = parse_idx(idx_bytes(IMAGES_MAGIC, (2, 3, 4), body), IMAGES_MAGIC, "imgs.idx")
    assert out.dtype == np.uint8
    assert out.shape == (2, 3, 4)
    assert out.tolist() == np.arange(24).reshape(2, 3, 4).tolist()
    assert out[1, 2, 3] == 23


def test_parse_idx_reads_a_valid_labels_buffer() -> None:
    out = parse_idx(idx_bytes(LABELS_MAGIC, (5,), bytes([9, 0, 3, 7, 1])), LABELS_MAGIC, "l.idx")
    assert out.shape == (5,)
    assert out.tolist() == [9, 0, 3, 7, 1]
    empty = parse_idx(idx_bytes(LABELS_MAGIC, (0,), b""), LABELS_MAGIC, "empty.idx")
    assert empty.shape == (0,)


def test_parse_idx_header_is_big_endian() -> None:
    # 0x00000102 = 258 items; a little-endian reader would expect 0x02010000.
    raw = struct.pack(">II", LABELS_MAGIC, 258) + bytes(258)
    assert parse_idx(raw, LABELS_MAGIC, "be.idx").shape == (258,)


def test_parse_idx_rejects_a_wrong_magic() -> None:
    raw = idx_bytes(LABELS_MAGIC, (4,))
    with pytest.raises(DataError, match=r"labels-file\.gz.*magic 0x00000801.*0x00000803"):
        parse_idx(raw, IMAGES_MAGIC, "labels-file.gz")
    with pytest.raises(DataError, match="garbage.gz"):
        parse_idx(b"\xde\xad\xbe\xef" + bytes(16), LABELS_MAGIC, "garbage.gz")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\x00\x08", struct.pack(">II", IMAGES_MAGIC, 2), struct.pack(">I", IMAGES_MAGIC)],
    ids=["empty", "3-bytes", "1-of-3-dims", "magic-only"],
)
def test_parse_idx_rejects_a_truncated_header(raw: bytes) -> None:
    with pytest.raises(DataError, match=r"short-file\.idx.*(too short|truncated)") as info:
        parse_idx(raw, IMAGES_MAGIC, "short-file.idx")
    assert isinstance(info.value, AgileNNError)


@pytest.mark.parametrize("delta", [-1, 1, -24])
def test_parse_idx_rejects_a_body_size_mismatch(delta: int) -> None:
    body = bytes(24 + delta)
    raw = idx_bytes(IMAGES_MAGIC, (2, 3, 4), body)
    with pytest.raises(DataError, match=rf"odd\.idx.*24 bytes.*has {24 + delta}"):
        parse_idx(raw, IMAGES_MAGIC, "odd.idx")


# --------------------------------------------------------------------------- real MNIST


@pytest.fixture(scope="module")
def mnist_folder() -> Path:
    base = real_mnist_base()
    if not base.exists():
        pytest.skip(f"no MNIST copy at {base} (set AGILENN_DATA to run this test)")
    return find_mnist_dir(base)


@pytest.fixture(scope="module")
def mnist_test(mnist_folder: Path) -> ImageDataset:
    return load_mnist(mnist_folder, "test")


def test_real_mnist_test_split(mnist_test: ImageDataset) -> None:
    assert mnist_test.name == "mnist-test"
    assert mnist_test.num_classes == 10
    assert len(mnist_test) == 10_000
    assert mnist_test.images.shape == (10_000, 1, 28, 28)
    assert mnist_test.images.dtype == np.uint8
    assert mnist_test.labels.dtype == np.int64
    assert mnist_test.labels.min() >= 0 and mnist_test.labels.max() <= 9
    counts = np.bincount(mnist_test.labels, minlength=10)
    assert counts.sum() == 10_000
    assert counts.tolist() == MNIST_TEST_COUNTS
    # Real digits: dark background, some saturated strokes, no blank images.
    assert mnist_test.images.min() == 0 and mnist_test.images.max() == 255
    assert (mnist_test.images.reshape(10_000, -1).max(axis=1) > 0).all()


def test_real_mnist_labels_match_the_raw_file(mnist_folder: Path, mnist_test: ImageDataset) -> None:
    raw = gzip.decompress((mnist_folder / MNIST_NAMES["test"][1]).read_bytes())
    assert raw[:8] == struct.pack(">II", LABELS_MAGIC, 10_000)
    assert mnist_test.labels.tolist() == list(raw[8:])


def test_find_mnist_dir_accepts_the_folder_and_its_parent(
    mnist_folder: Path, mnist_test: ImageDataset
) -> None:
    assert find_mnist_dir(mnist_folder) == mnist_folder
    if mnist_folder.name != "mnist":
        pytest.skip(f"{mnist_folder} is not named mnist/, so its parent cannot be tested")
    assert find_mnist_dir(mnist_folder.parent) == mnist_folder
    via_parent = load_mnist(mnist_folder.parent, "test")
    assert np.array_equal(via_parent.labels, mnist_test.labels)
    assert np.array_equal(via_parent.images[:50], mnist_test.images[:50])


def test_real_mnist_train_split_class_counts(mnist_folder: Path) -> None:
    train = load_mnist(mnist_folder, "train")
    assert train.name == "mnist-train"
    assert train.images.shape == (60_000, 1, 28, 28)
    assert train.images.dtype == np.uint8
    assert np.bincount(train.labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS


def test_load_dataset_mnist_uses_the_env_folder(
    mnist_folder: Path, mnist_test: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGILENN_DATA", str(mnist_folder))
    loaded = load_dataset("mnist", "test")
    assert np.array_equal(loaded.labels, mnist_test.labels)


# --------------------------------------------------------------------------- MNIST files


def write_mnist(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    images_name, labels_name = MNIST_NAMES[split]
    write_gz(folder / images_name, idx_bytes(IMAGES_MAGIC, images.shape, images.tobytes()))
    write_gz(folder / labels_name, idx_bytes(LABELS_MAGIC, labels.shape, labels.tobytes()))


def test_load_mnist_reads_files_written_in_the_idx_format(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10_000, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=10_000).astype(np.uint8)
    write_mnist(tmp_path, "test", images, labels)
    loaded = load_mnist(tmp_path, "test")
    assert loaded.images.shape == (10_000, 1, 28, 28)
    assert np.array_equal(loaded.images[:, 0], images)
    assert loaded.labels.dtype == np.int64
    assert np.array_equal(loaded.labels, labels)
    # The dataset owns its memory: editing it must not be a view of a read-only buffer.
    assert loaded.images.flags.writeable


def test_load_mnist_rejects_a_label_above_nine(tmp_path: Path) -> None:
    labels = np.zeros(10_000, dtype=np.uint8)
    labels[1234] = 10
    write_mnist(tmp_path, "test", np.zeros((10_000, 28, 28), dtype=np.uint8), labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz.*label 10"):
        load_mnist(tmp_path, "test")


def test_load_mnist_rejects_the_wrong_image_count(tmp_path: Path) -> None:
    write_mnist(tmp_path, "test", np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*\(10000, 28, 28\)"):
        load_mnist(tmp_path, "test")


def _tiny_valid_images() -> bytes:
    return idx_bytes(IMAGES_MAGIC, (1, 28, 28))


@pytest.mark.parametrize(
    ("images_raw", "write", "culprit"),
    [
        # images file with a labels magic
        (idx_bytes(LABELS_MAGIC, (784,)), "gz", "t10k-images-idx3-ubyte.gz"),
        # images file whose body is shorter than its header promises
        (idx_bytes(IMAGES_MAGIC, (2, 28, 28))[: 16 + 784 + 100], "gz", "t10k-images-idx3-ubyte.gz"),
        # not gzip at all
        (b"this is plainly not a gzip stream", "plain", "t10k-images-idx3-ubyte.gz"),
        # a gzip stream cut in the middle
        (_tiny_valid_images(), "cut-gz", "t10k-images-idx3-ubyte.gz"),
    ],
    ids=["wrong-magic", "truncated-body", "not-gzip", "truncated-gzip"],
)
def test_load_mnist_names_the_corrupt_file(
    tmp_path: Path, images_raw: bytes, write: str, culprit: str
) -> None:
    images_path = tmp_path / MNIST_NAMES["test"][0]
    if write == "gz":
        write_gz(images_path, images_raw)
    elif write == "plain":
        images_path.write_bytes(images_raw)
    else:
        compressed = gzip.compress(images_raw)
        images_path.write_bytes(compressed[: len(compressed) // 2])
    write_gz(tmp_path / MNIST_NAMES["test"][1], idx_bytes(LABELS_MAGIC, (1,), b"\x03"))
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path, "test")
    assert culprit in str(info.value)


def test_load_mnist_names_a_corrupt_labels_file(tmp_path: Path) -> None:
    write_gz(tmp_path / MNIST_NAMES["test"][0], _tiny_valid_images())
    write_gz(tmp_path / MNIST_NAMES["test"][1], idx_bytes(IMAGES_MAGIC, (1, 28, 28)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz.*magic"):
        load_mnist(tmp_path, "test")


def test_load_mnist_names_a_missing_labels_file(tmp_path: Path) -> None:
    write_gz(tmp_path / MNIST_NAMES["test"][0], _tiny_valid_images())
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz.*missing"):
        load_mnist(tmp_path, "test")


def test_load_mnist_names_a_missing_train_images_file(tmp_path: Path) -> None:
    # The test images mark the folder as MNIST; the train images are absent.
    write_gz(tmp_path / MNIST_NAMES["test"][0], _tiny_valid_images())
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz.*missing"):
        load_mnist(tmp_path, "train")


def test_find_mnist_dir_without_files_lists_what_it_expected(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataError) as info:
        find_mnist_dir(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert str(tmp_path / "mnist") in message
    for name in (*MNIST_NAMES["train"], *MNIST_NAMES["test"]):
        assert name in message
    with pytest.raises(DataError):
        load_mnist(tmp_path / "does-not-exist", "test")


def test_find_mnist_dir_accepts_a_parent_holding_mnist(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    write_gz(tmp_path / "mnist" / MNIST_NAMES["test"][0], _tiny_valid_images())
    assert find_mnist_dir(tmp_path) == tmp_path / "mnist"
    assert find_mnist_dir(tmp_path / "mnist") == tmp_path / "mnist"
    # Files directly in the given folder take precedence over its mnist/ child.
    write_gz(tmp_path / MNIST_NAMES["test"][0], _tiny_valid_images())
    assert find_mnist_dir(tmp_path) == tmp_path


def test_load_mnist_rejects_an_unknown_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="validation"):
        load_mnist(tmp_path, "validation")


# --------------------------------------------------------------------------- resolve_data_dir


def test_resolve_data_dir_explicit_argument_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGILENN_DATA", str(tmp_path / "from-env"))
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir(str(tmp_path / "as-str")) == tmp_path / "as-str"


def test_resolve_data_dir_falls_back_to_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGILENN_DATA", str(tmp_path / "from-env"))
    assert resolve_data_dir(None) == tmp_path / "from-env"


def test_resolve_data_dir_expands_the_home_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGILENN_DATA", raising=False)
    assert resolve_data_dir("~/datasets") == Path.home() / "datasets"


@pytest.mark.parametrize("env", [None, ""])
def test_resolve_data_dir_without_a_folder_says_how_to_give_one(
    monkeypatch: pytest.MonkeyPatch, env: str | None
) -> None:
    if env is None:
        monkeypatch.delenv("AGILENN_DATA", raising=False)
    else:
        monkeypatch.setenv("AGILENN_DATA", env)
    with pytest.raises(DataError) as info:
        resolve_data_dir(None)
    assert "--data-dir" in str(info.value)
    assert "AGILENN_DATA" in str(info.value)
    with pytest.raises(DataError, match="AGILENN_DATA"):
        load_dataset("cifar10", "test")


# --------------------------------------------------------------------------- CIFAR-10


def write_cifar(folder: Path, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Five train batches of 2 records and a test batch of 3, in the binary format."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_images, train_labels = [], []
    for name in CIFAR_TRAIN_FILES:
        raw, images, labels = random_cifar_batch(rng, 2)
        (folder / name).write_bytes(raw)
        train_images.append(images)
        train_labels.append(labels)
    raw, test_images, test_labels = random_cifar_batch(rng, 3)
    (folder / "test_batch.bin").write_bytes(raw)
    return {
        "train": (np.concatenate(train_images), np.concatenate(train_labels)),
        "test": (test_images, test_labels),
    }


@pytest.mark.parametrize("subfolder", ["", "cifar-10-batches-bin"])
def test_load_cifar10_reads_both_splits(tmp_path: Path, subfolder: str) -> None:
    expected = write_cifar(tmp_path / subfolder if subfolder else tmp_path)
    for split, count in (("train", 10), ("test", 3)):
        data = load_cifar10(tmp_path, split)
        assert data.name == f"cifar10-{split}"
        assert data.num_classes == 10
        assert data.images.shape == (count, 3, 32, 32)
        assert data.images.dtype == np.uint8
        assert data.labels.dtype == np.int64
        assert np.array_equal(data.images, expected[split][0])
        assert data.labels.tolist() == expected[split][1].tolist()


def test_load_cifar10_places_each_pixel_by_plane_row_and_column(tmp_path: Path) -> None:
    markers = [
        {(0, 0, 0): 11, (0, 0, 31): 12, (0, 31, 0): 13},  # red plane corners
        {(1, 5, 7): 201, (2, 31, 31): 202, (2, 0, 1): 203},  # green, blue
        {(0, 16, 3): 99, (1, 16, 3): 98, (2, 16, 3): 97},  # one pixel, three channels
    ]
    raw = b"".join(cifar_record(label, pixels) for label, pixels in zip((7, 0, 9), markers, strict=True))
    (tmp_path / "test_batch.bin").write_bytes(raw)
    data = load_cifar10(tmp_path, "test")
    assert data.labels.tolist() == [7, 0, 9]
    for i, pixels in enumerate(markers):
        for (channel, row, col), value in pixels.items():
            assert data.images[i, channel, row, col] == value
        # Every other byte of the record is zero, so nothing else may be set.
        assert int(data.images[i].astype(np.int64).sum()) == sum(pixels.values())
    # Record 1's green pixel at row 5, col 7 is byte 1 + 1024 + 5 * 32 + 7 of the record.
    assert raw[RECORD_BYTES + 1 + 1024 + 5 * 32 + 7] == 201


def test_parse_cifar10_batch_is_pure() -> None:
    raw = cifar_record(4, {(2, 3, 4): 5})
    images, labels = parse_cifar10_batch(raw, "in-memory")
    assert images.shape == (1, 3, 32, 32) and images[0, 2, 3, 4] == 5
    assert labels.tolist() == [4]


@pytest.mark.parametrize("length", [0, 1, RECORD_BYTES - 1, RECORD_BYTES + 1, 2 * RECORD_BYTES + 7])
def test_load_cifar10_rejects_partial_records(tmp_path: Path, length: int) -> None:
    (tmp_path / "test_batch.bin").write_bytes(bytes(length))
    with pytest.raises(DataError, match=rf"test_batch\.bin: {length} bytes.*{RECORD_BYTES}"):
        load_cifar10(tmp_path, "test")


def test_load_cifar10_rejects_a_label_above_nine(tmp_path: Path) -> None:
    raw = cifar_record(3, {}) + cifar_record(10, {}) + cifar_record(0, {})
    (tmp_path / "test_batch.bin").write_bytes(raw)
    with pytest.raises(DataError, match=r"test_batch\.bin.*label 10"):
        load_cifar10(tmp_path, "test")


def test_load_cifar10_names_a_corrupt_train_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "data_batch_4.bin").write_bytes(bytes(RECORD_BYTES + 3))
    with pytest.raises(DataError, match=r"data_batch_4\.bin"):
        load_cifar10(tmp_path, "train")
    (tmp_path / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match=r"data_batch_3\.bin.*missing"):
        load_cifar10(tmp_path, "train")


def test_load_cifar10_rejects_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="test_batch.bin"):
        load_cifar10(tmp_path / "nowhere", "test")
    with pytest.raises(DataError, match="data_batch_1.bin"):
        load_cifar10(tmp_path, "train")  # exists but is empty


def test_load_cifar10_rejects_an_unknown_split(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    with pytest.raises(ValueError, match="valid"):
        load_cifar10(tmp_path, "valid")


def test_load_dataset_cifar10_from_an_explicit_folder(tmp_path: Path) -> None:
    expected = write_cifar(tmp_path, seed=3)
    data = load_dataset("cifar10", "test", data_dir=tmp_path)
    assert np.array_equal(data.images, expected["test"][0])


# --------------------------------------------------------------------------- synthetic


def test_make_synthetic_is_deterministic_for_a_seed() -> None:
    first, second = make_synthetic(64, seed=5), make_synthetic(64, seed=5)
    assert np.array_equal(first.images, second.images)
    assert np.array_equal(first.labels, second.labels)
    other = make_synthetic(64, seed=6)
    assert not np.array_equal(first.images, other.images)
    assert not np.array_equal(first.labels, other.labels)


def test_make_synthetic_shapes_labels_and_name() -> None:
    data = make_synthetic(200, seed=1)
    assert data.name == "synthetic"
    assert len(data) == 200
    assert data.images.shape == (200, 1, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    assert data.labels.min() >= 0 and data.labels.max() <= 9
    assert len(np.unique(data.labels)) == 10  # 200 draws cover all 10 classes
    assert data.num_classes == 10
    small = make_synthetic(30, seed=2, image_size=12, num_classes=3)
    assert small.images.shape == (30, 1, 12, 12)
    assert set(small.labels.tolist()) <= {0, 1, 2} and small.num_classes == 3


def test_make_synthetic_classes_share_prototypes_across_seeds() -> None:
    # Train and test splits use different seeds but must show the same classes:
    # the per-class mean images of two seeds correlate far better than across classes.
    a, b = make_synthetic(400, seed=0), make_synthetic(400, seed=1)
    mean_a = np.stack([a.images[a.labels == c].mean(axis=0).ravel() for c in range(10)])
    mean_b = np.stack([b.images[b.labels == c].mean(axis=0).ravel() for c in range(10)])
    corr = np.corrcoef(mean_a, mean_b)[:10, 10:]
    assert (corr.argmax(axis=1) == np.arange(10)).all()


def test_load_dataset_synthetic_splits_differ() -> None:
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    assert len(train) == 2000 and len(test) == 500
    assert not np.array_equal(train.images[:500], test.images)


# --------------------------------------------------------------------------- MNIST sample asset


def test_load_mnist_sample_only_has_a_test_split() -> None:
    with pytest.raises(ValueError, match="test split"):
        load_mnist_sample("train")


def test_load_mnist_sample() -> None:
    asset = resources.files("agilenn.assets").joinpath("mnist-test-sample.npz")
    if not asset.is_file():
        pytest.skip("agilenn/assets/mnist-test-sample.npz is not shipped in this checkout")
    data = load_mnist_sample()
    assert data.name == "mnist-sample"
    assert len(data) > 0
    assert data.images.shape[1:] == (1, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    assert data.labels.min() >= 0 and data.labels.max() <= 9
    assert np.array_equal(load_dataset("mnist-sample", "test").labels, data.labels)


# --------------------------------------------------------------------------- ImageDataset


def small_dataset() -> ImageDataset:
    images = np.zeros((5, 1, 2, 2), dtype=np.uint8)
    images[0, 0, 0, 0] = 255
    images[1, 0, 1, 1] = 51
    images[4] = 128
    return ImageDataset("tiny", images, np.array([3, 1, 4, 1, 5], dtype=np.int32), 10)


def test_image_dataset_head() -> None:
    data = small_dataset()
    head = data.head(2)
    assert len(head) == 2
    assert head.name == "tiny" and head.num_classes == 10
    assert head.labels.tolist() == [3, 1]
    assert np.array_equal(head.images, data.images[:2])
    for everything in (0, -3, 5, 99):
        assert data.head(everything) is data


def test_image_dataset_batch_scales_to_unit_floats() -> None:
    data = small_dataset()
    images, labels = data.batch(slice(0, 5))
    assert images.dtype == torch.float32
    assert images.shape == (5, 1, 2, 2)
    assert float(images.min()) >= 0.0 and float(images.max()) <= 1.0
    assert images[0, 0, 0, 0].item() == 1.0
    assert images[1, 0, 1, 1].item() == pytest.approx(0.2)
    assert images[2].abs().sum().item() == 0.0
    assert labels.dtype == torch.int64
    assert labels.tolist() == [3, 1, 4, 1, 5]


def test_image_dataset_batch_by_index_tensor() -> None:
    data = small_dataset()
    images, labels = data.batch(torch.tensor([4, 0]))
    assert labels.tolist() == [5, 3]
    assert images[0, 0, 0, 0].item() == pytest.approx(128 / 255)
    assert images[1, 0, 0, 0].item() == 1.0
    # The batch is a copy: editing it leaves the dataset untouched.
    images.zero_()
    assert data.images[0, 0, 0, 0] == 255


def test_image_dataset_validates_its_arrays() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("bad", np.zeros((2, 1, 2, 2), dtype=np.float32), np.zeros(2, np.int64), 10)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset("bad", np.zeros((2, 2, 2), dtype=np.uint8), np.zeros(2, np.int64), 10)
    with pytest.raises(ValueError, match="one entry per image"):
        ImageDataset("bad", np.zeros((2, 1, 2, 2), dtype=np.uint8), np.zeros(3, np.int64), 10)


# --------------------------------------------------------------------------- load_dataset


def test_load_dataset_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="imagenet") as info:
        load_dataset("imagenet", "train")
    for name in DATASETS:
        assert name in str(info.value)
    assert set(DATASETS) == {"cifar10", "mnist", "mnist-sample", "synthetic"}
