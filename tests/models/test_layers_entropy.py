"""GDN, EntropyBottleneck and GaussianConditional: semantics and the integer tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.entropy import (
    SCALE_LEVELS,
    EntropyBottleneck,
    GaussianConditional,
    quantize_pmf,
    scale_index,
    scale_table,
)
from models.layers import GDN, deconv


def test_gdn_matches_formula_and_effective_params():
    torch.manual_seed(0)
    g, ig = GDN(4), GDN(4, inverse=True)
    with torch.no_grad():
        g.gamma.add_(0.05 * torch.rand(4, 4))
    x = torch.randn(2, 4, 5, 5)
    beta, gamma = g.effective_params()
    assert beta.shape == (4,) and gamma.shape == (4, 4) and bool((gamma >= 0).all()) and bool((beta > 0).all())
    norm = beta.view(1, 4, 1, 1) + torch.einsum("cj,bjhw->bchw", gamma, x * x)
    torch.testing.assert_close(g(x), x / torch.sqrt(norm), rtol=1e-5, atol=1e-6)
    ib, igam = ig.effective_params()
    norm_i = ib.view(1, 4, 1, 1) + torch.einsum("cj,bjhw->bchw", igam, x * x)
    torch.testing.assert_close(ig(x), x * torch.sqrt(norm_i), rtol=1e-5, atol=1e-6)
    # fresh layer: beta = 1, gamma = 0.1 I
    b0, g0 = GDN(3).effective_params()
    torch.testing.assert_close(b0, torch.ones(3), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g0, 0.1 * torch.eye(3), rtol=1e-6, atol=1e-6)


def test_deconv_is_compressai_standard():
    d = deconv(3, 2)
    assert (d.kernel_size, d.stride, d.padding, d.output_padding) == ((5, 5), (2, 2), (2, 2), (1, 1))
    assert d(torch.zeros(1, 3, 7, 9)).shape == (1, 2, 14, 18)


@pytest.mark.parametrize(("t", "k"), [
    (0.0, 0), (0.49, 0), (0.5, 1), (1.5, 2), (2.5, 3), (62.5, 63), (62.49, 62), (-0.5, 0), (-7.0, 0),
    (63.0, 63), (1e6, 63), (float("inf"), 63), (float("-inf"), 0), (float("nan"), 0),
])
def test_scale_index_boundaries(t, k):
    assert int(scale_index(torch.tensor([t]))[0]) == k


def test_scale_index_halves_go_up_everywhere():
    k = torch.arange(SCALE_LEVELS - 1, dtype=torch.float32)
    assert torch.equal(scale_index(k + 0.5), (k + 1).long())
    assert torch.equal(scale_index(k), k.long())
    assert scale_index(k).dtype == torch.int64


def test_scale_table():
    s = scale_table()
    assert s.shape == (64,)
    assert math.isclose(float(s[0]), 0.11, rel_tol=1e-6) and math.isclose(float(s[-1]), 256.0, rel_tol=1e-6)
    # training sigma at integer t equals the table entry
    t = torch.arange(64, dtype=torch.float32)
    torch.testing.assert_close(GaussianConditional.sigma(t), s, rtol=1e-5, atol=0)


def test_sigma_clamp_gradient_flows_back_into_range():
    t = torch.tensor([-3.0, 70.0], requires_grad=True)
    GaussianConditional.sigma(t).sum().backward()  # wants smaller sigma: -3 can't go lower, 70 can
    assert t.grad[0] == 0 and t.grad[1] > 0


def test_quantize_pmf_properties():
    rng = np.random.default_rng(0)
    for n in (1, 2, 17, 3000):
        p = rng.random(n) ** 8
        p[: n // 3] = 0
        f = quantize_pmf(p, 16)
        assert f.sum() == 2**16 and f.min() >= 1 and f.dtype == np.int64
    with pytest.raises(ValueError):
        quantize_pmf(np.ones(2**16 + 1), 16)


def test_entropy_bottleneck_pmf_export():
    torch.manual_seed(0)
    eb = EntropyBottleneck(6)
    tab = eb.pmf_table()
    pmf, off, length = tab["pmf"], tab["offset"], tab["length"]
    assert pmf.shape == (6, int(length.max())) and off.shape == (6,) and tab["precision"] == 16
    for c in range(6):
        row = pmf[c, : length[c]]
        assert int(row.sum()) == 2**16 and int(row.min()) >= 1
        assert (pmf[c, length[c]:] == 0).all()
    # symbols are clipped into the table range and map back through the medians
    z = torch.randn(2, 6, 4, 4) * 50
    s = eb.symbols(z)
    lo = torch.as_tensor(off).view(1, -1, 1, 1)
    assert s.dtype == torch.int32 and bool((s >= lo).all()) and bool((s <= lo + torch.as_tensor(length).view(1, -1, 1, 1) - 1).all())
    eb.eval()
    z_small = torch.randn(2, 6, 4, 4)
    z_hat, lik = eb(z_small)
    torch.testing.assert_close(eb.dequantize(eb.symbols(z_small)), z_hat)
    assert bool((lik > 0).all()) and bool((lik <= 1).all())


def test_gaussian_pmf_export_and_symbols():
    gc = GaussianConditional()
    tab = gc.pmf_table()
    assert tab["pmf"].shape[0] == 64
    for k in range(64):
        row = tab["pmf"][k, : tab["length"][k]]
        assert int(row.sum()) == 2**16 and int(row.min()) >= 1
    assert tab["offset"][0] == -1 and tab["length"][0] == 3
    y = torch.tensor([100.0, -100.0, 0.4, 0.6])
    k = torch.tensor([0, 0, 5, 5])
    assert gc.symbols(y, k).tolist() == [1, -1, 0, 1]


def test_gaussian_conditional_train_vs_eval():
    torch.manual_seed(0)
    gc = GaussianConditional()
    y = torch.randn(2, 3, 4, 4) * 3
    t = torch.full_like(y, 20.3)
    gc.train()
    y_tilde, lik = gc(y, t)
    assert bool(((y_tilde - y).abs() <= 0.5).all())
    gc.eval()
    y_hat, lik_e = gc(y, t)
    assert torch.equal(y_hat, torch.round(y))
    torch.testing.assert_close(lik_e, gc.likelihood(y_hat, scale_table()[20].expand_as(y)))
    assert bool((lik_e >= 1e-9).all()) and bool((lik_e <= 1).all())
