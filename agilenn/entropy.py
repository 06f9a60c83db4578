"""Static-prior rANS for the feature payload: the coder, its priors, their bytes. Pure, no I/O.

The coder is byte-wise rANS with a 32-bit state register (the state itself
stays below 2^24), and every probability is an integer frequency out of
``PROB_SCALE`` = 2^12, none of them 0, so any symbol can be coded whatever the
prior saw in training. Integers only, so MCU firmware can match it bit for bit;
docs/PROTOCOL.md specifies it.

A prior is fitted once, on training-set symbols, and ships in the model's
codec settings. Two kinds, registered in ``PRIORS`` by name:

- ``order0``: one frequency table per channel; every symbol is coded.
- ``context``: each channel has a base symbol (its most frequent). A row flag
  says whether a row holds any other symbol; only such rows code a flag per
  position, in the context of the position and of its left and upper
  neighbours, and the non-base symbols' values per channel. Most rows are all
  base, so most of the 784 symbols of an MNIST payload cost one row flag.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import ClassVar

import numpy as np

from .errors import CodecError

PROB_BITS = 12
PROB_SCALE = 1 << PROB_BITS
STATE_LOW = 1 << 16  # L: between symbols the state lies in [L, 2^24)
STATE_BYTES = 3  # the encoder's final state, big-endian, opens the body
MAX_PRIOR_SYMBOLS = 1 << 20  # C * H * W a prior may cover
_HEADER = struct.Struct("<BBHHH")  # kind, n_symbols - 1, channels, height, width
_MASK = PROB_SCALE - 1


# --------------------------------------------------------------------------- the coder


def rans_encode(freqs: np.ndarray, cums: np.ndarray) -> bytes:
    """Code events given in decoding order as (frequency, cumulative frequency) pairs.

    The encoder runs over them backwards; the body it returns starts with its
    final state, so the decoder meets the events in their given order.
    """
    freqs = np.asarray(freqs, dtype=np.int64)
    limits = (freqs << PROB_BITS).tolist()  # renormalise while x >= f * 2^12
    x = STATE_LOW
    out = bytearray()
    emit = out.append
    for f, c, limit in zip(freqs[::-1].tolist(), np.asarray(cums)[::-1].tolist(), limits[::-1], strict=True):
        while x >= limit:
            emit(x & 0xFF)
            x >>= 8
        x = ((x // f) << PROB_BITS) + x % f + c
    return _with_final_state(out, x)


def _with_final_state(out: bytearray, x: int) -> bytes:
    """The body: the encoder's final state, then the bytes it emitted, both in decoding order."""
    out += bytes((x & 0xFF, (x >> 8) & 0xFF, x >> 16))
    out.reverse()
    return bytes(out)


def _initial_state(body: bytes) -> int:
    if len(body) < STATE_BYTES:
        raise CodecError(f"rans body of {len(body)} bytes is shorter than its {STATE_BYTES}-byte state")
    x = (body[0] << 16) | (body[1] << 8) | body[2]
    if x < STATE_LOW:
        raise CodecError(f"rans initial state 0x{x:06x} is below 0x{STATE_LOW:06x}")
    return x


def _truncated() -> CodecError:
    return CodecError("rans body truncated: the state needs another byte")


def _check_end(x: int, pos: int, body: bytes) -> None:
    if pos != len(body):
        raise CodecError(f"{len(body) - pos} trailing bytes after the rans body")
    if x != STATE_LOW:
        raise CodecError(f"rans final state 0x{x:06x} is not 0x{STATE_LOW:06x}: corrupt body")


# --------------------------------------------------------------------------- frequencies


def quantise_frequencies(counts: np.ndarray) -> np.ndarray:
    """Counts (..., n) -> integer frequencies, each >= 1, summing to PROB_SCALE per row.

    Rows with no counts become uniform. Rounding is to the nearest integer
    (floored at 1); what is left over or missing is taken from or given to the
    largest frequencies, first index first.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.shape[-1]
    if not 1 <= n <= PROB_SCALE:
        raise ValueError(f"cannot give {n} symbols a frequency >= 1 out of {PROB_SCALE}")
    flat = counts.reshape(-1, n)
    totals = flat.sum(axis=1, keepdims=True)
    probabilities = np.where(totals > 0, flat / np.where(totals > 0, totals, 1), 1.0 / n)
    freqs = np.maximum(1, np.rint(probabilities * PROB_SCALE)).astype(np.int64)
    for row in freqs:
        excess = int(row.sum()) - PROB_SCALE
        while excess:
            order = np.argsort(-row, kind="stable")
            step = 1 if excess > 0 else -1
            for i in order[: abs(excess)]:
                if step < 0 or row[i] > 1:
                    row[i] -= step
                    excess -= step
    return freqs.reshape(counts.shape).astype(np.uint16)


def binary_frequencies(ones: np.ndarray, totals: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The frequency of outcome 1 for binary events, in [1, PROB_SCALE - 1]; alpha smooths."""
    p = (np.asarray(ones, dtype=np.float64) + alpha) / (np.asarray(totals, dtype=np.float64) + 2 * alpha)
    return np.clip(np.rint(p * PROB_SCALE), 1, PROB_SCALE - 1).astype(np.uint16)


def _cumulative(freqs: np.ndarray) -> np.ndarray:
    cums = np.zeros(freqs.shape, dtype=np.int64)
    cums[..., 1:] = np.cumsum(freqs[..., :-1], axis=-1)
    return cums


def _slot_tables(freqs: np.ndarray) -> list[bytes]:
    """Per table, the symbol that owns each of the PROB_SCALE slots (a decoder's lookup)."""
    return [np.repeat(np.arange(len(row), dtype=np.uint8), row).tobytes() for row in freqs.astype(np.int64)]


def _stack(samples: Iterable[np.ndarray], n_symbols: int) -> np.ndarray:
    if not 2 <= n_symbols <= 256:
        raise ValueError(f"a prior codes 2 to 256 symbols, not {n_symbols}")
    if isinstance(samples, np.ndarray):
        stacked = samples
    else:
        arrays = [np.asarray(s) for s in samples]
        stacked = np.stack(arrays) if arrays else np.zeros((0, 0, 0, 0))
    if stacked.ndim != 4 or stacked.size == 0:
        raise ValueError(f"fit a prior on non-empty symbols of shape (N, C, H, W), not {stacked.shape}")
    if stacked.min() < 0 or stacked.max() >= n_symbols:
        raise ValueError(f"training symbols must lie in [0, {n_symbols})")
    return stacked.astype(np.int64)


# --------------------------------------------------------------------------- priors


class Prior:
    """A fitted prior: ``encode(symbols) -> body`` and ``decode(body) -> symbols``."""

    kind: ClassVar[str]
    code: ClassVar[int]

    def __init__(self, shape: tuple[int, int, int], n_symbols: int) -> None:
        if not 2 <= n_symbols <= 256:
            raise ValueError(f"a prior codes 2 to 256 symbols, not {n_symbols}")
        if len(shape) != 3 or min(shape) < 1 or max(shape) > 0xFFFF or math.prod(shape) > MAX_PRIOR_SYMBOLS:
            raise ValueError(f"prior shape {shape} must be 3 dimensions of 1-65535, "
                             f"at most {MAX_PRIOR_SYMBOLS} symbols")
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self.n_symbols = n_symbols

    @classmethod
    def fit(cls, samples: Iterable[np.ndarray], n_symbols: int) -> Prior:
        raise NotImplementedError

    @classmethod
    def table_shapes(cls, shape: tuple[int, int, int], n_symbols: int) -> list[tuple[int, ...]]:
        """The shapes of the uint16 tables, in the order they are serialised."""
        raise NotImplementedError

    @classmethod
    def extra_size(cls, shape: tuple[int, int, int]) -> int:
        """How many bytes follow the tables."""
        return 0

    @classmethod
    def from_parts(cls, shape: tuple[int, int, int], n_symbols: int, tables: list[np.ndarray],
                   extra: bytes) -> Prior:
        raise NotImplementedError

    def tables(self) -> list[np.ndarray]:
        """The uint16 tables, in the order they are serialised."""
        raise NotImplementedError

    def extra(self) -> bytes:
        """The bytes serialised after the tables."""
        return b""

    def events(self, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What coding ``symbols`` takes: (frequency, cumulative frequency) per event, in decoding order.

        ``encode(symbols) == rans_encode(*events(symbols))``: this is the slow,
        vectorised statement of the model, which the benchmark and tests use.
        """
        raise NotImplementedError

    def encode(self, symbols: np.ndarray) -> bytes:
        raise NotImplementedError

    def decode(self, body: bytes) -> np.ndarray:
        raise NotImplementedError

    def _check_symbols(self, symbols: np.ndarray) -> np.ndarray:
        symbols = np.asarray(symbols)
        if symbols.shape != self.shape:
            raise ValueError(f"this prior codes symbols of shape {self.shape}, not {symbols.shape}")
        if symbols.min() < 0 or symbols.max() >= self.n_symbols:
            raise ValueError(f"symbols must lie in [0, {self.n_symbols})")
        return symbols.astype(np.int64)

    def to_bytes(self) -> bytes:
        head = _HEADER.pack(self.code, self.n_symbols - 1, *self.shape)
        return head + b"".join(t.astype("<u2").tobytes() for t in self.tables()) + self.extra()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Prior) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())


class Order0Prior(Prior):
    """One frequency table per channel, every symbol coded in raster order."""

    kind = "order0"
    code = 0

    def __init__(self, shape: tuple[int, int, int], n_symbols: int, freqs: np.ndarray) -> None:
        super().__init__(shape, n_symbols)
        self.freqs = _checked_table(freqs, (self.shape[0], n_symbols), "frequency table")
        _check_sums(self.freqs, "channel frequencies")
        self._freq_list = self.freqs.astype(np.int64).tolist()
        self._cums = _cumulative(self.freqs.astype(np.int64))
        self._cum_list = self._cums.tolist()
        self._slots = _slot_tables(self.freqs)

    @classmethod
    def fit(cls, samples: Iterable[np.ndarray], n_symbols: int) -> Order0Prior:
        stacked = _stack(samples, n_symbols)
        channels = stacked.shape[1]
        per_channel = stacked.transpose(1, 0, 2, 3).reshape(channels, -1)
        counts = np.stack([np.bincount(row, minlength=n_symbols) for row in per_channel])
        return cls(stacked.shape[1:], n_symbols, quantise_frequencies(counts))

    @classmethod
    def table_shapes(cls, shape: tuple[int, int, int], n_symbols: int) -> list[tuple[int, ...]]:
        return [(shape[0], n_symbols)]

    @classmethod
    def from_parts(cls, shape: tuple[int, int, int], n_symbols: int, tables: list[np.ndarray],
                   extra: bytes) -> Order0Prior:
        return cls(shape, n_symbols, tables[0])

    def tables(self) -> list[np.ndarray]:
        return [self.freqs]

    def events(self, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self._check_symbols(symbols).reshape(self.shape[0], -1)
        channel = np.arange(self.shape[0])[:, None]
        return self.freqs.astype(np.int64)[channel, s].ravel(), self._cums[channel, s].ravel()

    def encode(self, symbols: np.ndarray) -> bytes:
        return rans_encode(*self.events(symbols))

    def decode(self, body: bytes) -> np.ndarray:
        x, pos = _initial_state(body), STATE_BYTES
        out = bytearray()
        per_channel = self.shape[1] * self.shape[2]
        try:  # reading past the body's end raises IndexError
            for freqs, cums, slots in zip(self._freq_list, self._cum_list, self._slots, strict=True):
                for _ in range(per_channel):
                    slot = x & _MASK
                    s = slots[slot]
                    x = freqs[s] * (x >> PROB_BITS) + slot - cums[s]
                    while x < STATE_LOW:
                        x = (x << 8) | body[pos]
                        pos += 1
                    out.append(s)
        except IndexError:
            raise _truncated() from None
        _check_end(x, pos, body)
        return np.frombuffer(bytes(out), dtype=np.uint8).reshape(self.shape).copy()


class ContextPrior(Prior):
    """Base symbols, row flags, position flags in the neighbours' context, values per channel.

    ``rows[c, h, u]`` and ``flags[c, h, w, 2 * l + u]`` are the frequencies of
    "holds a non-base symbol" (u: the row or position above does, l: the
    position to the left does); ``values[c]`` codes a non-base symbol as its
    index among the channel's other symbols.
    """

    kind = "context"
    code = 1

    def __init__(self, shape: tuple[int, int, int], n_symbols: int, rows: np.ndarray, flags: np.ndarray,
                 values: np.ndarray, base: np.ndarray) -> None:
        super().__init__(shape, n_symbols)
        c, h, w = self.shape
        self.rows = _checked_table(rows, (c, h, 2), "row flags")
        self.flags = _checked_table(flags, (c, h, w, 4), "position flags")
        for name, table in (("row flag", self.rows), ("position flag", self.flags)):
            if table.min() < 1 or table.max() >= PROB_SCALE:
                raise ValueError(f"{name} frequencies must lie in [1, {PROB_SCALE - 1}]")
        self.values = _checked_table(values, (c, n_symbols - 1), "value table")
        _check_sums(self.values, "value frequencies")
        self.base = np.asarray(base).astype(np.uint8)
        if self.base.shape != (c,) or np.asarray(base).max() >= n_symbols or np.asarray(base).min() < 0:
            raise ValueError(f"base symbols must be {c} values in [0, {n_symbols})")
        self._tables_for_coding()

    def _tables_for_coding(self) -> None:
        c, h, w = self.shape
        self._rows = self.rows.astype(np.int64)
        self._flags = self.flags.astype(np.int64)
        self._values = self.values.astype(np.int64)
        self._value_cums = _cumulative(self._values)
        # Python lists: indexing them is what the coding loops spend their time on.
        self._row_list = self._rows.reshape(-1, 2).tolist()
        self._flag_rows = self._flags.reshape(c * h, w, 4).tolist()
        # Per channel, per row: (row flag's two tables, the row's position flag tables).
        pairs = list(zip(self._row_list, self._flag_rows, strict=True))
        self._channel_rows = [pairs[i * h:(i + 1) * h] for i in range(c)]
        self._value_list = self._values.tolist()
        self._value_cum_list = self._value_cums.tolist()
        self._value_slots = _slot_tables(self.values)
        self._base_list = self.base.astype(np.int64).tolist()
        self._base_fill = np.repeat(self.base, h * w).tobytes()
        self._flag_index = 4 * np.arange(c * h * w, dtype=np.int64).reshape(c, h, w)
        self._base_column = self.base.astype(np.int64)[:, None, None]

    @classmethod
    def fit(cls, samples: Iterable[np.ndarray], n_symbols: int) -> ContextPrior:
        s = _stack(samples, n_symbols)
        n, c, h, w = s.shape
        per_channel = s.transpose(1, 0, 2, 3).reshape(c, -1)
        base = np.array([np.bincount(row, minlength=n_symbols).argmax() for row in per_channel])
        events = _ContextEvents(s, base)
        rows = _binary_fit(events.row_context, events.row_bit, (c, h, 2))
        coded = events.flag_coded
        flags = _binary_fit(events.flag_context[coded], events.non_base[coded], (c, h, w, 4))
        value_counts = np.zeros((c, n_symbols - 1), dtype=np.int64)
        channel = np.broadcast_to(np.arange(c)[None, :, None, None], s.shape)
        np.add.at(value_counts, (channel[events.non_base], events.value[events.non_base]), 1)
        return cls((c, h, w), n_symbols, rows, flags, quantise_frequencies(value_counts), base)

    @classmethod
    def table_shapes(cls, shape: tuple[int, int, int], n_symbols: int) -> list[tuple[int, ...]]:
        c, h, w = shape
        return [(c, h, 2), (c, h, w, 4), (c, n_symbols - 1)]

    @classmethod
    def extra_size(cls, shape: tuple[int, int, int]) -> int:
        return shape[0]

    @classmethod
    def from_parts(cls, shape: tuple[int, int, int], n_symbols: int, tables: list[np.ndarray],
                   extra: bytes) -> ContextPrior:
        rows, flags, values = tables
        return cls(shape, n_symbols, rows, flags, values, np.frombuffer(extra, dtype=np.uint8))

    def tables(self) -> list[np.ndarray]:
        return [self.rows, self.flags, self.values]

    def extra(self) -> bytes:
        return self.base.tobytes()

    def events(self, symbols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self._check_symbols(symbols)
        c, h, w = self.shape
        ev = _ContextEvents(s[None], self.base)
        # A slot per event in decoding order: per row its flag, then per position its flag and value.
        freqs = np.zeros((c, h, 1 + 2 * w), dtype=np.int64)
        cums = np.zeros_like(freqs)
        present = np.ones(freqs.shape, dtype=bool)
        row_f1 = self._rows.reshape(-1)[ev.row_context[0]].reshape(c, h)
        _binary_event(freqs[:, :, 0], cums[:, :, 0], row_f1, ev.row_bit[0])
        flag_f1 = self._flags.reshape(-1)[ev.flag_context[0]]
        _binary_event(freqs[:, :, 1::2], cums[:, :, 1::2], flag_f1, ev.non_base[0])
        present[:, :, 1::2] = ev.flag_coded[0]
        channel = np.arange(c)[:, None, None]
        freqs[:, :, 2::2] = self._values[channel, ev.value[0]]
        cums[:, :, 2::2] = self._value_cums[channel, ev.value[0]]
        present[:, :, 2::2] = ev.non_base[0]
        return freqs[present], cums[present]

    def encode(self, symbols: np.ndarray) -> bytes:
        s = self._check_symbols(symbols)
        c_count, h_count, w_count = self.shape
        non_base = s != self._base_column
        flagged_rows = non_base.any(axis=2).ravel().tolist()
        context = self._flag_index.copy()  # each position flag's table: 4 * position + 2 * left + up
        context[:, :, 1:] += 2 * non_base[:, :, :-1]
        context[:, 1:, :] += non_base[:, :-1, :]
        flag_f1 = self._flags.reshape(-1)[context.ravel()].tolist()
        flat = s.astype(np.uint8).tobytes()
        row_freqs = self._row_list
        x = STATE_LOW
        out = bytearray()
        emit = out.append
        # decode()'s events backwards: per row, its flag, then each position's
        # flag (the last one's only if an earlier position was flagged) and value.
        # Inlined, because calls cost more than the arithmetic here.
        for c in range(c_count - 1, -1, -1):
            base = self._base_list[c]
            value_freqs, value_cums = self._value_list[c], self._value_cum_list[c]
            for h in range(h_count - 1, -1, -1):
                row = c * h_count + h
                flagged = flagged_rows[row]
                if flagged:
                    start = row * w_count
                    end = start + w_count - 1
                    implied = flat[start:end].count(base) == w_count - 1
                    for i in range(end, start - 1, -1):
                        v = flat[i]
                        if v != base:
                            v -= v > base
                            f = value_freqs[v]
                            while x >= f << PROB_BITS:
                                emit(x & 0xFF)
                                x >>= 8
                            x = ((x // f) << PROB_BITS) + x % f + value_cums[v]
                            if implied and i == end:
                                continue
                            f = flag_f1[i]
                            cum = PROB_SCALE - f
                        else:
                            cum = 0
                            f = PROB_SCALE - flag_f1[i]
                        while x >= f << PROB_BITS:
                            emit(x & 0xFF)
                            x >>= 8
                        x = ((x // f) << PROB_BITS) + x % f + cum
                f1 = row_freqs[row][h > 0 and flagged_rows[row - 1]]
                if flagged:
                    f, cum = f1, PROB_SCALE - f1
                else:
                    f, cum = PROB_SCALE - f1, 0
                while x >= f << PROB_BITS:
                    emit(x & 0xFF)
                    x >>= 8
                x = ((x // f) << PROB_BITS) + x % f + cum
        return _with_final_state(out, x)

    def decode(self, body: bytes) -> np.ndarray:
        x, pos = _initial_state(body), STATE_BYTES
        c_count, h_count, w_count = self.shape
        out = bytearray(self._base_fill)
        none_above = [0] * w_count
        last = w_count - 1
        try:  # reading past the body's end raises IndexError
            for c in range(c_count):
                base = self._base_list[c]
                value_freqs, value_cums = self._value_list[c], self._value_cum_list[c]
                value_slots = self._value_slots[c]
                above, row_above = none_above, 0
                start = c * h_count * w_count
                for row_f1, tables in self._channel_rows[c]:
                    f1 = row_f1[row_above]
                    slot = x & _MASK
                    f0 = PROB_SCALE - f1
                    if slot < f0:
                        x = f0 * (x >> PROB_BITS) + slot
                        while x < STATE_LOW:
                            x = (x << 8) | body[pos]
                            pos += 1
                        above, row_above = none_above, 0
                        start += w_count
                        continue
                    x = f1 * (x >> PROB_BITS) + slot - f0
                    while x < STATE_LOW:
                        x = (x << 8) | body[pos]
                        pos += 1
                    flags = [0] * w_count
                    left = seen = 0
                    for w in range(w_count):
                        if w == last and not seen:
                            left = 1  # a flagged row's only non-base symbol is the last: implied
                        else:
                            f1 = tables[w][2 * left + above[w]]
                            slot = x & _MASK
                            f0 = PROB_SCALE - f1
                            if slot < f0:
                                x = f0 * (x >> PROB_BITS) + slot
                                left = 0
                            else:
                                x = f1 * (x >> PROB_BITS) + slot - f0
                                left = 1
                            while x < STATE_LOW:
                                x = (x << 8) | body[pos]
                                pos += 1
                        if left:
                            slot = x & _MASK
                            v = value_slots[slot]
                            x = value_freqs[v] * (x >> PROB_BITS) + slot - value_cums[v]
                            while x < STATE_LOW:
                                x = (x << 8) | body[pos]
                                pos += 1
                            out[start + w] = v + (v >= base)
                            flags[w] = seen = 1
                    above, row_above = flags, 1
                    start += w_count
        except IndexError:
            raise _truncated() from None
        _check_end(x, pos, body)
        return np.frombuffer(bytes(out), dtype=np.uint8).reshape(self.shape).copy()


class _ContextEvents:
    """What the context prior codes for a batch of symbols (N, C, H, W), as arrays."""

    def __init__(self, s: np.ndarray, base: np.ndarray) -> None:
        n, c, h, w = s.shape
        base_b = np.asarray(base, dtype=np.int64)[None, :, None, None]
        self.non_base = s != base_b
        self.row_bit = self.non_base.any(axis=3)  # (N, C, H)
        row_above = np.zeros_like(self.row_bit)
        row_above[:, :, 1:] = self.row_bit[:, :, :-1]
        row_index = np.arange(c * h).reshape(1, c, h)
        self.row_context = (row_index * 2 + row_above).reshape(n, -1)
        left = np.zeros_like(self.non_base)
        left[..., 1:] = self.non_base[..., :-1]
        above = np.zeros_like(self.non_base)
        above[..., 1:, :] = self.non_base[..., :-1, :]
        position = np.arange(c * h * w).reshape(1, c, h, w)
        self.flag_context = position * 4 + 2 * left + above
        earlier = np.cumsum(self.non_base, axis=3) - self.non_base
        implied = (np.arange(w) == w - 1) & (earlier == 0)
        self.flag_coded = self.row_bit[..., None] & ~implied
        self.value = np.where(self.non_base, s - (s > base_b), 0)  # 0 where nothing is coded


def _binary_event(freqs: np.ndarray, cums: np.ndarray, f1: np.ndarray, bits: np.ndarray) -> None:
    """Outcome 0 owns slots [0, 2^12 - f1), outcome 1 the f1 slots above."""
    freqs[...] = np.where(bits, f1, PROB_SCALE - f1)
    cums[...] = np.where(bits, PROB_SCALE - f1, 0)


def _binary_fit(contexts: np.ndarray, bits: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    size = math.prod(shape)
    totals = np.bincount(contexts.ravel(), minlength=size)
    ones = np.bincount(contexts.ravel(), weights=bits.ravel().astype(np.float64), minlength=size)
    return binary_frequencies(ones, totals).reshape(shape)


def _checked_table(table: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    array = np.asarray(table)
    if array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
    if array.size and (array.min() < 0 or array.max() > PROB_SCALE):
        raise ValueError(f"{name} frequencies must lie in [0, {PROB_SCALE}]")
    return array.astype(np.uint16)


def _check_sums(freqs: np.ndarray, name: str) -> None:
    if freqs.min() < 1 or np.any(freqs.astype(np.int64).sum(axis=-1) != PROB_SCALE):
        raise ValueError(f"{name} must each be >= 1 and sum to {PROB_SCALE} per table")


PRIORS: dict[str, type[Prior]] = {"order0": Order0Prior, "context": ContextPrior}
_BY_CODE = {cls.code: cls for cls in PRIORS.values()}


def fit_prior(samples: Iterable[np.ndarray], n_symbols: int, kind: str = "context") -> Prior:
    """A prior of ``kind`` fitted on training symbols, each of shape (C, H, W)."""
    if kind not in PRIORS:
        raise ValueError(f"prior kind must be one of {sorted(PRIORS)}, not {kind!r}")
    return PRIORS[kind].fit(samples, n_symbols)


def prior_from_bytes(data: bytes) -> Prior:
    """Inverse of :meth:`Prior.to_bytes`; ``ValueError`` on anything malformed."""
    data = bytes(data)
    if len(data) < _HEADER.size:
        raise ValueError(f"prior of {len(data)} bytes is shorter than its {_HEADER.size}-byte header")
    code, n_minus_1, *dims = _HEADER.unpack_from(data)
    if code not in _BY_CODE:
        raise ValueError(f"unknown prior kind {code}")
    cls, n, shape = _BY_CODE[code], n_minus_1 + 1, (dims[0], dims[1], dims[2])
    shapes = cls.table_shapes(shape, n)
    sizes = [math.prod(table) for table in shapes]
    end = _HEADER.size + 2 * sum(sizes)
    if len(data) != end + cls.extra_size(shape):
        raise ValueError(f"a {cls.kind} prior for {n} symbols and shape {shape} takes "
                         f"{end + cls.extra_size(shape)} bytes, not {len(data)}")
    flat = np.frombuffer(data, dtype="<u2", count=sum(sizes), offset=_HEADER.size)
    tables = [piece.reshape(table) for piece, table in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes,
                                                           strict=True)]
    return cls.from_parts(shape, n, tables, data[end:])
