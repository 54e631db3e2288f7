"""gdn_polynomial (APPROXIMATE): count, structure (DPU operators only; one DPU subgraph for the
real g_a / g_s), the derived error bound ``|y' - y| <= bound |y|`` for s in the calibrated
interval (plus float32 rounding), negative cases, and the polynomial / Newton helpers."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from compile.partition import lower, partition, partition_hyperprior
from models.hyperprior import GDNHyperprior
from models.layers import GDN, PolyGDN, PolyPower
from quantize.passes import get_pass, run_passes
from quantize.passes.gdn_polynomial import GdnPolynomial, gdn_s, gdn_s_ranges
from quantize.passes.polyfit import ChannelRange, PowerFit, fit_power, newton_bound, newton_map, under
from tests.quantize.equivalence import outputs, same_state, state

#: float32 rounding through ~15 chained products and 1x1 convs, relative to |y| (measured ~1e-7)
F32 = 1e-5


def _x(*shape, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def _gdn(c: int, inverse: bool = False, seed: int = 0) -> GDN:
    """A GDN with trained-looking parameters: beta in [0.2, 1.2], gamma positive, off-diagonal mass."""
    g = torch.Generator().manual_seed(seed)
    gdn = GDN(c, inverse=inverse)
    beta = 0.2 + torch.rand(c, generator=g)
    gamma = 0.02 * torch.rand(c, c, generator=g) + 0.1 * torch.eye(c)
    with torch.no_grad():
        gdn.beta.copy_(gdn.beta_reparam.init(beta))
        gdn.gamma.copy_(gdn.gamma_reparam.init(gamma))
    return gdn.eval()


def _seq(*items) -> nn.Sequential:
    return nn.Sequential(OrderedDict(items))


def _block() -> nn.Sequential:
    torch.manual_seed(0)
    return _seq(("conv0", nn.Conv2d(2, 6, 3, padding=1)), ("gdn0", _gdn(6, seed=1)),
                ("conv1", nn.Conv2d(6, 6, 3, padding=1)), ("igdn0", _gdn(6, inverse=True, seed=2))).eval()


def test_count_on_minimal_models():
    model = _block()
    x = _x(2, 2, 16, 16, seed=3, scale=2)
    ranges = gdn_s_ranges(model, [x])
    assert sorted(ranges) == ["gdn0", "igdn0"] and ranges["gdn0"].count == 2 * 16 * 16
    result = GdnPolynomial(ranges).apply(model)
    assert (result.count, result.iterations, result.refusals) == (2, 2, [])
    # a GDN that is not in a Sequential needs no dataflow: it is rewritten in place too
    holder = nn.Module()
    holder.gdn = _gdn(3)
    # ranges are keyed by path relative to the module they were measured on ("" for the GDN itself)
    assert GdnPolynomial(gdn_s_ranges(holder.gdn, [_x(1, 3, 4, 4)])).apply(holder).count == 0
    r = gdn_s_ranges(holder, [_x(1, 3, 4, 4)], run=lambda m, b: m.gdn(b))
    assert GdnPolynomial(r).apply(holder).count == 1


def test_structure_after():
    model = _block()
    ranges = gdn_s_ranges(model, [_x(2, 2, 16, 16, seed=3, scale=2)])
    new, log = run_passes(model, [GdnPolynomial(ranges, degree=3, newton_steps=2)])
    assert type(new.gdn0) is PolyGDN and type(new.igdn0) is PolyGDN
    assert (new.gdn0.inverse, new.igdn0.inverse) == (False, True)
    assert isinstance(new.gdn0.rsqrt, PolyPower) and new.gdn0.rsqrt.degree == 3
    beta, gamma = model.gdn0.effective_params()
    torch.testing.assert_close(new.gdn0.norm.weight.reshape(6, 6), gamma)
    torch.testing.assert_close(new.gdn0.norm.bias, beta)
    assert list(new.gdn0.state_dict()) == [
        "square_operand.weight", "norm.weight", "norm.bias",
        *[f"rsqrt.{n}.{p}" for n in ("clamp_lo", "clamp_hi", "to_unit", "horner0", "horner1", "horner2",
                                     "newton0", "newton1") for p in ("weight", "bias")]]
    assert "GDN -> PolyGDN (degree 3, 2 Newton steps)" in log[0]["rewrites"][0]["detail"]
    assert log[0]["exact"] is False
    # only DPU operators: 1x1 convs (dense, depthwise), fused ReLU, eltwise mul of two tensors
    ops = lower(new, (1, 2, 16, 16))
    assert {op.kind for op in ops} == {"conv2d", "mul", "relu"}
    r = partition(new, (1, 2, 16, 16))
    assert (r.n_dpu_subgraphs, r.n_cpu_ops, r.deployable) == (1, 0, True)
    before = partition(model, (1, 2, 16, 16))
    assert sorted(c.op for c in before.cpu_ops) == ["rsqrt", "sqrt", "square", "square"]


@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
@pytest.mark.parametrize("degree, steps", [(2, 0), (3, 1), (4, 3)])
def test_error_is_within_the_derived_bound(inverse, degree, steps):
    """For s inside the fitted interval: |y' - y| <= (bound + float32) |y| elementwise, and the
    polynomial alone (no Newton) reaches a good part of its measured error range."""
    gdn = _gdn(8, inverse=inverse, seed=4)
    model = _seq(("gdn", gdn))
    x = _x(2, 8, 16, 16, seed=5, scale=3)
    ranges = gdn_s_ranges(model, [x])
    p = GdnPolynomial(ranges, degree=degree, newton_steps=steps, margin=1.0)
    new, log = run_passes(model, [p], probe=x)
    fit = p.fit("gdn")
    y, y2 = outputs(model, x).double(), outputs(new, x).double()
    rel = ((y2 - y).abs() / y.abs().clamp_min(1e-12))[y.abs() > 1e-6]
    assert float(rel.max()) <= fit.bound + F32
    assert log[0]["max_abs_change"] <= (fit.bound + F32) * float(y.abs().max())
    if steps == 0:  # the polynomial's own error: measured on the grid, met on data up to sampling
        assert fit.bound > 1e-4 and float(rel.max()) > 0.3 * fit.bound


@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
def test_outside_the_interval(inverse):
    """Inputs 1.5x / 2x / 3x larger than in calibration (s up to ~2.7x / 4.5x / 9.5x the calibrated max):
    close while Newton converges (margin 1.5), never an overshoot, a sign flip or a blow-up beyond
    (the fused ReLU stops a diverging Newton factor at 0)."""
    gdn = _gdn(8, inverse=inverse, seed=6)
    model = _seq(("gdn", gdn))
    ranges = gdn_s_ranges(model, [_x(2, 8, 16, 16, seed=7)])
    p = GdnPolynomial(ranges, margin=1.5)
    new, _ = run_passes(model, [p])
    for scale in (1.5, 2.0, 3.0):
        x = _x(2, 8, 16, 16, seed=8, scale=scale)
        y, y2 = outputs(model, x), outputs(new, x)
        assert torch.isfinite(y2).all() and bool((y2 * y >= 0).all())
        assert bool((y2.abs() <= y.abs() * (1 + p.fit("gdn").bound + F32) + 1e-6).all())
        if scale == 1.5:
            assert float(((y2 - y).abs() / y.abs().clamp_min(1e-6)).max()) < 1e-2


def test_polyfit_helpers():
    lo, hi = torch.tensor([0.5, 1.0]), torch.tensor([2.0, 30.0])
    fit = fit_power(lo, hi, -0.5, 4, 2)
    assert fit.converges and fit.coeffs.shape == (2, 5)
    # the bound after n steps holds for every starting error in the fit's range
    e = np.linspace(fit.err_min, fit.err_max, 1001)
    for steps in range(4):
        en = e.copy()
        for _ in range(steps):
            en = newton_map(en, -0.5)
        assert np.abs(en).max() <= newton_bound(fit.err_min, fit.err_max, -0.5, steps) * (1 + 1e-12) + 1e-300
    rec = fit_power(lo, hi, -1.0, 4, 0)
    assert rec.converges and rec.bound == max(abs(rec.err_min), abs(rec.err_max))
    # a relative least-squares fit stays positive even on huge ranges (e > -1), but only just
    wide = fit_power(torch.tensor([1e-4]), torch.tensor([1e4]), -1.0, 1, 2)
    assert wide.converges and wide.err_min < -0.999 and wide.bound > 0.99
    assert not PowerFit(-0.5, lo, hi, fit.coeffs, -0.2, 0.8, 1).converges  # past sqrt(3) - 1
    assert not PowerFit(-1.0, lo, hi, fit.coeffs, -1.0, 0.1, 1).converges
    with pytest.raises(ValueError):
        fit_power(torch.tensor([0.0]), torch.tensor([1.0]), -0.5, 3, 1)
    r = {"g_a.gdn0": 1, "g_a.gdn1": 2, "g_s.igdn0": 3}
    assert under(r, "g_a") == {"gdn0": 1, "gdn1": 2} and under(r, "g_s.") == {"igdn0": 3}


def test_ranges_with_quantiles():
    model = _seq(("gdn", _gdn(4, seed=9)))
    x = _x(4, 4, 16, 16, seed=10, scale=2)
    full = gdn_s_ranges(model, [x])["gdn"]
    q = gdn_s_ranges(model, [x[:2], x[2:]], quantiles=(0.01, 0.99))["gdn"]
    s = gdn_s(model.gdn, x).transpose(0, 1).reshape(4, -1).double()
    torch.testing.assert_close(full.lo, s.min(1).values)
    torch.testing.assert_close(full.hi, s.max(1).values)
    assert q.count == full.count and bool((q.lo > full.lo).all() and (q.hi < full.hi).all())
    torch.testing.assert_close(q.min, full.min)
    with pytest.raises(ValueError, match="quantiles"):
        gdn_s_ranges(model, [x], quantiles=(0.5, 0.5))


class _SubGDN(GDN):
    pass


def _negatives():
    model = _block()
    ranges = gdn_s_ranges(model, [_x(2, 2, 16, 16, seed=3)])
    wrong = {k: ChannelRange(v.lo[:3], v.hi[:3], v.min[:3], v.max[:3], v.count) for k, v in ranges.items()}
    wide = {k: ChannelRange(torch.full((6,), 1e-5), torch.full((6,), 1e3), v.min, v.max, v.count)
            for k, v in ranges.items()}
    sub = _seq(("gdn0", _SubGDN(6)))
    return [
        ("no_ranges", model, GdnPolynomial(), "no calibration statistics"),
        ("registered_default", model, get_pass("gdn_polynomial"), "must come from data"),
        ("other_paths", model, GdnPolynomial(under({f"g_a.{k}": v for k, v in ranges.items()}, "g_s")),
         "no calibration range of s for"),
        ("channels", model, GdnPolynomial(wrong), "the range has 3 channels, the GDN 6"),
        ("bound_too_large", model, GdnPolynomial(wide, degree=1, max_rel_error=1e-3), "exceeds max_rel_error=0.001"),
        ("subclass", sub, GdnPolynomial({"gdn0": ranges["gdn0"]}), "subclass of GDN"),
    ]


@pytest.mark.parametrize("case", _negatives(), ids=lambda c: c[0])
def test_negative_cases_are_left_untouched(case):
    _, model, pass_, reason = case
    before, text = state(model), repr(model)
    new, log = run_passes(model, [pass_])
    assert log[0]["count"] == 0
    assert log[0]["refusals"] and all(reason in r["reason"] for r in log[0]["refusals"]), log[0]["refusals"]
    assert same_state(state(new), before) and repr(new) == text


def test_options_are_checked():
    with pytest.raises(ValueError, match="margin"):
        GdnPolynomial({}, margin=0.5)
    with pytest.raises(ValueError, match="degree"):
        GdnPolynomial({}, degree=0)


@pytest.fixture(scope="module")
def hyperprior_rewritten():
    """GDNHyperprior(64, 128), ranges from one random tile (g_s on g_a's integer latents)."""
    torch.manual_seed(0)
    model = GDNHyperprior(N=64, M=128).eval()
    tile = torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ranges = gdn_s_ranges(model, [tile], run=lambda m, x: m.g_s(torch.round(m.g_a(x))))
    new = GDNHyperprior(N=64, M=128).eval()
    new.load_state_dict(model.state_dict())
    new.g_a, log_a = run_passes(model.g_a, [GdnPolynomial(under(ranges, "g_a"))])
    new.g_s, log_s = run_passes(model.g_s, ["deconv_output_padding", GdnPolynomial(under(ranges, "g_s"))])
    return model, new, log_a, log_s


def test_real_codec_transforms_become_one_dpu_subgraph(hyperprior_rewritten):
    """g_a and g_s of GDNHyperprior(64, 128) on the 256 tile: every GDN / IGDN replaced (and g_s's
    output padding rewritten): exactly one DPU subgraph and zero CPU ops each."""
    _, new, log_a, log_s = hyperprior_rewritten
    assert log_a[0]["count"] == 3 and log_s[0]["count"] == 4 and log_s[1]["count"] == 3
    reports = partition_hyperprior(new, tile=256)
    for net in ("g_a", "g_s"):
        r = reports[net]
        assert (r.n_dpu_subgraphs, r.n_cpu_ops, r.deployable) == (1, 0, True), r.format()
        assert not r.crossings
    assert reports["g_a"].layer("conv3").out_shape == (1, 128, 16, 16)
    assert reports["g_s"].layer("deconv3").out_shape == (1, 1, 256, 256)


def test_real_codec_outputs_stay_close(hyperprior_rewritten):
    model, new, _, _ = hyperprior_rewritten
    tile = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        y, y2 = model.g_a(tile), new.g_a(tile)
    assert float((y2 - y).abs().max()) <= 1e-4 * float(y.abs().max()) + 1e-6
    assert math.isfinite(float(y2.sum()))
