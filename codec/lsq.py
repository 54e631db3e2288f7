"""Backward-adaptive least-squares prediction for the residual layer (numpy only, runs on the board).

For every pixel the predictor solves a small least-squares problem on pixels that are already decoded
(the *training window*) and applies the solution to the pixel's own causal neighbourhood: the same
idea as the LS-based lossless coders (Wu, Barthel and Zhang's CALIC successors, Meyer's TMW, MRP), made
to fit the residual layer's diagonal waves so that the decoder stays vectorised.

Features and target
-------------------
The features of a pixel at row ``i``, column ``j`` are the ``K`` causal neighbours of
:data:`OFFSETS` (17 of them, within three rows and three columns, each on an earlier wave than
the pixel: ``2 di + dj < 0``), and, when the lossy layer's ``x_hat``
is given, :data:`XHAT_OFFSETS` of ``x_hat`` (the co-located value and its four neighbours, ``x_hat``
being known everywhere). Everything is taken relative to the W neighbour: features ``f_k - W``,
target ``x - W``. With ``x_hat`` the previous slice of a volume, this is a 3-D least-squares
predictor.

Training window
---------------
The pixels of rows ``i - R .. i`` and columns ``j - R .. j + R`` (``R`` = :data:`RADIUS`) that lie on
an earlier wave than the pixel (``2 r + c < 2 i + j``): a staircase, because the decoder has not got
the pixels to the upper right of the current wave yet. Only *interior* pixels (at least
:data:`MARGIN` rows from the top and columns from the left and right edges, so that every feature is
a real pixel) train the predictor or use it; the others keep the residual layer's other predictors.

Normal equations, exactly
-------------------------
For each interior pixel the products ``f_a f_b`` (``a <= b``) and ``f_a y`` are integers below
2**33; the predictor keeps their running sums along each row (int64), so a window's sums are
``R + 1`` differences of row prefix sums: exact integers below 2**53 (at most ``R (2 R + 1) + R``
products), converted to float64 exactly. Only what a later pixel can still read is kept: a ring of
the rows one wave spans plus ``R`` (a wave spans ``cols / 2`` rows), and in each row a ring of the
last ``3 R + 2`` columns behind the row's decoding front (int64 wrap-around keeps the differences
exact): about 10 MB for a 512-pixel-wide frame, 40 MB for a 2048-pixel-wide radiograph. The compiled
kernels also keep the running sums of those row sums down each column (25 columns per row), so that the
window's rows ``i - R .. i - R // 2 - 1`` and its left edge cost two reads each instead of one per row:
the same exact integers, from twice the memory.

Solve, deterministically
------------------------
``(A + ridge I) c = b`` is solved by Gaussian elimination (no pivoting: the matrix is symmetric
positive definite) written with numpy element-wise operations only (no BLAS, no LAPACK, no
reductions whose order a library could change), so every IEEE-754 machine computes the same
float64 values, and the prediction ``W + floor(sum_k c_k (f_k - W) + 1/2)`` (summed in a fixed order)
is the same integer on the host and on the board.

Where numba is importable (and ``MEDCODEC_JIT`` is not ``0``), :func:`backend` says ``"numba"`` and the
window sums, the solve and the prediction run in :func:`codec.jit.predict_wave` / ``update_wave``: the
same operations per pixel, in the same order, without fast-math (no FMA, no reordered sums), so the
predictions are bit for bit those of the numpy code below (tested on every bundled sample).
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from codec.errors import MedcodecError

__all__ = ["OFFSETS", "XHAT_OFFSETS", "RADIUS", "MARGIN", "RIDGE", "JIT_ENV", "LeastSquares", "backend",
           "kernels", "solve_spd", "memory_bytes"]

#: causal neighbours (row, column offsets); the first one is W, the reference of the others
OFFSETS = ((0, -1), (-1, 0), (-1, -1), (-1, 1), (0, -2), (-2, 0), (-1, -2), (-2, -1), (-2, 1), (-2, -2),
           (-2, 2), (0, -3), (-3, 0), (-1, -3), (-3, -1), (-3, 1), (-2, 3))
#: x_hat samples used with a lossy layer or a previous slice: co-located, N, S, W, E
XHAT_OFFSETS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
#: training window half-width (rows i - R .. i, columns j - R .. j + R)
RADIUS = 7
#: pixels closer than this to the top, left or right edge do not use or train the predictor
MARGIN = 3
#: added to the diagonal of the normal equations (a flat window predicts W)
RIDGE = 1.0
#: a predicted offset from W is clipped to this before rounding (never reached by sane solutions)
_CLIP = float(1 << 20)


#: environment variable: ``0`` runs the numpy code even where numba is installed, ``1`` (or unset) the
#: compiled kernels of :mod:`codec.jit` where it is
JIT_ENV = "MEDCODEC_JIT"


def kernels():
    """The module :mod:`codec.jit` where the compiled kernels can run (numba importable and
    ``MEDCODEC_JIT`` not ``0``), else None (the numpy code runs). Both give the same bytes; the kernels
    are 2-3 times faster per frame."""
    flag = os.environ.get(JIT_ENV, "1").strip().lower()
    if flag not in ("0", "1", "off", "on", ""):
        raise MedcodecError(f"{JIT_ENV} must be 0 or 1, got {flag!r}")
    if flag in ("0", "off"):
        return None
    try:
        return importlib.import_module("codec.jit")
    except ImportError:  # no numba (a board image without it)
        return None


def backend() -> str:
    """``"numba"`` or ``"numpy"``: what :func:`kernels` gives."""
    return "numpy" if kernels() is None else "numba"


def _num_features(with_xhat: bool) -> int:
    return len(OFFSETS) + (len(XHAT_OFFSETS) if with_xhat else 0)


def _ring_rows(rows: int, cols: int) -> int:
    # rows live at one wave (cols / 2 + 1) plus the window's R rows above, plus one spare
    return min(rows, cols // 2 + RADIUS + 3)


def _ring_cols(cols: int, column_sums: bool = False) -> int:
    # a row d rows above reads columns j - R .. j + 2 d; its front is at j + 2 d - 1 <= j + 2 R - 1.
    # With the kernels' column sums, the row R + 1 above is read too (at j - R, its front at j + 2 R + 1).
    return min(cols + 1, 3 * RADIUS + (4 if column_sums else 2))


def memory_bytes(rows: int, cols: int, with_xhat: bool, jit: bool | None = None) -> int:
    """Bytes of the row prefix sums the predictor keeps for a ``rows`` x ``cols`` frame (twice that, a
    little more, with the compiled kernels, which keep their column sums too; ``jit`` None: as
    :func:`backend` says)."""
    if jit is None:
        jit = backend() == "numba"
    k = _num_features(with_xhat)
    return (2 if jit else 1) * _ring_rows(rows, cols) * _ring_cols(cols, jit) * (k * (k + 1) // 2 + k) * 8


def solve_spd(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``a[n] x[n] = b[n]`` for a batch of symmetric positive definite ``K x K`` systems.

    Gaussian elimination without pivoting, element-wise numpy operations only, in a fixed order:
    bit-identical on every IEEE-754 platform. ``a`` (n, K, K) and ``b`` (n, K) float64 are not
    modified. Non-finite results (a matrix that is not positive definite in floating point) are
    returned as they come; the caller replaces them.
    """
    # (K, K, n) layout: every operation runs along the contiguous batch axis
    a = np.moveaxis(np.asarray(a, dtype=np.float64), 0, -1).copy()
    b = np.asarray(b, dtype=np.float64).T.copy()
    k_ = a.shape[0]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for k in range(k_ - 1):
            f = a[k + 1:, k] / a[k, k]
            a[k + 1:, k + 1:] -= f[:, None] * a[None, k, k + 1:]
            b[k + 1:] -= f * b[k]
        x = np.empty_like(b)
        for m in range(k_ - 1, -1, -1):  # column-oriented back substitution
            x[m] = b[m] / a[m, m]
            b[:m] -= a[:m, m] * x[m]
    x = x.T
    return x


class LeastSquares:
    """The predictor's state for one frame, driven wave by wave by the residual engine.

    ``wp`` is the engine's padded row width (2 columns of margin on each side, 2 rows on top), so
    the flat index of a pixel is ``(i + 2) * wp + j + 2``; ``xh`` / ``xh_s`` are the engine's padded
    ``x_hat`` and its S-neighbour array (or None).
    """

    def __init__(self, rows: int, cols: int, wp: int, xh: np.ndarray | None = None,
                 xh_s: np.ndarray | None = None):
        self.rows, self.cols, self.wp = rows, cols, wp
        self.xh, self.xh_s = xh, xh_s
        self.k = _num_features(xh is not None)
        ia, ib = np.triu_indices(self.k)
        self.ia, self.ib = ia, ib
        self.npair = ia.size
        self.nprod = self.npair + self.k
        pair = np.zeros((self.k, self.k), dtype=np.int64)
        pair[ia, ib] = np.arange(self.npair)
        pair[ib, ia] = np.arange(self.npair)
        self.pair = pair.ravel()
        self.diag = np.arange(self.k) * (self.k + 1)
        self.offsets = np.array([di * wp + dj for di, dj in OFFSETS], dtype=np.int64)
        self._jit = kernels()
        self.nr, self.nc = _ring_rows(rows, cols), _ring_cols(cols, self._jit is not None)
        # one more row, always zero: where the window reaches above the image
        self.cs = np.zeros((self.nr + 1, self.nc, self.nprod), dtype=np.int64)
        # the kernels' column sums of cs (row r: rows 0 .. r, in the same ring), for the window's rectangles
        self.vs = np.zeros_like(self.cs) if self._jit is not None else None
        self._feat: tuple | None = None

    def interior(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return (i >= MARGIN) & (j >= MARGIN) & (j < self.cols - MARGIN)

    def _features(self, idx: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(W, features - W) of the pixels at flat indices ``idx`` (interior ones)."""
        nb = x[idx[:, None] + self.offsets[None, :]].astype(np.int64)
        if self.xh is not None:
            xh, wp = self.xh, self.wp
            extra = np.stack([xh[idx], xh[idx - wp], self.xh_s[idx], xh[idx - 1], xh[idx + 1]], axis=1)
            nb = np.concatenate([nb, extra.astype(np.int64)], axis=1)
        w = nb[:, 0].copy()
        return w, nb - w[:, None]

    def predict(self, i: np.ndarray, j: np.ndarray, idx: np.ndarray, x: np.ndarray,
                fallback: np.ndarray) -> np.ndarray:
        """Predictions for the pixels of one wave (``fallback`` where the predictor is not used)."""
        out = fallback.copy()
        sel, pred = self.predict_interior(i, j, idx, x)
        out[sel] = pred
        return out

    def predict_interior(self, i: np.ndarray, j: np.ndarray, idx: np.ndarray,
                         x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions in the wave of the interior pixels, their predictions) for one wave."""
        sel = np.flatnonzero(self.interior(i, j))
        if sel.size == 0:
            self._feat = (sel, np.zeros(0, dtype=np.int64), np.zeros((0, self.k), dtype=np.int64))
            return sel, np.zeros(0, dtype=np.int64)
        if self._jit is not None:
            pred = np.empty(sel.size, dtype=np.int64)
            w = np.empty(sel.size, dtype=np.int64)
            fc = np.empty((sel.size, self.k), dtype=np.int64)
            with_xhat = self.xh is not None
            xh = self.xh if with_xhat else x[:1]
            xh_s = self.xh_s if with_xhat else x[:1]
            self._jit.predict_wave(i[sel], j[sel], idx[sel], x, xh, xh_s, with_xhat, self.wp, self.offsets,
                                   self.cs, self.vs, self.nr, self.nc, self.cols, RADIUS, RIDGE, _CLIP,
                                   self.pair, self.npair, pred, w, fc)
            self._feat = (sel, w, fc)
            return sel, pred
        ii, jj = i[sel], j[sel]
        w, fc = self._features(idx[sel], x)
        self._feat = (sel, w, fc)
        # window sums: R + 1 differences of row prefix sums
        s = np.zeros((sel.size, self.nprod), dtype=np.int64)
        left = np.maximum(jj - RADIUS, 0) % self.nc
        for d in range(RADIUS + 1):
            r = ii - d
            if r.max() < 0:
                break
            right = jj if d == 0 else np.minimum(np.minimum(jj + RADIUS + 1, jj + 2 * d), self.cols)
            rr = np.where(r >= 0, r % self.nr, self.nr)
            s += self.cs[rr, right % self.nc]
            s -= self.cs[rr, left]
        sf = s.astype(np.float64)
        a = sf[:, self.pair].reshape(-1, self.k, self.k)
        a.reshape(-1, self.k * self.k)[:, self.diag] += RIDGE
        coef = solve_spd(a, sf[:, self.npair:])
        acc = np.zeros(sel.size, dtype=np.float64)
        ff = fc.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            for k in range(self.k):
                acc += coef[:, k] * ff[:, k]
        acc = np.where(np.isfinite(acc), acc, 0.0)
        acc = np.clip(acc, -_CLIP, _CLIP)
        return sel, w + np.floor(acc + 0.5).astype(np.int64)

    def update(self, i: np.ndarray, j: np.ndarray, v: np.ndarray) -> None:
        """Add the decoded values ``v`` of the wave last predicted to the row prefix sums."""
        sel, w, fc = self._feat
        if self._jit is not None:
            self._jit.update_wave(i, j, v, sel, w, fc, self.cs, self.vs, self.nr, self.nc, self.ia, self.ib)
            return
        rr = i % self.nr
        start = j == 0
        if start.any():
            self.cs[rr[start], 0] = 0
        prev = self.cs[rr, j % self.nc]
        if sel.size:
            y = v[sel].astype(np.int64) - w
            prod = np.concatenate([fc[:, self.ia] * fc[:, self.ib], fc * y[:, None]], axis=1)
            prev[sel] += prod
        self.cs[rr, (j + 1) % self.nc] = prev
