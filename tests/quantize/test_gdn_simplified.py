"""gdn_simplified (APPROXIMATE, changes the function): count, structure (DPU operators only), the
numerics (the rewrite computes the mapped simplified layer up to the reciprocal's derived
bound; the data-free mapping obeys its l1/l2 bounds against the trained GDN; the calibrated
mapping changes the output far less, as its first-order estimate says), negative cases."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from compile.partition import lower, partition, partition_hyperprior
from models.hyperprior import GDNHyperprior
from models.layers import GDN, SimplifiedGDN
from quantize.passes import get_pass, run_passes
from quantize.passes.gdn_simplified import (
    GdnSimplified,
    simplified_calibration,
    simplified_params,
    simplified_reference,
)
from quantize.passes.polyfit import under
from tests.quantize.equivalence import outputs, same_state, state
from tests.quantize.test_gdn_polynomial import F32, _block, _gdn, _seq, _x


def _cal(model, x, mapping="calibrated"):
    return simplified_calibration(model, [x[:1], x[1:]], mapping=mapping)


def test_count_on_minimal_models():
    model = _block()
    x = _x(2, 2, 16, 16, seed=3, scale=2)
    result = GdnSimplified(_cal(model, x)).apply(model)
    assert (result.count, result.iterations, result.refusals) == (2, 2, [])
    # the data-free mapping rewrites an IGDN with no data at all; a forward GDN still needs the range of d
    result = GdnSimplified(mapping="sqrt").apply(model)
    assert result.count == 1 and [r.path for r in result.refusals] == ["gdn0"]


def test_structure_after():
    model = _block()
    x = _x(2, 2, 16, 16, seed=3, scale=2)
    cal = _cal(model, x)
    new, log = run_passes(model, [GdnSimplified(cal, degree=3, newton_steps=2)])
    assert type(new.gdn0) is SimplifiedGDN and type(new.igdn0) is SimplifiedGDN
    assert new.gdn0.reciprocal is not None and new.igdn0.reciprocal is None
    eye = torch.eye(6)
    torch.testing.assert_close(new.gdn0.split.weight.reshape(12, 6), torch.cat([eye, -eye]))
    beta, gamma = simplified_params(model.gdn0, cal["gdn0"].kappa)
    torch.testing.assert_close(new.gdn0.norm.weight.reshape(6, 12), torch.cat([gamma, gamma], 1))
    torch.testing.assert_close(new.gdn0.norm.bias, beta)
    torch.testing.assert_close(beta, model.gdn0.effective_params()[0].sqrt())
    assert list(new.igdn0.state_dict()) == ["split.weight", "norm.weight", "norm.bias"]
    details = [r["detail"] for r in log[0]["rewrites"]]
    assert details[0].startswith("GDN -> SimplifiedGDN (calibrated mapping; the function changes, fine-tune)")
    assert "est. relative RMS output change" in details[1] and log[0]["exact"] is False
    assert {op.kind for op in lower(new, (1, 2, 16, 16))} == {"conv2d", "mul", "relu"}
    r = partition(new, (1, 2, 16, 16))
    assert (r.n_dpu_subgraphs, r.n_cpu_ops, r.deployable) == (1, 0, True)
    assert r.layer("gdn0.relu").reason == "fused into gdn0.split (conv2d)"


@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
@pytest.mark.parametrize("mapping", ["calibrated", "sqrt"])
def test_rewrite_computes_the_mapped_layer(inverse, mapping):
    """Against x / (beta' + gamma'|x|) (resp. x * (...)) computed with a true division: within the
    reciprocal's derived bound (0 for IGDN) plus float32 rounding, elementwise."""
    gdn = _gdn(8, inverse=inverse, seed=4)
    model = _seq(("gdn", gdn))
    x = _x(2, 8, 16, 16, seed=5, scale=3)
    cal = _cal(model, x, mapping)
    p = GdnSimplified(cal, mapping=mapping, degree=3, newton_steps=2)
    new, _ = run_passes(model, [p])
    kappa = cal["gdn"].kappa if mapping == "calibrated" else None
    ref = simplified_reference(gdn, x, kappa).double()
    got = outputs(new, x).double()
    bound = 0.0 if inverse else p.fit("gdn").bound
    rel = (got - ref).abs() / ref.abs().clamp_min(1e-12)
    assert float(rel[ref.abs() > 1e-6].max()) <= bound + F32


@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
def test_data_free_mapping_obeys_the_l1_l2_bounds(inverse):
    """kappa = 1: ||v||_2 <= d <= sqrt(K) ||v||_2, so |y_gdn| / sqrt(K) <= |y'| <= |y_gdn| (GDN) and
    |y_igdn| <= |y'| <= sqrt(K) |y_igdn| (IGDN), same sign; K = C + 1."""
    c = 8
    gdn = _gdn(c, inverse=inverse, seed=6)
    model = _seq(("gdn", gdn))
    x = _x(2, c, 16, 16, seed=7, scale=3)
    new, _ = run_passes(model, [GdnSimplified(_cal(model, x, "sqrt"), mapping="sqrt")])
    y, y2 = outputs(model, x).double(), outputs(new, x).double()
    ratio = (y2 / y)[y.abs() > 1e-6]
    lo, hi = (1 / math.sqrt(c + 1), 1.0) if not inverse else (1.0, math.sqrt(c + 1))
    tol = 1e-5
    assert float(ratio.min()) >= lo * (1 - tol) and float(ratio.max()) <= hi * (1 + tol)


@pytest.mark.parametrize("inverse", [False, True], ids=["gdn", "igdn"])
def test_calibrated_mapping_is_measured_and_beats_the_data_free_one(inverse):
    """The relative RMS change of the layer's output on the calibration data, measured, against the
    calibration's first-order estimate: equal for IGDN (y = x d is linear in d), within 30 % for GDN
    with the calibrated kappa (a small change); kappa = 1 changes the output several times more."""
    c = 8
    gdn = _gdn(c, inverse=inverse, seed=8)
    model = _seq(("gdn", gdn))
    x = _x(4, c, 16, 16, seed=9, scale=2)
    y = outputs(model, x).double()
    change = {}
    for mapping in ("calibrated", "sqrt"):
        cal = _cal(model, x, mapping)["gdn"]
        new, log = run_passes(model, [GdnSimplified({"gdn": cal}, mapping=mapping)], probe=x)
        y2 = outputs(new, x).double()
        change[mapping] = float((y2 - y).pow(2).sum().sqrt() / y.pow(2).sum().sqrt())
        assert log[0]["max_abs_change"] == pytest.approx(float((y2 - y).abs().max()), rel=1e-5)
        if inverse:
            assert change[mapping] == pytest.approx(cal.rel_change, rel=1e-3)
        elif mapping == "calibrated":
            assert change[mapping] == pytest.approx(cal.rel_change, rel=0.3)
        if mapping == "calibrated":
            assert bool((cal.kappa > 0).all() and (cal.kappa < 1).all())
            estimate_sqrt = cal.rel_change_sqrt
        else:
            assert cal.rel_change == cal.rel_change_sqrt == pytest.approx(estimate_sqrt)
    assert change["calibrated"] < 0.5 * change["sqrt"]


class _SubGDN(GDN):
    pass


def _negatives():
    model = _block()
    x = _x(2, 2, 16, 16, seed=3)
    cal = _cal(model, x)
    cal_sqrt = _cal(model, x, "sqrt")
    return [
        ("no_calibration", model, GdnSimplified(), "no calibration given"),
        ("registered_default", model, get_pass("gdn_simplified"), "needs kappa and the range of d from data"),
        ("other_paths", model, GdnSimplified({"g_a.gdn0": cal["gdn0"]}), "no calibration for"),
        ("mapping_mismatch", model, GdnSimplified(cal_sqrt), "made for mapping 'sqrt'"),
        ("bound_too_large", model, GdnSimplified(cal, degree=1, newton_steps=0, max_rel_error=1e-6),
         "exceeds max_rel_error"),
        ("subclass", _seq(("gdn0", _SubGDN(6))), GdnSimplified({"gdn0": cal["gdn0"]}), "subclass of GDN"),
    ]


@pytest.mark.parametrize("case", _negatives(), ids=lambda c: c[0])
def test_negative_cases_are_left_untouched(case):
    name, model, pass_, reason = case
    before, text = state(model), repr(model)
    new, log = run_passes(model, [pass_])
    refused = log[0]["refusals"]
    if name == "bound_too_large":  # only the forward GDN has a reciprocal to bound: the IGDN is rewritten
        assert log[0]["count"] == 1 and [r["path"] for r in refused] == ["gdn0"]
        assert reason in refused[0]["reason"]
        return
    assert log[0]["count"] == 0
    assert refused and all(reason in r["reason"] for r in refused), refused
    assert same_state(state(new), before) and repr(new) == text


def test_options_are_checked():
    with pytest.raises(ValueError, match="mapping"):
        GdnSimplified(mapping="l1")
    with pytest.raises(ValueError, match="mapping"):
        simplified_calibration(_block(), [], mapping="l1")


def test_real_codec_transforms_become_one_dpu_subgraph():
    """GDNHyperprior(64, 128) on the 256 tile with every GDN / IGDN simplified (and g_s's output
    padding rewritten): g_a and g_s are one DPU subgraph each, with no CPU op."""
    torch.manual_seed(0)
    model = GDNHyperprior(N=64, M=128).eval()
    tile = torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(11))
    cal = simplified_calibration(model, [tile], run=lambda m, x: m.g_s(torch.round(m.g_a(x))))
    new = copy.deepcopy(model)
    new.g_a, log_a = run_passes(model.g_a, [GdnSimplified(under(cal, "g_a"))])
    new.g_s, log_s = run_passes(model.g_s, ["deconv_output_padding", GdnSimplified(under(cal, "g_s"))])
    assert (log_a[0]["count"], log_s[1]["count"]) == (3, 3)
    reports = partition_hyperprior(new, tile=256)
    for net in ("g_a", "g_s"):
        r = reports[net]
        assert (r.n_dpu_subgraphs, r.n_cpu_ops, r.deployable) == (1, 0, True), r.format()
