"""deconv_output_padding: count, structure, numerical equivalence, negative cases, and the
effect on the partition.

Tolerances: float32, rtol 1e-5 of the output range (tests/quantize/equivalence.py);
float64, rtol 1e-12: the rewrite adds only products with exact zeros, so what is left is
the kernels' summation order (a few ulp, 2.2e-16 seen)."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compile.partition import CPU, DPU, partition
from models.layers import deconv
from quantize.passes import get_pass, run_passes
from quantize.passes.deconv_output_padding import without_output_padding
from tests.quantize.equivalence import assert_equivalent, outputs, relative_error, same_state, state

SIZES = [(1, 1), (2, 3), (4, 4), (5, 8), (16, 16)]


def _x(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _seq(*items) -> nn.Sequential:
    return nn.Sequential(OrderedDict(items))


def test_count_on_minimal_models():
    p = get_pass("deconv_output_padding")
    assert p.apply(_seq(("up", deconv(4, 3)))).count == 1
    two = _seq(("up0", deconv(4, 4)), ("relu", nn.ReLU()), ("up1", deconv(4, 2)), ("keep", nn.ConvTranspose2d(2, 2, 4, 2, 1)))
    result = p.apply(two)
    assert (result.count, result.iterations) == (2, 2)
    assert [r["path"] for r in result.rewrites] == ["up0", "up1"]
    assert [r.path for r in result.refusals] == ["keep"]  # output_padding 0 from the start


def test_structure_after():
    torch.manual_seed(0)
    model = _seq(("deconv0", deconv(4, 3)))
    new = get_pass("deconv_output_padding").apply(model).module
    d = new.deconv0
    assert type(d) is nn.ConvTranspose2d
    assert (d.kernel_size, d.stride, d.padding, d.output_padding) == ((6, 6), (2, 2), (2, 2), (0, 0))
    assert list(new.state_dict()) == ["deconv0.weight", "deconv0.bias"]  # same keys
    w, w0 = d.weight.detach(), model.deconv0.weight.detach()
    assert w.shape == (4, 3, 6, 6)
    assert torch.equal(w[..., :5, :5], w0)  # the original kernel, top-left
    assert torch.count_nonzero(w[..., 5, :]) == 0 and torch.count_nonzero(w[..., :, 5]) == 0  # zeros at the end
    assert torch.equal(d.bias, model.deconv0.bias)


@pytest.mark.parametrize("hw", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_compressai_deconv_is_equivalent(hw):
    """k5 s2 p2 op1 == k6 s2 p2 op0: same shape 2H x 2W, same values."""
    torch.manual_seed(0)
    model = _seq(("deconv0", deconv(8, 4)))
    new, _ = run_passes(model, ["deconv_output_padding"])
    x = _x(2, 8, *hw, seed=hw[0] * 31 + hw[1])
    ref, out = outputs(model, x), outputs(new, x)
    assert out.shape == (2, 4, 2 * hw[0], 2 * hw[1])
    assert_equivalent(out, ref)


@pytest.mark.parametrize("k, s, p, q", [
    (5, 2, 2, 1),  # CompressAI
    (3, 2, 1, 1),
    (4, 3, 1, 2),  # q = 2: two zero rows/columns
    (3, 2, 0, 1),  # q > p: the last output row is bias only, in both forms
    ((5, 3), (2, 2), (2, 1), (1, 0)),  # per-dimension: only the height grows
], ids=["k5s2p2q1", "k3s2p1q1", "k4s3p1q2", "k3s2p0q1", "asym"])
def test_general_rule_is_exact_in_float64(k, s, p, q):
    torch.manual_seed(0)
    m = nn.ConvTranspose2d(3, 2, k, s, p, output_padding=q).double()
    new = without_output_padding(m)
    assert new.output_padding == (0, 0)
    for seed, hw in enumerate(SIZES):
        x = _x(1, 3, *hw, seed=seed, dtype=torch.float64)
        with torch.no_grad():
            ref, out = m(x), new(x)
        assert out.shape == ref.shape
        assert_equivalent(out, ref, rtol=1e-12, atol=1e-15)


def test_zeros_at_the_start_would_shift_the_output():
    """Why the zero row/column goes last: prepended, the output moves by one pixel."""
    torch.manual_seed(0)
    m = deconv(3, 2).double()
    x = _x(1, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        ref = m(x)
        wrong = F.conv_transpose2d(x, F.pad(m.weight, (1, 0, 1, 0)), m.bias, 2, 2, 0)
    assert wrong.shape == ref.shape and relative_error(wrong, ref) > 0.1
    assert_equivalent(wrong[..., 1:, 1:], ref[..., :-1, :-1], rtol=1e-12, atol=1e-15)  # a shift by (1, 1)


class _Sub(nn.ConvTranspose2d):
    pass


@pytest.mark.parametrize("module, reason", [
    (nn.ConvTranspose2d(4, 4, 4, 2, 1), "output_padding is 0 already (nothing to do)"),
    (nn.ConvTranspose2d(4, 4, 5, 2, 2, output_padding=1, groups=2), "groups=2"),
    (nn.ConvTranspose2d(4, 4, 3, 2, 2, output_padding=1, dilation=2), "dilation (2, 2)"),
    (_Sub(4, 4, 5, 2, 2, output_padding=1), "subclass of ConvTranspose2d"),
], ids=["op0", "groups2", "dilation2", "subclass"])
def test_negative_cases_are_left_untouched(module, reason):
    model = _seq(("up", module))
    before, text = state(model), repr(model)
    new, log = run_passes(model, ["deconv_output_padding"])
    assert log[0]["count"] == 0
    assert [r["reason"] for r in log[0]["refusals"]] == [reason] or reason in log[0]["refusals"][0]["reason"]
    assert same_state(state(new), before) and repr(new) == text


def test_rewritten_deconv_moves_to_the_dpu():
    model = _seq(("deconv0", deconv(16, 16)), ("relu0", nn.ReLU()), ("conv1", nn.Conv2d(16, 8, 3, 1, 1)))
    before = partition(model, (1, 16, 4, 4))
    assert before.layer("deconv0").device == CPU and "output_padding (1, 1) != 0" in before.layer("deconv0").reason
    assert not before.deployable
    new, _ = run_passes(model, ["deconv_output_padding"])
    after = partition(new, (1, 16, 4, 4))
    assert after.layer("deconv0").device == DPU and "transposed 6x6/s2" in after.layer("deconv0").reason
    assert after.layer("deconv0").out_shape == before.layer("deconv0").out_shape == (1, 16, 8, 8)
    assert (after.n_dpu_subgraphs, after.n_cpu_ops, after.deployable) == (1, 0, True)
