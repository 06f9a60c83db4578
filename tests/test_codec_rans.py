"""The codec's rans layout: settings, payloads, hostile bytes, checkpoints and the shipped model."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agilenn.checkpoint import Checkpoint, model_hash
from agilenn.cli import main
from agilenn.codec import LAYOUT_RANS, CodecSettings, FeatureCodec, fit_rans, train_dictionary
from agilenn.config import ModelConfig
from agilenn.data import load_mnist_sample
from agilenn.entropy import ContextPrior, fit_prior
from agilenn.errors import CodecError
from agilenn.evaluate import device_symbols
from agilenn.model import AgileNN
from agilenn.pretrained import load_pretrained

FAST = settings(deadline=None, database=None, derandomize=True)
SHAPE = (4, 5, 6)
DOC = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")


def training_symbols(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random((count, *SHAPE)) < 0.85, 0, rng.integers(0, 8, (count, *SHAPE)))


RANS = {kind: fit_rans(CodecSettings(n_centroids=8), training_symbols(200), kind)
        for kind in ("order0", "context")}
CODECS = {kind: FeatureCodec(value) for kind, value in RANS.items()}


# --------------------------------------------------------------------------- settings


def test_fit_rans_gives_layout_rans_with_the_prior_and_no_zstd() -> None:
    fitted = fit_rans(CodecSettings(n_centroids=8, level=3), training_symbols(50))
    assert (fitted.layout, fitted.dictionary, fitted.level) == ("rans", b"", CodecSettings.level)
    assert isinstance(fitted.parsed_prior(), ContextPrior)
    assert fitted.parsed_prior().shape == SHAPE


@pytest.mark.parametrize(("changes", "match"), [
    ({"layout": "rans"}, "takes a prior"),
    ({"layout": "bytes", "prior": RANS["context"].prior}, "no other layout"),
    ({"layout": "rans", "prior": RANS["context"].prior, "dictionary": b"d"}, "no dictionary"),
    ({"layout": "rans", "prior": RANS["context"].prior, "n_centroids": 16}, "8 symbols, not 16"),
    ({"layout": "rans", "prior": b"\x01\x07"}, "shorter than"),
    ({"layout": "rans", "prior": RANS["context"].prior[:-1]}, "bytes"),
])
def test_settings_refuse_an_inconsistent_prior(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CodecSettings(**{"n_centroids": 8, **changes})  # type: ignore[arg-type]


def test_the_prior_is_in_the_dict_only_when_there_is_one() -> None:
    values = RANS["context"].to_dict()
    assert values["prior"] == RANS["context"].prior and values["layout"] == "rans"
    assert CodecSettings.from_dict(values) == RANS["context"]
    # Settings without a prior serialise as before layout rans existed, so old hashes hold.
    assert "prior" not in CodecSettings().to_dict()
    assert CodecSettings.from_dict({"n_centroids": 8, "layout": "bytes", "level": 19,
                                    "dictionary": b""}) == CodecSettings()


def test_a_dictionary_cannot_be_trained_for_layout_rans() -> None:
    with pytest.raises(ValueError, match="no zstd body"):
        train_dictionary(RANS["context"], training_symbols(50), 1024)


# --------------------------------------------------------------------------- payloads


@settings(FAST, max_examples=150)
@given(st.sampled_from(sorted(CODECS)), hnp.arrays(np.int64, SHAPE, elements=st.integers(0, 7)))
def test_round_trip_of_any_symbols(kind: str, symbols: np.ndarray) -> None:
    codec = CODECS[kind]
    payload = codec.encode(symbols)
    assert payload[:5] == bytes((0xA1, LAYOUT_RANS | 2 << 2, *SHAPE))
    assert payload[5:] == codec._prior.encode(symbols)  # type: ignore[union-attr]
    assert np.array_equal(codec.decode(payload), symbols)
    assert np.array_equal(codec.decode(bytearray(payload)), symbols)


def test_rans_payloads_are_smaller_than_zstd_on_skewed_symbols() -> None:
    zstd = FeatureCodec(CodecSettings(n_centroids=8, level=19))
    test = training_symbols(50, seed=1)
    for codec in CODECS.values():
        assert np.mean([len(codec.encode(s)) for s in test]) < np.mean([len(zstd.encode(s)) for s in test])


def test_encode_refuses_another_shape_than_the_priors() -> None:
    with pytest.raises(ValueError, match="shape"):
        CODECS["context"].encode(np.zeros((4, 5, 5), dtype=np.uint8))


@settings(FAST, max_examples=300)
@given(st.sampled_from(sorted(CODECS)), st.binary(max_size=60))
def test_arbitrary_bodies_raise_codec_error_or_decode(kind: str, body: bytes) -> None:
    try:
        out = CODECS[kind].decode(bytes((0xA1, 0x0A, *SHAPE)) + body)
    except CodecError:
        return
    assert out.shape == SHAPE and out.dtype == np.uint8 and out.max() < 8


@pytest.mark.parametrize("kind", sorted(CODECS))
def test_every_truncation_and_trailing_bytes_raise_codec_error(kind: str) -> None:
    codec = CODECS[kind]
    payload = codec.encode(training_symbols(1, seed=5)[0])
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            codec.decode(payload[:cut])
    for extra in (b"\x00", b"\xff" * 3, b"trailing garbage", payload):
        with pytest.raises(CodecError):
            codec.decode(payload + extra)


@pytest.mark.parametrize(("head", "match"), [
    (bytes((0xA1, 0x0A, 4, 5, 5)), "shape"),
    (bytes((0xA1, 0x0A, 5, 5, 6)), "shape"),
    (bytes((0xA1, 0x08, 4, 5, 6)), "layout 0"),
    (bytes((0xA1, 0x09, 4, 5, 6)), "layout 1"),
    (bytes((0xA1, 0x0E, 4, 5, 6)), "4-bit"),
    (bytes((0xA2, 0x0A, 4, 5, 6)), "version"),
])
def test_a_header_of_another_shape_layout_or_version_is_refused(head: bytes, match: str) -> None:
    body = CODECS["context"].encode(np.zeros(SHAPE, dtype=np.uint8))[5:]
    with pytest.raises(CodecError, match=match):
        CODECS["context"].decode(head + body)


def test_a_zstd_codec_refuses_a_rans_payload() -> None:
    payload = CODECS["context"].encode(np.zeros(SHAPE, dtype=np.uint8))
    with pytest.raises(CodecError, match="layout 2"):
        FeatureCodec(CodecSettings(n_centroids=8)).decode(payload)


def test_the_protocol_docs_whole_payload() -> None:
    rows = np.array([[[1024, 2048], [512, 3072]]])
    flags = np.tile(np.array([1024, 2048, 2048, 3072]), (1, 2, 2, 1))
    prior = ContextPrior((1, 2, 2), 4, rows, flags, np.array([[2048, 1024, 1024]]), np.array([0]))
    codec = FeatureCodec(CodecSettings(n_centroids=4, layout="rans", prior=prior.to_bytes()))
    shown = re.search(r"The whole payload, 9 bytes: `([0-9a-f ]+)`", DOC)
    assert shown is not None
    payload = bytes.fromhex(shown.group(1).replace(" ", ""))
    assert codec.encode(np.array([[[0, 3], [1, 0]]])) == payload
    assert codec.decode(payload).tolist() == [[[0, 3], [1, 0]]]


# --------------------------------------------------------------------------- checkpoints and the CLI


def tiny_model() -> AgileNN:
    return AgileNN(ModelConfig(stem_channels=4, feature_channels=5, remote_width=8, reference_width=4))


def test_a_checkpoint_keeps_its_prior_and_the_hash_covers_it() -> None:
    model = tiny_model()
    symbols = training_symbols(20)
    codec = fit_rans(CodecSettings(n_centroids=8), symbols)
    checkpoint = Checkpoint.from_model(model, codec)
    restored = Checkpoint.from_bytes(checkpoint.to_bytes())
    assert restored.codec == codec and restored.model_hash == checkpoint.model_hash
    other = fit_rans(CodecSettings(n_centroids=8), symbols[:5])
    assert other.prior != codec.prior
    assert model_hash(model.config, other, checkpoint.state_dict) != checkpoint.model_hash
    zstd = replace(codec, layout="bytes", prior=b"")
    assert model_hash(model.config, zstd, checkpoint.state_dict) != checkpoint.model_hash


def test_codec_command_fits_a_rans_prior(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained = tmp_path / "tiny.agnn"
    trained.write_bytes(Checkpoint.from_model(tiny_model(), CodecSettings(n_centroids=8, level=5)).to_bytes())
    out = tmp_path / "rans.agnn"
    args = ["codec", "--model", str(trained), "--layout", "rans", "--dataset", "synthetic",
            "--samples", "200", "--out", str(out)]
    assert main(args) == 0
    after = Checkpoint.from_bytes(out.read_bytes())
    assert (after.codec.layout, after.codec.dictionary) == ("rans", b"")
    assert f'"prior_bytes": {len(after.codec.prior)}' in capsys.readouterr().out
    prior = after.codec.parsed_prior()
    assert prior.kind == "context" and prior.shape == (4, 7, 7)
    assert main([*args[:-1], str(tmp_path / "order0.agnn"), "--prior", "order0"]) == 0
    order0 = Checkpoint.from_bytes((tmp_path / "order0.agnn").read_bytes()).codec.parsed_prior()
    assert order0.kind == "order0"
    capsys.readouterr()
    assert main(["codec", "--model", str(out), "--layout", "bytes", "--out", str(tmp_path / "z.agnn")]) == 0
    back = Checkpoint.from_bytes((tmp_path / "z.agnn").read_bytes()).codec
    assert (back.layout, back.prior) == ("bytes", b"")
    assert main([*args, "--dictionary-size", "1024"]) == 2
    assert "no zstd dictionary" in capsys.readouterr().err


# --------------------------------------------------------------------------- the shipped model


def test_the_shipped_model_codes_its_payloads_with_rans() -> None:
    checkpoint = load_pretrained("mnist")
    codec = FeatureCodec(checkpoint.codec)
    prior = checkpoint.codec.parsed_prior()
    assert (checkpoint.codec.layout, prior.kind, prior.shape) == ("rans", "context", (16, 7, 7))
    assert len(checkpoint.codec.prior) == 6968
    symbols = device_symbols(checkpoint.build_model(), load_mnist_sample().head(200))
    payloads = [codec.encode(s) for s in symbols]
    assert all(np.array_equal(codec.decode(p), s) for p, s in zip(payloads, symbols, strict=True))
    assert 15 < np.mean([len(p) for p in payloads]) < 28  # 1.15 x the order-0 bound of ~24.7 B
    assert fit_prior(symbols, 8).shape == prior.shape


def test_one_rans_codec_serves_four_threads_at_once() -> None:
    codec = CODECS["context"]
    start = threading.Barrier(4, timeout=30)

    def work(seed: int) -> int:
        start.wait()
        for symbols in training_symbols(40, seed=seed):
            if not np.array_equal(codec.decode(codec.encode(symbols)), symbols):
                raise AssertionError(f"thread {seed}: round trip differs")
        return seed

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert sorted(pool.map(work, range(4))) == [0, 1, 2, 3]
