"""absorb_abs: h_a(|y|) as DPU operators (count, structure, equivalence, negative case)."""

import pytest
import torch
from torch import nn

from compile.partition import partition
from models import registry
from quantize.absorb_abs import absorb_abs


def _h_a():
    torch.manual_seed(0)
    return registry.create("dpu-hyperprior", N=8, M=12).h_a.eval()


def test_structure_and_no_mutation():
    h_a = _h_a()
    before = {k: v.clone() for k, v in h_a.state_dict().items()}
    new = absorb_abs(h_a)
    names = [n for n, _ in new.named_children()]
    assert names[:3] == ["abs_split", "abs_relu", "conv0"] and names[3:] == [n for n, _ in h_a.named_children()][1:]
    assert new.abs_split.weight.shape == (24, 12, 1, 1) and new.abs_split.bias is None
    assert set(new.abs_split.weight.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert new.conv0.in_channels == 24
    assert all(torch.equal(before[k], v) for k, v in h_a.state_dict().items())


def test_equivalence_on_signed_latents():
    h_a = _h_a()
    new = absorb_abs(h_a).double()
    y = torch.randn(2, 12, 16, 16, dtype=torch.float64) * 5
    with torch.no_grad():
        ref = h_a.double()(torch.abs(y))
        got = new(y)
    assert torch.allclose(got, ref, rtol=0, atol=1e-12)


def test_partition_removes_the_cpu_abs():
    h_a = _h_a()
    shape = (1, 12, 16, 16)
    assert partition(h_a, shape, pre_ops=("abs",)).n_cpu_ops == 1
    after = partition(absorb_abs(h_a), shape)
    assert after.n_cpu_ops == 0 and after.n_dpu_subgraphs == 1


def test_refuses_a_network_not_starting_with_a_conv():
    with pytest.raises(ValueError, match="must start with"):
        absorb_abs(nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 1)))
