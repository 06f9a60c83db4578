"""The int8 firmware: quantisation, the AGW1 image, the memory plan, and the C model bit-exact with Python."""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agilenn.checkpoint import Checkpoint
from agilenn.codec import CodecSettings, FeatureCodec
from agilenn.config import ModelConfig
from agilenn.data import load_mnist_sample
from agilenn.data.mnist import load_mnist
from agilenn.entropy import fit_prior
from agilenn.firmware.image import HEADER_BYTES, pack_image, parse_image
from agilenn.firmware.int8 import Int8Model, calibrate, quantize_model, requant_multiplier
from agilenn.firmware.memplan import Buffer, plan_memory
from agilenn.firmware.sources import DEVICE_ID_MAX_BYTES, model_sources, payload_bound
from agilenn.model import AgileNN
from agilenn.pretrained import load_pretrained
from transports.messages import MAX_DEVICE_ID_BYTES

from .conftest import REPO, mnist_dir

C_DIR = REPO / "agilenn" / "firmware" / "c"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2"]
N_IMAGES = 300
N_SYMBOLS = 16 * 7 * 7  # the remote symbols of pretrained:mnist


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    return load_pretrained("mnist")


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    """(calibration images, test images): MNIST train and test where the shared copy exists,
    else the shipped test sample for both."""
    if (mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        train, test = load_mnist(mnist_dir(), "train"), load_mnist(mnist_dir(), "test")
        return train.images[:1000], test.images[:N_IMAGES]
    sample = load_mnist_sample().images
    return sample, sample[:N_IMAGES]


@pytest.fixture(scope="module")
def model(checkpoint: Checkpoint, images: tuple[np.ndarray, np.ndarray]) -> Int8Model:
    return quantize_model(checkpoint, images[0])


@pytest.fixture(scope="module")
def driver(model: Int8Model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    build = tmp_path_factory.mktemp("firmware")
    for name, text in model_sources(model, "agilenn-test").items():
        (build / name).write_text(text)
    binary = build / "model_driver"
    sources = [C_DIR / "tests" / "model_driver.c", C_DIR / "agn_model.c", C_DIR / "agn_rans.c",
               build / "agn_default_image.c"]
    subprocess.run(["gcc", *CFLAGS, f"-I{C_DIR}", f"-I{build}", *map(str, sources), "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    return binary


def _write_image(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "model.agw"
    path.write_bytes(data)
    return path


def _run_driver(driver: Path, args: list[str], stdin: bytes) -> bytes:
    return subprocess.run([str(driver), *args], input=stdin, capture_output=True, check=True).stdout


def _parse_results(raw: bytes, classes: int) -> list[tuple[np.ndarray, np.ndarray, int, bytes]]:
    results, pos = [], 0
    while pos < len(raw):
        acc = np.frombuffer(raw, "<i4", classes, pos)
        f16 = np.frombuffer(raw, "<u2", classes, pos + 4 * classes)
        pos += 6 * classes
        local_class = raw[pos]
        (length,) = struct.unpack_from("<H", raw, pos + 1)
        pos += 3
        results.append((acc, f16, local_class, raw[pos:pos + length]))
        pos += length
    return results


# --------------------------------------------------------------------------- C vs Python


def _assert_c_matches_the_reference(model: Int8Model, driver: Path, images: np.ndarray,
                                    tmp_path: Path) -> None:
    """The driver, given the model's image, answers every image exactly as ``Int8Model.run`` does."""
    outputs = model.run(images)
    payloads = model.payloads(outputs)
    raw = _run_driver(driver, [str(_write_image(tmp_path, pack_image(model)))], images.tobytes())
    results = _parse_results(raw, model.dims.classes)
    assert len(results) == len(images)
    for i, (acc, f16, local_class, payload) in enumerate(results):
        assert np.array_equal(acc, outputs.acc[i]) and np.array_equal(f16, outputs.logits_f16[i]), i
        assert local_class == outputs.local_class[i] and payload == payloads[i], i


def test_c_model_is_bit_exact_with_the_python_reference(
        model: Int8Model, driver: Path, images: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    test_images = images[1]
    _assert_c_matches_the_reference(model, driver, test_images, tmp_path)
    # The compiled-in slot A holds the same image and gives the same bytes.
    assert _run_driver(driver, ["--default"], test_images[:20].tobytes()) == _run_driver(
        driver, [str(tmp_path / "model.agw")], test_images[:20].tobytes())


# Shapes the MNIST model never reaches: stride 1 (right and bottom padding), three input channels,
# 2x2 and 1x1 planes, odd class counts, a pointwise tail of fewer than four pixels.
ODD_SHAPES = [
    dict(in_channels=1, image_size=9, extractor_stride=1, num_classes=5, stem_channels=6, feature_channels=7,
         local_pool=9),
    dict(in_channels=3, image_size=10, extractor_stride=2, num_classes=3, stem_channels=4, feature_channels=5,
         local_pool=5),
    dict(in_channels=1, image_size=6, extractor_stride=2, num_classes=4, stem_channels=5, feature_channels=6,
         local_pool=3),
    dict(in_channels=1, image_size=4, extractor_stride=4, num_classes=2, stem_channels=3, feature_channels=4,
         local_pool=1),
    dict(in_channels=1, image_size=2, extractor_stride=2, num_classes=2, stem_channels=3, feature_channels=4,
         local_pool=1),
]


def _random_int8_model(shape: dict[str, int], seed: int) -> Int8Model:
    """An untrained model of ``shape`` with varied batch norms, quantised; every other channel's
    requantisation shift is made small, which takes the C kernels' general 64-bit path."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    config = ModelConfig(**shape)
    network = AgileNN(config)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    size = config.feature_size
    symbols = rng.integers(0, config.n_centroids, size=(50, config.remote_channels, size, size))
    codec = CodecSettings(layout="rans", prior=fit_prior(symbols, config.n_centroids).to_bytes())
    calibration = rng.integers(0, 256, size=(20, config.in_channels, config.image_size, config.image_size),
                               dtype=np.uint8)
    model = quantize_model(Checkpoint.from_model(network, codec), calibration)
    for layer in (model.stem, model.depthwise, model.pointwise):
        for channel in range(0, len(layer.shift), 2):
            if layer.shift[channel] > 34:
                layer.shift[channel] = rng.integers(20, 34)
    return model


@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda shape: "x".join(map(str, shape.values())))
def test_c_model_is_bit_exact_on_shapes_mnist_never_reaches(shape: dict[str, int], tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    model = _random_int8_model(shape, seed=ODD_SHAPES.index(shape))
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(30, shape["in_channels"], shape["image_size"], shape["image_size"]),
                         dtype=np.uint8)
    images[:4], images[4:6] = 255, 0
    for name, text in model_sources(model, "odd").items():
        (tmp_path / name).write_text(text)
    sources = [C_DIR / "tests" / "model_driver.c", C_DIR / "agn_model.c", C_DIR / "agn_rans.c",
               tmp_path / "agn_default_image.c"]
    binary = tmp_path / "driver"
    subprocess.run(["gcc", *CFLAGS, f"-I{C_DIR}", f"-I{tmp_path}", *map(str, sources), "-o", str(binary)],
                   check=True, capture_output=True, text=True)
    _assert_c_matches_the_reference(model, binary, images, tmp_path)


def test_c_coder_matches_the_codec_on_dense_and_sparse_symbols(
        model: Int8Model, driver: Path, tmp_path: Path) -> None:
    """Real payloads flag few rows; random symbols exercise every branch of the coder."""
    rng = np.random.default_rng(0)
    shape = model.dims.symbol_shape
    dense = rng.integers(0, model.dims.n_centroids, size=(20, *shape))
    base = np.frombuffer(model.prior[-shape[0]:], dtype=np.uint8)[None, :, None, None]
    sparse = np.where(rng.random((40, *shape)) < 0.03, dense[:1].repeat(40, 0), base)
    last_only = np.broadcast_to(base, (1, *shape)).copy()
    last_only[0, :, :, -1] = (base[0, :, :, 0] + 1) % model.dims.n_centroids  # the implied-flag case
    symbols = np.concatenate([dense, sparse, last_only]).astype(np.uint8)
    codec = FeatureCodec(model.codec_settings)
    expected = [codec.encode(s) for s in symbols]
    image = str(_write_image(tmp_path, pack_image(model)))
    raw = _run_driver(driver, ["--rans", image, "65535"], symbols.tobytes())
    pos = 0
    for want in expected:
        (length,) = struct.unpack_from("<H", raw, pos)
        assert raw[pos + 2:pos + 2 + length] == want
        assert length <= payload_bound(model)
        pos += 2 + length
    assert pos == len(raw)
    # One byte short of the payload: the coder says so instead of writing past its buffer.
    short = _run_driver(driver, ["--rans", image, str(len(expected[0]) - 1)], symbols[:1].tobytes())
    assert short == b"\xff\xff"


def test_c_half_conversion_rounds_like_numpy(driver: Path) -> None:
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 1 << 32, size=100_000, dtype=np.uint64).astype(np.uint32)
    # Concentrate on the exponents near and inside half range, where the rounding happens.
    near = (rng.integers(0x33000000, 0x47800000 + 1, size=100_000, dtype=np.int64)
            | (rng.integers(0, 2, size=100_000, dtype=np.int64) << 31)).astype(np.uint32)
    ties = np.array([0x33000000, 0x33000001, 0x387FE000, 0x387FF000, 0x477FE000, 0x477FF000, 0x477FEFFF,
                     0x7F800000, 0xFF800000, 0, 0x80000000, 1, 0x00800000], dtype=np.uint32)
    values = np.concatenate([bits, near, ties]).view(np.float32)
    values = values[np.isfinite(values) | np.isinf(values)]  # NaN payloads are not part of the contract
    raw = _run_driver(driver, ["--f16"], values.astype("<f4").tobytes())
    with np.errstate(over="ignore"):  # overflowing to inf is the rounding rule, not an accident
        expected = values.astype(np.float16).view(np.uint16)
    assert np.array_equal(np.frombuffer(raw, "<u2"), expected)


def _section(data: bytes, index: int) -> tuple[int, int]:
    offset, length = struct.unpack_from("<II", data, 32 + 8 * index)
    return offset, length


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


def _defects(image: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (corrupted image, the C side's reason)."""
    prior_at, _ = _section(image, 17)
    lut_at, _ = _section(image, 16)
    shift_at, _ = _section(image, 3)
    _, last_length = _section(image, 17)
    return {
        "magic": (_patch(image, 0, b"AGW2"), "bad magic"),
        "version": (_patch(image, 4, struct.pack("<H", 2)), "version"),
        "truncated": (image[:-4], "length differs"),
        "short": (image[:100], "shorter than the AGW1 header"),
        "dims": (_patch(image, 20 + 9, bytes([image[29] + 1])), "dims differ"),
        "misaligned": (_patch(image, 32 + 8 * 5, struct.pack("<I", _section(image, 5)[0] + 1)), "aligned"),
        "bounds": (_patch(image, 32 + 8 * 17 + 4, struct.pack("<I", last_length + 4)), "outside the image"),
        "overlap": (_patch(image, 32 + 8 * 2, struct.pack("<I", _section(image, 1)[0])), "overlaps"),
        "shift": (_patch(image, shift_at, struct.pack("<i", 0)), "requantisation"),
        "lut": (_patch(image, lut_at, bytes([200])), "centroid table"),
        "prior": (_patch(image, prior_at + 8, struct.pack("<H", 0)), "prior"),
        "prior kind": (_patch(image, prior_at, bytes([0])), "prior"),
        "prior length": (_patch(image, 32 + 8 * 17 + 4, struct.pack("<I", last_length - 2)), "prior"),
    }


def test_both_sides_refuse_each_defective_image(model: Int8Model, driver: Path, tmp_path: Path) -> None:
    image = pack_image(model)
    defects = _defects(image)
    assert len(defects) >= 12
    for name, (corrupt, reason) in defects.items():
        with pytest.raises(ValueError):
            parse_image(corrupt)
        result = subprocess.run([str(driver), str(_write_image(tmp_path, corrupt))], input="",
                                capture_output=True, text=True)
        assert result.returncode == 2, name
        assert reason in result.stderr, (name, result.stderr)


# --------------------------------------------------------------------------- the Python reference


def test_int8_features_track_the_float_model(
        checkpoint: Checkpoint, model: Int8Model, images: tuple[np.ndarray, np.ndarray]) -> None:
    test_images = images[1]
    outputs = model.run(test_images)
    float_model = checkpoint.build_model()
    with torch.no_grad():
        result = float_model(torch.from_numpy(test_images.astype(np.float32) / 255.0))
    scale = calibrate(checkpoint, images[0]).pointwise
    error = np.abs(outputs.features * scale - result.features.numpy())
    assert error.mean() < 0.02 and error.max() < 0.5
    assert (outputs.symbols == result.symbols.numpy()).mean() > 0.995
    assert (outputs.local_class == result.local_logits.argmax(1).numpy()).mean() > 0.99
    assert np.allclose(outputs.logits, result.local_logits.numpy(), atol=0.5)
    assert np.array_equal(outputs.logits_f16, outputs.logits.astype(np.float16).view(np.uint16))


def test_requantisation_multipliers_lie_in_range() -> None:
    for real in (1e-9, 0.0123, 0.5, 0.999999999, 1.0, 3.7):
        mult, shift = requant_multiplier(real)
        assert 1 << 30 <= mult < 1 << 31 and 1 <= shift <= 62
        assert mult * 2.0 ** -shift == pytest.approx(real, rel=1e-9)
    assert requant_multiplier(0.0) == (0, 1)
    assert requant_multiplier(1e-12) == (0, 1)  # no int32 accumulator reaches one output step
    with pytest.raises(ValueError):
        requant_multiplier(float("nan"))


def _with_config(checkpoint: Checkpoint, config: ModelConfig) -> Checkpoint:
    return dataclasses.replace(checkpoint, config=config)


def test_quantize_refuses_models_the_firmware_cannot_run(
        checkpoint: Checkpoint, images: tuple[np.ndarray, np.ndarray]) -> None:
    calibration = images[0][:10]
    symbols = np.random.default_rng(0).integers(0, 8, size=(50, 16, 7, 7))
    order0 = CodecSettings(layout="rans", prior=fit_prior(symbols, 8, "order0").to_bytes())
    wrong_shape = CodecSettings(layout="rans", prior=fit_prior(symbols[:, :, :6], 8).to_bytes())
    cases = {
        "layout rans only": dataclasses.replace(checkpoint, codec=CodecSettings()),
        "context prior": dataclasses.replace(checkpoint, codec=order0),
        "of shape": dataclasses.replace(checkpoint, codec=wrong_shape),
        "must equal the feature map size 16": load_pretrained("cluttered-mnist"),
        "no pooling": _with_config(checkpoint, dataclasses.replace(checkpoint.config, local_pool=4)),
        "exceeds the firmware": _with_config(
            checkpoint, dataclasses.replace(checkpoint.config, image_size=256, local_pool=64)),
    }
    for reason, refused in cases.items():
        with pytest.raises(ValueError, match=reason):
            quantize_model(refused, calibration)


# --------------------------------------------------------------------------- image, plan, sources


def test_image_round_trips_and_is_aligned(model: Int8Model) -> None:
    image = pack_image(model)
    assert image[:4] == b"AGW1" and struct.unpack_from("<I", image, 16)[0] == len(image)
    offsets = [_section(image, i)[0] for i in range(18)]
    assert offsets[0] == HEADER_BYTES and all(o % 4 == 0 for o in offsets)
    again = parse_image(image)
    assert pack_image(again) == image
    assert again.dims == model.dims and again.model_hash == model.model_hash and again.prior == model.prior
    for layer in ("stem", "depthwise", "pointwise"):
        for field in ("weights", "bias", "mult", "shift"):
            parsed, original = getattr(again, layer), getattr(model, layer)
            assert np.array_equal(getattr(parsed, field), getattr(original, field))
    assert np.array_equal(again.local_scale, model.local_scale) and again.local_scale.dtype == np.float32


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 8), st.integers(0, 8)), max_size=10))
def test_memory_plan_never_overlaps_live_buffers(specs: list[tuple[int, int, int]]) -> None:
    buffers = [Buffer(f"b{i}", size, min(a, b), max(a, b)) for i, (size, a, b) in enumerate(specs)]
    plan = plan_memory(buffers)
    for i, one in enumerate(buffers):
        start = plan.offsets[one.name]
        assert start % 4 == 0 and start + one.size <= plan.arena_bytes
        for other in buffers[i + 1:]:
            other_start = plan.offsets[other.name]
            disjoint = start + one.size <= other_start or other_start + other.size <= start
            assert disjoint or not one.alive_with(other) or 0 in (one.size, other.size)
    assert plan.arena_bytes <= sum(-(-b.size // 4) * 4 for b in buffers)


def test_mnist_activation_plan_needs_two_buffers_at_a_time(model: Int8Model) -> None:
    plan = model.dims.activation_plan()
    assert plan.arena_bytes == 16 * 14 * 14 + 16 * 7 * 7  # the stem and depthwise maps, side by side


def test_generated_config_has_the_contract_macros(model: Int8Model) -> None:
    sources = model_sources(model, "agilenn-mcu-0")
    doc = (REPO / "docs" / "FIRMWARE.md").read_text()
    example = doc[doc.index("/* agn_config.h"):]
    example = example[:example.index("```")]
    names = re.findall(r"#define (AGN_\w+)", sources["agn_config.h"])
    assert names == re.findall(r"#define (AGN_\w+)", example)
    assert "#define AGN_DEVICE_ID \"agilenn-mcu-0\"" in sources["agn_config.h"]
    image = pack_image(model)
    assert f"agn_default_image_len = {len(image)}u;" in sources["agn_default_image.c"]
    slot = int(re.search(r"#define AGN_SLOT_BYTES (\d+)", sources["agn_config.h"]).group(1))  # type: ignore[union-attr]
    assert slot % 1024 == 0 and slot >= 1.25 * len(image)
    with pytest.raises(ValueError):
        model_sources(model, 'bad"id\n')
    assert DEVICE_ID_MAX_BYTES == MAX_DEVICE_ID_BYTES  # the protocol's limit, kept in step
    model_sources(model, "d" * MAX_DEVICE_ID_BYTES)
    with pytest.raises(ValueError, match="over the protocol's 64 bytes"):
        model_sources(model, "d" * (MAX_DEVICE_ID_BYTES + 1))
