"""Image-quality and rate metrics for 12-16-bit medical images (numpy only).

Runs on the host and on the board: it needs numpy and nothing else (no torch,
no scipy). Every computation is done in float64; any integer or float input
dtype is accepted and converted first, so ``uint16 - uint16`` never wraps and
signed ``int16`` data (CT) is handled like any other.

Shapes
------
Images are ``(rows, cols)`` arrays. A ``(frames, rows, cols)`` array is a stack
of frames of one image, and is treated as follows:

* ``mse`` is the mean over all pixels of all frames, which is the same number
  as the mean of the per-frame MSEs (all frames have the same size);
* ``psnr`` / ``psnr_bits`` / ``psnr_range`` are computed from that pooled MSE
  (the PSNR of the mean MSE, *not* the mean of per-frame PSNRs, which would be
  ``inf`` as soon as one frame is reconstructed exactly); ``psnr_range`` takes
  its peak from the whole stack's ``max - min``;
* ``max_abs_error`` is the maximum over all frames;
* ``ssim`` and ``ms_ssim`` are computed per frame and averaged over frames
  (what ``pytorch_msssim`` does for a batch of frames with ``size_average``).

data_range / peak
-----------------
The default, used by :func:`image_metrics`, :func:`psnr_bits` and for SSIM /
MS-SSIM, is the container's nominal range ``2**BitsStored - 1`` (4095 for
12-bit data, 65535 for 16-bit). It depends only on the modality's storage, not
on the content of the image, so the figures are comparable across images of
one modality (and with other papers that use the nominal range). Its drawback
is that an image that uses only a small part of that range (most CT and MR
images do) gets flattering numbers. The alternative, content-dependent figures
are :func:`psnr_range` (peak = the reference image's own ``max - min``) and
``ssim`` / ``ms_ssim`` called with ``data_range=float(ref.max() - ref.min())``;
report which one is used.

SSIM / MS-SSIM
--------------
:func:`ssim` and :func:`ms_ssim` reproduce ``pytorch_msssim`` 1.0.0
(``ssim`` / ``ms_ssim`` with ``size_average=True``, ``win_size=11``,
``win_sigma=1.5``, ``K=(0.01, 0.03)``): a separable Gaussian window applied
without padding ("valid"), the 5 default MS-SSIM weights
``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``, 2x2 average pooling between
levels with one zero of padding on both sides of a dimension of odd length
(``F.avg_pool2d(kernel_size=2, padding=size % 2)``, zeros counted in the mean),
``relu`` of the contrast-structure term at every level but the last and of the
SSIM term at the last level, and no ``relu`` in plain SSIM.

``pytorch_msssim`` builds its Gaussian window in float32 (even for float64
images); the window's rounding moves SSIM by a few 1e-6 on 12-16-bit data, so
the default window here is pytorch_msssim's float32 window, bit for bit. For
other window sizes / sigmas the float32 window is rebuilt in numpy and can
differ from torch's in the last bit of some taps.

MS-SSIM needs the smaller side to exceed ``(win_size - 1) * 2**(levels - 1)``
(160 for the defaults: the smallest image is 161 pixels on a side); smaller
images raise ``ValueError`` (``image_metrics`` reports ``nan`` for them).

Bjøntegaard
-----------
:func:`bd_rate` and :func:`bd_psnr` are the VCEG-M33 cubic-polynomial version:
``np.polyfit`` of degree 3 (least squares when a curve has more than 4 points)
and exact integration of the fitted polynomials (``np.polyint``) over the
interval where both curves are defined. Curve ``a`` is the anchor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "MS_SSIM_WEIGHTS",
    "bd_psnr",
    "bd_rate",
    "bpp",
    "file_bpp",
    "gaussian_window",
    "image_metrics",
    "max_abs_error",
    "ms_ssim",
    "ms_ssim_min_side",
    "mse",
    "psnr",
    "psnr_bits",
    "psnr_range",
    "ssim",
]

#: The default MS-SSIM level weights (Wang et al. 2003; pytorch_msssim's default).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# pytorch_msssim's _fspecial_gauss_1d(11, 1.5), float32, exactly (torch's expf
# and float32 sum do not always round like numpy's, so it is stored, not built).
_DEFAULT_WIN = np.array(
    [
        float.fromhex(h)
        for h in (
            "0x1.0d957p-10",
            "0x1.f1fe02p-8",
            "0x1.26eb18p-5",
            "0x1.bff0fep-4",
            "0x1.b43c3ep-3",
            "0x1.106560p-2",
            "0x1.b43c3ep-3",
            "0x1.bff0fep-4",
            "0x1.26eb18p-5",
            "0x1.f1fe02p-8",
            "0x1.0d957p-10",
        )
    ],
    dtype=np.float64,
)
_DEFAULT_WIN.setflags(write=False)


# --------------------------------------------------------------------------- rate


def bpp(n_bytes: int, rows: int, cols: int, frames: int = 1) -> float:
    """Bits per pixel: ``n_bytes * 8 / (rows * cols * frames)``."""
    for name, v in (("rows", rows), ("cols", cols), ("frames", frames)):
        if int(v) != v or v <= 0:
            raise ValueError(f"bpp: {name} must be a positive integer, got {v!r}")
    if n_bytes < 0:
        raise ValueError(f"bpp: n_bytes must be >= 0, got {n_bytes!r}")
    return float(n_bytes) * 8.0 / (int(rows) * int(cols) * int(frames))


def file_bpp(path, rows: int, cols: int, frames: int = 1) -> float:
    """Bits per pixel of a file, from its real size on disk (``os.path.getsize``)."""
    return bpp(os.path.getsize(os.fspath(path)), rows, cols, frames)


# ---------------------------------------------------------------- input handling


def _check_dtype(a: np.ndarray, name: str) -> None:
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name}: expected an integer or float array, got dtype {a.dtype}")


def _pair(ref, test, fn: str) -> tuple[np.ndarray, np.ndarray]:
    """Both arrays as they are (no conversion), checked: same 2-D/3-D shape, non-empty."""
    ref = np.asarray(ref)
    test = np.asarray(test)
    _check_dtype(ref, f"{fn}: ref")
    _check_dtype(test, f"{fn}: test")
    if ref.shape != test.shape:
        raise ValueError(f"{fn}: ref and test shapes differ: {ref.shape} vs {test.shape}")
    if ref.ndim not in (2, 3):
        raise ValueError(
            f"{fn}: expected a (rows, cols) or (frames, rows, cols) array, got shape {ref.shape}"
        )
    if ref.size == 0:
        raise ValueError(f"{fn}: empty image, shape {ref.shape}")
    return ref, test


def _f64(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64, copy=False)


def _frames(a: np.ndarray) -> np.ndarray:
    """(rows, cols) -> (1, rows, cols); (frames, rows, cols) unchanged."""
    return a[None] if a.ndim == 2 else a


# ------------------------------------------------------------------ pixel errors


def mse(ref, test) -> float:
    """Mean squared error on the stored values, in float64."""
    ref, test = _pair(ref, test, "mse")
    d = _f64(ref) - _f64(test)
    return float(np.mean(d * d))


def max_abs_error(ref, test):
    """Largest absolute difference of stored values.

    An ``int`` for integer inputs (computed exactly in int64, no wrap-around),
    a ``float`` when either input is a float array.
    """
    ref, test = _pair(ref, test, "max_abs_error")
    if (
        ref.dtype.kind in "iu"
        and test.dtype.kind in "iu"
        and np.can_cast(ref.dtype, np.int64)
        and np.can_cast(test.dtype, np.int64)
    ):
        d = ref.astype(np.int64) - test.astype(np.int64)
        return int(np.max(np.abs(d)))
    d = _f64(ref) - _f64(test)
    m = float(np.max(np.abs(d)))
    if ref.dtype.kind in "iu" and test.dtype.kind in "iu":  # uint64 beyond int64
        return int(m)
    return m


def _psnr_from_mse(m: float, peak: float) -> float:
    if m == 0.0:
        return math.inf
    return 10.0 * math.log10(float(peak) ** 2 / m)


def _check_peak(peak, fn: str) -> float:
    peak = float(peak)
    if not (peak > 0 and math.isfinite(peak)):
        raise ValueError(f"{fn}: peak / data_range must be a positive finite number, got {peak!r}")
    return peak


def psnr(ref, test, peak: float) -> float:
    """``10 * log10(peak**2 / mse)`` in dB; ``inf`` when the images are identical."""
    peak = _check_peak(peak, "psnr")
    return _psnr_from_mse(mse(ref, test), peak)


def _nominal_peak(bits_stored: int, fn: str) -> float:
    if int(bits_stored) != bits_stored or not 1 <= bits_stored <= 32:
        raise ValueError(f"{fn}: bits_stored must be an integer in 1..32, got {bits_stored!r}")
    return float(2 ** int(bits_stored) - 1)


def psnr_bits(ref, test, bits_stored: int) -> float:
    """PSNR with the container's nominal peak ``2**bits_stored - 1``."""
    return psnr(ref, test, _nominal_peak(bits_stored, "psnr_bits"))


def psnr_range(ref, test) -> float:
    """PSNR with the reference image's own range ``ref.max() - ref.min()`` as peak.

    The range is taken in float64 (no int16 overflow); a constant image (range 0)
    uses a peak of 1.
    """
    ref, test = _pair(ref, test, "psnr_range")
    peak = float(np.max(ref)) - float(np.min(ref))
    if peak == 0:
        peak = 1.0
    return psnr(ref, test, peak)


# ----------------------------------------------------------------- SSIM, MS-SSIM


def gaussian_window(win_size: int = 11, win_sigma: float = 1.5) -> np.ndarray:
    """The 1-D Gaussian window pytorch_msssim uses (float32 values, returned as float64).

    Exactly pytorch_msssim's window for the default (11, 1.5); for other
    parameters the same float32 recipe, which may differ in the last bit of a tap.
    """
    if int(win_size) != win_size or win_size < 1 or win_size % 2 != 1:
        raise ValueError(f"window size must be a positive odd integer, got {win_size!r}")
    win_size = int(win_size)
    if not (float(win_sigma) > 0):
        raise ValueError(f"win_sigma must be positive, got {win_sigma!r}")
    if win_size == 11 and float(win_sigma) == 1.5:
        return _DEFAULT_WIN.copy()
    coords = np.arange(win_size, dtype=np.float32) - np.float32(win_size // 2)
    q = -(coords * coords) / np.float32(2 * float(win_sigma) ** 2)
    g = np.exp(q.astype(np.float64)).astype(np.float32)
    g = g / np.float32(g.astype(np.float64).sum())
    return g.astype(np.float64)


def _filter_valid(x: np.ndarray, win: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of the last two axes with ``win`` (rows, then cols)."""
    k = win.shape[0]
    x = sliding_window_view(x, k, axis=-2) @ win
    x = sliding_window_view(x, k, axis=-1) @ win
    return x


def _ssim_cs(x: np.ndarray, y: np.ndarray, data_range: float, win: np.ndarray, k1: float, k2: float):
    """Mean SSIM and mean contrast-structure of two float64 (rows, cols) frames."""
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    # pytorch_msssim's expressions, evaluated in the same order but in place
    # (fewer full-size temporaries: faster, and less memory on the board).
    mu1 = _filter_valid(x, win)
    mu2 = _filter_valid(y, win)
    mu1_sq = mu1 * mu1
    mu2_sq = mu2 * mu2
    mu1_mu2 = np.multiply(mu1, mu2, out=mu1)
    del mu1, mu2
    prod = x * x
    sigma1_sq = _filter_valid(prod, win)
    sigma1_sq -= mu1_sq
    sigma2_sq = _filter_valid(np.multiply(y, y, out=prod), win)
    sigma2_sq -= mu2_sq
    sigma12 = _filter_valid(np.multiply(x, y, out=prod), win)
    sigma12 -= mu1_mu2
    del prod
    # cs_map = (2 * sigma12 + C2) / (sigma1_sq + sigma2_sq + C2)
    cs_map = sigma12
    cs_map *= 2
    cs_map += c2
    sigma1_sq += sigma2_sq
    sigma1_sq += c2
    cs_map /= sigma1_sq
    del sigma1_sq, sigma2_sq
    # ssim_map = ((2 * mu1_mu2 + C1) / (mu1_sq + mu2_sq + C1)) * cs_map
    ssim_map = mu1_mu2
    ssim_map *= 2
    ssim_map += c1
    mu1_sq += mu2_sq
    mu1_sq += c1
    ssim_map /= mu1_sq
    ssim_map *= cs_map
    return float(np.mean(ssim_map)), float(np.mean(cs_map))


def _avg_pool2(x: np.ndarray) -> np.ndarray:
    """``F.avg_pool2d(x, kernel_size=2, padding=[s % 2 for s in x.shape])`` of a 2-D array."""
    ph, pw = x.shape[0] % 2, x.shape[1] % 2
    if ph or pw:
        x = np.pad(x, ((ph, ph), (pw, pw)))
    h, w = x.shape[0] // 2, x.shape[1] // 2
    x = x[: 2 * h, : 2 * w]
    return (x[0::2, 0::2] + x[0::2, 1::2] + x[1::2, 0::2] + x[1::2, 1::2]) / 4.0


def _ssim_args(ref, test, data_range, win_size, win_sigma, k, fn):
    ref, test = _pair(ref, test, fn)
    data_range = _check_peak(data_range, fn)
    win = gaussian_window(win_size, win_sigma)
    k1, k2 = (float(v) for v in k)
    return _frames(ref), _frames(test), data_range, win, k1, k2


def ssim(
    ref,
    test,
    data_range: float,
    *,
    win_size: int = 11,
    win_sigma: float = 1.5,
    k: Sequence[float] = (0.01, 0.03),
) -> float:
    """Mean SSIM (pytorch_msssim.ssim, size_average=True); mean over frames for 3-D input."""
    ref, test, data_range, win, k1, k2 = _ssim_args(ref, test, data_range, win_size, win_sigma, k, "ssim")
    if min(ref.shape[-2:]) < win.shape[0]:
        raise ValueError(
            f"ssim: image of {ref.shape[-2]}x{ref.shape[-1]} is smaller than the {win.shape[0]}-pixel window"
        )
    vals = [_ssim_cs(_f64(r), _f64(t), data_range, win, k1, k2)[0] for r, t in zip(ref, test, strict=True)]
    return float(np.mean(vals))


def ms_ssim_min_side(win_size: int = 11, levels: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Smallest side MS-SSIM accepts: ``(win_size - 1) * 2**(levels - 1) + 1`` (161)."""
    return (int(win_size) - 1) * 2 ** (int(levels) - 1) + 1


def ms_ssim(
    ref,
    test,
    data_range: float,
    weights: Sequence[float] | None = None,
    *,
    win_size: int = 11,
    win_sigma: float = 1.5,
    k: Sequence[float] = (0.01, 0.03),
) -> float:
    """Multi-scale SSIM (pytorch_msssim.ms_ssim, size_average=True); mean over frames for 3-D."""
    ref, test, data_range, win, k1, k2 = _ssim_args(ref, test, data_range, win_size, win_sigma, k, "ms_ssim")
    w = np.asarray(MS_SSIM_WEIGHTS if weights is None else weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)):
        raise ValueError(f"ms_ssim: weights must be a non-empty 1-D list of finite numbers, got {weights!r}")
    levels = w.size
    need = ms_ssim_min_side(win.shape[0], levels)
    if min(ref.shape[-2:]) < need:
        raise ValueError(
            f"ms_ssim: image of {ref.shape[-2]}x{ref.shape[-1]} is too small for {levels}-level "
            f"MS-SSIM with an {win.shape[0]}-pixel window: both sides must be at least {need} "
            f"pixels (the image is halved {levels - 1} times); use ssim() instead"
        )
    vals = []
    for r, t in zip(ref, test, strict=True):
        x, y = _f64(r), _f64(t)
        terms = np.empty(levels, dtype=np.float64)
        for i in range(levels):
            s, cs = _ssim_cs(x, y, data_range, win, k1, k2)
            if i < levels - 1:
                terms[i] = max(cs, 0.0)
                x, y = _avg_pool2(x), _avg_pool2(y)
            else:
                terms[i] = max(s, 0.0)
        vals.append(float(np.prod(terms**w)))
    return float(np.mean(vals))


# ---------------------------------------------------------------------- summary


def image_metrics(ref, test, bits_stored: int) -> dict:
    """All per-image figures, with ``data_range = 2**bits_stored - 1`` for SSIM / MS-SSIM.

    Keys: ``mse``, ``psnr_bits``, ``psnr_range``, ``ssim``, ``ms_ssim``,
    ``max_abs_error``. ``ms_ssim`` is ``nan`` when the image is smaller than
    :func:`ms_ssim_min_side` on a side.
    """
    ref, test = _pair(ref, test, "image_metrics")
    data_range = _nominal_peak(bits_stored, "image_metrics")
    if min(ref.shape[-2:]) >= ms_ssim_min_side():
        ms = ms_ssim(ref, test, data_range)
    else:
        ms = math.nan
    return {
        "mse": mse(ref, test),
        "psnr_bits": psnr_bits(ref, test, bits_stored),
        "psnr_range": psnr_range(ref, test),
        "ssim": ssim(ref, test, data_range),
        "ms_ssim": ms,
        "max_abs_error": max_abs_error(ref, test),
    }


# ------------------------------------------------------------------- Bjøntegaard


def _curve(rate, dist, name: str) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rate, dtype=np.float64).ravel()
    d = np.asarray(dist, dtype=np.float64).ravel()
    if r.shape != d.shape:
        raise ValueError(f"{name}: {r.size} rates but {d.size} distortion values")
    if r.size < 4:
        raise ValueError(f"{name}: the cubic Bjøntegaard fit needs at least 4 points, got {r.size}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(d))):
        raise ValueError(f"{name}: rates and distortions must be finite (drop lossless / inf-PSNR points)")
    if np.any(r <= 0):
        raise ValueError(f"{name}: rates must be positive")
    return r, d


def _bd_avg_diff(xa, ya, xb, yb, what: str) -> float:
    """Mean of (cubic fit of yb over xb) - (cubic fit of ya over xa) on the x-overlap."""
    for x, name in ((xa, "curve a"), (xb, "curve b")):
        if np.unique(x).size < 4:
            raise ValueError(f"{name}: the cubic fit needs at least 4 distinct {what} values")
    lo = max(xa.min(), xb.min())
    hi = min(xa.max(), xb.max())
    if not hi > lo:
        raise ValueError(
            f"the two curves' {what} ranges do not overlap "
            f"(a: {xa.min():g}..{xa.max():g}, b: {xb.min():g}..{xb.max():g})"
        )
    ia = np.polyint(np.polyfit(xa, ya, 3))
    ib = np.polyint(np.polyfit(xb, yb, 3))
    int_a = np.polyval(ia, hi) - np.polyval(ia, lo)
    int_b = np.polyval(ib, hi) - np.polyval(ib, lo)
    return float((int_b - int_a) / (hi - lo))


def bd_rate(rate_a, dist_a, rate_b, dist_b) -> float:
    """Bjøntegaard delta rate of curve b against anchor a, in percent.

    Cubic fit of ``log(rate)`` as a function of distortion (PSNR, dB), integrated
    over the overlapping distortion range. Negative: b needs fewer bits than a
    for the same quality.
    """
    ra, da = _curve(rate_a, dist_a, "curve a")
    rb, db = _curve(rate_b, dist_b, "curve b")
    avg = _bd_avg_diff(da, np.log(ra), db, np.log(rb), "distortion")
    return float(math.expm1(avg) * 100.0)


def bd_psnr(rate_a, dist_a, rate_b, dist_b) -> float:
    """Bjøntegaard delta PSNR of curve b against anchor a, in dB.

    Cubic fit of distortion (PSNR) as a function of ``log(rate)``, integrated over
    the overlapping log-rate range. Positive: b has the better quality at equal rate.
    """
    ra, da = _curve(rate_a, dist_a, "curve a")
    rb, db = _curve(rate_b, dist_b, "curve b")
    return _bd_avg_diff(np.log(ra), da, np.log(rb), db, "log-rate")
