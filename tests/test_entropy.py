"""The rans coder and its priors: exact round trips, hostile bodies, the prior's bytes, the doc's example."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agilenn.entropy import (
    PRIORS,
    PROB_SCALE,
    STATE_LOW,
    ContextPrior,
    Order0Prior,
    Prior,
    binary_frequencies,
    fit_prior,
    prior_from_bytes,
    quantise_frequencies,
    rans_encode,
)
from agilenn.errors import CodecError

FAST = settings(deadline=None, database=None, derandomize=True)
DOC = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- a reference decoder


class Reader:
    """docs/PROTOCOL.md's rans decoder, written from the page and independently of the library."""

    def __init__(self, body: bytes) -> None:
        if len(body) < 3:
            raise CodecError("short")
        self.body, self.pos = body, 3
        self.x = int.from_bytes(body[:3], "big")
        if self.x < STATE_LOW:
            raise CodecError("low state")

    def symbol(self, freqs: list[int]) -> int:
        slot = self.x % 4096
        s = cum = 0
        while slot >= cum + freqs[s]:  # the symbol whose slots hold this one
            cum += freqs[s]
            s += 1
        self.x = freqs[s] * (self.x // 4096) + slot - cum
        while self.x < 2**16:
            if self.pos == len(self.body):
                raise CodecError("truncated")
            self.x = self.x * 256 + self.body[self.pos]
            self.pos += 1
        return s

    def flag(self, f1: int) -> int:
        return self.symbol([4096 - f1, f1])

    def finish(self) -> None:
        if self.pos != len(self.body) or self.x != 2**16:
            raise CodecError("end")


def reference_decode(prior: Prior, body: bytes) -> np.ndarray:
    c_count, h_count, w_count = prior.shape
    reader = Reader(body)
    out = np.zeros(prior.shape, dtype=np.uint8)
    if isinstance(prior, Order0Prior):
        for c, h, w in np.ndindex(*prior.shape):
            out[c, h, w] = reader.symbol([int(f) for f in prior.freqs[c]])
        reader.finish()
        return out
    assert isinstance(prior, ContextPrior)
    non_base = np.zeros(prior.shape, dtype=bool)
    for c in range(c_count):
        base = int(prior.base[c])
        out[c] = base
        for h in range(h_count):
            row_above = int(h > 0 and non_base[c, h - 1].any())
            if not reader.flag(int(prior.rows[c, h, row_above])):
                continue
            for w in range(w_count):
                if w == w_count - 1 and not non_base[c, h, :w].any():
                    bit = 1
                else:
                    left = int(w > 0 and non_base[c, h, w - 1])
                    up = int(h > 0 and non_base[c, h - 1, w])
                    bit = reader.flag(int(prior.flags[c, h, w, 2 * left + up]))
                if bit:
                    v = reader.symbol([int(f) for f in prior.values[c]])
                    out[c, h, w] = v + (v >= base)
                    non_base[c, h, w] = True
    reader.finish()
    return out


# --------------------------------------------------------------------------- fitted priors


@st.composite
def fitted(draw: st.DrawFn) -> tuple[Prior, np.ndarray]:
    """A prior fitted on drawn training symbols, and symbols of its shape to code."""
    kind = draw(st.sampled_from(sorted(PRIORS)))
    n = draw(st.sampled_from([2, 3, 8, 8, 16, 256]))
    shape = draw(st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    count = draw(st.integers(1, 12))
    how = draw(st.sampled_from(["uniform", "skewed", "constant"]))
    if how == "uniform":
        train = rng.integers(0, n, size=(count, *shape))
    elif how == "skewed":  # mostly one symbol, like real features
        common, others = rng.integers(0, n), rng.integers(0, n, (count, *shape))
        train = np.where(rng.random((count, *shape)) < 0.9, common, others)
    else:
        train = np.full((count, *shape), draw(st.integers(0, n - 1)))
    symbols = draw(hnp.arrays(np.int64, shape, elements=st.integers(0, n - 1))
                   | st.just(rng.integers(0, n, size=shape))
                   | st.just(train[0]))
    return fit_prior(train, n, kind), symbols


@settings(FAST, max_examples=300)
@given(fitted())
def test_round_trip_for_any_symbols_and_any_fitted_prior(case: tuple[Prior, np.ndarray]) -> None:
    prior, symbols = case
    body = prior.encode(symbols)
    assert prior.encode(symbols.astype(np.uint8)) == body  # a pure function of the values
    out = prior.decode(body)
    assert out.dtype == np.uint8 and out.shape == prior.shape
    assert np.array_equal(out, symbols)
    assert np.array_equal(reference_decode(prior, body), symbols)  # the page's decoder agrees
    assert rans_encode(*prior.events(symbols)) == body  # the fast encoder codes the model's events
    assert prior_from_bytes(prior.to_bytes()) == prior


@pytest.mark.parametrize("kind", sorted(PRIORS))
@pytest.mark.parametrize("n", [2, 8, 256])
def test_symbols_never_seen_in_training_round_trip(kind: str, n: int) -> None:
    prior = fit_prior(np.zeros((50, 3, 4, 5), dtype=np.uint8), n, kind)
    rare = np.zeros((3, 4, 5), dtype=np.int64)
    rare[0, 0, 0], rare[1, 2, 4], rare[2, 3, 0] = n - 1, 1, n - 1
    everything = np.arange(60).reshape(3, 4, 5) % n
    for symbols in (rare, everything, np.full((3, 4, 5), n - 1)):
        body = prior.encode(symbols)
        assert np.array_equal(prior.decode(body), symbols)
    assert len(prior.encode(np.zeros((3, 4, 5)))) < len(prior.encode(rare))  # the seen one is cheaper


def test_the_context_prior_beats_order0_on_structured_symbols() -> None:
    rng = np.random.default_rng(0)
    blob = np.zeros((200, 2, 7, 7), dtype=np.int64)
    blob[:, :, 2:5, 2:5] = rng.integers(0, 3, size=(200, 2, 3, 3))
    sizes = {kind: np.mean([len(fit_prior(blob[:150], 8, kind).encode(s)) for s in blob[150:]])
             for kind in PRIORS}
    assert sizes["context"] < sizes["order0"]


# --------------------------------------------------------------------------- hostile bodies


@pytest.fixture(scope="module")
def priors() -> dict[str, Prior]:
    rng = np.random.default_rng(3)
    train = np.where(rng.random((100, 3, 5, 5)) < 0.8, 0, rng.integers(0, 8, (100, 3, 5, 5)))
    return {kind: fit_prior(train, 8, kind) for kind in PRIORS}


def sample(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random((3, 5, 5)) < 0.7, 0, rng.integers(0, 8, (3, 5, 5)))


@settings(FAST, max_examples=400)
@given(st.sampled_from(sorted(PRIORS)), st.binary(max_size=80))
def test_arbitrary_bodies_raise_codec_error_or_decode_in_range(
    priors: dict[str, Prior], kind: str, body: bytes
) -> None:
    try:
        out = priors[kind].decode(body)
    except CodecError:
        return
    assert out.shape == (3, 5, 5) and out.dtype == np.uint8 and out.max() < 8
    assert priors[kind].encode(out) == body  # anything accepted is the one body of what it decodes to


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_every_truncation_and_any_trailing_byte_is_an_error(priors: dict[str, Prior], kind: str) -> None:
    prior = priors[kind]
    for seed in range(5):
        body = prior.encode(sample(seed))
        for cut in range(len(body)):
            with pytest.raises(CodecError):
                prior.decode(body[:cut])
        for extra in (b"\x00", b"\x01", b"\xff" * 3, body):
            with pytest.raises(CodecError, match="trailing"):
                prior.decode(body + extra)


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_single_byte_flips_never_crash(priors: dict[str, Prior], kind: str) -> None:
    prior = priors[kind]
    body = prior.encode(sample(9))
    for position in range(len(body)):
        for mask in (0xFF, 0x01, 0x80):
            flipped = bytearray(body)
            flipped[position] ^= mask
            try:
                out = prior.decode(bytes(flipped))
            except CodecError:
                continue
            assert out.shape == prior.shape and out.max() < 8


@pytest.mark.parametrize("kind", sorted(PRIORS))
@pytest.mark.parametrize("body", [b"", b"\x01", b"\x01\x00", b"\x00\xff\xff", b"\x00\x00\x00\x00"])
def test_bodies_shorter_than_their_state_or_below_it(
    priors: dict[str, Prior], kind: str, body: bytes
) -> None:
    with pytest.raises(CodecError, match="shorter than|below"):
        priors[kind].decode(body)


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_a_body_of_zeros_is_refused_quickly(priors: dict[str, Prior], kind: str) -> None:
    with pytest.raises(CodecError):
        priors[kind].decode(b"\x01\x00\x00" + bytes(100_000))


# --------------------------------------------------------------------------- encode arguments


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_encode_refuses_another_shape_or_out_of_range_symbols(priors: dict[str, Prior], kind: str) -> None:
    with pytest.raises(ValueError, match="shape"):
        priors[kind].encode(np.zeros((3, 5, 4), dtype=np.uint8))
    for bad in (8, -1):
        symbols = sample(0)
        symbols[1, 1, 1] = bad
        with pytest.raises(ValueError, match=r"\[0, 8\)"):
            priors[kind].encode(symbols)


@pytest.mark.parametrize(("samples", "n", "match"), [
    (np.zeros((0, 2, 2, 2)), 8, "non-empty"),
    (np.zeros((2, 2, 2)), 8, "non-empty"),
    (np.full((1, 2, 2, 2), 8), 8, r"\[0, 8\)"),
    (np.zeros((1, 2, 2, 2)), 1, "2 to 256"),
    (np.zeros((1, 2, 2, 2)), 257, "2 to 256"),
])
def test_fit_refuses_bad_samples(samples: np.ndarray, n: int, match: str) -> None:
    for kind in PRIORS:
        with pytest.raises(ValueError, match=match):
            fit_prior(samples, n, kind)
    with pytest.raises(ValueError, match="kind"):
        fit_prior(np.zeros((1, 2, 2, 2)), 8, "order1")


# --------------------------------------------------------------------------- frequencies


@settings(FAST, max_examples=200)
@given(hnp.arrays(np.int64, st.tuples(st.integers(1, 4), st.integers(1, 300)),
                  elements=st.integers(0, 10**6) | st.just(0)))
def test_quantised_frequencies_are_positive_and_sum_to_the_scale(counts: np.ndarray) -> None:
    freqs = quantise_frequencies(counts)
    assert freqs.dtype == np.uint16 and freqs.shape == counts.shape
    assert freqs.min() >= 1
    assert (freqs.astype(np.int64).sum(axis=1) == PROB_SCALE).all()
    for row, f in zip(counts, freqs, strict=True):  # the more counts, never the fewer slots
        order = np.argsort(row, kind="stable")
        assert (np.diff(f[order].astype(np.int64)) >= -1).all()


def test_quantised_frequencies_of_simple_counts() -> None:
    assert quantise_frequencies(np.array([1, 1])).tolist() == [2048, 2048]
    assert quantise_frequencies(np.array([0, 0, 0, 0])).tolist() == [1024] * 4
    assert quantise_frequencies(np.array([1000, 0, 0])).tolist() == [4094, 1, 1]
    assert quantise_frequencies(np.array([3, 1])).tolist() == [3072, 1024]
    with pytest.raises(ValueError):
        quantise_frequencies(np.ones(PROB_SCALE + 1))


def test_binary_frequencies_stay_codable() -> None:
    f1 = binary_frequencies(np.array([0, 10**6, 5, 0]), np.array([10**6, 10**6, 10, 0]))
    assert f1.tolist() == [1, PROB_SCALE - 1, 2048, 2048]


# --------------------------------------------------------------------------- the prior's bytes


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_prior_bytes_round_trip_and_size(priors: dict[str, Prior], kind: str) -> None:
    prior = priors[kind]
    data = prior.to_bytes()
    assert data[:8] == struct.pack("<BBHHH", prior.code, 7, 3, 5, 5)
    tables = 3 * 8 if kind == "order0" else 3 * 5 * 2 + 3 * 5 * 5 * 4 + 3 * 7
    assert len(data) == 8 + 2 * tables + (3 if kind == "context" else 0)
    again = prior_from_bytes(data)
    assert type(again) is type(prior) and again == prior
    assert np.array_equal(again.decode(prior.encode(sample(1))), sample(1))


@pytest.mark.parametrize("kind", sorted(PRIORS))
def test_malformed_prior_bytes_raise_value_error(priors: dict[str, Prior], kind: str) -> None:
    data = priors[kind].to_bytes()
    broken = [data[:7], data[:-1], data + b"\x00", b"\x07" + data[1:],
              data[:2] + b"\x00\x00" + data[4:],  # zero channels
              data[:8] + b"\x00\x00" + data[10:],  # a zero frequency
              data[:8] + b"\x00\x10" + data[10:]]  # 4096: a table over the scale, or a flag of 4096
    if kind == "context":
        broken.append(data[:-1] + b"\x08")  # a base symbol out of range
    for bad in broken:
        with pytest.raises(ValueError):
            prior_from_bytes(bad)


# --------------------------------------------------------------------------- the worked example


def doc_hex(label: str) -> str:
    """The hex digits the page shows after ``label`` (up to the next blank line)."""
    start = DOC.index(label) + len(label)
    block = DOC[start:DOC.index("\n\n", start)]
    return re.sub(r"[^0-9a-f]", "", block.split("`")[1])


def example_prior() -> ContextPrior:
    rows = np.array([[[1024, 2048], [512, 3072]]])
    flags = np.tile(np.array([1024, 2048, 2048, 3072]), (1, 2, 2, 1))
    return ContextPrior((1, 2, 2), 4, rows, flags, np.array([[2048, 1024, 1024]]), np.array([0]))


def test_the_worked_example_of_the_protocol_doc() -> None:
    prior = example_prior()
    symbols = np.array([[[0, 3], [1, 0]]])
    assert prior.to_bytes().hex() == doc_hex("The prior's 55 bytes:")
    assert prior_from_bytes(bytes.fromhex(doc_hex("The prior's 55 bytes:"))) == prior
    body = bytes.fromhex(doc_hex("The body, 4 bytes:"))
    assert prior.encode(symbols) == body
    assert np.array_equal(reference_decode(prior, body), symbols)
    assert np.array_equal(prior.decode(body), symbols)
