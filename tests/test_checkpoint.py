"""The .agnn checkpoint: byte round trips, the content hash, and every way a file can be bad."""

from __future__ import annotations

import dataclasses
import io
import re
from typing import Any
from collections.abc import Callable

import numpy as np
import pytest
import torch

from agilenn.checkpoint import FORMAT_NAME, FORMAT_VERSION, Checkpoint, model_hash
from agilenn.codec import CodecSettings
from agilenn.config import ModelConfig
from agilenn.errors import AgileNNError, CheckpointError
from agilenn.model import AgileNN

CODEC = CodecSettings(n_centroids=8, layout="bitpacked", level=5, dictionary=b"\x00agilenn\xffdict")
METADATA: dict[str, Any] = {
    "dataset": "mnist",
    "train": {"epochs": 3, "lr": 0.003, "history": [{"acc": 0.9, "loss": 0.31}, {"acc": 0.95}]},
    "tags": ["a", "b", ["nested", 1, 2.5]],
    "flags": {"second_order": False, "note": None, "unicode": "ünïcødé"},
}


def make_model(seed: int = 1234, config: ModelConfig | None = None) -> AgileNN:
    torch.manual_seed(seed)
    model = AgileNN(config or ModelConfig())
    # Non-trivial batch-norm statistics, so buffers are checked too.
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> AgileNN:
    return make_model()


@pytest.fixture(scope="module")
def checkpoint_bytes(model: AgileNN) -> bytes:
    return Checkpoint.from_model(model, CODEC, METADATA).to_bytes()


def load_raw(data: bytes) -> dict[str, Any]:
    raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    assert isinstance(raw, dict)
    return raw


def save_raw(raw: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    return buffer.getvalue()


def edited(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    raw = load_raw(data)
    edit(raw)
    return save_raw(raw)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert torch.equal(a[name], b[name]), name


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    "codec",
    [
        pytest.param(CODEC, id="codec-with-dictionary"),
        pytest.param(CodecSettings(n_centroids=16, layout="bytes", dictionary=b"d"), id="bytes-16"),
        pytest.param(CodecSettings(), id="default-codec"),
    ],
)
def test_round_trip(model: AgileNN, codec: CodecSettings) -> None:
    original = Checkpoint.from_model(model, codec, METADATA)
    data = original.to_bytes()
    assert isinstance(data, bytes)
    restored = Checkpoint.from_bytes(data)
    assert restored.config == model.config
    assert restored.codec == codec
    assert restored.codec.dictionary == codec.dictionary
    assert restored.metadata == METADATA
    assert restored.model_hash == original.model_hash
    assert_same_state(restored.state_dict, model.state_dict())


def test_built_model_computes_what_the_original_did(model: AgileNN, checkpoint_bytes: bytes) -> None:
    rebuilt = Checkpoint.from_bytes(checkpoint_bytes).build_model()
    assert isinstance(rebuilt, AgileNN)
    assert not rebuilt.training
    assert not any(p.requires_grad for p in rebuilt.reference.parameters())
    assert all(p.requires_grad for p in rebuilt.trainable_parameters())
    torch.manual_seed(99)
    x = torch.rand(6, 1, 28, 28)
    expected = model.device_forward(x)
    got = rebuilt.device_forward(x)
    assert got.symbols.dtype == torch.int64
    assert torch.equal(got.symbols, expected.symbols)
    assert torch.equal(got.local_logits, expected.local_logits)
    assert torch.equal(
        rebuilt.server_forward(got.symbols, got.local_logits),
        model.server_forward(expected.symbols, expected.local_logits),
    )
    assert torch.equal(rebuilt(x).logits, model(x).logits)


def test_from_model_copies_the_weights(model: AgileNN) -> None:
    checkpoint = Checkpoint.from_model(model, CODEC)
    name = next(iter(checkpoint.state_dict))
    before = model.state_dict()[name].clone()
    checkpoint.state_dict[name].add_(1.0)
    assert torch.equal(model.state_dict()[name], before)
    assert checkpoint.metadata == {}


def test_metadata_round_trip() -> None:
    model = make_model(seed=5)
    for metadata in ({}, METADATA, {"deep": {"a": {"b": {"c": [[1, [2, [3]]], {"d": "e"}]}}}}):
        restored = Checkpoint.from_bytes(Checkpoint.from_model(model, CODEC, metadata).to_bytes())
        assert restored.metadata == metadata
    # Metadata describes the run; it is no part of what the server computes.
    assert (Checkpoint.from_model(model, CODEC, METADATA).model_hash
            == Checkpoint.from_model(model, CODEC, {}).model_hash)


# --------------------------------------------------------------------------- model hash


def test_model_hash_is_16_hex_chars_and_stable(model: AgileNN, checkpoint_bytes: bytes) -> None:
    checkpoint = Checkpoint.from_model(model, CODEC)
    digest = checkpoint.model_hash
    assert re.fullmatch(r"[0-9a-f]{16}", digest)
    assert digest == model_hash(model.config, CODEC, model.state_dict())
    assert digest == Checkpoint.from_model(make_model(), CODEC).model_hash  # same seed, same hash
    first = Checkpoint.from_bytes(checkpoint.to_bytes())
    second = Checkpoint.from_bytes(Checkpoint.from_bytes(checkpoint_bytes).to_bytes())
    assert first.model_hash == second.model_hash == digest
    assert load_raw(checkpoint_bytes)["model_hash"] == digest


def test_model_hash_changes_with_one_weight(model: AgileNN) -> None:
    checkpoint = Checkpoint.from_model(model, CODEC)
    reference = checkpoint.model_hash
    names = [n for n, t in checkpoint.state_dict.items() if t.is_floating_point()]
    for name in (names[0], names[len(names) // 2], names[-1]):
        state = {k: v.clone() for k, v in checkpoint.state_dict.items()}
        flat = state[name].view(-1)
        flat[-1] = torch.nextafter(flat[-1], torch.tensor(float("inf")))  # smallest change
        assert model_hash(model.config, CODEC, state) != reference, name


def test_model_hash_covers_names_and_shapes(model: AgileNN) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reference = model_hash(model.config, CODEC, state)
    name = next(n for n, t in state.items() if t.dim() > 1)
    reshaped = dict(state, **{name: state[name].reshape(-1)})  # same bytes, other shape
    assert model_hash(model.config, CODEC, reshaped) != reference
    renamed = {("x." + k if k == name else k): v for k, v in state.items()}
    assert model_hash(model.config, CODEC, renamed) != reference
    # Insertion order does not matter: names are hashed in sorted order.
    reordered = dict(reversed(list(state.items())))
    assert model_hash(model.config, CODEC, reordered) == reference


@pytest.mark.parametrize(
    "change",
    [{"quantizer_sharpness": 5.0}, {"split_ratio": 0.21}, {"local_pool": 6}],
)
def test_model_hash_changes_with_the_config(model: AgileNN, change: dict[str, Any]) -> None:
    state = model.state_dict()
    other = dataclasses.replace(model.config, **change)
    assert model_hash(other, CODEC, state) != model_hash(model.config, CODEC, state)


@pytest.mark.parametrize(
    "change",
    [{"n_centroids": 4}, {"layout": "bytes"}, {"level": 19}, {"dictionary": b"another"},
     {"dictionary": b""}],
)
def test_model_hash_changes_with_the_codec(model: AgileNN, change: dict[str, Any]) -> None:
    state = model.state_dict()
    other = dataclasses.replace(CODEC, **change)
    assert model_hash(model.config, other, state) != model_hash(model.config, CODEC, state)


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_other_format_version(checkpoint_bytes: bytes, version: object) -> None:
    data = edited(checkpoint_bytes, lambda raw: raw.__setitem__("format_version", version))
    with pytest.raises(CheckpointError) as info:
        Checkpoint.from_bytes(data)
    message = str(info.value)
    assert f"version {version}" in message
    assert f"reads version {FORMAT_VERSION}" in message


def test_missing_format_version(checkpoint_bytes: bytes) -> None:
    data = edited(checkpoint_bytes, lambda raw: raw.pop("format_version"))
    with pytest.raises(CheckpointError, match=f"version None.*version {FORMAT_VERSION}"):
        Checkpoint.from_bytes(data)


@pytest.mark.parametrize("marker", ["agilenn.checkpoint2", "", None, FORMAT_NAME.upper()])
def test_wrong_format_marker(checkpoint_bytes: bytes, marker: object) -> None:
    data = edited(checkpoint_bytes, lambda raw: raw.__setitem__("format", marker))
    with pytest.raises(CheckpointError, match="format marker"):
        Checkpoint.from_bytes(data)


@pytest.mark.parametrize("payload", [[1, 2, 3], "agilenn.checkpoint", {"weights": torch.zeros(3)},
                                     torch.zeros(4)])
def test_not_a_checkpoint_dict(payload: object) -> None:
    with pytest.raises(CheckpointError, match="format marker"):
        Checkpoint.from_bytes(save_raw(payload))


def _random_blob(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8).tobytes()


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 64, b"not a checkpoint at all", b"PK\x03\x04" + _random_blob(1, 200),
     _random_blob(2, 4096), _random_blob(3, 17), b"\x80\x02" + _random_blob(4, 64)],
    ids=["empty", "zeros", "text", "zip-magic", "random-4k", "random-17", "pickle-2-header"],
)
def test_random_bytes(data: bytes) -> None:
    with pytest.raises(CheckpointError, match="not a readable agilenn.checkpoint file") as info:
        Checkpoint.from_bytes(data)
    assert isinstance(info.value, AgileNNError)


@pytest.mark.parametrize("data", [b"G", b"\x80", b"h\x04", b"\x807."])
def test_short_legacy_pickle_bytes(data: bytes) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(data)


def test_truncated_bytes(checkpoint_bytes: bytes) -> None:
    size = len(checkpoint_bytes)
    cuts = sorted({1, 2, 10, 100, 1000, *range(0, size, size // 37), *range(size - 30, size)})
    for cut in cuts:
        with pytest.raises(CheckpointError):
            Checkpoint.from_bytes(checkpoint_bytes[:cut])


def test_tampered_tensor(checkpoint_bytes: bytes) -> None:
    def tamper(raw: dict[str, Any]) -> None:
        name = next(n for n, t in raw["state_dict"].items() if t.is_floating_point())
        raw["state_dict"][name].view(-1)[0] += 0.5

    stored = load_raw(checkpoint_bytes)["model_hash"]
    with pytest.raises(CheckpointError, match=f"hash .* does not match the stored {stored}"):
        Checkpoint.from_bytes(edited(checkpoint_bytes, tamper))


@pytest.mark.parametrize(
    "edit",
    [
        lambda raw: raw["config"].__setitem__("quantizer_sharpness", 9.0),
        lambda raw: raw["codec"].__setitem__("n_centroids", 16),
        lambda raw: raw["state_dict"].pop(next(iter(raw["state_dict"]))),
        lambda raw: raw.__setitem__("model_hash", "0" * 16),
        lambda raw: raw.pop("model_hash"),
    ],
    ids=["config", "codec", "dropped-tensor", "other-hash", "no-hash"],
)
def test_tampered_fields_fail_the_hash(
    checkpoint_bytes: bytes, edit: Callable[[dict[str, Any]], None]
) -> None:
    with pytest.raises(CheckpointError, match="hash"):
        Checkpoint.from_bytes(edited(checkpoint_bytes, edit))


@pytest.mark.parametrize(
    "edit",
    [
        lambda raw: raw.pop("config"),
        lambda raw: raw.__setitem__("config", {**raw["config"], "colour": "blue"}),
        lambda raw: raw.__setitem__("config", {**raw["config"], "extractor_stride": 3}),
        lambda raw: raw.__setitem__("codec", {**raw["codec"], "layout": "zip"}),
        lambda raw: raw.__setitem__("codec", None),
        lambda raw: raw.__setitem__("state_dict", [1, 2]),
        lambda raw: raw.__setitem__("metadata_json", "{not json"),
        lambda raw: raw.__setitem__("metadata_json", "[1, 2]"),
        lambda raw: raw.__setitem__("metadata_json", 7),
    ],
    ids=["no-config", "unknown-config-key", "invalid-config", "invalid-codec", "codec-none",
         "state-not-a-dict", "metadata-not-json", "metadata-not-an-object", "metadata-not-str"],
)
def test_invalid_fields(checkpoint_bytes: bytes, edit: Callable[[dict[str, Any]], None]) -> None:
    with pytest.raises(CheckpointError, match="fields are invalid"):
        Checkpoint.from_bytes(edited(checkpoint_bytes, edit))


@pytest.mark.parametrize("value", [3, "weights", None, torch.zeros(2, dtype=torch.bfloat16)],
                         ids=["int", "str", "none", "bfloat16"])
def test_state_dict_entry_of_the_wrong_kind(checkpoint_bytes: bytes, value: object) -> None:
    data = edited(checkpoint_bytes, lambda raw: raw["state_dict"].__setitem__("extra", value))
    with pytest.raises(CheckpointError):
        Checkpoint.from_bytes(data)


def test_state_dict_that_does_not_fit_the_config(model: AgileNN, checkpoint_bytes: bytes) -> None:
    narrower = dataclasses.replace(model.config, stem_channels=8)
    with pytest.raises(CheckpointError, match="do not fit the stored config"):
        Checkpoint(narrower, CODEC, dict(model.state_dict())).build_model()
    missing = dict(model.state_dict())
    missing.pop(next(iter(missing)))
    with pytest.raises(CheckpointError, match="do not fit"):
        Checkpoint(model.config, CODEC, missing).build_model()

    # The same through a file whose hash was recomputed, so only build_model can tell.
    def swap_config(raw: dict[str, Any]) -> None:
        raw["config"] = narrower.to_dict()
        raw["model_hash"] = model_hash(narrower, CODEC, raw["state_dict"])

    loaded = Checkpoint.from_bytes(edited(checkpoint_bytes, swap_config))
    assert loaded.config == narrower
    with pytest.raises(CheckpointError, match="do not fit"):
        loaded.build_model()


def test_half_precision_copy_halves_the_file_and_keeps_the_model() -> None:
    torch.manual_seed(0)
    model = AgileNN(ModelConfig()).eval()
    full = Checkpoint.from_model(model, CodecSettings())
    half = full.to_half()
    assert all(t.dtype != torch.float32 for t in half.state_dict.values())
    assert len(half.to_bytes()) < 0.6 * len(full.to_bytes())
    restored = Checkpoint.from_bytes(half.to_bytes())
    assert restored.model_hash == half.model_hash != full.model_hash
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        expected, got = model(x).logits, restored.build_model()(x).logits
    assert torch.allclose(expected, got, atol=0.05)
