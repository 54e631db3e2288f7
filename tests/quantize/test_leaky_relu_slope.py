"""leaky_relu_slope (APPROXIMATE): count, structure, the derived error bound
``|LeakyReLU_b(x) - LeakyReLU_a(x)| = |(a - 26/256) * min(x, 0)|`` (b = 26/256) checked on
seeded inputs, negative cases, and the effect on the partition."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from compile.partition import CPU, DPU, partition
from quantize.passes import get_pass, run_passes
from quantize.passes.leaky_relu_slope import DPU_LEAKY_SLOPE, LeakyReluSlope
from tests.quantize.equivalence import outputs, same_state, state


def _x(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def _seq(*items) -> nn.Sequential:
    return nn.Sequential(OrderedDict(items))


def test_slope_constant():
    assert DPU_LEAKY_SLOPE == 0.1015625 == 26 / 256


def test_count_on_minimal_models():
    p = get_pass("leaky_relu_slope")
    assert p.apply(_seq(("act", nn.LeakyReLU(0.1)))).count == 1
    model = _seq(("c0", nn.Conv2d(2, 2, 3)), ("a0", nn.LeakyReLU(0.1)), ("c1", nn.Conv2d(2, 2, 3)),
                 ("a1", nn.LeakyReLU(0.2)), ("a2", nn.LeakyReLU(26 / 256)))
    result = p.apply(model)
    assert (result.count, result.iterations) == (2, 2)
    assert [r.path for r in result.refusals] == ["a2"]


def test_structure_after():
    model = _seq(("act", nn.LeakyReLU(0.01, inplace=True)))
    result = get_pass("leaky_relu_slope").apply(model)
    assert type(result.module.act) is nn.LeakyReLU
    assert result.module.act.negative_slope == 26 / 256 and result.module.act.inplace
    assert result.exact is False
    assert "slope 0.01 -> 26/256" in result.rewrites[0]["detail"]


@pytest.mark.parametrize("slope", [0.01, 0.1, 0.2, 0.3])
def test_error_is_the_derived_bound(slope):
    """At the LeakyReLU: the change is (26/256 - a) * min(x, 0), elementwise, up to float rounding."""
    model = _seq(("act", nn.LeakyReLU(slope)))
    x = _x(4, 3, 16, 16, seed=7)
    new, log = run_passes(model, ["leaky_relu_slope"], probe=x)
    change = outputs(new, x) - outputs(model, x)
    bound = (abs(slope - DPU_LEAKY_SLOPE) * (-x.clamp(max=0))).max()
    derived = (DPU_LEAKY_SLOPE - slope) * x.clamp(max=0)
    torch.testing.assert_close(change, derived, rtol=1e-5, atol=1e-6)
    assert change.abs().max() <= bound * (1 + 1e-5) + 1e-7
    assert log[0]["max_abs_change"] == pytest.approx(float(bound), rel=1e-5)
    assert change[x >= 0].abs().max() == 0  # nothing changes where x >= 0


def test_measured_change_through_a_network_is_logged():
    """Downstream layers carry the change on; the probe measures it for the whole module."""
    torch.manual_seed(0)
    model = _seq(("conv0", nn.Conv2d(4, 8, 3, padding=1)), ("act0", nn.LeakyReLU(0.1)),
                 ("conv1", nn.Conv2d(8, 4, 3, padding=1)))
    x = _x(1, 4, 16, 16, seed=3)
    new, log = run_passes(model, ["leaky_relu_slope"], probe=x)
    measured = float((outputs(new, x) - outputs(model, x)).abs().max())
    assert log[0]["max_abs_change"] == pytest.approx(measured, rel=1e-6)
    # 0.1 vs 0.1015625: at the activation |0.0015625 * min(h, 0)| <= 0.0015625 * max|h|
    h = outputs(model[:1], x)
    assert measured <= 0.0015625 * float(h.abs().max()) * float(model.conv1.weight.detach().abs().sum((1, 2, 3)).max())


class _Sub(nn.LeakyReLU):
    pass


@pytest.mark.parametrize("module, pass_, reason", [
    (nn.LeakyReLU(26 / 256), LeakyReluSlope(), "slope is 26/256 already (nothing to do)"),
    (nn.LeakyReLU(0.3), LeakyReluSlope(max_slope_change=0.05), "more than max_slope_change=0.05"),
    (_Sub(0.1), LeakyReluSlope(), "subclass of LeakyReLU"),
], ids=["already", "too_far", "subclass"])
def test_negative_cases_are_left_untouched(module, pass_, reason):
    model = _seq(("act", module))
    before, text = state(model), repr(model)
    new, log = run_passes(model, [pass_])
    assert log[0]["count"] == 0 and reason in log[0]["refusals"][0]["reason"]
    assert same_state(state(new), before) and repr(new) == text


def test_dpu_slope_fuses_into_the_conv():
    model = _seq(("conv0", nn.Conv2d(4, 4, 3, padding=1)), ("act0", nn.LeakyReLU(0.1)))
    before = partition(model, (1, 4, 8, 8))
    assert before.layer("act0").device == CPU and "slope 0.1 != 26/256" in before.layer("act0").reason
    new, _ = run_passes(model, ["leaky_relu_slope"])
    after = partition(new, (1, 4, 8, 8))
    assert after.layer("act0").device == DPU and after.deployable
