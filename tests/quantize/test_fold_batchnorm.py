"""fold_batchnorm: count, structure, numerical equivalence (rtol 1e-5 of the output range,
see tests/quantize/equivalence.py), negative cases, and the effect on the partition."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from compile.partition import partition
from quantize.passes import get_pass, run_passes
from quantize.passes.fold_batchnorm import fold_into_conv
from tests.quantize.equivalence import assert_equivalent, outputs, same_state, state


def _bn(c: int, seed: int, affine: bool = True) -> nn.BatchNorm2d:
    """An eval-mode BatchNorm with non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c, affine=affine).eval()
    bn.running_mean.copy_(torch.randn(c, generator=g))
    bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
    if affine:
        with torch.no_grad():
            bn.weight.copy_(torch.randn(c, generator=g))
            bn.bias.copy_(torch.randn(c, generator=g))
    return bn


def _seq(*items) -> nn.Sequential:
    return nn.Sequential(OrderedDict(items))


def _x(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_count_on_minimal_models():
    torch.manual_seed(0)
    p = get_pass("fold_batchnorm")
    assert p.apply(_seq(("conv", nn.Conv2d(3, 4, 3)), ("bn", _bn(4, 1)), ("relu", nn.ReLU()))).count == 1
    two = _seq(("c0", nn.Conv2d(3, 4, 3)), ("b0", _bn(4, 1)), ("c1", nn.Conv2d(4, 4, 3)), ("b1", _bn(4, 2)))
    assert p.apply(two).count == 2
    # conv -> bn -> bn: the second BN follows the folded conv once the first is gone (same sweep)
    result = p.apply(_seq(("conv", nn.Conv2d(3, 4, 3)), ("b0", _bn(4, 1)), ("b1", _bn(4, 2))))
    assert (result.count, result.iterations) == (2, 2)
    nested = nn.Module()
    nested.body = _seq(("up", nn.ConvTranspose2d(4, 4, 4, 2, 1)), ("bn", _bn(4, 3)))
    assert p.apply(nested).count == 1


def test_structure_after():
    torch.manual_seed(0)
    model = _seq(("conv", nn.Conv2d(3, 4, 3, bias=False)), ("bn", _bn(4, 1)), ("relu", nn.ReLU()))
    new = get_pass("fold_batchnorm").apply(model).module
    assert list(new._modules) == ["conv", "relu"]
    assert type(new.conv) is nn.Conv2d and new.conv.bias is not None  # a bias-free conv gains the BN shift
    assert list(new.state_dict()) == ["conv.weight", "conv.bias"]
    assert new.conv.weight.shape == model.conv.weight.shape


@pytest.mark.parametrize("conv", [
    nn.Conv2d(6, 4, 3, padding=1),
    nn.Conv2d(6, 4, 5, stride=2, padding=2, bias=False),
    nn.Conv2d(6, 4, 3, padding=1, groups=2),
    nn.ConvTranspose2d(6, 4, 5, 2, 2, output_padding=1),
    nn.ConvTranspose2d(6, 4, 4, 2, 1, groups=2),  # weight [C_in, C_out/g, k, k]: scaled through the group view
], ids=["conv", "conv_s2_nobias", "conv_groups2", "deconv", "deconv_groups2"])
@pytest.mark.parametrize("affine", [True, False])
def test_outputs_are_equivalent(conv, affine):
    torch.manual_seed(0)
    with torch.no_grad():
        conv.weight.normal_()
    model = _seq(("conv", conv), ("bn", _bn(4, 5, affine)))
    new, _ = run_passes(model, ["fold_batchnorm"])
    assert "bn" not in new._modules
    for seed, hw in enumerate([(8, 8), (5, 7), (1, 1)]):
        x = _x(2, 6, *hw, seed=seed)
        assert_equivalent(outputs(new, x), outputs(model, x))


def test_fold_into_conv_keeps_its_inputs():
    conv, bn = nn.Conv2d(2, 3, 1), _bn(3, 0)
    before = state(conv), state(bn)
    fold_into_conv(conv, bn)
    assert same_state(state(conv), before[0]) and same_state(state(bn), before[1])


class _Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = _bn(4, 0)

    def forward(self, x):
        return self.bn(self.conv(x))


def _negatives():
    shared = nn.Conv2d(4, 4, 3, padding=1)
    training = _bn(4, 0).train()
    no_stats = nn.BatchNorm2d(4, track_running_stats=False).eval()
    return [
        ("training", _seq(("conv", nn.Conv2d(3, 4, 3)), ("bn", training)), "batch statistics, not foldable"),
        ("no_stats", _seq(("conv", nn.Conv2d(3, 4, 3)), ("bn", no_stats)), "batch statistics, not foldable"),
        ("first", _seq(("bn", _bn(3, 0)), ("conv", nn.Conv2d(3, 4, 3))), "first stage of its nn.Sequential"),
        ("after_relu", _seq(("conv", nn.Conv2d(3, 4, 3)), ("relu", nn.ReLU()), ("bn", _bn(4, 0))),
         "not directly after a conv: follows relu (ReLU)"),
        ("not_sequential", _Holder(), "not an nn.Sequential"),
        ("shared_conv", _seq(("c0", shared), ("bn", _bn(4, 0)), ("c1", shared)), "more than one place"),
    ]


@pytest.mark.parametrize("case", _negatives(), ids=lambda c: c[0])
def test_negative_cases_are_left_untouched(case):
    _, model, reason = case
    before, text = state(model), repr(model)
    new, log = run_passes(model, ["fold_batchnorm"])
    assert log[0]["count"] == 0
    assert any(reason in r["reason"] for r in log[0]["refusals"]), log[0]["refusals"]
    assert same_state(state(new), before) and repr(new) == text


def test_folding_takes_the_batchnorm_off_the_cpu():
    torch.manual_seed(0)
    model = _seq(("conv0", nn.Conv2d(8, 8, 3, padding=1)), ("bn0", _bn(8, 1)), ("relu0", nn.ReLU()),
                 ("conv1", nn.Conv2d(8, 8, 3, padding=1)))
    before = partition(model, (1, 8, 16, 16))
    # no DPU rule for a standalone BatchNorm, and the ReLU after it has nothing to fuse into
    assert [c.name for c in before.cpu_ops] == ["bn0", "relu0"]
    assert "unknown op" in before.layer("bn0").reason
    assert (before.n_dpu_subgraphs, before.deployable) == (2, False)
    new, _ = run_passes(model, ["fold_batchnorm"])
    after = partition(new, (1, 8, 16, 16))
    assert (after.n_dpu_subgraphs, after.n_cpu_ops, after.deployable) == (1, 0, True)
