"""Exact integer convolutions in numpy, and the DPU's rounding rules.

Why float64: a product of two integers below 2**15 in magnitude, summed over K
terms, stays below 2**53 as long as ``max|x| * max|w| * K < 2**53``; then every
partial sum is an exactly representable integer, so the result is exact whatever
order BLAS adds in, whatever the thread count or the machine. That makes a float64
im2col + matmul an exact (and fast) integer convolution. ``check_exact`` enforces
the bound; the callers keep tensors as float64 arrays that hold integer values.

Layouts are NCHW-free: tensors are (C, H, W), weights are (O, I, kh, kw) as in
PyTorch; the batch dimension is not needed on the board (one tile at a time).
"""

from __future__ import annotations

import numpy as np

EXACT_LIMIT = 2.0**53


def check_exact(x: np.ndarray, w: np.ndarray, k: int) -> None:
    """Raise if a dot product of length ``k`` of ``x`` and ``w`` could leave float64's exact range."""
    bound = float(np.max(np.abs(x), initial=0.0)) * float(np.max(np.abs(w), initial=0.0)) * k
    if bound >= EXACT_LIMIT:
        raise OverflowError(f"integer convolution not exact in float64 (bound {bound:.3g} >= 2**53)")


def round_half_up(x: np.ndarray) -> np.ndarray:
    """The DPU's activation rounding (DPU_ROUND): floor(x + 0.5), ties toward +inf."""
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """std::round: ties away from zero (the DPU's weight and bias rounding)."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def saturate(x: np.ndarray, bits: int = 8) -> np.ndarray:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return np.clip(x, lo, hi)


def shift_round_half_up(acc: np.ndarray, shift: int) -> np.ndarray:
    """acc * 2**-shift rounded half up; exact for integer ``acc`` (shift may be negative)."""
    return round_half_up(np.asarray(acc, dtype=np.float64) * (2.0**-shift))


def _im2col(x: np.ndarray, kh: int, kw: int, stride: int, pad: tuple[int, int, int, int]) -> tuple[np.ndarray, int, int]:
    """(C, H, W) -> (C*kh*kw, OH*OW) patches. pad = (top, bottom, left, right), zeros."""
    c, h, w = x.shape
    top, bottom, left, right = pad
    xp = np.pad(x, ((0, 0), (top, bottom), (left, right)))
    oh = (h + top + bottom - kh) // stride + 1
    ow = (w + left + right - kw) // stride + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"kernel {kh}x{kw} larger than padded input {xp.shape[1:]}")
    s0, s1, s2 = xp.strides
    cols = np.lib.stride_tricks.as_strided(
        xp, shape=(c, kh, kw, oh, ow), strides=(s0, s1, s2, s1 * stride, s2 * stride), writeable=False
    )
    return cols.reshape(c * kh * kw, oh * ow), oh, ow


def conv2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Exact integer conv2d (cross-correlation, like torch) on integer-valued float64 arrays.

    x: (C, H, W); w: (O, C, kh, kw); bias: (O,) added to the accumulator. Returns (O, OH, OW).
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    o, c, kh, kw = w.shape
    if x.shape[0] != c:
        raise ValueError(f"input has {x.shape[0]} channels, weight expects {c}")
    k = c * kh * kw
    check_exact(x, w, k + (1 if bias is not None else 0))
    cols, oh, ow = _im2col(x, kh, kw, stride, (padding, padding, padding, padding))
    out = w.reshape(o, k) @ cols
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[:, None]
    return out.reshape(o, oh, ow)


def conv_transpose2d(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, stride: int = 1,
                     padding: int = 0, output_padding: int = 0) -> np.ndarray:
    """Exact integer transposed conv, same semantics as torch.nn.ConvTranspose2d (groups=1, dilation 1).

    w: (C_in, C_out, kh, kw) as torch stores it. Computed the way it is defined, by scattering:
    one matmul gives every input pixel times every kernel tap, ``Y = w^T x`` ((C_out, kh, kw, H, W),
    C_in terms per sum), and the taps are added into the output at stride ``stride``::

        full[:, i*s + a, j*s + b] += Y[:, a, b, i, j];    out = full[:, p:p+OH, p:p+OW] + bias

    No zeros are multiplied (a zero-insertion conv would do stride**2 times the work), and every
    partial sum is an integer below the ``check_exact`` bound, so the result is exact in any order.
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    cin, cout, kh, kw = w.shape
    c, h, wd = x.shape
    if c != cin:
        raise ValueError(f"input has {c} channels, weight expects {cin}")
    if padding > min(kh, kw) - 1:
        raise ValueError("padding larger than kernel - 1 is not supported")
    check_exact(x, w, cin * kh * kw + (1 if bias is not None else 0))
    oh = (h - 1) * stride - 2 * padding + kh + output_padding
    ow = (wd - 1) * stride - 2 * padding + kw + output_padding
    y = (w.reshape(cin, cout * kh * kw).T @ x.reshape(cin, h * wd)).reshape(cout, kh, kw, h, wd)
    fh = max((h - 1) * stride + kh, padding + oh)
    fw = max((wd - 1) * stride + kw, padding + ow)
    full = np.zeros((cout, fh, fw), dtype=np.float64)
    for a in range(kh):
        for b in range(kw):
            full[:, a:a + (h - 1) * stride + 1:stride, b:b + (wd - 1) * stride + 1:stride] += y[:, a, b]
    out = full[:, padding:padding + oh, padding:padding + ow]
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[:, None, None]
    return np.ascontiguousarray(out)
