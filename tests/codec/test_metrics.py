"""Tests of codec.metrics: hand-computed values, pytorch_msssim agreement, Bjøntegaard."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codec import metrics as M

ROOT = Path(__file__).resolve().parents[2]

try:  # host only: the board has neither; the tests that need them skip there
    import pytorch_msssim as pm
    import torch
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch / pytorch_msssim not installed")

AGREE = 1e-6  # required agreement with pytorch_msssim


# ----------------------------------------------------------------- helpers


def _phantom(rows, cols, bits, seed, signed=False):
    """Smooth structure + texture filling most of the 2**bits range, as float64 integers."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    top = 2**bits - 1
    img = top * (0.5 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0))
    img += 0.1 * top * ((xx // 20 + yy // 25) % 2)
    img += rng.normal(0, 0.01 * top, (rows, cols))
    img = np.clip(np.round(img), 0, top)
    if signed:
        img -= 2 ** (bits - 1)
    return img


def _degrade(img, bits, sigma, seed, signed=False):
    rng = np.random.default_rng(seed)
    lo = -(2 ** (bits - 1)) if signed else 0
    hi = lo + 2**bits - 1
    return np.clip(np.round(img + rng.normal(0, sigma, img.shape)), lo, hi)


def _t(a):
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    return torch.from_numpy(a)[:, None]  # (N, 1, H, W)


def _ref_ssim(x, y, data_range, **kw):
    return pm.ssim(_t(x), _t(y), data_range=float(data_range), size_average=True, **kw).item()


def _ref_ms_ssim(x, y, data_range, **kw):
    return pm.ms_ssim(_t(x), _t(y), data_range=float(data_range), size_average=True, **kw).item()


# ------------------------------------------------------------------------ bpp


def test_bpp_arithmetic():
    assert M.bpp(1000, 100, 80) == 1.0
    assert M.bpp(1000, 100, 80, frames=4) == 0.25
    assert M.bpp(0, 10, 10) == 0.0
    assert M.bpp(3, 2, 3) == 4.0
    assert isinstance(M.bpp(1, 1, 1), float)


@pytest.mark.parametrize("args", [(10, 0, 5), (10, 5, -1), (10, 5, 5, 0), (-1, 5, 5), (10, 2.5, 4)])
def test_bpp_rejects_bad_sizes(args):
    with pytest.raises(ValueError):
        M.bpp(*args)


def test_file_bpp_uses_size_on_disk(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"\0" * 1234)
    assert M.file_bpp(p, 10, 20) == 1234 * 8 / 200
    assert M.file_bpp(str(p), 10, 20, frames=2) == 1234 * 8 / 400


# ----------------------------------------------------------- MSE, PSNR, max err


def test_mse_tiny():
    ref = np.array([[0, 1], [2, 3]], dtype=np.uint16)
    test = np.array([[1, 1], [2, 5]], dtype=np.uint16)
    assert M.mse(ref, test) == (1 + 0 + 0 + 4) / 4
    assert M.max_abs_error(ref, test) == 2
    assert M.psnr(ref, test, 10.0) == pytest.approx(10 * math.log10(100 / 1.25), abs=1e-12)


def test_uint16_no_wraparound():
    ref = np.zeros((3, 4), dtype=np.uint16)
    test = np.full((3, 4), 65535, dtype=np.uint16)
    assert M.mse(ref, test) == 65535.0**2
    assert M.mse(test, ref) == 65535.0**2
    assert M.max_abs_error(ref, test) == 65535
    assert M.max_abs_error(test, ref) == 65535
    assert M.psnr_bits(ref, test, 16) == pytest.approx(0.0, abs=1e-12)


def test_int16_signed_extremes():
    ref = np.full((2, 2), -32768, dtype=np.int16)
    test = np.full((2, 2), 32767, dtype=np.int16)
    assert M.max_abs_error(ref, test) == 65535
    assert M.mse(ref, test) == 65535.0**2
    ref2 = np.array([[-32768, 32767], [0, 0]], dtype=np.int16)
    # range 65535 (would overflow in int16); error of 1 on one pixel -> mse 0.25
    test2 = ref2.copy()
    test2[1, 1] = 1
    assert M.psnr_range(ref2, test2) == pytest.approx(10 * math.log10(65535.0**2 / 0.25), abs=1e-12)


@pytest.mark.parametrize(
    "dtype_ref,dtype_test",
    [(np.uint16, np.uint16), (np.int16, np.int16), (np.uint16, np.float32), (np.int32, np.float64)],
)
def test_psnr_error_one_everywhere_12bit(dtype_ref, dtype_test):
    rng = np.random.default_rng(3)
    ref = rng.integers(1, 4095, (37, 53))
    sign = rng.choice([-1, 1], ref.shape)
    test = ref + sign
    ref, test = ref.astype(dtype_ref), test.astype(dtype_test)
    expected = 20 * math.log10(4095)
    assert M.mse(ref, test) == 1.0
    assert M.psnr_bits(ref, test, 12) == pytest.approx(expected, abs=1e-12)
    assert M.psnr(ref, test, 4095) == pytest.approx(expected, abs=1e-12)
    assert M.max_abs_error(ref, test) == 1


def test_psnr_range_uses_reference_range():
    ref = np.zeros((10, 10), dtype=np.uint16)
    ref[0, 0] = 100
    ref[5, 5] = 1100  # range 1100 - 0
    test = ref.astype(np.int32) + 1
    assert M.psnr_range(ref, test) == pytest.approx(20 * math.log10(1100), abs=1e-12)
    const = np.full((4, 4), 7, dtype=np.uint16)
    # constant reference: peak 1 -> 20*log10(1) - 10*log10(mse)
    assert M.psnr_range(const, const + 2) == pytest.approx(-10 * math.log10(4), abs=1e-12)


def test_max_abs_error_types():
    a = np.array([[1, 2], [3, 4]], dtype=np.uint16)
    b = np.array([[1, 9], [3, 4]], dtype=np.uint16)
    r = M.max_abs_error(a, b)
    assert r == 7 and isinstance(r, int)
    rf = M.max_abs_error(a.astype(np.float32), b.astype(np.float32) + 0.5)
    assert rf == 7.5 and isinstance(rf, float)


def test_identical_images():
    img = _phantom(200, 180, 12, seed=1).astype(np.uint16)
    assert M.mse(img, img) == 0.0
    assert M.psnr(img, img, 4095) == math.inf
    assert M.psnr_bits(img, img, 12) == math.inf
    assert M.psnr_range(img, img) == math.inf
    assert M.max_abs_error(img, img) == 0
    assert M.ssim(img, img, 4095) == pytest.approx(1.0, abs=1e-12)
    assert M.ms_ssim(img, img, 4095) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("fn", [M.mse, M.max_abs_error, M.psnr_range])
def test_input_validation(fn):
    a = np.zeros((4, 4), dtype=np.uint16)
    with pytest.raises(ValueError, match="shape"):
        fn(a, np.zeros((4, 5), dtype=np.uint16))
    with pytest.raises(ValueError):
        fn(np.zeros(4), np.zeros(4))  # 1-D
    with pytest.raises(ValueError):
        fn(np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="dtype"):
        fn(a.astype(bool), a.astype(bool))
    with pytest.raises(ValueError, match="dtype"):
        fn(a.astype(complex), a.astype(complex))
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((0, 4)), np.zeros((0, 4)))


def test_psnr_peak_validation():
    a = np.zeros((4, 4))
    with pytest.raises(ValueError):
        M.psnr(a, a + 1, 0)
    with pytest.raises(ValueError):
        M.psnr_bits(a, a + 1, 0)
    with pytest.raises(ValueError):
        M.ssim(np.zeros((20, 20)), np.zeros((20, 20)), -1.0)


@needs_torch
def test_3d_stack_semantics():
    a = np.stack([_phantom(170, 190, 12, s) for s in (1, 2, 3)]).astype(np.uint16)
    b = np.stack([_degrade(f, 12, 15 * (i + 1), seed=i) for i, f in enumerate(a.astype(float))])
    per_frame_mse = [M.mse(x, y) for x, y in zip(a, b, strict=True)]
    assert M.mse(a, b) == pytest.approx(np.mean(per_frame_mse), rel=1e-14)
    # PSNR of the pooled MSE, not the mean of per-frame PSNRs
    assert M.psnr_bits(a, b, 12) == pytest.approx(10 * math.log10(4095**2 / np.mean(per_frame_mse)))
    assert M.max_abs_error(a, b) == max(M.max_abs_error(x, y) for x, y in zip(a, b, strict=True))
    assert M.ssim(a, b, 4095) == pytest.approx(
        np.mean([M.ssim(x, y, 4095) for x, y in zip(a, b, strict=True)]), abs=1e-15
    )
    assert M.ms_ssim(a, b, 4095) == pytest.approx(
        np.mean([M.ms_ssim(x, y, 4095) for x, y in zip(a, b, strict=True)]), abs=1e-15
    )
    # and pytorch_msssim's batch average agrees
    assert abs(M.ssim(a, b, 4095) - _ref_ssim(a, b, 4095)) < AGREE
    assert abs(M.ms_ssim(a, b, 4095) - _ref_ms_ssim(a, b, 4095)) < AGREE


# ------------------------------------------------------ SSIM vs pytorch_msssim


@needs_torch
def test_default_window_is_pytorch_msssim_bit_for_bit():
    ref = _fspecial_gauss_1d(11, 1.5).numpy().ravel().astype(np.float64)
    assert np.array_equal(M.gaussian_window(), ref)


@needs_torch
@pytest.mark.parametrize("size,sigma", [(7, 1.0), (9, 1.2), (11, 2.0), (15, 1.5)])
def test_other_windows_close_to_pytorch(size, sigma):
    ref = _fspecial_gauss_1d(size, sigma).numpy().ravel().astype(np.float64)
    w = M.gaussian_window(size, sigma)
    assert np.max(np.abs(w - ref) / ref) < 2.5e-7  # at most ~1 float32 ulp
    assert np.array_equal(w, w.astype(np.float32).astype(np.float64))


@needs_torch
def test_avg_pool_matches_torch():
    rng = np.random.default_rng(0)
    for shape in [(10, 10), (11, 10), (10, 11), (11, 13), (161, 200)]:
        x = rng.random(shape) * 4095
        pad = [s % 2 for s in shape]
        ref = F.avg_pool2d(torch.from_numpy(x)[None, None], kernel_size=2, padding=pad)[0, 0].numpy()
        got = M._avg_pool2(x)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-10)


SIZES = [(440, 440), (384, 274), (274, 384), (512, 512), (161, 200), (200, 161), (163, 165)]


@needs_torch
@pytest.mark.parametrize("rows,cols", SIZES)
@pytest.mark.parametrize("bits,signed", [(12, False), (16, False), (16, True)])
def test_ssim_ms_ssim_match_pytorch_msssim(rows, cols, bits, signed):
    ref = _phantom(rows, cols, bits, seed=rows * 7 + cols, signed=signed)
    nominal = 2**bits - 1
    own = ref.max() - ref.min()
    for sigma in (0.002 * nominal, 0.02 * nominal):
        test = _degrade(ref, bits, sigma, seed=cols, signed=signed)
        for dr in (nominal, own):
            s = M.ssim(ref, test, dr)
            ms = M.ms_ssim(ref, test, dr)
            assert abs(s - _ref_ssim(ref, test, dr)) < AGREE
            assert abs(ms - _ref_ms_ssim(ref, test, dr)) < AGREE
            assert 0 < s < 1 and 0 < ms < 1


@needs_torch
def test_ssim_accepts_integer_dtypes():
    ref = _phantom(200, 210, 12, seed=5)
    test = _degrade(ref, 12, 40, seed=6)
    expected_s = _ref_ssim(ref, test, 4095)
    expected_ms = _ref_ms_ssim(ref, test, 4095)
    for dt in (np.uint16, np.int16, np.int32, np.float32):
        assert abs(M.ssim(ref.astype(dt), test.astype(dt), 4095) - expected_s) < AGREE
        assert abs(M.ms_ssim(ref.astype(dt), test.astype(dt), 4095) - expected_ms) < AGREE


@needs_torch
def test_low_quality_relu_branch_matches():
    """Heavy noise drives cs negative at coarse levels: relu must match pytorch_msssim."""
    rng = np.random.default_rng(11)
    ref = rng.integers(0, 4096, (200, 240)).astype(np.float64)
    test = rng.integers(0, 4096, (200, 240)).astype(np.float64)
    for dr in (4095.0, 200.0):
        assert abs(M.ssim(ref, test, dr) - _ref_ssim(ref, test, dr)) < AGREE
        assert abs(M.ms_ssim(ref, test, dr) - _ref_ms_ssim(ref, test, dr)) < AGREE
    assert M.ssim(ref, test, 200.0) < 0  # plain SSIM is not clipped
    assert M.ms_ssim(ref, test, 200.0) == 0.0  # a negative cs level is clipped to 0


@needs_torch
def test_ms_ssim_custom_weights_match():
    ref = _phantom(300, 260, 12, seed=9)
    test = _degrade(ref, 12, 60, seed=10)
    for w in ([0.2, 0.2, 0.2, 0.2, 0.2], [0.5, 0.3, 0.2]):
        assert abs(M.ms_ssim(ref, test, 4095, weights=w) - _ref_ms_ssim(ref, test, 4095, weights=w)) < AGREE


@needs_torch
def test_ms_ssim_too_small():
    assert M.ms_ssim_min_side() == 161
    ok = _phantom(161, 161, 12, seed=1)
    M.ms_ssim(ok, _degrade(ok, 12, 10, seed=2), 4095)  # the smallest accepted
    for shape in [(160, 300), (300, 160), (64, 64)]:
        a = np.zeros(shape)
        with pytest.raises(ValueError, match="too small for 5-level MS-SSIM"):
            M.ms_ssim(a, a, 4095)
    # pytorch_msssim refuses the same size
    with pytest.raises(AssertionError):
        _ref_ms_ssim(np.zeros((160, 300)), np.zeros((160, 300)), 4095)


@needs_torch
def test_ssim_too_small():
    a = np.zeros((10, 50))
    with pytest.raises(ValueError, match="smaller than the 11-pixel window"):
        M.ssim(a, a, 4095)
    b = _phantom(11, 11, 12, seed=3)
    c = _degrade(b, 12, 30, seed=4)
    assert abs(M.ssim(b, c, 4095) - _ref_ssim(b, c, 4095)) < AGREE


# ------------------------------------------------------------- image_metrics


@needs_torch
def test_image_metrics():
    ref = _phantom(256, 230, 12, seed=21).astype(np.uint16)
    test = _degrade(ref.astype(float), 12, 25, seed=22).astype(np.uint16)
    m = M.image_metrics(ref, test, 12)
    assert set(m) == {"mse", "psnr_bits", "psnr_range", "ssim", "ms_ssim", "max_abs_error"}
    assert m["mse"] == M.mse(ref, test)
    assert m["psnr_bits"] == M.psnr_bits(ref, test, 12)
    assert m["psnr_range"] == M.psnr_range(ref, test)
    assert m["max_abs_error"] == M.max_abs_error(ref, test)
    assert abs(m["ssim"] - _ref_ssim(ref, test, 4095)) < AGREE
    assert abs(m["ms_ssim"] - _ref_ms_ssim(ref, test, 4095)) < AGREE
    small = M.image_metrics(ref[:100, :100], test[:100, :100], 12)
    assert math.isnan(small["ms_ssim"]) and 0 < small["ssim"] < 1


# ----------------------------------------------------------------- Bjøntegaard

RATE_A = [0.35, 0.7, 1.4, 2.8, 5.6]
PSNR_A = [36.1, 40.2, 44.0, 47.3, 50.1]


@pytest.mark.parametrize("c", [0.8, 1.0, 1.25, 2.0])
def test_bd_rate_constant_rate_factor(c):
    rb = [r * c for r in RATE_A]
    assert M.bd_rate(RATE_A, PSNR_A, rb, PSNR_A) == pytest.approx((c - 1) * 100, abs=1e-9)
    assert M.bd_rate(RATE_A[:4], PSNR_A[:4], rb[:4], PSNR_A[:4]) == pytest.approx((c - 1) * 100, abs=1e-9)
    # a uniformly cheaper/dearer curve has BD-PSNR of the sign that says so
    if c != 1.0:
        assert (M.bd_psnr(RATE_A, PSNR_A, rb, PSNR_A) > 0) == (c < 1)


@pytest.mark.parametrize("d", [-1.5, 0.0, 0.37, 2.0])
def test_bd_psnr_constant_offset(d):
    pb = [p + d for p in PSNR_A]
    assert M.bd_psnr(RATE_A, PSNR_A, RATE_A, pb) == pytest.approx(d, abs=1e-9)
    if d != 0:
        assert (M.bd_rate(RATE_A, PSNR_A, RATE_A, pb) < 0) == (d > 0)


def test_bd_swap_symmetry():
    rb = [0.3, 0.65, 1.5, 3.1]
    pb = [36.8, 40.5, 44.9, 48.0]
    fwd = M.bd_rate(RATE_A, PSNR_A, rb, pb)
    bwd = M.bd_rate(rb, pb, RATE_A, PSNR_A)
    assert (1 + fwd / 100) * (1 + bwd / 100) == pytest.approx(1.0, abs=1e-12)
    assert M.bd_psnr(RATE_A, PSNR_A, rb, pb) == pytest.approx(-M.bd_psnr(rb, pb, RATE_A, PSNR_A), abs=1e-12)


def test_bd_asymmetric_case_against_explicit_integration():
    quad = pytest.importorskip("scipy.integrate").quad
    ra = np.array([0.25, 0.6, 1.3, 2.6, 4.5])
    pa = np.array([34.0, 38.9, 43.5, 47.0, 49.2])
    rb = np.array([0.31, 0.55, 1.05, 2.2, 3.9, 6.0])
    pb = np.array([35.7, 39.1, 42.9, 46.8, 49.6, 51.0])

    # BD-rate: fits of ln(rate) over PSNR, mean difference over the PSNR overlap.
    fa = np.poly1d(np.polyfit(pa, np.log(ra), 3))
    fb = np.poly1d(np.polyfit(pb, np.log(rb), 3))
    lo, hi = max(pa.min(), pb.min()), min(pa.max(), pb.max())
    assert (lo, hi) == (35.7, 49.2)
    diff, _ = quad(lambda p: fb(p) - fa(p), lo, hi, epsabs=1e-13, epsrel=1e-13)
    expected_rate = (math.exp(diff / (hi - lo)) - 1) * 100
    got = M.bd_rate(ra, pa, rb, pb)
    assert got == pytest.approx(expected_rate, abs=1e-9)
    # the VCEG-M33 formulation with log10 gives the same number
    ga = np.poly1d(np.polyfit(pa, np.log10(ra), 3))
    gb = np.poly1d(np.polyfit(pb, np.log10(rb), 3))
    d10, _ = quad(lambda p: gb(p) - ga(p), lo, hi, epsabs=1e-13, epsrel=1e-13)
    assert got == pytest.approx((10 ** (d10 / (hi - lo)) - 1) * 100, abs=1e-9)

    # BD-PSNR: fits of PSNR over ln(rate), mean difference over the ln-rate overlap.
    ha = np.poly1d(np.polyfit(np.log(ra), pa, 3))
    hb = np.poly1d(np.polyfit(np.log(rb), pb, 3))
    lo, hi = max(np.log(ra).min(), np.log(rb).min()), min(np.log(ra).max(), np.log(rb).max())
    assert (lo, hi) == (math.log(0.31), math.log(4.5))
    diff, _ = quad(lambda x: hb(x) - ha(x), lo, hi, epsabs=1e-13, epsrel=1e-13)
    assert M.bd_psnr(ra, pa, rb, pb) == pytest.approx(diff / (hi - lo), abs=1e-9)
    # and the numbers are not trivially zero
    assert abs(expected_rate) > 1 and abs(diff) > 0.1


def test_bd_errors():
    with pytest.raises(ValueError, match="at least 4 points"):
        M.bd_rate(RATE_A[:3], PSNR_A[:3], RATE_A, PSNR_A)
    with pytest.raises(ValueError, match="at least 4 points"):
        M.bd_psnr(RATE_A, PSNR_A, RATE_A[:3], PSNR_A[:3])
    with pytest.raises(ValueError, match="do not overlap"):
        M.bd_rate(RATE_A, PSNR_A, RATE_A, [p + 20 for p in PSNR_A])
    with pytest.raises(ValueError, match="do not overlap"):
        M.bd_psnr(RATE_A, PSNR_A, [r * 100 for r in RATE_A], PSNR_A)
    with pytest.raises(ValueError, match="rates"):
        M.bd_rate(RATE_A, PSNR_A[:4], RATE_A, PSNR_A)
    with pytest.raises(ValueError, match="positive"):
        M.bd_rate([0.0] + RATE_A[1:], PSNR_A, RATE_A, PSNR_A)
    with pytest.raises(ValueError, match="finite"):
        M.bd_rate(RATE_A, PSNR_A[:4] + [math.inf], RATE_A, PSNR_A)
    with pytest.raises(ValueError, match="distinct"):
        M.bd_rate(RATE_A, [40.0, 40.0, 41.0, 42.0, 42.0], RATE_A, PSNR_A)


# ------------------------------------------------------------ board-friendliness


def test_metrics_imports_numpy_only():
    code = (
        "import sys, codec.metrics; "
        "bad = [m for m in ('torch', 'scipy', 'pytorch_msssim') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
