"""The residual layer: lossless, near-lossless and target-PSNR coding on the CPU, numpy + constriction.

After the learned layer's reconstruction ``x_hat`` (stored values, same shape and dtype as the frame
``x``), this module codes what is left, at the native bit depth, so that the decoder gets ``x`` back
exactly (``max_error = 0``) or within ``|x - decoded| <= D`` everywhere (near-lossless, ``D >= 1``).
With ``x_hat = None`` it is a lossless / near-lossless image codec on its own (the residual-only path).

Model (the same integer steps on the encoder and the decoder)
--------------------------------------------------------------
Pixels are visited in *waves* ``t = 2 i + j`` (row ``i``, column ``j``): every causal neighbour that is
used (W, N, NW, NE, WW, NN, NNE) lies on an earlier wave, so one wave is one vectorised numpy step and
the decoder needs ``2 rows + cols`` steps, not ``rows * cols``. Per pixel:

1. **Prediction.** A blend of sub-predictors (N, W, NE, NW, W+N-NW, W+NE-N, (W+N)/2, (W+NE)/2, 2N-NN,
   2W-WW, MED; with ``x_hat`` also ``x_hat``, and ``x_hat`` plus the W, N, MED-of-(W, N, NW) and mean
   of W and N of the decoded residual ``x - x_hat``; with the ``"ls"`` predictor, flag bit 2, also the
   per-pixel least-squares prediction of :mod:`codec.lsq`, whose weight is multiplied by
   ``2**LS_BOOST``), each weighted by ``1 / (2 S_k + 1)^2`` where
   ``S_k`` is sub-predictor ``k``'s absolute error summed over the decoded W, N, NW, NE, WW, NN and
   NNE pixels (JPEG-XL's self-correcting predictor, with more neighbours: 7 rather than 4 saved
   0.4 % on CT and 0.8 % on CR). All in int64: ``w_k = 2**40 // (2 S_k + 1)**2``,
   ``p = (sum_k w_k P_k + sum_k w_k / 2) // sum_k w_k``.
2. **Context.** ``a = min_k S_k + |W - NW| + |N - NW| + |N - NE| + (|e_W| + |e_N| + |e_NW| + |e_NE|)``
   (``e`` the final prediction errors of the decoded neighbours, and with ``x_hat`` also the local
   gradient of ``x_hat`` at the pixel, which sees edges that are not decoded yet), quantised to
   ``c = floor(2 log2(a + 1))`` (integers: bit length and the next bit), at most ``NUM_CONTEXTS - 1``.
   (A LOCO-I style per-context bias cancellation was measured and dropped: the blend is already
   unbiased, and the correction cost 0.6 % on CT.)
3. **Quantisation** (near-lossless): ``q = sign(e) ((|e| + D) // (2 D + 1))``, reconstruction
   ``clip(p + q (2 D + 1), lo, hi)``, so ``|x - x'| <= D``; later predictions use the reconstruction.
4. **Symbols.** ``zigzag(q)`` split into a token (values < 16 as they are, larger ones as bit length
   and the 2 bits below the leading one, JPEG-XL's hybrid uint 4/2/0) and raw low bits.
5. **Entropy coding.** One adaptive frequency table of tokens per context (all counts start at 1, each
   coded token adds ``COUNT_STEP``; a table whose total passes ``COUNT_LIMIT`` is halved), updated
   after every wave; the tokens of a wave are coded with constriction's ``Categorical`` family, one row
   of integer counts per symbol, and the raw bits with its ``Uniform`` family, in one range-coded
   stream (no side information: the tables are learnt on both sides from the coded data).

Every quantity the decoder derives is an integer computed by numpy integer operations, and the model
rows handed to constriction are those integers (as float64, exact), so host and board decode alike. The
one exception, the least-squares solve of :mod:`codec.lsq`, is float64 element-wise arithmetic in a
fixed order (no BLAS, no LAPACK), which IEEE-754 makes the same on every machine.

Compiled kernels
----------------
Where numba is installed (it is pinned in requirements.lock; a board image may lack it) the per-pixel
work of a wave (the border rules, sub-predictors, blend and context here, the least-squares window sums
and solve of :mod:`codec.lsq`) runs in the kernels of :mod:`codec.jit`: the same integer and float64
operations in the same order, one pixel at a time, 2-3 times faster. ``MEDCODEC_JIT=0`` runs the
numpy code instead. The two are one format: every test frame gives the same bytes both ways, and either
decodes the other's streams (tested, across processes too).

Histogram packing
-----------------
Some images use a fraction of their value range (CR radiographs that use every third value, CT with a
padding value far below the body). In **lossless** mode the encoder may code ranks in the table of
used values instead (``packed``): the table goes into the stream (a zlib-compressed bitmap over
``lo..hi``), ``x_hat`` is mapped to the rank of its nearest used value, and the decoder maps ranks
back. It is chosen when a cheap estimate (a MED predictor's static entropy, both ways, plus the table's
bytes) says it pays. It is never used in near-lossless mode: there the bound ``D`` is in stored values,
and a rank step can span many of them.

Stream (version 1; integers little-endian)
------------------------------------------
::

    4   magic b"MDRS"
    u8  stream version (1)
    u8  flags: bit 0 packed, bit 1 x_hat given, bit 2 least-squares sub-predictor, bit 3 striped
        (bits 4-7 zero)
    u16 max error D
    u32 rows, u32 cols
    i32 lo, i32 hi               value range of the frame (reconstructions are clipped to it)
    u32 CRC-32 of x_hat          (0 without x_hat): the decoder refuses another x_hat
    u32 CRC-32 of the reconstruction (= x in lossless mode): checked after decoding
    [packed] u32 used-value count K, u32 n, n bytes zlib(packbits(bitmap of used values lo..hi))
    [striped] u16 stripe count S (2..16)
    per stripe (one without bit 3): u32 number of 32-bit words, then the range-coded words
    (little-endian u32); nothing may follow the last stripe

CRCs are zlib's CRC-32 over the array's values as little-endian bytes of its own dtype, C order.

Stripes
-------
A frame of at least ``2 * STRIPE_PIXELS`` (2**21) pixels is cut into ``S`` = :func:`stripe_count`
horizontal stripes (rows ``k rows // S .. (k + 1) rows // S``; at most 16, each at least 256 rows and
2**20 pixels), and each stripe is coded as a frame of its own (its own tables, predictor state and range
coder; the packing table, ``lo``, ``hi`` and the CRCs stay the frame's). The stripes are encoded and
decoded in parallel processes (``workers``, default: the CPUs the process may use, or the environment
variable ``MEDCODEC_WORKERS``); the stream depends on the geometry only, never on the number of
workers. This costs about 0.05 % bits on a 1-megapixel stripe (each stripe learns its statistics
again) and divides the time of a large radiograph by up to the number of cores. Frames below 2**21
pixels (every CT and MR slice) are one stripe, and their streams are unchanged.

Every damage the decoder can see raises :class:`ResidualError` (a ``MedcodecError``) with a one-line
message; the reconstruction CRC catches what the range coder cannot (a wrong symbol that still decodes).
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import constriction
import numpy as np

from codec.errors import MedcodecError
from codec.lsq import LeastSquares, kernels
from codec.parallel import default_workers, map_processes

__all__ = [
    "STREAM_VERSION",
    "MAX_ERROR_LIMIT",
    "ResidualError",
    "ResidualHeader",
    "Encoded",
    "crc32_of",
    "encode",
    "decode",
    "read_header",
    "encode_for_psnr",
    "psnr_for",
    "stripe_count",
    "default_workers",
]

MAGIC = b"MDRS"
STREAM_VERSION = 1
MAX_ERROR_LIMIT = 0xFFFF
NUM_CONTEXTS = 32
#: the least-squares sub-predictor's blend weight is multiplied by 2**LS_BOOST (measured best: 3)
LS_BOOST = 3
COUNT_STEP = 16
COUNT_LIMIT = 1 << 18
#: frames are limited to 2**31 pixels and 16-bit-range values (8-16-bit DICOM)
MAX_PIXELS = 1 << 31
MAX_SPAN = (1 << 16) - 1

_HEAD = struct.Struct("<4sBBHIIiiII")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
_FLAG_PACKED = 1
_FLAG_XHAT = 2
_FLAG_LS = 4
_FLAG_STRIPES = 8
#: the residual layer's predictors: "ls" adds the least-squares sub-predictor (codec/lsq.py), "blend"
#: is the fixed-predictor blend alone (5-7 times faster, 0.4-18 % more bits on the 62 shared images)
PREDICTORS = ("ls", "blend")

#: stripes: a frame of at least 2 * STRIPE_PIXELS pixels is cut into horizontal stripes of about
#: STRIPE_PIXELS or more pixels (and at least MIN_STRIPE_ROWS rows, at most MAX_STRIPES of them),
#: each coded on its own, so that several processes encode and decode one frame
STRIPE_PIXELS = 1 << 20
MIN_STRIPE_ROWS = 256
MAX_STRIPES = 16

Categorical = constriction.stream.model.Categorical
Uniform = constriction.stream.model.Uniform
RangeEncoder = constriction.stream.queue.RangeEncoder
RangeDecoder = constriction.stream.queue.RangeDecoder

# hybrid uint (JPEG-XL's 4/2/0): tokens < 16 are the value, then (bit length, 2 bits) classes
_SPLIT = 4
_MSB = 2


class ResidualError(MedcodecError):
    """A residual stream that cannot be decoded, does not belong to this x_hat, or bad input."""


@dataclass(frozen=True)
class ResidualHeader:
    rows: int
    cols: int
    max_error: int
    lo: int
    hi: int
    packed: bool
    has_xhat: bool
    xhat_crc: int
    recon_crc: int
    predictor: str = "blend"
    stripes: int = 1


@dataclass
class Encoded:
    """What :func:`encode` returns: the stream and the reconstruction the decoder will produce."""

    data: bytes
    recon: np.ndarray
    header: ResidualHeader


# --------------------------------------------------------------------------- small helpers


def crc32_of(arr: np.ndarray) -> int:
    """CRC-32 of an integer array's values (little-endian bytes of its dtype, C order)."""
    a = np.asarray(arr)
    return zlib.crc32(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()) & 0xFFFFFFFF


def _bitlen(v: np.ndarray) -> np.ndarray:
    """Bit length of non-negative integers < 2**53 (frexp's exponent is exact)."""
    return np.frexp(v.astype(np.float64))[1].astype(np.int64)


def _qlog(a: np.ndarray, n: int) -> np.ndarray:
    """``floor(2 log2(a + 1))``-like integer bins (bit length and the next bit), capped at n - 1."""
    a1 = a + 1
    k = _bitlen(a1) - 1  # floor(log2(a1)), a1 >= 1
    half = (a1 >> np.maximum(k - 1, 0)) & 1
    q = 2 * k + np.where(k >= 1, half, 0)
    return np.minimum(q, n - 1)


def _tokens(sym: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """zigzag symbols -> (token, raw value, raw bit count)."""
    n = _bitlen(sym) - 1
    big = sym >= (1 << _SPLIT)
    nraw = np.where(big, n - _MSB, 0)
    tok = np.where(big, (1 << _SPLIT) + (n - _SPLIT) * (1 << _MSB) + ((sym >> nraw) & ((1 << _MSB) - 1)), sym)
    raw = np.where(big, sym & ((1 << nraw) - 1), 0)
    return tok, raw, nraw


def _raw_bits(tok: np.ndarray) -> np.ndarray:
    t = tok - (1 << _SPLIT)
    return np.where(tok >= (1 << _SPLIT), t // (1 << _MSB) + _SPLIT - _MSB, 0)


def _untoken(tok: np.ndarray, raw: np.ndarray) -> np.ndarray:
    t = tok - (1 << _SPLIT)
    n = t // (1 << _MSB) + _SPLIT
    m = t % (1 << _MSB)
    big = tok >= (1 << _SPLIT)
    return np.where(big, (((1 << _MSB) + m) << np.maximum(n - _MSB, 0)) + raw, tok)


def _num_tokens(max_sym: int) -> int:
    tok = _tokens(np.array([max_sym], dtype=np.int64))[0]
    return max(2, int(tok[0]) + 1)


def _check_frame(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "iu" or x.dtype.itemsize > 2 or x.size == 0:
        raise ResidualError(f"{what}: need a non-empty 2-D array of 8-16-bit integers, got {x.shape} {x.dtype}")
    if x.size > MAX_PIXELS:
        raise ResidualError(f"{what}: {x.size} pixels, more than 2**31")
    return x


# --------------------------------------------------------------------------- histogram packing


def _pack_table(x: np.ndarray, lo: int, hi: int) -> tuple[np.ndarray, bytes]:
    used = np.zeros(hi - lo + 1, dtype=bool)
    used[(x.astype(np.int64) - lo).ravel()] = True
    return np.flatnonzero(used).astype(np.int64), zlib.compress(np.packbits(used).tobytes(), 9)


def _nearest_rank(table: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rank of the used value nearest to each ``v`` (ties to the lower one)."""
    k = np.clip(np.searchsorted(table, v), 1, max(1, table.size - 1))
    if table.size == 1:
        return np.zeros_like(v)
    below, above = table[k - 1], table[k]
    return np.where(v - below <= above - v, k - 1, k)


def _static_cost(v: np.ndarray) -> float:
    """Bits of a MED predictor's errors under one static table (a cheap proxy for the choice)."""
    p = np.pad(v, ((1, 0), (1, 0)), mode="edge")
    w, n, nw = p[1:, :-1], p[:-1, 1:], p[:-1, :-1]
    mx, mn = np.maximum(w, n), np.minimum(w, n)
    med = np.where(nw >= mx, mn, np.where(nw <= mn, mx, w + n - nw))
    e = (v - med).ravel()
    zz = np.where(e >= 0, 2 * e, -2 * e - 1)
    tok, _, nraw = _tokens(zz)
    h = np.bincount(tok).astype(np.float64)
    h = h[h > 0]
    return float(-(h * np.log2(h / h.sum())).sum() + nraw.sum())


# --------------------------------------------------------------------------- the wave engine


class _Engine:
    """State of one frame's coding, shared by the encoder and the decoder.

    Values are in the coded domain ``v`` in ``0 .. vmax`` (``x - lo``, or ranks when packed). The
    padded flat buffers have 2 columns of margin on each side and 2 rows on top; the last cell
    (``self.dflt``) holds the value used where a pixel has no neighbour at all (the first pixel).
    """

    def __init__(self, rows: int, cols: int, vmax: int, max_error: int, xh: np.ndarray | None,
                 ls: bool = False):
        self.rows, self.cols, self.vmax = rows, cols, vmax
        self.d = max_error
        self.step = 2 * max_error + 1
        self.wp = cols + 4
        size = (rows + 2) * self.wp
        self.dflt = size
        # values and errors are at most vmax <= 65535: int32 / uint16 storage (a 14-megapixel mammogram
        # needs 0.5 GB, not 2), int64 arithmetic on the gathered neighbours
        self.x = np.zeros(size + 1, dtype=np.int32)
        self.x[self.dflt] = vmax // 2
        self.has_xhat = xh is not None
        self.npred = 11 + (5 if self.has_xhat else 0)
        self.err = np.zeros((self.npred, size + 1), dtype=np.uint16)  # |P_k - x'| per decoded pixel
        self.eabs = np.zeros(size + 1, dtype=np.uint16)  # |x' - p| per decoded pixel
        if self.has_xhat:
            full = np.zeros((rows + 2, self.wp), dtype=np.int32)
            full[2:, 2:-2] = xh
            # x_hat is known everywhere: edge values outside the image, for its gradient
            full[:2, 2:-2] = full[2:3, 2:-2]
            full[:, :2] = full[:, 2:3]
            full[:, -2:] = full[:, -3:-2]
            self.xh = np.append(full.ravel(), vmax // 2)
            below = np.append(full[1:, :], full[-1:, :], axis=0).ravel()  # S neighbour (edge)
            self.xh_s = np.append(below, 0)
        max_sym = 2 * (-(-vmax // self.step)) + 1
        self.ntok = _num_tokens(max_sym)
        self.counts = np.ones((NUM_CONTEXTS, self.ntok), dtype=np.int64)
        self.totals = self.counts.sum(axis=1)
        self.waves = 2 * (rows - 1) + cols
        self.ls = None
        if ls:
            self.ls = LeastSquares(rows, cols, self.wp, self.xh if self.has_xhat else None,
                                   self.xh_s if self.has_xhat else None)
            self.npred += 1
            self.err = np.zeros((self.npred, size + 1), dtype=np.uint16)
        self._jit = kernels()  # the compiled kernels of codec/jit.py (or None): the same integers, faster

    def wave(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, flat index) of the pixels of wave ``t``, ``i`` ascending."""
        i0 = max(0, (t - self.cols + 2) // 2)
        i1 = min(self.rows - 1, t // 2)
        i = np.arange(i0, i1 + 1, dtype=np.int64)
        j = t - 2 * i
        return i, j, (i + 2) * self.wp + j + 2

    def neighbours(self, i, j, idx) -> dict[str, np.ndarray]:
        """Flat indices of the causal neighbours, with the border rules applied."""
        wp = self.wp
        w, n = idx - 1, idx - wp
        nb = {"W": w, "N": n, "NW": n - 1, "NE": n + 1, "WW": idx - 2, "NN": n - wp, "NNE": n - wp + 1}
        row0, row1 = i == 0, i == 1
        col0, col1, last = j == 0, j == 1, j == self.cols - 1
        # first row: everything above is the W pixel (the default cell at (0, 0))
        up = np.where(j > 0, w, self.dflt)
        for k in ("N", "NW", "NE", "NN", "NNE"):
            nb[k] = np.where(row0, up, nb[k])
        nb["NN"] = np.where(row1, nb["N"], nb["NN"])
        nb["NNE"] = np.where(row1, nb["NE"], nb["NNE"])
        # last column: NE is N, NNE is NN
        nb["NE"] = np.where(last & ~row0, nb["N"], nb["NE"])
        nb["NNE"] = np.where(last & ~row0, nb["NN"], nb["NNE"])
        # first column: W, NW, WW are N; second column: WW is W
        left = np.where(i > 0, nb["N"], self.dflt)
        for k in ("W", "NW", "WW"):
            nb[k] = np.where(col0, left, nb[k])
        nb["WW"] = np.where(col1, nb["W"], nb["WW"])
        return nb

    def predict(self, i, j, idx):
        """Blended prediction, context, and the sub-predictions of the pixels of one wave."""
        if self._jit is not None:
            return self._predict_jit(i, j, idx)
        nb = self.neighbours(i, j, idx)
        x = self.x
        W, N, NW, NE = (x[nb[k]].astype(np.int64) for k in ("W", "N", "NW", "NE"))
        WW, NN = x[nb["WW"]].astype(np.int64), x[nb["NN"]].astype(np.int64)
        mx, mn = np.maximum(W, N), np.minimum(W, N)
        med = np.where(NW >= mx, mn, np.where(NW <= mn, mx, W + N - NW))
        preds = [N, W, NE, NW, W + N - NW, W + NE - N, (W + N + 1) >> 1, (W + NE + 1) >> 1,
                 2 * N - NN, 2 * W - WW, med]
        grad = 0
        if self.has_xhat:
            xh = self.xh
            h = xh[idx].astype(np.int64)
            rW, rN, rNW = W - xh[nb["W"]], N - xh[nb["N"]], NW - xh[nb["NW"]]
            rmx, rmn = np.maximum(rW, rN), np.minimum(rW, rN)
            rmed = np.where(rNW >= rmx, rmn, np.where(rNW <= rmn, rmx, rW + rN - rNW))
            preds += [h, h + rW, h + rN, h + rmed, h + ((rW + rN) >> 1)]
            grad = (np.abs(xh[idx + 1].astype(np.int64) - xh[idx - 1])
                    + np.abs(self.xh_s[idx].astype(np.int64) - xh[idx - self.wp]))
        if self.ls is not None:
            preds.append(self.ls.predict(i, j, idx, x, preds[-2] if self.has_xhat else med))
        P = np.clip(np.stack(preds), 0, self.vmax)
        err = self.err
        S = err[:, nb["W"]].astype(np.int64)
        for k in ("N", "NW", "NE", "WW", "NN", "NNE"):
            S += err[:, nb[k]]
        S = np.minimum(S, (1 << 19) - 1)
        wgt = (1 << 40) // (2 * S + 1) ** 2
        if self.ls is not None:
            wgt[-1] <<= LS_BOOST  # <= 2**43: sum_k w_k P_k stays below 2**62
        tot = wgt.sum(axis=0)
        p = ((wgt * P).sum(axis=0) + (tot >> 1)) // tot
        ea = self.eabs
        act = np.abs(W - NW) + np.abs(N - NW) + np.abs(N - NE)
        es = ea[nb["W"]].astype(np.int64) + ea[nb["N"]] + ea[nb["NW"]] + ea[nb["NE"]]
        ctx = _qlog(S.min(axis=0) + act + es + grad, NUM_CONTEXTS)
        return p, ctx, P

    def _predict_jit(self, i, j, idx):
        n = idx.size
        lsp = np.zeros(0, dtype=np.int64)
        if self.ls is not None:
            sel, pred = self.ls.predict_interior(i, j, idx, self.x)
            lsp = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
            lsp[sel] = pred
        xh = self.xh if self.has_xhat else self.x[:1]
        xh_s = self.xh_s if self.has_xhat else self.x[:1]
        p = np.empty(n, dtype=np.int64)
        ctx = np.empty(n, dtype=np.int64)
        P = np.empty((self.npred, n), dtype=np.int64)
        self._jit.blend_wave(i, j, idx, self.x, self.err, self.eabs, xh, xh_s, self.has_xhat, lsp, self.wp,
                             self.cols, self.dflt, int(self.vmax), NUM_CONTEXTS, LS_BOOST, p, ctx, P)
        return p, ctx, P

    def quantise(self, e: np.ndarray) -> np.ndarray:
        if self.d == 0:
            return e
        a = (np.abs(e) + self.d) // self.step
        return np.where(e < 0, -a, a)

    def update(self, i, j, idx, p, ctx, P, q, tok) -> np.ndarray:
        """Store the reconstruction of a wave and learn from it; returns the reconstruction."""
        v = np.clip(p + q * self.step, 0, self.vmax)
        if self._jit is not None:
            self._jit.learn_wave(idx, p, P, v, self.x, self.err, self.eabs)
        else:
            self.x[idx] = v
            self.err[:, idx] = np.abs(P - v)
            self.eabs[idx] = np.abs(v - p)
        if self.ls is not None:
            self.ls.update(i, j, v)
        np.add.at(self.counts, (ctx, tok), COUNT_STEP)
        np.add.at(self.totals, ctx, COUNT_STEP)
        full = np.flatnonzero(self.totals > COUNT_LIMIT)
        if full.size:
            self.counts[full] = (self.counts[full] + 1) >> 1
            self.totals[full] = self.counts[full].sum(axis=1)
        return v

    def probs(self, ctx) -> np.ndarray:
        return self.counts[ctx].astype(np.float64)


def _code_frame(v: np.ndarray, vmax: int, max_error: int, xh: np.ndarray | None,
                ls: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Encode coded-domain values; returns (range-coded words, reconstruction)."""
    rows, cols = v.shape
    eng = _Engine(rows, cols, vmax, max_error, xh, ls)
    src = np.zeros(eng.x.size, dtype=np.int64)
    src[:-1].reshape(rows + 2, eng.wp)[2:, 2:-2] = v
    enc = RangeEncoder()
    fam, uni = Categorical(perfect=False), Uniform()
    for t in range(eng.waves):
        i, j, idx = eng.wave(t)
        p, ctx, P = eng.predict(i, j, idx)
        q = eng.quantise(src[idx] - p)
        sym = np.where(q >= 0, 2 * q, -2 * q - 1)
        tok, raw, nraw = _tokens(sym)
        enc.encode(tok.astype(np.int32), fam, eng.probs(ctx))
        m = nraw > 0
        if m.any():
            enc.encode(raw[m].astype(np.int32), uni, (1 << nraw[m]).astype(np.int32))
        eng.update(i, j, idx, p, ctx, P, q, tok)
    recon = eng.x[:-1].reshape(rows + 2, eng.wp)[2:, 2:-2].copy()
    return enc.get_compressed().astype("<u4", copy=False), recon


def _decode_frame(words: np.ndarray, rows: int, cols: int, vmax: int, max_error: int,
                  xh: np.ndarray | None, ls: bool = False) -> np.ndarray:
    eng = _Engine(rows, cols, vmax, max_error, xh, ls)
    fam, uni = Categorical(perfect=False), Uniform()
    try:
        dec = RangeDecoder(words)
        for t in range(eng.waves):
            i, j, idx = eng.wave(t)
            p, ctx, P = eng.predict(i, j, idx)
            tok = np.asarray(dec.decode(fam, eng.probs(ctx)), dtype=np.int64)
            nraw = _raw_bits(tok)
            raw = np.zeros_like(tok)
            m = nraw > 0
            if m.any():
                raw[m] = dec.decode(uni, (1 << nraw[m]).astype(np.int32))
            sym = _untoken(tok, raw)
            q = np.where(sym & 1, -((sym + 1) >> 1), sym >> 1)
            eng.update(i, j, idx, p, ctx, P, q, tok)
        exhausted = dec.maybe_exhausted()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # constriction raises AssertionError / pyo3 PanicException on bad data
        reason = " ".join(str(exc).split())[:100]
        raise ResidualError(f"residual stream corrupt (range decoder: {type(exc).__name__}: {reason})") from None
    if not exhausted:
        raise ResidualError("residual stream corrupt (range decoder did not end on a complete stream)")
    return eng.x[:-1].reshape(rows + 2, eng.wp)[2:, 2:-2].copy()


# --------------------------------------------------------------------------- stripes and workers


def stripe_count(rows: int, cols: int) -> int:
    """How many stripes the encoder cuts a ``rows`` x ``cols`` frame into (a function of the geometry only)."""
    return max(1, min(MAX_STRIPES, rows * cols // STRIPE_PIXELS, rows // MIN_STRIPE_ROWS))


def _stripe_edges(rows: int, n: int) -> list[int]:
    return [k * rows // n for k in range(n + 1)]


def _encode_stripe(v: np.ndarray, vmax: int, max_error: int, xh: np.ndarray | None, ls: bool):
    return _code_frame(v.astype(np.int64), vmax, max_error, xh, ls)


def _decode_stripe(words: np.ndarray, rows: int, cols: int, vmax: int, max_error: int,
                   xh: np.ndarray | None, ls: bool) -> np.ndarray:
    return _decode_frame(words, rows, cols, vmax, max_error, xh, ls).astype(np.int32)


# --------------------------------------------------------------------------- public API


def _domain(x_hat, lo: int, hi: int, table: np.ndarray | None) -> np.ndarray | None:
    if x_hat is None:
        return None
    xh = x_hat.astype(np.int64)
    if table is not None:
        return _nearest_rank(table, xh - lo)
    return np.clip(xh - lo, 0, hi - lo)


def encode(x, x_hat=None, max_error: int = 0, *, pack: bool | None = None,
           predictor: str = "ls", workers: int | None = None) -> Encoded:
    """Code frame ``x`` given the learned layer's ``x_hat`` (or ``None``: residual only).

    ``max_error`` 0 is lossless; ``D >= 1`` guarantees ``|x - decoded| <= D``. ``pack`` forces
    histogram packing on (when some value of ``lo..hi`` is unused) or off in lossless mode (default
    None: chosen by an estimate; ``pack=True`` with ``D >= 1`` is an error). ``predictor`` is one of
    :data:`PREDICTORS`. A frame of :func:`stripe_count` > 1 stripes is coded stripe by stripe in up
    to ``workers`` processes (default :func:`default_workers`); the stream does not depend on
    ``workers``. Returns the stream and the reconstruction the decoder will produce.
    """
    if predictor not in PREDICTORS:
        raise ResidualError(f"unknown residual predictor {predictor!r} (choose from {', '.join(PREDICTORS)})")
    x = _check_frame(x, "residual encode")
    if x_hat is not None:
        x_hat = _check_frame(x_hat, "residual encode x_hat")
        if x_hat.shape != x.shape or x_hat.dtype != x.dtype:
            raise ResidualError(f"x_hat {x_hat.shape} {x_hat.dtype} does not match the frame {x.shape} {x.dtype}")
    if not isinstance(max_error, (int, np.integer)) or isinstance(max_error, bool) \
            or not 0 <= max_error <= MAX_ERROR_LIMIT:
        raise ResidualError(f"max error must be an integer in 0..{MAX_ERROR_LIMIT}, got {max_error!r}")
    max_error = int(max_error)
    if pack and max_error:
        raise ResidualError("histogram packing is for lossless coding only (max error 0)")
    lo, hi = int(x.min()), int(x.max())
    rows, cols = x.shape
    v = x.astype(np.int64) - lo
    table, blob = None, b""
    if max_error == 0 and pack is not False and hi > lo:
        cand, cand_blob = _pack_table(x, lo, hi)
        if cand.size < hi - lo + 1:
            packed_v = np.searchsorted(cand, v)
            if pack or _static_cost(packed_v) + 8 * (len(cand_blob) + 8) < _static_cost(v):
                table, blob, v = cand, cand_blob, packed_v
    vmax = hi - lo if table is None else table.size - 1
    ls = predictor == "ls"
    xh = _domain(x_hat, lo, hi, table)
    n = stripe_count(rows, cols)
    edges = _stripe_edges(rows, n)
    coded = map_processes(_encode_stripe, [
        (v[a:b].astype(np.int32), vmax, max_error, None if xh is None else xh[a:b].astype(np.int32), ls)
        for a, b in zip(edges[:-1], edges[1:], strict=True)], workers)
    recon_v = np.concatenate([r for _, r in coded], axis=0)
    recon = ((table[recon_v] if table is not None else recon_v) + lo).astype(x.dtype)
    err = int(np.abs(recon.astype(np.int64) - x).max())
    if err > max_error:  # cannot happen: the quantiser bounds it; checked so that it never goes unseen
        raise ResidualError(f"internal error: reconstruction error {err} exceeds the bound {max_error}")
    header = ResidualHeader(rows, cols, max_error, lo, hi, table is not None, x_hat is not None,
                            crc32_of(x_hat) if x_hat is not None else 0, crc32_of(recon), predictor, n)
    flags = ((_FLAG_PACKED if header.packed else 0) | (_FLAG_XHAT if header.has_xhat else 0)
             | (_FLAG_LS if ls else 0) | (_FLAG_STRIPES if n > 1 else 0))
    parts = [_HEAD.pack(MAGIC, STREAM_VERSION, flags, max_error, rows, cols, lo, hi,
                        header.xhat_crc, header.recon_crc)]
    if table is not None:
        parts += [_U32.pack(table.size), _U32.pack(len(blob)), blob]
    if n > 1:
        parts.append(_U16.pack(n))
    for words, _ in coded:
        parts += [_U32.pack(words.size), words.tobytes()]
    return Encoded(b"".join(parts), recon, header)


def _parse(data: bytes) -> tuple[ResidualHeader, np.ndarray | None, int]:
    """Header, packing table (or None) and the offset of the word count."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"residual stream must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEAD.size:
        raise ResidualError(f"residual stream truncated in its header ({len(data)} of {_HEAD.size} bytes)")
    magic, version, flags, d, rows, cols, lo, hi, xcrc, rcrc = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise ResidualError("not a residual stream (bad magic)")
    if version != STREAM_VERSION:
        raise ResidualError(f"unsupported residual stream version {version} (this decoder supports 1)")
    if flags & ~(_FLAG_PACKED | _FLAG_XHAT | _FLAG_LS | _FLAG_STRIPES):
        raise ResidualError(f"residual stream header corrupt (unknown flags {flags:#x})")
    if rows < 1 or cols < 1 or rows * cols > MAX_PIXELS or not 0 <= hi - lo <= MAX_SPAN:
        raise ResidualError(f"residual stream header corrupt ({rows}x{cols}, range {lo}..{hi})")
    header = ResidualHeader(rows, cols, d, lo, hi, bool(flags & _FLAG_PACKED), bool(flags & _FLAG_XHAT),
                            xcrc, rcrc, "ls" if flags & _FLAG_LS else "blend")
    pos = _HEAD.size
    table = None
    if header.packed:
        if d != 0:
            raise ResidualError("residual stream header corrupt (packing in near-lossless mode)")
        if len(data) - pos < 8:
            raise ResidualError("residual stream truncated in the packing table")
        (k,) = _U32.unpack_from(data, pos)
        (n,) = _U32.unpack_from(data, pos + 4)
        pos += 8
        if n > len(data) - pos:
            raise ResidualError(f"residual stream truncated in the packing table ({n} bytes announced)")
        span = hi - lo + 1
        inflate = zlib.decompressobj()
        try:
            raw = inflate.decompress(data[pos:pos + n], (span + 7) // 8 + 1)
        except zlib.error as exc:
            raise ResidualError(f"residual stream packing table corrupt ({exc})") from None
        complete = inflate.eof and not inflate.unused_data and not inflate.unconsumed_tail  # adler-32 checked
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
        if not complete or len(raw) != (span + 7) // 8 or bits[span:].any() or not bits[0] or not bits[span - 1]:
            raise ResidualError("residual stream packing table corrupt")
        table = np.flatnonzero(bits[:span]).astype(np.int64)
        if table.size != k:
            raise ResidualError(f"residual stream packing table corrupt ({table.size} values, header says {k})")
        pos += n
    if flags & _FLAG_STRIPES:
        if len(data) - pos < 2:
            raise ResidualError("residual stream truncated in its stripe count")
        (stripes,) = _U16.unpack_from(data, pos)
        pos += 2
        if not 2 <= stripes <= min(MAX_STRIPES, rows):
            raise ResidualError(f"residual stream header corrupt ({stripes} stripes for {rows} rows)")
        header = ResidualHeader(**{**header.__dict__, "stripes": stripes})
    return header, table, pos


def read_header(data: bytes) -> ResidualHeader:
    """The header of a residual stream (checked, not decoded)."""
    return _parse(data)[0]


def decode(data: bytes, x_hat=None, *, shape=None, dtype=None, workers: int | None = None) -> np.ndarray:
    """Decode a stream of :func:`encode` given the same ``x_hat`` (or ``None`` for residual-only).

    ``shape`` and ``dtype`` are needed without ``x_hat`` (with it, they are ``x_hat``'s). The stripes
    of a striped stream are decoded in up to ``workers`` processes (default :func:`default_workers`). Raises
    :class:`ResidualError` when the stream is damaged, was coded against another ``x_hat``, or its
    reconstruction does not match the encoder's (CRC-32).
    """
    header, table, pos = _parse(data)
    data = bytes(data)
    if x_hat is not None:
        x_hat = _check_frame(x_hat, "residual decode x_hat")
        shape, dtype = x_hat.shape, x_hat.dtype
    if shape is None or dtype is None:
        raise ResidualError("residual decode needs x_hat, or shape and dtype")
    dtype = np.dtype(dtype)
    if tuple(shape) != (header.rows, header.cols):
        raise ResidualError(f"residual stream is for {header.rows}x{header.cols}, expected {tuple(shape)}")
    if header.has_xhat != (x_hat is not None):
        raise ResidualError("residual stream was coded " + ("with" if header.has_xhat else "without")
                            + " a lossy layer but decoded " + ("without" if header.has_xhat else "with") + " one")
    info = np.iinfo(dtype)
    if header.lo < info.min or header.hi > info.max:
        raise ResidualError(f"residual stream range {header.lo}..{header.hi} does not fit {dtype}")
    if x_hat is not None and crc32_of(x_hat) != header.xhat_crc:
        raise ResidualError(
            f"lossy layer mismatch: the rebuilt x_hat (CRC-32 {crc32_of(x_hat):08x}) differs from the "
            f"encoder's ({header.xhat_crc:08x}); decode with the same model and backend")
    stripes = []
    for k in range(header.stripes):
        if len(data) - pos < 4:
            raise ResidualError("residual stream truncated before its range-coded data"
                                + (f" (stripe {k + 1} of {header.stripes})" if header.stripes > 1 else ""))
        (n_words,) = _U32.unpack_from(data, pos)
        pos += 4
        last = k == header.stripes - 1
        if n_words * 4 > len(data) - pos or (last and n_words * 4 != len(data) - pos):
            raise ResidualError(f"residual stream length wrong ({n_words * 4} bytes of coded data announced"
                                + (f" in stripe {k + 1}" if header.stripes > 1 else "")
                                + f", {len(data) - pos} present)")
        stripes.append(np.frombuffer(data, dtype="<u4", count=n_words, offset=pos).astype(np.uint32))
        pos += 4 * n_words
    vmax = header.hi - header.lo if table is None else table.size - 1
    xh = _domain(x_hat, header.lo, header.hi, table)
    edges = _stripe_edges(header.rows, header.stripes)
    v = np.concatenate(map_processes(_decode_stripe, [
        (words, b - a, header.cols, vmax, header.max_error, None if xh is None else xh[a:b].astype(np.int32),
         header.predictor == "ls") for words, a, b in zip(stripes, edges[:-1], edges[1:], strict=True)], workers), axis=0)
    v = v.astype(np.int64)
    out = ((table[v] if table is not None else v) + header.lo).astype(dtype)
    if crc32_of(out) != header.recon_crc:
        raise ResidualError("residual stream corrupt (the decoded image fails its CRC-32 check)")
    return out


# --------------------------------------------------------------------------- target PSNR


def psnr_for(x: np.ndarray, recon: np.ndarray, bits_stored: int) -> float:
    """PSNR in dB with peak ``2**bits_stored - 1`` (``inf`` when identical)."""
    d = x.astype(np.float64) - recon.astype(np.float64)
    mse = float(np.mean(d * d))
    peak = float(2 ** int(bits_stored) - 1)
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _d_for_mse(mse: float) -> int:
    """Largest D whose errors, spread evenly over -D..D (MSE ``D (D + 1) / 3``), stay within ``mse``."""
    if not mse > 0:
        return 0
    return int(max(0, min(MAX_ERROR_LIMIT, math.floor((-1 + math.sqrt(1 + 12 * mse)) / 2))))


def encode_for_psnr(x, target_psnr: float, bits_stored: int, x_hat=None, *,
                    max_encodes: int = 8, predictor: str = "ls") -> tuple[Encoded, float]:
    """Near-lossless coding with the largest ``D`` whose PSNR (peak ``2**bits_stored - 1``) meets
    ``target_psnr``; ``D = 0`` (lossless, PSNR ``inf``) when no ``D >= 1`` does. Returns (encoded, PSNR).

    The first guess assumes errors spread evenly over ``-D..D``; each encode then corrects that model
    by the MSE it measured (flat areas are predicted exactly, so real MSEs are lower), inside a
    bracket [largest D that met the target, smallest D that did not]; bisection when a guess falls
    outside it. At most ``max_encodes`` encodes (usually 2 to 4); the result is the largest D found
    that meets the target, exact when the bracket closes.
    """
    if isinstance(target_psnr, bool) or not isinstance(target_psnr, (int, float)) \
            or not math.isfinite(target_psnr) or target_psnr <= 0:
        raise ResidualError(f"target PSNR must be a finite number of dB > 0, got {target_psnr!r}")
    x = _check_frame(x, "residual encode")
    peak2 = float(2 ** int(bits_stored) - 1) ** 2
    mse_max = peak2 / 10 ** (target_psnr / 10)
    tried: dict[int, tuple[Encoded, float]] = {}
    ok, bad = 0, MAX_ERROR_LIMIT + 1
    d = _d_for_mse(mse_max)
    while d > ok and len(tried) < max_encodes:
        enc = encode(x, x_hat, d, predictor=predictor)
        p = psnr_for(x, enc.recon, bits_stored)
        tried[d] = (enc, p)
        if p >= target_psnr:
            ok = d
        else:
            bad = d
        if bad - ok <= 1:
            break
        mse = peak2 / 10 ** (p / 10) if math.isfinite(p) else 0.0
        ratio = mse / (d * (d + 1) / 3)  # measured MSE / the even-spread model's
        guess = _d_for_mse(mse_max / ratio) if ratio > 0 else bad - 1
        if ok == d and guess <= d:
            guess = d + 1
        d = guess if ok < guess < bad and guess not in tried else (ok + bad) // 2
    if ok not in tried:
        enc = encode(x, x_hat, ok, predictor=predictor)
        tried[ok] = (enc, psnr_for(x, enc.recon, bits_stored))
    return tried[ok]
