"""conv5x5_to_3x3 (APPROXIMATE, opt-in): count (only the named layers), structure (pad p then 0,
the stride on the second conv, same output size), numerics (exact when M >= 9 min(C_in, C_out),
else within the derived bound ``max|x| * sum|K' - K|`` per output channel), negative cases."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from compile.partition import partition
from quantize.passes import get_pass, run_passes
from quantize.passes.conv5x5_to_3x3 import (
    Conv5x5To3x3,
    compose_3x3,
    default_mid_channels,
    factor_5x5,
    kernel_error_bound,
)
from tests.quantize.equivalence import assert_equivalent, outputs, same_state, state


def _seq(*items) -> nn.Sequential:
    return nn.Sequential(OrderedDict(items))


def _x(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return _seq(("c0", nn.Conv2d(1, 4, 5, stride=2, padding=2)), ("act", nn.ReLU()),
                ("c1", nn.Conv2d(4, 4, 5, padding=2)), ("c2", nn.Conv2d(4, 4, 3, padding=1)))


def test_count_on_minimal_models():
    model = _model()
    assert Conv5x5To3x3(["c0"]).apply(model).count == 1
    result = Conv5x5To3x3(["c0", "c1"]).apply(model)
    assert (result.count, result.iterations) == (2, 2)
    assert {r.path for r in result.refusals} == {"c2", "c0.first", "c0.second", "c1.first", "c1.second"}
    assert Conv5x5To3x3().apply(model).count == 0  # opt-in: nothing named, nothing split


def test_structure_after():
    model = _model()
    new, log = run_passes(model, [Conv5x5To3x3(["c0", "c1"])])
    for name, cin, cout, stride in (("c0", 1, 4, 2), ("c1", 4, 4, 1)):
        pair = getattr(new, name)
        assert list(pair._modules) == ["first", "second"]
        mid = default_mid_channels(cin, cout)
        assert (pair.first.in_channels, pair.first.out_channels, pair.second.out_channels) == (cin, mid, cout)
        assert pair.first.kernel_size == pair.second.kernel_size == (3, 3)
        assert (pair.first.padding, pair.first.stride, pair.first.bias) == ((2, 2), (1, 1), None)
        assert (pair.second.padding, pair.second.stride) == ((0, 0), (stride, stride))
        torch.testing.assert_close(pair.second.bias, getattr(model, name).bias)
    assert default_mid_channels(1, 4) == 4 and default_mid_channels(1, 64) == 9
    assert list(new.state_dict())[:3] == ["c0.first.weight", "c0.second.weight", "c0.second.bias"]
    detail = log[0]["rewrites"][0]["detail"]
    assert "5x5 1->4 stride (2, 2) -> 3x3 1->4 pad (2, 2) + 3x3 4->4 stride (2, 2) pad 0" in detail
    assert "(approximate: fine-tune)" in log[0]["rewrites"][1]["detail"]
    for hw in [(16, 16), (15, 9), (5, 5)]:
        x = _x(1, 1, *hw)
        assert outputs(new, x).shape == outputs(model, x).shape
    r = partition(new, (1, 1, 16, 16))
    assert r.layer("c0.first").reason.startswith("conv engine: 3x3/s1")
    assert (r.n_dpu_subgraphs, r.n_cpu_ops) == (1, 0)


@pytest.mark.parametrize("cin, cout, stride, padding", [(1, 6, 1, 2), (1, 6, 2, 2), (2, 3, 2, 1), (5, 1, 1, 2)])
def test_exact_when_the_middle_is_wide_enough(cin, cout, stride, padding):
    """M = 9 min(C_in, C_out): the shifts basis makes the split exact (rtol 1e-5 of the output range)."""
    torch.manual_seed(1)
    conv = nn.Conv2d(cin, cout, 5, stride=stride, padding=padding)
    model = _seq(("conv", conv))
    mid = 9 * min(cin, cout)
    new, log = run_passes(model, [Conv5x5To3x3(["conv"], mid_channels=mid)])
    assert "exact up to rounding" in log[0]["rewrites"][0]["detail"]
    for seed, hw in enumerate([(16, 16), (11, 7), (5, 6)]):
        x = _x(2, cin, *hw, seed=seed)
        assert_equivalent(outputs(new, x), outputs(model, x))


def test_approximate_split_obeys_the_kernel_bound():
    """M < 9 min(C_in, C_out): least squares; every output moves by at most max|x| * sum|K' - K| of
    its channel, and the logged relative kernel error is ||K' - K|| / ||K|| of the new pair."""
    torch.manual_seed(2)
    conv = nn.Conv2d(6, 6, 5, padding=2)
    model = _seq(("conv", conv))
    new, log = run_passes(model, [Conv5x5To3x3(["conv"], iters=20)])
    composed = compose_3x3(new.conv.second.weight.detach().double(), new.conv.first.weight.detach().double())
    k = conv.weight.detach().double()
    rel = float((composed - k).norm() / k.norm())
    assert 0.01 < rel < 0.9  # a real approximation, better than nothing
    assert f"relative kernel error {rel:.3g}" in log[0]["rewrites"][0]["detail"]
    x = _x(2, 6, 12, 12, seed=3)
    change = (outputs(new, x) - outputs(model, x)).double().abs()
    bound = float(x.abs().max()) * kernel_error_bound(k, composed)
    assert bool((change <= bound.view(1, -1, 1, 1) * (1 + 1e-5) + 1e-5).all())


def test_fit_improves_with_iterations_and_is_balanced():
    k = _x(5, 5, 5, 5, seed=4)
    errs = [factor_5x5(k, 5, iters=n)[2] for n in (0, 5, 20)]
    assert errs[0] > errs[1] > errs[2]
    a, b, _ = factor_5x5(k, 5, iters=5)
    torch.testing.assert_close(a.pow(2).sum((0, 2, 3)), b.pow(2).sum((1, 2, 3)))  # equal norms per middle channel
    assert factor_5x5(k, 45)[2] < 1e-9  # M = 9 C_in: exact


class _SubConv(nn.Conv2d):
    pass


@pytest.mark.parametrize("conv, reason", [
    (nn.Conv2d(4, 4, 5, padding=2), "not named in layers"),
    (nn.Conv2d(4, 4, 3, padding=1), "is not 5x5 (nothing to do)"),
    (nn.Conv2d(4, 4, 5, padding=2, groups=2), "groups=2"),
    (nn.Conv2d(4, 4, 5, padding=4, dilation=2), "dilation (2, 2)"),
    (nn.Conv2d(4, 4, 5, padding="same"), "only numeric zero padding"),
    (nn.Conv2d(4, 4, 5, padding=2, padding_mode="reflect"), "only numeric zero padding"),
    (_SubConv(4, 4, 5, padding=2), "subclass of Conv2d"),
], ids=["not_named", "3x3", "groups", "dilation", "same", "reflect", "subclass"])
def test_negative_cases_are_left_untouched(conv, reason):
    model = _seq(("conv", conv))
    before, text = state(model), repr(model)
    layers = [] if reason == "not named in layers" else ["conv"]
    new, log = run_passes(model, [Conv5x5To3x3(layers)])
    assert log[0]["count"] == 0 and reason in log[0]["refusals"][0]["reason"], log[0]["refusals"]
    assert same_state(state(new), before) and repr(new) == text
    assert get_pass("conv5x5_to_3x3").apply(model).count == 0


def test_layers_must_be_a_list():
    with pytest.raises(ValueError, match="list"):
        Conv5x5To3x3("c0")
