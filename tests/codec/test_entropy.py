"""Entropy coding over integer tables: exact round trips, exact tables, rate, speed, damage."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from codec.entropy import (
    MAX_ABS_SYMBOL,
    EntropyError,
    TableSet,
    decode,
    decode_factorized,
    encode,
    encode_factorized,
    gaussian_quantile,
    gaussian_tables,
    pmf_from_probs,
)
from codec.errors import MedcodecError

ROOT = Path(__file__).resolve().parents[2]
SCALES = [0.11, 0.3, 0.7, 1.0, 2.0, 3.0, 5.5, 10.0, 30.0, 100.0]


@pytest.fixture(scope="module")
def tables() -> TableSet:
    return gaussian_tables(SCALES)


def draw(tables: TableSet, table_index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Symbols drawn from each symbol's own integer table (escape bins included, as escapes)."""
    out = np.empty(table_index.shape, dtype=np.int64)
    for k in range(tables.num_tables):
        where = table_index == k
        n = int(where.sum())
        if not n:
            continue
        length = int(tables.lengths[k])
        p = tables.pmf[k, :length] / float(1 << tables.precision)
        bins = rng.choice(length, size=n, p=p)
        values = bins + tables.offsets[k]
        esc = bins == length - 1  # the escape bin: replace by a value outside the range
        values[esc] = tables.offsets[k] + length - 1 + rng.integers(0, 50, int(esc.sum()))
        out[where] = values
    return out


# --------------------------------------------------------------------------- integer tables


def test_pmf_from_probs_is_exact_positive_and_close():
    rng = np.random.default_rng(3)
    for precision in (8, 12, 16):
        total = 1 << precision
        for n in (1, 2, 3, 17, 200, total // 2, total):
            for kind in range(3):
                if kind == 0:
                    p = rng.random(n)
                elif kind == 1:  # heavy-tailed, many bins far below one unit, some exact zeros
                    p = np.exp(-rng.random(n) * 40)
                    p[rng.random(n) < 0.2] = 0.0
                else:
                    p = np.zeros(n)
                    p[rng.integers(n)] = 1.0
                if not p.sum() > 0:
                    p[0] = 1.0
                q = pmf_from_probs(p, precision)
                assert q.dtype == np.int64 and q.shape == (n,)
                assert int(q.sum()) == total and q.min() >= 1
                # each bin is within a few units of its exact share (bins forced up to 1 cost the others)
                forced = int((p / p.sum() * total < 1).sum())
                assert np.abs(q - p / p.sum() * total).max() <= 1 + forced
                np.testing.assert_array_equal(pmf_from_probs(p.copy(), precision), q)


def test_pmf_from_probs_ties_and_errors():
    np.testing.assert_array_equal(pmf_from_probs([1, 1, 1], 2), [2, 1, 1])  # ties: lower index first
    np.testing.assert_array_equal(pmf_from_probs([0.5, 0.25, 0.25], 4), [8, 4, 4])  # exact stays exact
    np.testing.assert_array_equal(pmf_from_probs([1.0, 0.0, 0.0], 4), [14, 1, 1])  # zeros get 1
    for bad in ([], [-0.1, 1.1], [np.nan, 1.0], [0.0, 0.0], [[0.5, 0.5]]):
        with pytest.raises(EntropyError):
            pmf_from_probs(np.asarray(bad, dtype=float))
    with pytest.raises(EntropyError, match="cannot each get"):
        pmf_from_probs(np.ones(5), precision=2)
    assert issubclass(EntropyError, MedcodecError)


def test_gaussian_quantile_matches_the_normal_tail():
    z = gaussian_quantile(0.5e-9)
    assert abs(z - 6.109410204869) < 1e-9  # CompressAI's multiplier for tail_mass 1e-9
    # the smallest float64 whose tail is <= the target (bisection down to adjacent floats)
    assert 0.5 * math.erfc(z / math.sqrt(2)) <= 0.5e-9 < 0.5 * math.erfc(math.nextafter(z, 0) / math.sqrt(2))
    assert abs(gaussian_quantile(0.158655253931457) - 1.0) < 1e-12


def test_gaussian_tables_are_exact_and_match_the_gaussian(tables):
    z = gaussian_quantile(0.5e-9)
    assert tables.num_tables == len(SCALES) and tables.precision == 16
    for k, sigma in enumerate(SCALES):
        radius = math.ceil(sigma * z)
        length = int(tables.lengths[k])
        assert length == 2 * radius + 2 and tables.offsets[k] == -radius
        row = tables.pmf[k].astype(np.int64)
        assert row[:length].sum() == 1 << 16 and row[:length].min() >= 1 and not row[length:].any()
        # close to the float Gaussian: the integer table costs < 0.5 % more bits than the ideal
        s = np.arange(-radius, radius + 1)
        p = np.array([0.5 * (math.erfc((v - 0.5) / (sigma * math.sqrt(2))) - math.erfc((v + 0.5) / (sigma * math.sqrt(2)))) for v in s])
        q = row[: length - 1] / 65536.0
        entropy = -(p * np.log2(p, where=p > 0, out=np.zeros_like(p))).sum()
        cross = -(p * np.log2(q)).sum()
        assert cross - entropy < 0.005 * max(entropy, 1.0) + 0.002, (sigma, cross, entropy)
        assert np.abs(row[: length - 1] - row[length - 2 :: -1]).max() <= 1  # symmetric up to a tie unit


def test_tables_are_deterministic_even_in_another_process(tables):
    def digest(t: TableSet) -> str:
        h = hashlib.sha256()
        for a in (t.pmf, t.lengths, t.offsets):
            h.update(np.ascontiguousarray(a, dtype="<i8").tobytes())
        return h.hexdigest()

    again = gaussian_tables(SCALES)
    assert digest(again) == digest(tables)
    rng = np.random.default_rng(11)
    ti = rng.integers(0, len(SCALES), 5000)
    sym = draw(tables, ti, rng)
    data = encode(sym, ti, tables)
    assert encode(sym, ti, again) == data
    code = (
        "import hashlib, sys, numpy as np\n"
        "from codec.entropy import gaussian_tables, encode\n"
        f"t = gaussian_tables({SCALES!r})\n"
        "h = hashlib.sha256()\n"
        "for a in (t.pmf, t.lengths, t.offsets): h.update(np.ascontiguousarray(a, dtype='<i8').tobytes())\n"
        "sym, ti = np.load(sys.argv[1]), np.load(sys.argv[2])\n"
        "print(h.hexdigest(), hashlib.sha256(encode(sym, ti, t)).hexdigest())\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        np.save(Path(tmp) / "s.npy", sym)
        np.save(Path(tmp) / "t.npy", ti)
        out = subprocess.run(
            [sys.executable, "-c", code, str(Path(tmp) / "s.npy"), str(Path(tmp) / "t.npy")],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )
    assert out.stdout.split() == [digest(tables), hashlib.sha256(data).hexdigest()]


def test_table_set_validation():
    good = np.array([[1, 2, 13, 0], [4, 4, 4, 4]])
    TableSet(good, np.array([3, 4]), np.array([0, -1]), precision=4)
    cases = [
        (np.array([[1, 2, 12, 0], [4, 4, 4, 4]]), [3, 4], [0, 0], "sums to 15"),
        (np.array([[0, 3, 13, 0], [4, 4, 4, 4]]), [3, 4], [0, 0], "bin < 1"),
        (np.array([[1, 2, 12, 1], [4, 4, 4, 4]]), [3, 4], [0, 0], "padding"),
        (good, [1, 4], [0, 0], "lengths"),
        (good, [3, 5], [0, 0], "lengths"),
        (good, [3], [0, 0], "disagree"),
        (good.astype(float), [3, 4], [0, 0], "integer"),
        (good, [3, 4], [0, 2**24], "within"),
    ]
    for pmf, lengths, offsets, match in cases:
        with pytest.raises(EntropyError, match=match):
            TableSet(pmf, np.array(lengths), np.array(offsets), precision=4)
    with pytest.raises(EntropyError, match="precision"):
        TableSet(good, np.array([3, 4]), np.array([0, 0]), precision=25)
    t = TableSet(good, np.array([3, 4]), np.array([0, -1]), precision=4)
    assert not t.pmf.flags.writeable  # the stored integers cannot be changed behind the cache


# --------------------------------------------------------------------------- round trips


def test_round_trip_symbols_drawn_from_the_tables(tables):
    rng = np.random.default_rng(5)
    ti = rng.integers(0, tables.num_tables, size=(3, 40, 50))
    sym = draw(tables, ti, rng)
    data = encode(sym, ti, tables)
    got = decode(data, ti, tables)
    assert got.dtype == np.int32 and got.shape == ti.shape
    np.testing.assert_array_equal(got, sym)
    assert encode(sym, ti, tables) == data  # same bytes twice


def test_round_trip_adversarial_values(tables):
    rng = np.random.default_rng(6)
    k = tables.num_tables
    lo = tables.offsets
    hi = tables.offsets + tables.lengths - 2
    cases = {
        "empty": (np.zeros((0,), np.int64), np.zeros((0,), np.int64)),
        "empty 2-D": (np.zeros((3, 0), np.int64), np.zeros((3, 0), np.int64)),
        "single": (np.array([0]), np.array([4])),
        "single escape": (np.array([-(2**24)]), np.array([0])),
        "every table, edges": (
            np.stack([lo, hi, lo - 1, hi + 1, lo - 2, hi + 2]).ravel(),
            np.tile(np.arange(k), 6),
        ),
        "all escapes": (
            np.where(rng.random(3000) < 0.5, -1, 1) * rng.integers(1000, 2**24 + 1, 3000),
            rng.integers(0, k, 3000),
        ),
        "huge": (np.array([2**24, -(2**24), 2**24 - 1, 1 - 2**24] * 5), rng.integers(0, k, 20)),
        "one table only": (rng.integers(-2, 3, 999), np.full(999, 3)),
        "int8 and uint16 dtypes": (np.arange(-50, 50, dtype=np.int8), np.arange(100, dtype=np.uint16) % k),
    }
    for name, (sym, ti) in cases.items():
        data = encode(sym, ti, tables)
        got = decode(data, ti, tables)
        assert got.shape == np.shape(ti), name
        np.testing.assert_array_equal(got, sym, err_msg=name)
    # escapes cost little: the header says how many, each is one Exp-Golomb code
    assert len(encode(np.array([0]), np.array([5]), tables)) <= 8


def test_symbols_out_of_bounds_and_bad_arguments_are_refused(tables):
    for value in (2**24 + 1, -(2**24) - 1, 2**40):
        with pytest.raises(EntropyError, match="outside"):
            encode(np.array([0, value]), np.array([0, 1]), tables)
    with pytest.raises(EntropyError, match="integers"):
        encode(np.array([0.5]), np.array([0]), tables)
    with pytest.raises(EntropyError, match="table_index outside"):
        encode(np.array([0]), np.array([tables.num_tables]), tables)
    with pytest.raises(EntropyError, match="table_index outside"):
        decode(b"\x01\x00\x00", np.array([-1]), tables)
    with pytest.raises(EntropyError, match="shape"):
        encode(np.zeros(3, int), np.zeros(4, int), tables)


def test_factorized_round_trip(tables):
    rng = np.random.default_rng(8)
    shape = (tables.num_tables, 16, 24)
    ti = np.broadcast_to(np.arange(shape[0])[:, None, None], shape)
    sym = draw(tables, np.ascontiguousarray(ti), rng)
    data = encode_factorized(sym, tables)
    assert data == encode(sym, ti, tables)  # = table_index is the channel, broadcast
    np.testing.assert_array_equal(decode_factorized(data, shape, tables), sym)
    with pytest.raises(EntropyError, match="one per channel"):
        encode_factorized(sym[:3], tables)
    with pytest.raises(EntropyError, match=r"\(C, H, W\)"):
        encode_factorized(sym[0], tables)


# --------------------------------------------------------------------------- rate and speed


def test_coded_size_is_within_one_percent_of_the_ideal():
    t = gaussian_tables([3.0])
    rng = np.random.default_rng(9)
    sym = np.rint(rng.normal(0.0, 3.0, 100_000)).astype(np.int64)
    ti = np.zeros_like(sym)
    coded_bits = 8 * len(encode(sym, ti, t))
    ideal_int = t.bits(sym, ti)  # -log2 of the integer table's probabilities
    p = 0.5 * np.array([math.erfc((v - 0.5) / (3 * math.sqrt(2))) - math.erfc((v + 0.5) / (3 * math.sqrt(2))) for v in range(-40, 41)])
    ideal_gauss = float(-np.log2(p[sym + 40]).sum())  # -log2 of the exact discretised Gaussian
    assert coded_bits <= 1.01 * ideal_int, (coded_bits, ideal_int)
    assert coded_bits <= 1.01 * ideal_gauss, (coded_bits, ideal_gauss)
    assert coded_bits >= 0.98 * ideal_gauss  # (a broken coder cannot beat the source's entropy by much)
    print(f"\n100k symbols, sigma 3: {coded_bits / sym.size:.4f} bits/symbol, ideal (integer table) "
          f"{ideal_int / sym.size:.4f}, ideal (Gaussian) {ideal_gauss / sym.size:.4f}, "
          f"overhead {100 * (coded_bits / ideal_int - 1):.3f} %")


def test_speed_one_million_symbols(tables):
    rng = np.random.default_rng(10)
    ti = rng.integers(0, tables.num_tables, 1_000_000)
    sym = np.rint(rng.normal(0.0, np.asarray(SCALES)[ti])).astype(np.int64)
    t0 = time.perf_counter()
    data = encode(sym, ti, tables)
    t1 = time.perf_counter()
    got = decode(data, ti, tables)
    t2 = time.perf_counter()
    np.testing.assert_array_equal(got, sym)
    enc, dec = t1 - t0, t2 - t1
    print(f"\n1M symbols, {tables.num_tables} tables: encode {enc:.3f} s ({1 / enc:.1f} M symbols/s), "
          f"decode {dec:.3f} s ({1 / dec:.1f} M symbols/s), {8 * len(data) / 1e6:.3f} bits/symbol")
    assert enc < 3.0 and dec < 3.0  # ~0.1 s each on one core; generous for a shared machine


# --------------------------------------------------------------------------- damage


def _outcome(data: bytes, ti: np.ndarray, tables: TableSet, sym: np.ndarray) -> str:
    """'error', 'same' or 'wrong'; anything but EntropyError fails the test."""
    try:
        got = decode(data, ti, tables)
    except EntropyError as exc:
        assert str(exc) and "\n" not in str(exc)
        return "error"
    assert got.shape == ti.shape and got.dtype == np.int32
    assert np.abs(got.astype(np.int64)).max(initial=0) <= MAX_ABS_SYMBOL
    return "same" if np.array_equal(got, sym) else "wrong"


@pytest.fixture(scope="module")
def small_stream(tables):
    rng = np.random.default_rng(12)
    ti = rng.integers(0, tables.num_tables, 300)
    sym = draw(tables, ti, rng)
    sym[::37] = rng.integers(-5000, 5000, sym[::37].size) * 100  # some escapes
    data = encode(sym, ti, tables)
    assert data[1] > 0 and data[2] > 0  # words and escapes
    return sym, ti, data


def test_truncated_or_extended_stream_is_always_detected(tables, small_stream):
    sym, ti, data = small_stream
    assert _outcome(data, ti, tables, sym) == "same"
    for n in range(len(data)):
        assert _outcome(data[:n], ti, tables, sym) == "error", n
    for extra in (b"\0", b"\x80", b"\0" * 4, data):
        assert _outcome(data + extra, ti, tables, sym) == "error"
    # the same for a stream without escapes (its end is the range-coded words)
    clean = np.zeros(200, np.int64)
    plain = encode(clean, np.zeros(200, int), tables)
    for n in range(len(plain)):
        assert _outcome(plain[:n], np.zeros(200, int), tables, clean) == "error", n
    assert _outcome(plain + b"\0", np.zeros(200, int), tables, clean) == "error"


def test_header_damage_is_detected(tables, small_stream):
    sym, ti, data = small_stream
    for damaged, match in [
        (b"\x02" + data[1:], "unsupported entropy stream version 2"),
        (b"", "empty stream"),
        (data[:1] + b"\xff\xff\xff\xff\xff\x01", "header corrupt"),
        (data[:1] + b"\x7f" + data[2:], "truncated"),
        (data[:2] + b"\x7f" + data[3:], "escapes announced|corrupt"),
    ]:
        with pytest.raises(EntropyError, match=match):
            decode(damaged, ti, tables)


def test_every_bit_flip_of_a_stream_is_caught_or_harmless(tables, small_stream):
    """A flipped bit never crashes or hangs; most are reported. Those in the range-coded words that
    leave a consistent decoder state give wrong symbols silently: the documented limit (the container's
    CRC catches them before decoding)."""
    sym, ti, data = small_stream
    header = 3
    words_end = header + 4 * data[1]
    counts = {"words": {"error": 0, "same": 0, "wrong": 0}, "escapes": {"error": 0, "same": 0, "wrong": 0}}
    buf = bytearray(data)
    for i in range(len(buf)):
        for bit in range(8):
            buf[i] ^= 1 << bit
            result = _outcome(bytes(buf), ti, tables, sym)
            buf[i] ^= 1 << bit
            if i < header:
                assert result == "error", (i, bit)  # version and counts
            else:
                counts["words" if i < words_end else "escapes"][result] += 1
    words, escapes = counts["words"], counts["escapes"]
    n_words, n_escapes = sum(words.values()), sum(escapes.values())
    print(f"\nsingle-bit flips: range-coded words {words}, escape sub-stream {escapes}")
    assert words["error"] >= 0.75 * n_words, words  # measured: 97 %
    # an escape's value bits carry no redundancy (a flip there gives another valid value); flips in
    # the unary prefixes misalign the parse and are caught (measured: about half of all flips)
    assert escapes["error"] >= 0.3 * n_escapes, escapes
    assert words["same"] + escapes["same"] == 0  # every bit of the stream matters


def test_random_bytes_and_mutations_raise_only_entropy_errors(tables, small_stream):
    sym, ti, data = small_stream
    rng = np.random.default_rng(13)
    seen = set()
    for case in range(1500):
        if case % 3 == 0:
            damaged = rng.bytes(int(rng.integers(0, 64)))
            if case % 2:
                damaged = b"\x01" + damaged
        else:
            buf = bytearray(data)
            for _ in range(int(rng.integers(1, 6))):
                buf[int(rng.integers(len(buf)))] = int(rng.integers(256))
            damaged = bytes(buf)
        seen.add(_outcome(damaged, ti, tables, sym))
    assert "error" in seen
