"""Compiled kernels of the residual layer (:mod:`codec.residual`, :mod:`codec.lsq`), through numba.

The same integer and float64 steps as the numpy code of the residual engine (``_Engine.predict`` /
``update``: border rules, sub-predictors, error-weighted blend, context) and of
:class:`codec.lsq.LeastSquares` (window sums, the 17 x 17 solve, the prediction), one pixel at a time
instead of one wave at a time, without numpy's temporaries and per-call overhead. Both give the same
predictions, contexts and streams bit for bit:

* the window sums are int64 (wrap-around arithmetic, exact like numpy's);
* the solve is the same Gaussian elimination, operation for operation: numba compiles without
  fast-math flags, so LLVM neither fuses a multiply and a subtraction into an FMA nor reorders a sum,
  and every float64 operation is rounded as numpy rounds it;
* ``error_model="numpy"``: a zero pivot gives inf / nan as in numpy, replaced by the same rule;
* the engine's kernels are integer only (int64, as the numpy code), so there is nothing to round.

The tests code every bundled sample both ways and compare the bytes. numba is optional: without it
(or with ``MEDCODEC_JIT=0``) :mod:`codec.lsq` runs its numpy code, and the board, which may lack numba,
decodes what the host encoded either way.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["predict_wave", "update_wave", "blend_wave", "learn_wave"]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def predict_wave(ii, jj, idx, x, xh, xh_s, with_xhat, wp, offsets, cs, vs, nr, nc, cols, radius, ridge,
                 clip, pair, npair, out, w_out, fc_out):  # pragma: no cover - compiled
    """Predictions of the interior pixels ``(ii, jj)`` (flat indices ``idx``) of one wave.

    Writes the prediction to ``out``, the W neighbour to ``w_out`` and the features minus W to
    ``fc_out`` (the update needs them), exactly as ``LeastSquares.predict_interior`` does with numpy.
    ``cs`` are the row prefix sums (as in numpy), ``vs`` their running sums down each column (row ``r``
    holds the sum of rows ``0 .. r``), which give the window's rectangular parts in two reads instead of
    one per row: the same integers, a third of the memory traffic of a wide frame.
    """
    k_ = fc_out.shape[1]
    nprod = cs.shape[2]
    nof = offsets.size
    split = (radius + 2) // 2  # rows d >= split end at column j + R + 1; rows d < split at j + 2 d
    s = np.empty(nprod, np.int64)
    a = np.empty((k_, k_), np.float64)
    b = np.empty(k_, np.float64)
    coef = np.empty(k_, np.float64)
    for p in range(ii.size):
        i, j, ix = ii[p], jj[p], idx[p]
        w = np.int64(x[ix + offsets[0]])
        w_out[p] = w
        for k in range(nof):
            fc_out[p, k] = np.int64(x[ix + offsets[k]]) - w
        if with_xhat:
            fc_out[p, nof] = np.int64(xh[ix]) - w
            fc_out[p, nof + 1] = np.int64(xh[ix - wp]) - w
            fc_out[p, nof + 2] = np.int64(xh_s[ix]) - w
            fc_out[p, nof + 3] = np.int64(xh[ix - 1]) - w
            fc_out[p, nof + 4] = np.int64(xh[ix + 1]) - w
        # the window's sums (rows i - R .. i, columns max(j - R, 0) .. right_d - 1; rows above the image
        # are the zero row nr): rows i .. i - split + 1 one by one (their right ends are the row fronts),
        # the others and the left edge as differences of column sums
        left = max(j - radius, 0) % nc
        ra = min(j + radius + 1, cols) % nc
        top = i - radius - 1
        rtop = top % nr if top >= 0 else nr
        rmid = (i - split) % nr if i - split >= 0 else nr
        ri = i % nr
        for q in range(nprod):
            s[q] = (vs[rmid, ra, q] - vs[rtop, ra, q]) - (vs[ri, left, q] - vs[rtop, left, q])
        for d in range(split):
            r = i - d
            if r < 0:
                break
            rc = min(j + 2 * d, cols) % nc
            rr = r % nr
            for q in range(nprod):
                s[q] += cs[rr, rc, q]
        for u in range(k_):
            for v in range(k_):
                a[u, v] = np.float64(s[pair[u * k_ + v]])
            a[u, u] += ridge
            b[u] = np.float64(s[npair + u])
        # Gaussian elimination without pivoting, then column-oriented back substitution
        # (each element sees the same operations in the same order as solve_spd's vectorised steps)
        for k in range(k_ - 1):
            piv, bk = a[k, k], b[k]
            for r in range(k + 1, k_):
                fr = a[r, k] / piv
                for c in range(k + 1, k_):
                    a[r, c] -= fr * a[k, c]
                b[r] -= fr * bk
        for m in range(k_ - 1, -1, -1):
            coef[m] = b[m] / a[m, m]
            for r in range(m):
                b[r] -= a[r, m] * coef[m]
        acc = 0.0
        for k in range(k_):
            acc += coef[k] * np.float64(fc_out[p, k])
        if not np.isfinite(acc):
            acc = 0.0
        acc = min(max(acc, -clip), clip)
        out[p] = w + np.int64(np.floor(acc + 0.5))


@numba.njit(cache=True, nogil=True)
def update_wave(i, j, v, sel, w, fc, cs, vs, nr, nc, ia, ib):  # pragma: no cover - compiled
    """Add the decoded values ``v`` of the wave ``(i, j)`` to the row prefix sums ``cs`` and their
    column sums ``vs``.

    ``sel`` (ascending) are the wave positions of the interior pixels, ``w`` / ``fc`` their W
    neighbour and features as :func:`predict_wave` left them.
    """
    nprod = cs.shape[2]
    npair = ia.size
    k_ = fc.shape[1]
    t = 0
    for p in range(i.size):
        rr = i[p] % nr
        up = (i[p] - 1) % nr if i[p] > 0 else nr  # the row above (the zero row above the first)
        c0, c1 = j[p] % nc, (j[p] + 1) % nc
        if j[p] == 0:
            cs[rr, 0, :] = 0
            vs[rr, 0, :] = vs[up, 0, :]
        if t < sel.size and sel[t] == p:
            y = np.int64(v[p]) - w[t]
            for q in range(npair):
                cs[rr, c1, q] = cs[rr, c0, q] + fc[t, ia[q]] * fc[t, ib[q]]
            for k in range(k_):
                cs[rr, c1, npair + k] = cs[rr, c0, npair + k] + fc[t, k] * y
            t += 1
        else:
            for q in range(nprod):
                cs[rr, c1, q] = cs[rr, c0, q]
        for q in range(nprod):
            vs[rr, c1, q] = vs[up, c1, q] + cs[rr, c1, q]


@numba.njit(cache=True, nogil=True)
def _bitlen(v):  # pragma: no cover - compiled
    """Bit length of a non-negative integer (``_bitlen`` of codec.residual)."""
    n = 0
    while v > 0:
        v >>= 1
        n += 1
    return n


@numba.njit(cache=True, nogil=True)
def blend_wave(i, j, idx, x, err, eabs, xh, xh_s, with_xhat, lsp, wp, cols, dflt, vmax, nctx, boost,
               p_out, ctx_out, pk_out):  # pragma: no cover - compiled
    """``_Engine.predict`` of codec.residual for the pixels of one wave.

    ``lsp`` holds the least-squares predictions (``lsp.size == 0`` without the ls predictor), with
    ``INT64_MIN`` where the pixel is not interior (the engine's fallback is used there). Writes the
    blended prediction ``p_out``, the context ``ctx_out`` and the clipped sub-predictions ``pk_out``
    (``npred x n``).
    """
    npred = pk_out.shape[0]
    with_ls = lsp.size > 0
    nbr = np.empty(7, np.int64)  # W, N, NW, NE, WW, NN, NNE
    pk = np.empty(npred, np.int64)
    wgt = np.empty(npred, np.int64)
    for p in range(i.size):
        r, c, ix = i[p], j[p], idx[p]
        w, n = ix - 1, ix - wp
        nw, ne, ww, nn, nne = n - 1, n + 1, ix - 2, n - wp, n - wp + 1
        if r == 0:  # first row: everything above is the W pixel (the default cell at (0, 0))
            up = w if c > 0 else dflt
            n = nw = ne = nn = nne = up
        if r == 1:
            nn, nne = n, ne
        if c == cols - 1 and r != 0:  # last column: NE is N, NNE is NN
            ne, nne = n, nn
        if c == 0:  # first column: W, NW, WW are N
            left = n if r > 0 else dflt
            w = nw = ww = left
        if c == 1:
            ww = w
        nbr[0], nbr[1], nbr[2], nbr[3], nbr[4], nbr[5], nbr[6] = w, n, nw, ne, ww, nn, nne
        W, N, NW, NE = np.int64(x[w]), np.int64(x[n]), np.int64(x[nw]), np.int64(x[ne])
        WW, NN = np.int64(x[ww]), np.int64(x[nn])
        mx, mn = max(W, N), min(W, N)
        med = mn if NW >= mx else (mx if NW <= mn else W + N - NW)
        pk[0], pk[1], pk[2], pk[3] = N, W, NE, NW
        pk[4], pk[5], pk[6], pk[7] = W + N - NW, W + NE - N, (W + N + 1) >> 1, (W + NE + 1) >> 1
        pk[8], pk[9], pk[10] = 2 * N - NN, 2 * W - WW, med
        fallback = med
        grad = np.int64(0)
        k = 11
        if with_xhat:
            h = np.int64(xh[ix])
            rW, rN, rNW = W - xh[w], N - xh[n], NW - xh[nw]
            rmx, rmn = max(rW, rN), min(rW, rN)
            rmed = rmn if rNW >= rmx else (rmx if rNW <= rmn else rW + rN - rNW)
            pk[11], pk[12], pk[13], pk[14], pk[15] = h, h + rW, h + rN, h + rmed, h + ((rW + rN) >> 1)
            fallback = h + rmed
            grad = abs(np.int64(xh[ix + 1]) - xh[ix - 1]) + abs(np.int64(xh_s[ix]) - xh[ix - wp])
            k = 16
        if with_ls:
            pk[k] = lsp[p] if lsp[p] != np.iinfo(np.int64).min else fallback
        smin = np.int64(1) << 62
        tot = np.int64(0)
        acc = np.int64(0)
        for q in range(npred):
            v = min(max(pk[q], 0), vmax)
            pk_out[q, p] = v
            s = np.int64(0)
            for m in range(7):
                s += err[q, nbr[m]]
            s = min(s, (1 << 19) - 1)
            smin = min(smin, s)
            wq = (np.int64(1) << 40) // ((2 * s + 1) * (2 * s + 1))
            if with_ls and q == npred - 1:
                wq <<= boost
            wgt[q] = wq
            tot += wq
            acc += wq * v
        p_out[p] = (acc + (tot >> 1)) // tot
        act = abs(W - NW) + abs(N - NW) + abs(N - NE)
        es = np.int64(eabs[w]) + eabs[n] + eabs[nw] + eabs[ne]
        a1 = smin + act + es + grad + 1
        kk = _bitlen(a1) - 1
        half = (a1 >> max(kk - 1, 0)) & 1
        q2 = 2 * kk + (half if kk >= 1 else 0)
        ctx_out[p] = min(q2, nctx - 1)


@numba.njit(cache=True, nogil=True)
def learn_wave(idx, p, pk, v, x, err, eabs):  # pragma: no cover - compiled
    """``_Engine.update`` of codec.residual without the frequency tables: store the reconstruction
    ``v`` and every sub-predictor's and the blend's absolute error."""
    for q in range(idx.size):
        ix, val = idx[q], v[q]
        x[ix] = val
        for m in range(pk.shape[0]):
            err[m, ix] = abs(pk[m, q] - val)
        eabs[ix] = abs(val - p[q])
