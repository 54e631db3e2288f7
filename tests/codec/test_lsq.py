"""The least-squares predictor (codec/lsq.py) and the residual layer's "ls" predictor: the deterministic
batched solver, every prediction checked against a brute-force reference (explicit training window,
normal equations summed from scratch), the memory bound, round trips and stream flags through
codec/residual.py, and bit-identical decoding in another process with other thread counts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codec import lsq, residual
from codec.errors import MedcodecError
from codec.residual import ResidualError
from tests.codec.test_residual import _coarse, _crop
from tests.conftest import sample_files

ROOT = Path(__file__).resolve().parents[2]
U16 = np.iinfo(np.uint16)
FLAGS_BYTE = 5  # magic (4 bytes), version (1 byte), then the flags byte


def _smooth_plus_noise(rows=96, cols=96, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ii, jj = np.indices((rows, cols))
    s = 2000 + 600 * np.sin(ii / 9.0) * np.cos(jj / 13.0) + 7 * ii - 4 * jj
    return np.clip(np.rint(s + rng.normal(0, 3, s.shape)), 0, U16.max).astype(np.uint16)


# --------------------------------------------------------------------------- solve_spd


def _spd_batch(rng, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    m = rng.standard_normal((n, k, k)) * rng.uniform(0.1, 100.0, (n, 1, 1))
    a = m @ m.transpose(0, 2, 1) + k * np.eye(k)
    return a, rng.standard_normal((n, k)) * 1000.0


@pytest.mark.parametrize("k", [1, 5, 18, 23])
def test_solve_spd_matches_numpy(k):
    rng = np.random.default_rng(k)
    a, b = _spd_batch(rng, 12, k)
    x = lsq.solve_spd(a, b)
    assert x.shape == (12, k) and x.dtype == np.float64
    ref = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    np.testing.assert_allclose(x, ref, rtol=1e-9, atol=1e-9 * float(np.abs(ref).max()))
    # and the residual is small: it solves the system it was given, not a transposed one
    np.testing.assert_allclose(np.einsum("nij,nj->ni", a, x), b, rtol=1e-8, atol=1e-8 * float(np.abs(b).max()))


@pytest.mark.parametrize("k", [1, 5, 18, 23])
def test_solve_spd_is_independent_of_the_batch(k):
    """A system's solution is the same bits alone, first or last in a batch, or among other systems."""
    rng = np.random.default_rng(100 + k)
    a, b = _spd_batch(rng, 9, k)
    a0, b0 = a.copy(), b.copy()
    whole = lsq.solve_spd(a, b)
    np.testing.assert_array_equal(a, a0)  # a batch of several: the inputs are not modified
    np.testing.assert_array_equal(b, b0)
    for m in (0, 4, 8):
        alone = lsq.solve_spd(a0[m:m + 1].copy(), b0[m:m + 1].copy())
        assert alone.view(np.uint64).tobytes() == whole[m].view(np.uint64).tobytes()
    # system 4 moved to the front and to the back of a reordered batch
    order = [4, 7, 0, 2, 8, 1, 3, 5, 6]
    moved = lsq.solve_spd(a0[order], b0[order])
    assert np.array_equal(moved.view(np.uint64), whole[order].view(np.uint64))
    order = order[1:] + order[:1]
    moved = lsq.solve_spd(a0[order], b0[order])
    assert np.array_equal(moved[-1].view(np.uint64), whole[4].view(np.uint64))
    # a larger batch with other systems around it
    a2, b2 = _spd_batch(rng, 30, k)
    a2[17], b2[17] = a0[4], b0[4]
    big = lsq.solve_spd(a2, b2)
    assert np.array_equal(big[17].view(np.uint64), whole[4].view(np.uint64))


def test_solve_spd_does_not_modify_a_batch_of_one():
    a, b = _spd_batch(np.random.default_rng(5), 1, 5)
    a0, b0 = a.copy(), b.copy()
    lsq.solve_spd(a, b)
    assert np.array_equal(a, a0) and np.array_equal(b, b0)


# --------------------------------------------------------------------------- brute-force reference


def _reference(x: np.ndarray, x_hat: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """LS predictions of every interior pixel, from scratch: (predictions, interior mask)."""
    rows, cols = x.shape
    xi = x.astype(np.int64)
    offs = list(lsq.OFFSETS)
    k = len(offs) + (len(lsq.XHAT_OFFSETS) if x_hat is not None else 0)
    rr, cc = np.indices((rows, cols))
    interior = (rr >= lsq.MARGIN) & (cc >= lsq.MARGIN) & (cc < cols - lsq.MARGIN)
    feats = np.zeros((rows, cols, k), dtype=np.int64)
    target = np.zeros((rows, cols), dtype=np.int64)
    for r, c in np.argwhere(interior):
        # every neighbour lies on an earlier wave (test_offsets_are_causal_in_the_wave_order)
        f = [xi[r + di, c + dj] for di, dj in offs]
        if x_hat is not None:  # x_hat is known everywhere: the S neighbour of the last row is its edge
            f += [int(x_hat[min(r + di, rows - 1), c + dj]) for di, dj in lsq.XHAT_OFFSETS]
        w = xi[r, c - 1]
        assert f[0] == w  # the first offset is W
        feats[r, c] = np.array(f, dtype=np.int64) - w
        target[r, c] = xi[r, c] - w
    pred = np.zeros((rows, cols), dtype=np.int64)
    R = lsq.RADIUS
    for i, j in np.argwhere(interior):
        win = (interior & (rr >= max(i - R, 0)) & (rr <= i) & (cc >= j - R) & (cc <= j + R)
               & (2 * rr + cc < 2 * i + j))
        f, y = feats[win], target[win]
        a = (f[:, :, None] * f[:, None, :]).sum(axis=0)  # int64, exact
        b = (f * y[:, None]).sum(axis=0)
        af = a.astype(np.float64) + lsq.RIDGE * np.eye(k)
        coef = lsq.solve_spd(af[None], b.astype(np.float64)[None])[0]
        acc = np.float64(0.0)
        with np.errstate(invalid="ignore", over="ignore"):
            for m in range(k):
                acc = acc + coef[m] * np.float64(feats[i, j, m])
        if not np.isfinite(acc):
            acc = np.float64(0.0)
        acc = min(max(acc, -float(1 << 20)), float(1 << 20))
        pred[i, j] = xi[i, j - 1] + int(np.floor(acc + 0.5))
    return pred, interior


def _drive(x: np.ndarray, x_hat: np.ndarray | None):
    """Run a LeastSquares wave by wave as the residual engine does, the true values decoded."""
    rows, cols = x.shape
    vmax = int(max(x.max(), x_hat.max() if x_hat is not None else 0))
    eng = residual._Engine(rows, cols, vmax, 0, x_hat, ls=True)
    out = np.full((rows, cols), np.iinfo(np.int64).min, dtype=np.int64)
    fall = np.full((rows, cols), np.iinfo(np.int64).min, dtype=np.int64)
    for t in range(eng.waves):
        i, j, idx = eng.wave(t)
        fallback = -1 - (i * cols + j)  # distinct, and never a real prediction
        keep = fallback.copy()
        out[i, j] = eng.ls.predict(i, j, idx, eng.x, fallback)
        np.testing.assert_array_equal(fallback, keep)
        fall[i, j] = fallback
        v = x[i, j].astype(np.int64)
        eng.x[idx] = v
        eng.ls.update(i, j, v)
    return eng, out, fall


def _frame(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ii, jj = np.indices((rows, cols))
    smooth = 1500 + 40 * ii - 25 * jj + 300 * np.sin(ii / 4.0 + jj / 7.0)
    x = smooth + rng.integers(-60, 61, (rows, cols))
    spikes = rng.random((rows, cols)) < 0.05
    x = np.where(spikes, rng.integers(0, 4001, (rows, cols)), x)
    return np.clip(np.rint(x), 0, 4000).astype(np.int64)


CASES = {
    # 30 x 53: the column ring (3 R + 2 = 23 columns) wraps twice. Its row ring cannot wrap: it holds
    # min(rows, cols // 2 + R + 3) = 36 rows >= 30, so the frame is kept whole.
    "30x53": (30, 53, 1),
    # 70 x 26: rows > cols // 2 + R + 3 = 23, so the row ring wraps (three times); the columns wrap too
    # (26 + 1 columns > 3 R + 2, and > 3 R + 4 for the compiled kernels' column sums)
    "70x26": (70, 26, 2),
}


BACKENDS = ["numpy", "numba"]


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Each test below runs on the numpy code and on the compiled kernels of codec/jit.py."""
    monkeypatch.setenv(lsq.JIT_ENV, "1" if request.param == "numba" else "0")
    assert lsq.backend() == request.param  # numba is pinned in requirements.lock: never skipped here
    return request.param


@pytest.mark.parametrize("with_xhat", [False, True], ids=["no-xhat", "xhat"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_predictions_equal_a_brute_force_reference(case, with_xhat, backend):
    rows, cols, seed = CASES[case]
    x = _frame(rows, cols, seed)
    x_hat = None
    if with_xhat:  # a noisy, shifted stand-in of x: the co-located value and neighbours carry information
        rng = np.random.default_rng(seed + 10)
        x_hat = np.clip(x + rng.integers(-80, 81, x.shape) + 17, 0, 4000).astype(np.int64)
    eng, got, fallback = _drive(x, x_hat)
    assert (eng.ls._jit is not None) == (backend == "numba")
    assert eng.ls.k == 17 + (5 if with_xhat else 0)
    assert eng.ls.nc == 3 * lsq.RADIUS + (4 if backend == "numba" else 2) < cols + 1  # the column ring wraps
    if case == "70x26":
        assert eng.ls.nr < rows  # the row ring wraps
    want, interior = _reference(x, x_hat)
    assert interior.sum() == (rows - lsq.MARGIN) * (cols - 2 * lsq.MARGIN)
    np.testing.assert_array_equal(got[~interior], fallback[~interior])
    np.testing.assert_array_equal(got[interior], want[interior])
    # the predictor is not trivial: it differs from W (the frame's 5 % outliers make it worse than W here,
    # see test_predictions_fit_a_smooth_frame for its quality)
    w = x[:, :-1][interior[:, 1:]]
    assert np.count_nonzero(want[interior] != w) > interior.sum() // 2


@pytest.mark.parametrize("case", sorted(CASES))
def test_predictions_fit_a_smooth_frame(case):
    rows, cols, _ = CASES[case]
    x = _smooth_plus_noise(rows, cols).astype(np.int64)
    _, got, _ = _drive(x, None)
    inner = np.zeros(x.shape, dtype=bool)
    inner[lsq.MARGIN:, lsq.MARGIN:-lsq.MARGIN] = True
    ls_err = np.abs(got - x)[inner].mean()
    w_err = np.abs(x[:, :-1] - x[:, 1:])[inner[:, 1:]].mean()
    assert ls_err < 0.25 * w_err  # measured: 3.7 against 21


def test_offsets_are_causal_in_the_wave_order():
    """Every neighbour the predictor reads must lie on an earlier wave t = 2 i + j."""
    late = [(di, dj) for di, dj in lsq.OFFSETS if 2 * di + dj >= 0]
    assert late == []


def test_reference_on_extreme_values(backend):
    """Full-range 0 / 65535 pixels: products near 2**32, near-singular systems, still exact."""
    rng = np.random.default_rng(9)
    x = np.where(rng.random((20, 40)) < 0.5, 0, U16.max).astype(np.int64)
    x[:, ::5] = U16.max  # some structure, so that the systems are far from diagonal
    x_hat = np.where(rng.random(x.shape) < 0.7, x, U16.max - x)
    for xh in (None, x_hat):
        eng, got, fallback = _drive(x, xh)
        want, interior = _reference(x, xh)
        np.testing.assert_array_equal(got[~interior], fallback[~interior])
        np.testing.assert_array_equal(got[interior], want[interior])


# --------------------------------------------------------------------------- memory


@pytest.mark.parametrize("jit", [False, True], ids=["numpy", "numba"])
def test_memory_is_bounded_per_row(jit, monkeypatch):
    limit = 2 if jit else 1  # the kernels keep column sums beside the row sums
    for xh in (False, True):
        assert lsq.memory_bytes(2500, 2048, xh, jit) < limit * (72 << 20)
        assert lsq.memory_bytes(512, 512, xh, jit) < limit * (16 << 20)
        # it grows with the width, but not with the height once the ring is full
        assert (lsq.memory_bytes(512, 256, xh, jit) < lsq.memory_bytes(512, 512, xh, jit)
                < lsq.memory_bytes(512, 1024, xh, jit))
        assert (lsq.memory_bytes(600, 512, xh, jit) == lsq.memory_bytes(5000, 512, xh, jit)
                == lsq.memory_bytes(50000, 512, xh, jit))
    assert lsq.memory_bytes(512, 512, False, jit) < lsq.memory_bytes(512, 512, True, jit)
    # what a LeastSquares really allocates: the prefix-sum ring(s) (memory_bytes may leave out their extra
    # row of zeros)
    monkeypatch.setenv(lsq.JIT_ENV, "1" if jit else "0")
    assert lsq.memory_bytes(512, 512, False) == lsq.memory_bytes(512, 512, False, jit)
    for rows, cols, with_xhat in ((300, 160, False), (300, 160, True), (10, 9, False)):
        xh = np.zeros((rows + 2) * (cols + 4) + 1, dtype=np.int32) if with_xhat else None
        ls = lsq.LeastSquares(rows, cols, cols + 4, xh, xh)
        assert (ls.vs is not None) == jit
        held = ls.cs.nbytes + (ls.vs.nbytes if jit else 0)
        per_row = held // ls.cs.shape[0]
        assert lsq.memory_bytes(rows, cols, with_xhat) <= held <= lsq.memory_bytes(rows, cols, with_xhat) + per_row


# --------------------------------------------------------------------------- through codec.residual


def _round_trip(x, x_hat, d, predictor) -> residual.Encoded:
    enc = residual.encode(x, x_hat, d, predictor=predictor)
    assert enc.header.predictor == predictor
    assert residual.read_header(enc.data).predictor == predictor
    assert residual.read_header(enc.data) == enc.header
    out = residual.decode(enc.data, x_hat, shape=x.shape, dtype=x.dtype)
    assert out.dtype == x.dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, enc.recon)
    err = int(np.abs(out.astype(np.int64) - x).max())
    assert err <= d
    if d == 0:
        np.testing.assert_array_equal(out, x)
    return enc


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: p.stem)
def test_round_trips_on_sample_crops(path):
    x = _crop(path, 64, 64)
    for x_hat in (None, _coarse(x)):
        for d in (0, 2):
            a = _round_trip(x, x_hat, d, "ls")
            b = _round_trip(x, x_hat, d, "blend")
            assert a.data != b.data
            assert a.data[FLAGS_BYTE] & 4 and not b.data[FLAGS_BYTE] & 4


def _adversarial() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    check = (np.indices((24, 26)).sum(axis=0) % 2).astype(bool)
    return {
        "constant": np.full((24, 26), 1234, dtype=np.uint16),
        "checker_0_65535": np.where(check, 0, U16.max).astype(np.uint16),
        "noise_uint16": rng.integers(0, U16.max, (25, 23), endpoint=True).astype(np.uint16),
        "noise_int16": rng.integers(-32768, 32767, (22, 27), endpoint=True).astype(np.int16),
    }


ADVERSARIAL = _adversarial()


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("predictor", residual.PREDICTORS)
def test_round_trips_on_adversarial_frames(name, predictor):
    x = ADVERSARIAL[name]
    info = np.iinfo(x.dtype)
    rng = np.random.default_rng(7)
    hats = [None, rng.integers(info.min, info.max, x.shape, endpoint=True).astype(x.dtype),
            np.full(x.shape, info.max, dtype=x.dtype)]
    for x_hat in hats:
        for d in (0, 2):
            _round_trip(x, x_hat, d, predictor)


def test_ls_codes_smaller_than_the_blend():
    """Measured: 6 % (lossless) and 11 % (D = 2) smaller on smooth-plus-noise, 2 % / 5 % on a CT crop."""
    smooth = _smooth_plus_noise()
    ct = _crop(next(p for p in sample_files() if "ct_signed" in p.name), 96, 96)
    for x, x_hat in ((smooth, None), (ct, None), (ct, _coarse(ct))):
        for d in (0, 2):
            ls = residual.encode(x, x_hat, d, predictor="ls").data
            blend = residual.encode(x, x_hat, d, predictor="blend").data
            assert len(ls) < len(blend), (x.dtype, x_hat is not None, d, len(ls), len(blend))
    assert len(residual.encode(smooth).data) < 0.97 * len(residual.encode(smooth, predictor="blend").data)


def test_ls_is_the_default_predictor():
    x = _smooth_plus_noise(20, 20)
    enc = residual.encode(x)
    assert enc.header.predictor == "ls" and enc.data == residual.encode(x, predictor="ls").data
    assert residual.encode_for_psnr(x, 80.0, 16)[0].header.predictor == "ls"
    assert residual.encode_for_psnr(x, 80.0, 16, predictor="blend")[0].header.predictor == "blend"


@pytest.mark.parametrize("bad", ["mrp", "LS", "", None])
def test_an_unknown_predictor_is_refused(bad):
    with pytest.raises(ResidualError, match="unknown residual predictor") as info:
        residual.encode(np.zeros((8, 8), np.uint16), predictor=bad)
    assert "\n" not in str(info.value) and "ls, blend" in str(info.value)
    with pytest.raises(ResidualError, match="unknown residual predictor"):
        residual.encode_for_psnr(np.zeros((8, 8), np.uint16), 60.0, 12, predictor=bad)


@pytest.fixture(scope="module")
def streams():
    x = _crop(sample_files()[0], 40, 48)
    x_hat = _coarse(x)
    return x, x_hat, {(p, h): residual.encode(x, x_hat if h else None, 0, predictor=p).data
                      for p in residual.PREDICTORS for h in (False, True)}


def _refused(data, x, x_hat) -> str:
    with pytest.raises(ResidualError) as info:
        residual.decode(data, x_hat, shape=x.shape, dtype=x.dtype)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def test_an_unknown_flag_bit_is_refused(streams):
    x, x_hat, coded = streams
    for (_, h), data in coded.items():
        for bit in (16, 32, 128):
            bad = bytearray(data)
            bad[FLAGS_BYTE] |= bit
            with pytest.raises(ResidualError, match="unknown flags"):
                residual.read_header(bytes(bad))
            assert "unknown flags" in _refused(bytes(bad), x, x_hat if h else None)


def test_flipping_the_ls_flag_never_decodes_silently(streams):
    x, x_hat, coded = streams
    for (p, h), data in coded.items():
        bad = bytearray(data)
        bad[FLAGS_BYTE] ^= 4
        assert residual.read_header(bytes(bad)).predictor == ("blend" if p == "ls" else "ls")
        msg = _refused(bytes(bad), x, x_hat if h else None)
        assert "corrupt" in msg


# --------------------------------------------------------------------------- backends


def _streams(x: np.ndarray, x_hat: np.ndarray, predictors=("ls",)) -> list[bytes]:
    return [residual.encode(x, xh, d, predictor=p).data for p in predictors for xh in (None, x_hat)
            for d in (0, 2)]


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: p.stem)
def test_numpy_and_numba_code_the_same_bytes(path, monkeypatch):
    """The compiled kernels are an optimisation, not another format: every bundled sample (a 128 x 160
    crop, both predictors, with and without x_hat, lossless and D = 2) gives the same bytes both ways,
    and the numpy code decodes the kernels' streams."""
    x = _crop(path, 128, 160)
    x_hat = _coarse(x)
    monkeypatch.setenv(lsq.JIT_ENV, "0")
    slow = _streams(x, x_hat, residual.PREDICTORS)
    monkeypatch.setenv(lsq.JIT_ENV, "1")
    fast = _streams(x, x_hat, residual.PREDICTORS)
    assert fast == slow
    for data, xh in zip(fast[0:4:2], (None, x_hat), strict=True):  # the lossless "ls" streams
        monkeypatch.setenv(lsq.JIT_ENV, "0")
        np.testing.assert_array_equal(residual.decode(data, xh, shape=x.shape, dtype=x.dtype), x)


def _tiny_and_extreme() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every border rule of the engine (first rows and columns, last column, frames of one row or one
    column) and full-range values, each with a hostile x_hat."""
    rng = np.random.default_rng(11)
    out = {}
    for shape in ((1, 1), (1, 9), (9, 1), (2, 2), (3, 5), (5, 3), (7, 12)):
        x = rng.integers(0, U16.max, shape, endpoint=True).astype(np.uint16)
        out[f"noise{shape[0]}x{shape[1]}"] = (x, U16.max - x)
    for name, x in ADVERSARIAL.items():
        info = np.iinfo(x.dtype)
        out[name] = (x, np.full(x.shape, info.min, dtype=x.dtype))
    return out


TINY = _tiny_and_extreme()


@pytest.mark.parametrize("name", sorted(TINY))
def test_numpy_and_numba_agree_on_borders_and_extremes(name, monkeypatch):
    x, x_hat = TINY[name]
    got = {}
    for flag in ("0", "1"):
        monkeypatch.setenv(lsq.JIT_ENV, flag)
        got[flag] = _streams(x, x_hat, residual.PREDICTORS)
    assert got["0"] == got["1"]


def test_backend_follows_the_environment(monkeypatch):
    monkeypatch.delenv(lsq.JIT_ENV, raising=False)
    assert lsq.backend() == "numba"
    for flag, want in (("0", "numpy"), ("off", "numpy"), ("1", "numba"), (" ON ", "numba")):
        monkeypatch.setenv(lsq.JIT_ENV, flag)
        assert lsq.backend() == want
    monkeypatch.setenv(lsq.JIT_ENV, "fast")
    with pytest.raises(MedcodecError, match="MEDCODEC_JIT must be 0 or 1"):
        lsq.backend()


def test_backend_falls_back_to_numpy_without_numba(monkeypatch):
    """Where numba cannot be imported (a board image without it), the numpy code runs."""
    monkeypatch.setenv(lsq.JIT_ENV, "1")
    monkeypatch.setitem(sys.modules, "codec.jit", None)  # makes the import fail
    assert lsq.backend() == "numpy"
    x = _smooth_plus_noise(40, 40)
    assert lsq.LeastSquares(40, 40, 44)._jit is None
    enc = residual.encode(x, predictor="ls")
    np.testing.assert_array_equal(residual.decode(enc.data, shape=x.shape, dtype=x.dtype), x)


# --------------------------------------------------------------------------- other processes

_CHILD = """
import sys
import numpy as np
from codec import residual
x = np.load(sys.argv[1])
x_hat = np.load(sys.argv[2])
for n, (h, d) in enumerate([(False, 0), (True, 0), (False, 2), (True, 2)]):
    xh = x_hat if h else None
    with open(f"{sys.argv[3]}/s{n}.bin", "rb") as f:
        data = f.read()
    np.save(f"{sys.argv[3]}/d{n}.npy", residual.decode(data, xh, shape=x.shape, dtype=x.dtype))
    with open(f"{sys.argv[3]}/e{n}.bin", "wb") as f:
        f.write(residual.encode(x, xh, d, predictor="ls").data)
print("ok")
"""


@pytest.mark.parametrize("threads,jit", [("1", "0"), ("2", "1")], ids=["1-thread-numpy", "2-threads-numba"])
def test_ls_decodes_bit_identically_in_another_process(tmp_path, threads, jit):
    """Encoded here, decoded (and re-encoded) in a fresh interpreter with other BLAS / OpenMP thread
    counts and either backend of codec/lsq.py: the same pixels and the same bytes."""
    x = _crop(next(p for p in sample_files() if "mr_" in p.name), 64, 64)
    x_hat = _coarse(x, 32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "xh.npy", x_hat)
    encs = []
    for n, (h, d) in enumerate([(False, 0), (True, 0), (False, 2), (True, 2)]):
        enc = residual.encode(x, x_hat if h else None, d, predictor="ls")
        (tmp_path / f"s{n}.bin").write_bytes(enc.data)
        encs.append(enc)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               NUMBA_NUM_THREADS=threads, MEDCODEC_JIT=jit)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "x.npy"), str(tmp_path / "xh.npy"),
                          str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok"]
    for n, enc in enumerate(encs):
        got = np.load(tmp_path / f"d{n}.npy")
        assert got.dtype == x.dtype
        assert got.tobytes() == enc.recon.tobytes()
        assert (tmp_path / f"e{n}.bin").read_bytes() == enc.data
    assert encs[0].recon.tobytes() == x.tobytes()
