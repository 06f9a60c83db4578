"""The feature codec: exact round trips, hostile payloads, header checks, zstd dictionaries."""

from __future__ import annotations

import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agilenn.codec import (
    FORMAT_VERSION,
    LAYOUT_BITPACKED,
    LAYOUT_BYTES,
    LAYOUT_RANS,
    LAYOUTS,
    MAX_SYMBOLS,
    CodecSettings,
    FeatureCodec,
    order0_entropy_bits,
)
from agilenn.errors import AgileNNError, CodecError

N_CENTROIDS = (2, 3, 8, 16, 256)
LAYOUT_NAMES = ("bytes", "bitpacked")
KEYS = [(n, layout) for n in N_CENTROIDS for layout in LAYOUT_NAMES]
# One codec per setting, shared by every test: they must be reusable across calls.
CODECS = {key: FeatureCodec(CodecSettings(n_centroids=key[0], layout=key[1])) for key in KEYS}

# Deterministic, database-free hypothesis runs: no flakes, no files written.
FAST = settings(deadline=None, database=None, derandomize=True)


def varint(value: int) -> bytes:
    """LEB128, written independently of the library."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def header(n_centroids: int, layout: str, shape: tuple[int, ...], version: int = FORMAT_VERSION,
           marker: int = 0xA0) -> bytes:
    bits = CodecSettings(n_centroids=n_centroids).bits_per_symbol
    head = bytes((marker | version, LAYOUTS[layout] | (bits - 1) << 2))
    return head + b"".join(varint(d) for d in shape)


def sample_symbols(n_centroids: int, shape: tuple[int, int, int] = (4, 7, 7), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_centroids, size=shape).astype(np.uint8)


def assert_valid_decode(out: np.ndarray, n_centroids: int) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.ndim == 3 and out.size > 0
    assert int(out.max()) < n_centroids


# --------------------------------------------------------------------------- round trips


@st.composite
def symbols_for(draw: st.DrawFn) -> tuple[tuple[int, str], np.ndarray]:
    key = draw(st.sampled_from(KEYS))
    n = key[0]
    shape = draw(st.tuples(st.integers(1, 20), st.integers(1, 20), st.integers(1, 20)))
    dtype = draw(st.sampled_from([np.uint8, np.int32, np.int64]))
    how = draw(st.sampled_from(["hypothesis", "uniform", "skewed"]))
    if how == "hypothesis":
        symbols = draw(hnp.arrays(dtype, shape, elements=st.integers(0, n - 1)))
    else:
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        if how == "uniform":
            symbols = rng.integers(0, n, size=shape).astype(dtype)
        else:  # mostly zeros with the extremes sprinkled in, like real features
            symbols = np.where(rng.random(shape) < 0.9, 0, n - 1).astype(dtype)
    return key, symbols


@settings(FAST, max_examples=250)
@given(symbols_for())
def test_round_trip_is_exact(case: tuple[tuple[int, str], np.ndarray]) -> None:
    (n, layout), symbols = case
    codec = CODECS[(n, layout)]
    payload = codec.encode(symbols)
    assert isinstance(payload, bytes)
    bits = codec.settings.bits_per_symbol
    assert payload[0] == 0xA0 | FORMAT_VERSION
    assert payload[1] == LAYOUTS[layout] | (bits - 1) << 2
    assert payload.startswith(header(n, layout, symbols.shape))
    out = codec.decode(payload)
    assert out.dtype == np.uint8
    assert out.shape == symbols.shape
    assert np.array_equal(out, symbols)
    # Encoding is a pure function of the symbols.
    assert codec.encode(out) == payload


@pytest.mark.parametrize("key", KEYS, ids=[f"{n}-{layout}" for n, layout in KEYS])
def test_round_trip_of_every_symbol_value(key: tuple[int, str]) -> None:
    n, layout = key
    codec = CODECS[key]
    symbols = np.arange(n * 3, dtype=np.int64).reshape(3, n, 1) % n
    out = codec.decode(codec.encode(symbols))
    assert np.array_equal(out, symbols)
    assert out.shape == (3, n, 1)
    for view in (bytearray, memoryview):
        assert np.array_equal(codec.decode(view(codec.encode(symbols))), symbols)


def pack_msb_first(flat: list[int], bits: int) -> bytes:
    """Symbols packed MSB-first at ``bits`` each, zero-padded to whole bytes (no numpy)."""
    bitstring = "".join(format(value, f"0{bits}b") for value in flat)
    bitstring += "0" * (-len(bitstring) % 8)
    return int(bitstring, 2).to_bytes(len(bitstring) // 8, "big") if bitstring else b""


def zstd_magicless(body: bytes) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        3, format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        write_checksum=0, write_content_size=0, write_dict_id=0,
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(body)


def craft_payload(n: int, layout: str, shape: tuple[int, int, int], flat: list[int]) -> bytes:
    """A payload built from the documented wire format, independently of the encoder."""
    bits = CodecSettings(n_centroids=n).bits_per_symbol
    body = bytes(flat) if layout == "bytes" else pack_msb_first(flat, bits)
    return header(n, layout, shape) + zstd_magicless(body)


@pytest.mark.parametrize("key", KEYS, ids=[f"{n}-{layout}" for n, layout in KEYS])
def test_payload_follows_the_documented_wire_format(key: tuple[int, str]) -> None:
    n, layout = key
    codec = CODECS[key]
    symbols = sample_symbols(n, shape=(3, 5, 7), seed=4)
    flat = [int(v) for v in symbols.ravel()]
    bits = codec.settings.bits_per_symbol
    # Our own reading of the encoder's payload ...
    payload = codec.encode(symbols)
    prefix = header(n, layout, symbols.shape)
    assert payload[: len(prefix)] == prefix
    expected_body = bytes(flat) if layout == "bytes" else pack_msb_first(flat, bits)
    body = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS).decompress(
        payload[len(prefix):], max_output_size=len(expected_body)
    )
    assert body == expected_body
    # ... and the decoder's reading of a payload we built by hand.
    assert np.array_equal(codec.decode(craft_payload(n, layout, (3, 5, 7), flat)), symbols)


@pytest.mark.parametrize(
    ("n", "layout", "bad"),
    [(2, "bytes", 2), (3, "bytes", 3), (8, "bytes", 200), (16, "bytes", 255), (3, "bitpacked", 3)],
)
def test_decode_rejects_symbols_beyond_n_centroids(n: int, layout: str, bad: int) -> None:
    flat = [0, 1, bad, 0, 1, 0]
    with pytest.raises(CodecError, match=f"symbol {bad} out of range for {n} centroids"):
        CODECS[(n, layout)].decode(craft_payload(n, layout, (1, 2, 3), flat))


# --------------------------------------------------------------------------- hostile payloads


@settings(FAST, max_examples=400)
@given(st.sampled_from(KEYS), st.binary(max_size=96))
def test_decode_of_arbitrary_bytes_raises_only_codec_error(key: tuple[int, str], data: bytes) -> None:
    try:
        out = CODECS[key].decode(data)
    except CodecError:
        return
    assert_valid_decode(out, key[0])


@settings(FAST, max_examples=200)
@given(st.sampled_from(KEYS), st.binary(min_size=1, max_size=40))
def test_decode_of_a_valid_header_and_a_garbage_body(
    key: tuple[int, str], body: bytes
) -> None:
    # Body bytes after a valid header, frame descriptor included: a declared
    # content size must be checked before zstd allocates it.
    n, layout = key
    data = header(n, layout, (2, 3, 5)) + body
    try:
        out = CODECS[key].decode(data)
    except CodecError:
        return
    assert_valid_decode(out, n)
    assert out.shape == (2, 3, 5)


@pytest.mark.parametrize("content_size", [2**62, 2**40])
def test_decode_refuses_a_zstd_frame_declaring_a_huge_content_size(content_size: int) -> None:
    codec = CODECS[(8, "bytes")]
    # Magicless frame header: descriptor 0xC0 (8-byte content size, not single
    # segment), window descriptor 0, content size, then a few body bytes.
    frame = bytes([0xC0, 0x00]) + struct.pack("<Q", content_size) + b"\x01\x00\x00"
    with pytest.raises(CodecError):
        codec.decode(header(8, "bytes", (2, 3, 4)) + frame)


@pytest.mark.parametrize("key", KEYS, ids=[f"{n}-{layout}" for n, layout in KEYS])
def test_every_truncation_raises_codec_error(key: tuple[int, str]) -> None:
    codec = CODECS[key]
    payload = codec.encode(sample_symbols(key[0]))
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            codec.decode(payload[:cut])


@pytest.mark.parametrize("key", KEYS, ids=[f"{n}-{layout}" for n, layout in KEYS])
@pytest.mark.parametrize("extra", [b"\x00", b"\xff" * 3, b"trailing garbage"])
def test_trailing_bytes_raise_codec_error(key: tuple[int, str], extra: bytes) -> None:
    codec = CODECS[key]
    payload = codec.encode(sample_symbols(key[0]))
    with pytest.raises(CodecError):
        codec.decode(payload + extra)
    with pytest.raises(CodecError):
        codec.decode(payload + payload)  # two payloads glued together


@pytest.mark.parametrize("key", KEYS, ids=[f"{n}-{layout}" for n, layout in KEYS])
def test_single_byte_flips_never_crash(key: tuple[int, str]) -> None:
    n = key[0]
    codec = CODECS[key]
    symbols = sample_symbols(n, seed=1)
    payload = codec.encode(symbols)
    outcomes = {"error": 0, "decoded": 0}
    for position in range(len(payload)):
        for mask in (0xFF, *(1 << bit for bit in range(8))):
            flipped = bytearray(payload)
            flipped[position] ^= mask
            try:
                out = codec.decode(bytes(flipped))
            except CodecError:
                outcomes["error"] += 1
                continue
            outcomes["decoded"] += 1
            assert_valid_decode(out, n)
            if position < 2:
                pytest.fail(f"a flip of header byte {position} (mask {mask:#x}) went unnoticed")
    assert outcomes["error"] > 0  # corruption is noticed at least sometimes


# --------------------------------------------------------------------------- header checks


@pytest.mark.parametrize("version", [0, 2, 15])
def test_wrong_version_nibble(version: int) -> None:
    codec = CODECS[(8, "bytes")]
    payload = bytearray(codec.encode(sample_symbols(8)))
    payload[0] = 0xA0 | version
    with pytest.raises(CodecError, match=rf"version {version}.*reads {FORMAT_VERSION}"):
        codec.decode(bytes(payload))


@pytest.mark.parametrize("first", [0x00, 0x01, 0xB1, 0x21, 0xFF, 0x28])
def test_wrong_marker(first: int) -> None:
    codec = CODECS[(8, "bytes")]
    payload = bytearray(codec.encode(sample_symbols(8)))
    payload[0] = first
    with pytest.raises(CodecError, match=f"not an agilenn feature payload.*0x{first:02x}"):
        codec.decode(bytes(payload))


def test_layout_mismatch_between_encoder_and_decoder() -> None:
    symbols = sample_symbols(8)
    with pytest.raises(CodecError, match=r"layout 0.*expects layout 1"):
        CODECS[(8, "bitpacked")].decode(CODECS[(8, "bytes")].encode(symbols))
    with pytest.raises(CodecError, match=r"layout 1.*expects layout 0"):
        CODECS[(8, "bytes")].decode(CODECS[(8, "bitpacked")].encode(symbols))


def test_bit_width_mismatch_between_encoder_and_decoder() -> None:
    symbols = sample_symbols(8)
    for layout in LAYOUT_NAMES:
        with pytest.raises(CodecError, match=r"3-bit symbols.*4-bit"):
            CODECS[(16, layout)].decode(CODECS[(8, layout)].encode(symbols))
        with pytest.raises(CodecError, match=r"8-bit symbols.*1-bit"):
            CODECS[(2, layout)].decode(CODECS[(256, layout)].encode(symbols))


@pytest.mark.parametrize("layout_code", [2, 3])
def test_unknown_layout_code(layout_code: int) -> None:
    codec = CODECS[(8, "bytes")]
    payload = bytearray(codec.encode(sample_symbols(8)))
    payload[1] = (payload[1] & ~0x03) | layout_code
    with pytest.raises(CodecError, match=f"layout {layout_code}"):
        codec.decode(bytes(payload))


def _body(codec: FeatureCodec, shape: tuple[int, int, int]) -> bytes:
    """The zstd body of a valid payload of that shape (its header stripped)."""
    payload = codec.encode(np.zeros(shape, dtype=np.uint8))
    return payload[len(header(codec.settings.n_centroids, codec.settings.layout, shape)):]


@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0), (0, 0, 0)])
def test_zero_size_shape(shape: tuple[int, int, int]) -> None:
    codec = CODECS[(8, "bytes")]
    data = header(8, "bytes", shape) + _body(codec, (1, 1, 1))
    with pytest.raises(CodecError, match="holds no symbols"):
        codec.decode(data)


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
@pytest.mark.parametrize("shape", [(1024, 1024, 2), (2**27, 2**27, 2**27), (MAX_SYMBOLS + 1, 1, 1)])
def test_shape_beyond_max_symbols(layout: str, shape: tuple[int, int, int]) -> None:
    codec = CODECS[(8, layout)]
    data = header(8, layout, shape) + _body(codec, (1, 1, 1))
    with pytest.raises(CodecError, match=rf"exceeds the {MAX_SYMBOLS}-symbol limit"):
        codec.decode(data)


def test_shape_at_max_symbols_passes_the_shape_check() -> None:
    codec = CODECS[(8, "bytes")]
    data = header(8, "bytes", (1024, 1024, 1)) + _body(codec, (1, 1, 1))
    with pytest.raises(CodecError) as info:
        codec.decode(data)
    assert "limit" not in str(info.value)  # fails later: the body is far too short


def test_varint_longer_than_four_bytes() -> None:
    codec = CODECS[(8, "bytes")]
    data = header(8, "bytes", ()) + b"\x80\x80\x80\x80\x01" + b"\x01\x01" + _body(codec, (1, 1, 1))
    with pytest.raises(CodecError, match="longer than 4 bytes"):
        codec.decode(data)


@pytest.mark.parametrize("data", [b"", b"\xa1", b"\xa1\x08", b"\xa1\x08\x02", b"\xa1\x08\x02\x03"])
def test_payload_shorter_than_its_header(data: bytes) -> None:
    with pytest.raises(CodecError, match="(shorter than a header|truncated)"):
        CODECS[(8, "bytes")].decode(data)


@pytest.mark.parametrize("payload", ["\xa1\x08\x01\x01\x01", 42, None, [0xA1, 0x08], 3.5,
                                     np.zeros(8, dtype=np.uint8)])
def test_non_bytes_input(payload: object) -> None:
    with pytest.raises(CodecError, match=f"must be bytes, not {type(payload).__name__}") as info:
        CODECS[(8, "bytes")].decode(payload)  # type: ignore[arg-type]
    assert isinstance(info.value, AgileNNError)


# --------------------------------------------------------------------------- encode arguments


@pytest.mark.parametrize("key", [(2, "bytes"), (8, "bitpacked"), (256, "bytes")])
def test_encode_rejects_out_of_range_symbols(key: tuple[int, str]) -> None:
    codec = CODECS[key]
    n = key[0]
    for bad in (n, -1, 1000):
        symbols = np.zeros((2, 2, 2), dtype=np.int64)
        symbols[1, 0, 1] = bad
        with pytest.raises(ValueError, match=rf"\[0, {n}\)"):
            codec.encode(symbols)


@pytest.mark.parametrize("shape", [(4,), (2, 3), (1, 2, 3, 4), ()])
def test_encode_rejects_the_wrong_ndim(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        CODECS[(8, "bytes")].encode(np.zeros(shape, dtype=np.uint8))


@pytest.mark.parametrize("shape", [(0, 2, 2), (2, 0, 2), (2, 2, 0)])
def test_encode_rejects_empty_arrays(shape: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        CODECS[(8, "bitpacked")].encode(np.zeros(shape, dtype=np.uint8))


# --------------------------------------------------------------------------- zstd dictionary


def dictionary_samples(count: int, seed: int) -> list[np.ndarray]:
    """Feature-like symbols: one fixed sparse pattern with 10% of its entries redrawn."""
    pattern_rng = np.random.default_rng(7)
    base = np.where(pattern_rng.random((4, 7, 7)) < 0.7, 0, pattern_rng.integers(0, 8, size=(4, 7, 7)))
    rng = np.random.default_rng(seed)
    return [
        np.where(rng.random(base.shape) < 0.1, rng.integers(0, 8, size=base.shape), base).astype(np.uint8)
        for _ in range(count)
    ]


@pytest.fixture(scope="module")
def trained_dictionary() -> bytes:
    samples = [symbols.tobytes() for symbols in dictionary_samples(400, seed=1)]
    return zstandard.train_dictionary(1024, samples).as_bytes()


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_dictionary_round_trip(trained_dictionary: bytes, layout: str) -> None:
    with_dict = FeatureCodec(CodecSettings(n_centroids=8, layout=layout, dictionary=trained_dictionary))
    without = CODECS[(8, layout)]
    differs = 0
    for symbols in dictionary_samples(20, seed=2):
        payload = with_dict.encode(symbols)
        assert np.array_equal(with_dict.decode(payload), symbols)
        differs += payload != without.encode(symbols)
    assert differs > 0, "the dictionary never changed a payload: it is not being used"


@pytest.mark.parametrize("layout", LAYOUT_NAMES)
def test_dictionary_payload_needs_the_dictionary(trained_dictionary: bytes, layout: str) -> None:
    with_dict = FeatureCodec(CodecSettings(n_centroids=8, layout=layout, dictionary=trained_dictionary))
    without = CODECS[(8, layout)]
    checked = 0
    for symbols in dictionary_samples(20, seed=2):
        payload = with_dict.encode(symbols)
        if payload == without.encode(symbols):
            continue  # zstd chose not to use the dictionary for this one
        checked += 1
        try:
            out = without.decode(payload)
        except CodecError:
            continue
        assert not np.array_equal(out, symbols), "payload silently decoded without its dictionary"
    assert checked > 0


# --------------------------------------------------------------------------- threads


def test_concurrent_encode_decode_from_four_threads(trained_dictionary: bytes) -> None:
    codecs = [CODECS[(8, "bytes")], CODECS[(16, "bitpacked")],
              FeatureCodec(CodecSettings(n_centroids=8, layout="bitpacked", dictionary=trained_dictionary))]
    start = threading.Barrier(4, timeout=30)

    def work(worker: int) -> tuple[int, int]:
        start.wait()  # all four threads run the codecs at the same time
        rng = np.random.default_rng(worker)
        done = 0
        for i in range(60):
            codec = codecs[(worker + i) % len(codecs)]
            shape = tuple(int(d) for d in rng.integers(1, 12, size=3))
            symbols = rng.integers(0, codec.settings.n_centroids, size=shape).astype(np.uint8)
            out = codec.decode(codec.encode(symbols))
            if not np.array_equal(out, symbols):
                raise AssertionError(f"worker {worker} iteration {i}: round trip differs")
            done += 1
        return threading.get_ident(), done

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(work, range(4)))
    assert [done for _, done in results] == [60] * 4
    assert len({ident for ident, _ in results}) == 4


# --------------------------------------------------------------------------- entropy


@pytest.mark.parametrize(
    ("counts", "bits"),
    [([5, 5], 1.0), ([8, 0, 0, 0], 0.0), ([1, 1, 1, 1], 2.0), ([2, 1, 1], 1.5),
     ([7], 0.0), ([1] * 256, 8.0), ([0, 3, 0, 3], 1.0)],
)
def test_order0_entropy_bits(counts: list[int], bits: float) -> None:
    assert order0_entropy_bits(np.array(counts)) == pytest.approx(bits, abs=1e-12)


def test_order0_entropy_bits_is_scale_invariant() -> None:
    counts = np.array([3, 1, 4, 1, 5, 9, 2, 6])
    assert order0_entropy_bits(counts * 10) == pytest.approx(order0_entropy_bits(counts))
    assert 0.0 < order0_entropy_bits(counts) < 3.0


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("n_centroids", [-1, 0, 1, 257, 1024])
def test_settings_reject_n_centroids_out_of_range(n_centroids: int) -> None:
    with pytest.raises(ValueError, match=r"\[2, 256\]"):
        CodecSettings(n_centroids=n_centroids)


@pytest.mark.parametrize("layout", ["zip", "BYTES", "", "bitpack"])
def test_settings_reject_an_unknown_layout(layout: str) -> None:
    with pytest.raises(ValueError, match="layout"):
        CodecSettings(layout=layout)


@pytest.mark.parametrize(
    ("n_centroids", "bits"),
    [(2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4), (16, 4), (17, 5), (128, 7), (129, 8), (256, 8)],
)
def test_bits_per_symbol(n_centroids: int, bits: int) -> None:
    assert CodecSettings(n_centroids=n_centroids).bits_per_symbol == bits
    # bits is the smallest width that holds every symbol
    assert 2**bits >= n_centroids > 2 ** (bits - 1) or bits == 1


def test_settings_dict_round_trip(trained_dictionary: bytes) -> None:
    for settings_ in (
        CodecSettings(),
        CodecSettings(n_centroids=3, layout="bitpacked", level=3, dictionary=trained_dictionary),
    ):
        values = settings_.to_dict()
        assert set(values) == {"n_centroids", "layout", "level", "dictionary"}
        assert CodecSettings.from_dict(values) == settings_
    assert CodecSettings().to_dict() == {"n_centroids": 8, "layout": "bytes", "level": 19,
                                         "dictionary": b""}
    with pytest.raises(ValueError):
        CodecSettings.from_dict({**CodecSettings().to_dict(), "layout": "zip"})


def test_layout_codes_are_stable() -> None:
    # Wire constants: changing them breaks every payload already produced.
    assert LAYOUTS == {"bytes": LAYOUT_BYTES, "bitpacked": LAYOUT_BITPACKED, "rans": LAYOUT_RANS}
    assert (LAYOUT_BYTES, LAYOUT_BITPACKED, LAYOUT_RANS, FORMAT_VERSION) == (0, 1, 2, 1)
    assert MAX_SYMBOLS == 1 << 20
