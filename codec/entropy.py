"""Deterministic entropy coding over INTEGER probability tables (numpy + constriction).

Tables
------
A :class:`TableSet` holds ``K`` discrete distributions as integers:

* ``pmf``     ``(K, W)`` int array, row ``k`` uses bins ``0 .. lengths[k]-1``, zero-padded to ``W``;
* ``lengths`` ``(K,)``   number of bins of each table, the escape bin included (>= 2);
* ``offsets`` ``(K,)``   symbol value of bin 0 of each table.

Bin ``b < lengths[k]-1`` of table ``k`` stands for the symbol ``offsets[k] + b``; the last bin
(``lengths[k]-1``) is the ESCAPE bin, used for every symbol outside
``offsets[k] .. offsets[k] + lengths[k] - 2``. Every bin of a row (real and escape) is >= 1 and each
row sums to exactly ``2**precision`` (16 by default).

The tables are made ONCE, on the host, when a model is exported (:func:`gaussian_tables`,
:func:`pmf_from_probs` use float64 and ``math.erfc``), and are then stored and shipped as these
integers. :func:`encode` / :func:`decode` never compute a probability from floats: they hand
the stored integers to constriction, which gets bit-identical input on the encoder and the
decoder (host, board), so both build identical models. (``math.erfc`` itself may differ in the
last ulp between libms, which is why the tables are never recomputed at decode time.)

Streams
-------
:func:`encode` groups the symbols by table index and codes the groups in a fixed order
(ascending table index; raster (C) order inside a group), one vectorised constriction call per
table. Out-of-range symbols are coded as the escape bin in the main range-coded stream, and their
actual values follow in a second, exact sub-stream (Exp-Golomb order 0, written with numpy).
Stream layout (version 1)::

    u8      stream version (1)
    varint  number of 32-bit words of the range-coded stream (LEB128)
    varint  number of escaped symbols (LEB128)
    ...     range-coded words, little-endian u32
    ...     escape sub-stream: one Exp-Golomb code per escaped symbol, in coding order,
            MSB first, zero-padded to a whole byte

An escaped symbol ``s`` of a table with real range ``lo .. hi`` is coded as
``e = 2*(lo - s) - 1`` (below) or ``e = 2*(s - hi) - 2`` (above), ``e >= 0``. Symbols are limited
to ``|s| <= 2**24`` (:data:`MAX_ABS_SYMBOL`); larger ones raise :class:`EntropyError`.

Damage
------
:func:`decode` raises :class:`EntropyError` (a :class:`~codec.errors.MedcodecError`) for every
damage it can see, and nothing else for any input bytes:

* detected always: a wrong stream version, a truncated or extended stream (both lengths are
  explicit, and the escape sub-stream must be consumed to the byte), header counts that
  cannot fit, an escape sub-stream that runs out or has stray bits, an escape value out of range;
* detected mostly: damage inside the range-coded words. constriction raises on some invalid
  data; otherwise the decoder's final state must be consistent with a complete stream
  (``maybe_exhausted``) and the number of escape bins decoded must match the header. In tests
  over 9 in 10 single-bit flips of the words of a short stream are caught this way; damage to
  the unary prefixes of the Exp-Golomb escape codes misaligns the parse and is caught too;
* NOT detectable: a flip in the range-coded words that leaves a consistent final state, or a
  flip in the value bits of an escape code, decodes to wrong symbols (the right number, dtype
  and shape, each within +-2**24) without any error. Neither stream has redundancy to check;
  the container's CRC-32 over every TILE chunk (``codec/container.py``) is the integrity check,
  so decode a stream only after the container has accepted it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import constriction
import numpy as np

from codec.errors import MedcodecError

# constriction is a compiled extension: its submodules are attributes, not importable modules
Categorical = constriction.stream.model.Categorical
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder

__all__ = [
    "DEFAULT_PRECISION",
    "MAX_ABS_SYMBOL",
    "STREAM_VERSION",
    "EntropyError",
    "TableSet",
    "pmf_from_probs",
    "gaussian_quantile",
    "gaussian_tables",
    "encode",
    "decode",
    "encode_factorized",
    "decode_factorized",
]

DEFAULT_PRECISION = 16
MAX_PRECISION = 24  # constriction's models have 24-bit precision
MAX_ABS_SYMBOL = 1 << 24
STREAM_VERSION = 1
# Exp-Golomb of e + 1 where e < 2**27 (|s|, |lo|, |hi| <= 2**24): at most 28 value bits
_MAX_EG_BITS = 28


class EntropyError(MedcodecError):
    """A stream that cannot be decoded, a symbol that cannot be coded, or a bad table set."""


# --------------------------------------------------------------------------- tables


@dataclass(eq=False)
class TableSet:
    """``K`` integer distributions with an escape bin each (see the module docstring)."""

    pmf: np.ndarray
    lengths: np.ndarray
    offsets: np.ndarray
    precision: int = DEFAULT_PRECISION
    _models: list = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        pmf = np.asarray(self.pmf)
        lengths = np.asarray(self.lengths)
        offsets = np.asarray(self.offsets)
        if not isinstance(self.precision, (int, np.integer)) or not 1 <= self.precision <= MAX_PRECISION:
            raise EntropyError(f"table precision must be an int in 1..{MAX_PRECISION}, got {self.precision!r}")
        self.precision = int(self.precision)
        for name, arr, ndim in (("pmf", pmf, 2), ("lengths", lengths, 1), ("offsets", offsets, 1)):
            if arr.ndim != ndim or not np.issubdtype(arr.dtype, np.integer):
                raise EntropyError(f"tables: {name} must be a {ndim}-D integer array, got {arr.dtype} {arr.shape}")
        k, w = pmf.shape
        if k < 1 or lengths.shape != (k,) or offsets.shape != (k,):
            raise EntropyError(
                f"tables: pmf {pmf.shape}, lengths {lengths.shape} and offsets {offsets.shape} disagree"
            )
        if lengths.min() < 2 or lengths.max() > w:
            raise EntropyError(f"tables: lengths must be in 2..{w} (one real bin and the escape bin at least)")
        lo = offsets.astype(np.int64)
        hi = lo + lengths.astype(np.int64) - 2
        if np.abs(lo).max() > MAX_ABS_SYMBOL or np.abs(hi).max() > MAX_ABS_SYMBOL:
            raise EntropyError("tables: symbol ranges must lie within +-2**24")
        pmf64 = pmf.astype(np.int64)
        used = np.arange(w)[None, :] < lengths[:, None]
        if (pmf64[used] < 1).any():
            bad = int(np.flatnonzero((pmf64 < 1).any(axis=1, where=used))[0])
            raise EntropyError(f"tables: table {bad} has a bin < 1 (every bin, escape included, must be >= 1)")
        if (pmf64[~used] != 0).any():
            raise EntropyError("tables: the padding after a table's last bin must be 0")
        sums = pmf64.sum(axis=1)
        if (sums != 1 << self.precision).any():
            bad = int(np.flatnonzero(sums != 1 << self.precision)[0])
            raise EntropyError(f"tables: table {bad} sums to {int(sums[bad])}, not 2**{self.precision}")
        self.pmf = _frozen(pmf64.astype(np.int32))
        self.lengths = _frozen(lengths.astype(np.int64))
        self.offsets = _frozen(offsets.astype(np.int64))
        self._models = [None] * k

    @property
    def num_tables(self) -> int:
        return int(self.pmf.shape[0])

    def model(self, k: int) -> Categorical:
        """constriction model of table ``k``, built from the exact integers (cached)."""
        m = self._models[k]
        if m is None:
            row = self.pmf[k, : self.lengths[k]].astype(np.float64)
            m = self._models[k] = Categorical(row, perfect=False)
        return m

    def bits(self, symbols: np.ndarray, table_index: np.ndarray) -> float:
        """Ideal code length in bits, ``sum(-log2 p)``, of symbols under these integer tables
        (escape bins counted at their table probability; the escape values are extra)."""
        ti = _check_index(table_index, self, "bits").ravel()
        bins = _bins(np.asarray(symbols, dtype=np.int64).ravel(), ti, self)[0]
        p = self.pmf[ti, bins].astype(np.float64)
        return float(np.sum(self.precision - np.log2(p)))


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a).copy()
    a.flags.writeable = False
    return a


def pmf_from_probs(probs, precision: int = DEFAULT_PRECISION) -> np.ndarray:
    """Quantize a float pmf into integers >= 1 that sum to exactly ``2**precision``.

    ``probs`` is a full table row: the real bins followed by the escape bin, which carries the
    tail mass. It is normalised first. Method (deterministic, no randomness, ties by lower
    index): bins whose proportional share of ``2**precision`` is below 1 get exactly 1 and the
    rest is shared again among the others, until every remaining share is >= 1; then each of
    those gets the floor of its share and the units left over go to the largest fractional
    remainders (largest-remainder / Hamilton method). Floating-point corner cases are settled by
    taking units from the largest bins. Returns an ``int64`` array of the same length.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 1 or p.size < 1:
        raise EntropyError(f"pmf_from_probs: expected a non-empty 1-D array, got shape {p.shape}")
    if not np.isfinite(p).all() or (p < 0).any() or not p.sum() > 0:
        raise EntropyError("pmf_from_probs: probabilities must be finite, >= 0 and not all 0")
    if not isinstance(precision, (int, np.integer)) or not 1 <= precision <= MAX_PRECISION:
        raise EntropyError(f"pmf_from_probs: precision must be in 1..{MAX_PRECISION}")
    total = 1 << int(precision)
    n = p.size
    if n > total:
        raise EntropyError(f"pmf_from_probs: {n} bins cannot each get >= 1 of 2**{precision}")
    p = p / p.sum()
    fixed = np.zeros(n, dtype=bool)
    share = np.zeros(n)
    while True:
        free = ~fixed
        mass = p[free].sum()
        budget = total - int(fixed.sum())
        if not free.any() or mass <= 0:
            break
        share = np.where(free, p * (budget / mass), 0.0)
        newly = free & (share < 1.0)
        if not newly.any():
            break
        fixed |= newly
    free = ~fixed
    q = np.ones(n, dtype=np.int64)
    q[free] = np.maximum(np.floor(share[free]).astype(np.int64), 1)
    rem = total - int(q.sum())
    if rem > 0:
        # largest remainders among the free bins first, then (degenerate cases) largest p
        frac = np.where(free, share - np.floor(share), -1.0)
        order = np.lexsort((np.arange(n), -p, -frac))  # last key is primary
        while rem > 0:
            take = order[:rem]
            q[take] += 1
            rem -= take.size
    while rem < 0:  # (float corner case) steal from the largest bins that can spare a unit
        order = np.lexsort((np.arange(n), -q))
        order = order[q[order] > 1][: -rem]
        if order.size == 0:  # cannot happen when n <= total
            raise EntropyError("pmf_from_probs: cannot quantize")
        q[order] -= 1
        rem += order.size
    return q


def gaussian_quantile(tail: float) -> float:
    """``z`` with ``P(X > z) = tail`` for a standard normal X, by bisection on ``math.erfc``.

    No scipy: plain float64 bisection, run to a fixed point, so it is reproducible.
    """
    if not 0.0 < tail < 0.5:
        raise EntropyError(f"gaussian_quantile: tail must be in (0, 0.5), got {tail}")
    lo, hi = 0.0, 40.0
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            return hi
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > tail:
            lo = mid
        else:
            hi = mid


def gaussian_tables(
    scales, precision: int = DEFAULT_PRECISION, tail_mass: float = 1e-9
) -> TableSet:
    """Integer tables of zero-mean discretised Gaussians, one per scale (host side, at export).

    For each ``sigma``: symbols ``-R .. R`` with ``R = ceil(sigma * z)``, ``z`` the upper
    ``tail_mass / 2`` quantile of the standard normal (as CompressAI's Gaussian conditional);
    ``p(s) = Phi((s + 0.5) / sigma) - Phi((s - 0.5) / sigma)`` in float64 with ``math.erf`` /
    ``math.erfc`` (tails computed from ``erfc`` so that they keep their precision), the escape
    bin gets the mass outside ``-R - 0.5 .. R + 0.5``; then :func:`pmf_from_probs`.
    """
    s = np.asarray(scales, dtype=np.float64).ravel()
    if s.size < 1 or not np.isfinite(s).all() or (s <= 0).any():
        raise EntropyError("gaussian_tables: scales must be finite and > 0")
    if not 0.0 < tail_mass < 1.0:
        raise EntropyError(f"gaussian_tables: tail_mass must be in (0, 1), got {tail_mass}")
    z = gaussian_quantile(tail_mass / 2)
    radii = [max(math.ceil(float(sigma) * z), 0) for sigma in s]
    width = 2 * max(radii) + 2
    if width > 1 << precision:
        raise EntropyError(
            f"gaussian_tables: scale {float(s.max())} needs {width} bins, more than 2**{precision}"
        )
    pmf = np.zeros((s.size, width), dtype=np.int64)
    lengths = np.empty(s.size, dtype=np.int64)
    offsets = np.empty(s.size, dtype=np.int64)
    root2 = math.sqrt(2.0)
    for k, (sigma, radius) in enumerate(zip(s.tolist(), radii, strict=True)):
        # upper[j] = P(X > j + 0.5), j = 0 .. R
        upper = [0.5 * math.erfc((j + 0.5) / (sigma * root2)) for j in range(radius + 1)]
        centre = math.erf(0.5 / (sigma * root2))
        side = [upper[j - 1] - upper[j] for j in range(1, radius + 1)]  # p(j), j = 1 .. R
        probs = side[::-1] + [centre] + side + [2.0 * upper[radius]]
        row = pmf_from_probs(np.asarray(probs), precision)
        pmf[k, : row.size] = row
        lengths[k] = row.size
        offsets[k] = -radius
    return TableSet(pmf, lengths, offsets, precision)


# --------------------------------------------------------------------------- helpers


def _bins(sym: np.ndarray, ti: np.ndarray, tables: TableSet) -> tuple[np.ndarray, np.ndarray]:
    """Bin index of each symbol under its table (escape bin for out-of-range) and the escape mask."""
    last = tables.lengths[ti] - 1
    b = sym - tables.offsets[ti]
    esc = (b < 0) | (b >= last)
    return np.where(esc, last, b), esc


def _check_index(table_index, tables: TableSet, what: str) -> np.ndarray:
    ti = np.asarray(table_index)
    if ti.size and not np.issubdtype(ti.dtype, np.integer):
        raise EntropyError(f"{what}: table_index must be integers, got {ti.dtype}")
    ti = ti.astype(np.int64, copy=False)
    if ti.size and (ti.min() < 0 or ti.max() >= tables.num_tables):
        raise EntropyError(f"{what}: table_index outside 0..{tables.num_tables - 1}")
    return ti


def _group(ti_flat: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order that groups the symbols by table (ascending), and the group sizes."""
    small = ti_flat.astype(np.uint16) if k <= 1 << 16 else ti_flat  # uint16 sorts by radix
    order = np.argsort(small, kind="stable")
    counts = np.bincount(ti_flat, minlength=k)
    return order, counts


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    for i in range(5):
        if pos + i >= len(data):
            raise EntropyError(f"stream truncated in the header ({what})")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos + i + 1
    raise EntropyError(f"stream header corrupt ({what} longer than 5 bytes)")


def _bit_length(n: np.ndarray) -> np.ndarray:
    """Bit length of positive integers < 2**53 (exact: frexp's exponent)."""
    return np.frexp(n.astype(np.float64))[1].astype(np.int64)


def _eg_write(e: np.ndarray) -> bytes:
    """Exp-Golomb order 0 codes of ``e >= 0``, concatenated MSB first, zero-padded."""
    if e.size == 0:
        return b""
    n = e.astype(np.int64) + 1
    nb = _bit_length(n)
    length = 2 * nb - 1
    ends = np.cumsum(length)
    starts = ends - length
    bits = np.zeros(int(ends[-1]), dtype=np.uint8)
    for j in range(int(nb.max())):  # j-th bit of n from the top, at starts + (nb - 1) + j
        m = nb > j
        bits[starts[m] + nb[m] - 1 + j] = (n[m] >> (nb[m] - 1 - j)) & 1
    return np.packbits(bits).tobytes()


def _eg_read(data: bytes, count: int) -> np.ndarray:
    """Read exactly ``count`` Exp-Golomb codes that must fill ``data`` up to the byte padding."""
    if count == 0:
        if data:
            raise EntropyError(f"stream has {len(data)} unexpected bytes after the range-coded data")
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    flags = bits.tobytes()  # one byte 0/1 per bit: bytes.find does the scanning in C
    starts = np.empty(count, dtype=np.int64)
    widths = np.empty(count, dtype=np.int64)
    pos, size = 0, len(flags)
    for i in range(count):
        one = flags.find(b"\x01", pos, pos + _MAX_EG_BITS)
        if one < 0:
            if size - pos < _MAX_EG_BITS:
                raise EntropyError(f"escape sub-stream truncated (escape {i} of {count})")
            raise EntropyError(f"escape sub-stream corrupt (escape {i} of {count}: code too long)")
        nb = one - pos + 1
        if one + nb > size:
            raise EntropyError(f"escape sub-stream truncated (escape {i} of {count})")
        starts[i], widths[i] = one, nb
        pos = one + nb
    if (size - pos) >= 8 or bits[pos:].any():
        raise EntropyError(f"escape sub-stream has {size - pos} stray bits after the last escape")
    n = np.zeros(count, dtype=np.int64)
    for j in range(int(widths.max())):
        m = widths > j
        n[m] = (n[m] << 1) | bits[starts[m] + j]
    return n - 1


# --------------------------------------------------------------------------- coding


def encode(symbols, table_index, tables: TableSet) -> bytes:
    """Entropy-code integer ``symbols``, each under table ``table_index`` (same shape)."""
    sym = np.asarray(symbols)
    ti = _check_index(table_index, tables, "encode")
    if sym.shape != ti.shape:
        raise EntropyError(f"encode: symbols {sym.shape} and table_index {ti.shape} differ in shape")
    if sym.size and not np.issubdtype(sym.dtype, np.integer):
        raise EntropyError(f"encode: symbols must be integers, got {sym.dtype}")
    sym = sym.astype(np.int64, copy=False).ravel()
    ti = ti.ravel()
    if sym.size and np.abs(sym).max() > MAX_ABS_SYMBOL:
        raise EntropyError(
            f"encode: symbol {int(sym[np.argmax(np.abs(sym))])} outside +-2**24 cannot be coded"
        )
    order, counts = _group(ti, tables.num_tables)
    sym, ti = sym[order], ti[order]
    bins, esc = _bins(sym, ti, tables)
    bins = bins.astype(np.int32)

    encoder = RangeEncoder()
    start = 0
    for k in np.flatnonzero(counts).tolist():
        stop = start + int(counts[k])
        encoder.encode(bins[start:stop], tables.model(k))
        start = stop
    words = encoder.get_compressed().astype("<u4", copy=False)

    s, t = sym[esc], ti[esc]
    lo = tables.offsets[t]
    hi = lo + tables.lengths[t] - 2
    e = np.where(s < lo, 2 * (lo - s) - 1, 2 * (s - hi) - 2)
    header = bytes([STREAM_VERSION]) + _varint(words.size) + _varint(int(esc.sum()))
    return header + words.tobytes() + _eg_write(e)


def decode(data: bytes, table_index, tables: TableSet) -> np.ndarray:
    """Decode a stream of :func:`encode`; returns ``int32`` symbols shaped like ``table_index``.

    Raises :class:`EntropyError` on damage it can detect (see the module docstring).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode expects bytes, got {type(data).__name__}")
    data = bytes(data)
    ti = _check_index(table_index, tables, "decode")
    shape = ti.shape
    ti = ti.ravel()
    total = ti.size
    if not data:
        raise EntropyError("empty stream")
    if data[0] != STREAM_VERSION:
        raise EntropyError(f"unsupported entropy stream version {data[0]} (this decoder supports 1)")
    n_words, pos = _read_varint(data, 1, "word count")
    n_esc, pos = _read_varint(data, pos, "escape count")
    if n_words * 4 > len(data) - pos:
        raise EntropyError(
            f"stream truncated: {n_words * 4} bytes of range-coded data announced, {len(data) - pos} left"
        )
    if n_esc > total:
        raise EntropyError(f"stream header corrupt: {n_esc} escapes announced for {total} symbols")
    if total == 0:
        if n_words or n_esc or pos != len(data):
            raise EntropyError("stream holds data but no symbols are expected")
        return np.zeros(shape, dtype=np.int32)
    words = np.frombuffer(data, dtype="<u4", count=n_words, offset=pos).astype(np.uint32)
    pos += 4 * n_words

    order, counts = _group(ti, tables.num_tables)
    bins = np.empty(total, dtype=np.int32)
    try:
        decoder = RangeDecoder(words)
        start = 0
        for k in np.flatnonzero(counts).tolist():
            stop = start + int(counts[k])
            bins[start:stop] = decoder.decode(tables.model(k), stop - start)
            start = stop
        exhausted = decoder.maybe_exhausted()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # constriction raises AssertionError on some invalid data (and a
        # Rust panic would arrive as pyo3's PanicException, a BaseException)
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise EntropyError(f"range-coded data corrupt ({type(exc).__name__}: {reason})") from None
    if not exhausted:
        raise EntropyError("range-coded data corrupt (decoder did not end on a complete stream)")

    ti_sorted = np.repeat(np.arange(tables.num_tables), counts)
    last = tables.lengths[ti_sorted] - 1
    values = bins.astype(np.int64) + tables.offsets[ti_sorted]
    esc = bins == last
    found = int(esc.sum())
    if found != n_esc:
        raise EntropyError(f"range-coded data corrupt ({found} escapes decoded, header says {n_esc})")
    if n_esc:
        e = _eg_read(data[pos:], n_esc)
        t = ti_sorted[esc]
        lo = tables.offsets[t]
        hi = lo + tables.lengths[t] - 2
        s = np.where(e % 2 == 1, lo - (e + 1) // 2, hi + e // 2 + 1)
        if np.abs(s).max() > MAX_ABS_SYMBOL:
            raise EntropyError("escape sub-stream corrupt (value outside +-2**24)")
        values[esc] = s
    elif pos != len(data):
        raise EntropyError(f"stream has {len(data) - pos} unexpected bytes after the range-coded data")
    out = np.empty(total, dtype=np.int32)
    out[order] = values
    return out.reshape(shape)


def _channel_index(shape: Sequence[int], tables: TableSet, what: str) -> np.ndarray:
    if len(shape) != 3:
        raise EntropyError(f"{what}: expected a (C, H, W) array, got shape {tuple(shape)}")
    if shape[0] != tables.num_tables:
        raise EntropyError(f"{what}: {shape[0]} channels but {tables.num_tables} tables (one per channel)")
    return np.broadcast_to(np.arange(shape[0], dtype=np.int64)[:, None, None], tuple(shape))


def encode_factorized(symbols, tables: TableSet) -> bytes:
    """:func:`encode` of ``(C, H, W)`` symbols with table ``c`` for channel ``c``."""
    sym = np.asarray(symbols)
    return encode(sym, _channel_index(sym.shape, tables, "encode_factorized"), tables)


def decode_factorized(data: bytes, shape: Sequence[int], tables: TableSet) -> np.ndarray:
    """Inverse of :func:`encode_factorized` for symbols of ``shape`` ``(C, H, W)``."""
    return decode(data, _channel_index(tuple(int(n) for n in shape), tables, "decode_factorized"), tables)
