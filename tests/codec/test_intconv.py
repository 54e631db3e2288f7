"""The integer convolutions must equal torch's on integer data exactly, and the
rounding helpers must follow the DPU's tie rules."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from codec.intconv import (
    check_exact,
    conv2d,
    conv_transpose2d,
    round_half_away,
    round_half_up,
    saturate,
    shift_round_half_up,
)


def _ints(rng, shape, lo, hi):
    return rng.integers(lo, hi, size=shape).astype(np.float64)


@pytest.mark.parametrize("k,stride,pad", [(1, 1, 0), (3, 1, 1), (5, 2, 2), (4, 2, 1), (3, 2, 0)])
def test_conv2d_matches_torch_exactly(k, stride, pad):
    rng = np.random.default_rng(k * 10 + stride)
    x = _ints(rng, (6, 17, 13), -128, 128)
    w = _ints(rng, (5, 6, k, k), -128, 128)
    b = _ints(rng, (5,), -5000, 5000)
    ours = conv2d(x, w, b, stride=stride, padding=pad)
    ref = F.conv2d(torch.from_numpy(x)[None], torch.from_numpy(w), torch.from_numpy(b), stride=stride, padding=pad)[0]
    assert np.array_equal(ours, ref.numpy())


@pytest.mark.parametrize("k,stride,pad,opad", [(5, 2, 2, 1), (4, 2, 1, 0), (3, 1, 1, 0), (3, 2, 1, 1)])
def test_conv_transpose2d_matches_torch_exactly(k, stride, pad, opad):
    rng = np.random.default_rng(k + stride + pad + opad)
    x = _ints(rng, (4, 7, 9), -128, 128)
    w = _ints(rng, (4, 3, k, k), -128, 128)
    b = _ints(rng, (3,), -100, 100)
    ours = conv_transpose2d(x, w, b, stride=stride, padding=pad, output_padding=opad)
    ref = F.conv_transpose2d(torch.from_numpy(x)[None], torch.from_numpy(w), torch.from_numpy(b),
                             stride=stride, padding=pad, output_padding=opad)[0]
    assert ours.shape == tuple(ref.shape)
    assert np.array_equal(ours, ref.numpy())


def test_large_int16_values_stay_exact():
    rng = np.random.default_rng(0)
    x = _ints(rng, (64, 8, 8), -32768, 32768)
    w = _ints(rng, (8, 64, 5, 5), -32768, 32768)
    ours = conv2d(x, w, padding=2)
    # exact reference in int64 (no float at all)
    ref = F.conv2d(torch.from_numpy(x.astype(np.int64)).double()[None], torch.from_numpy(w).double(), padding=2)
    assert np.array_equal(ours, ref[0].numpy())
    xi, wi = x.astype(np.int64), w.astype(np.int64)
    xp = np.pad(xi, ((0, 0), (2, 2), (2, 2)))
    manual = (xp[:, 3:8, 4:9] * wi[5]).sum()  # output pixel (5, 3, 4)
    assert ours[5, 3, 4] == manual


def test_check_exact_refuses_overflowing_products():
    with pytest.raises(OverflowError):
        check_exact(np.array([2.0**30]), np.array([2.0**30]), 8)
    check_exact(np.array([127.0]), np.array([127.0]), 10_000)


def test_rounding_ties():
    x = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, -0.49, 0.49])
    assert round_half_up(x).tolist() == [-2, -1, 0, 1, 2, 3, 0, 0]
    assert round_half_away(x).tolist() == [-3, -2, -1, 1, 2, 3, 0, 0]
    assert saturate(np.array([-300, -128, 127, 300])).tolist() == [-128, -128, 127, 127]
    assert shift_round_half_up(np.array([5, -5, 6, -6, 7]), 1).tolist() == [3, -2, 3, -3, 4]
    assert shift_round_half_up(np.array([3]), -2).tolist() == [12]
