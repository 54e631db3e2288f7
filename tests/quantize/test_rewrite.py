"""quantize/rewrite.py: the exact passes on a whole GDNHyperprior, and what they do to the
partition (compile/ is imported here, in the tests only: quantize/ sits below it)."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from compile.partition import DPU, partition_hyperprior
from models.hyperprior import GDNHyperprior
from quantize.passes import PassError
from quantize.rewrite import NETWORKS, partition_delta, rewrite_for_dpu
from tests.quantize.equivalence import assert_equivalent, relative_error, same_state, state


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = GDNHyperprior(N=16, M=24).eval()
    before = state(model)
    new, log = rewrite_for_dpu(model)
    return model, before, new, log


def test_counts_and_log(small):
    _, _, _, log = small
    assert list(log) == list(NETWORKS)
    counts = {net: {e["pass"]: e["count"] for e in entries} for net, entries in log.items()}
    assert counts == {
        "g_a": {"fold_batchnorm": 0, "deconv_output_padding": 0},
        "g_s": {"fold_batchnorm": 0, "deconv_output_padding": 4},
        "h_a": {"fold_batchnorm": 0, "deconv_output_padding": 0},
        "h_s": {"fold_batchnorm": 0, "deconv_output_padding": 2},
    }
    assert all(e["exact"] and e["converged"] and not e["refusals"] for entries in log.values() for e in entries)
    assert json.loads(json.dumps(log)) == log


def test_input_model_is_untouched_and_keys_are_kept(small):
    model, before, new, _ = small
    assert same_state(state(model), before)
    assert list(new.state_dict()) == list(before)  # named submodules: the same keys
    assert new.g_s.deconv0.weight.shape == (24, 16, 6, 6) and new.h_s.deconv1.output_padding == (0, 0)
    for net in ("g_a", "h_a"):
        assert same_state(state(getattr(new, net)), state(getattr(model, net)))


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (4, 4), (8, 8)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_decoders_compute_the_same(small, hw):
    """g_s on integer latents (what it decodes) and h_s on z_hat: rtol 1e-5 of the output range."""
    model, _, new, _ = small
    g = torch.Generator().manual_seed(hw[0] * 10 + hw[1])
    y_hat = torch.round(torch.randn(1, 24, *hw, generator=g) * 4)
    z_hat = torch.randn(1, 16, *hw, generator=g) * 3
    with torch.no_grad():
        assert_equivalent(new.g_s(y_hat), model.g_s(y_hat))
        assert_equivalent(new.h_s(z_hat), model.h_s(z_hat))
        assert relative_error(new.g_s(y_hat), model.g_s(y_hat)) < 1e-5


def test_approximate_passes_need_consent(small):
    model = small[0]
    with pytest.raises(PassError, match="allow_approximate"):
        rewrite_for_dpu(model, ["leaky_relu_slope"])
    _, log = rewrite_for_dpu(model, ["leaky_relu_slope"], allow_approximate=True)
    assert all(e[0]["count"] == 0 for e in log.values())  # no LeakyReLU in this codec
    with pytest.raises(PassError, match="no network"):
        rewrite_for_dpu(model, networks=("g_x",))


def test_partition_before_and_after_on_the_deployed_size():
    """GDNHyperprior(64, 128) on a 256 x 256 tile: h_s deploys; g_s's deconvs move to the DPU
    and only the IGDNs' square and sqrt stay on the CPU (for the GDN passes to come)."""
    torch.manual_seed(0)
    model = GDNHyperprior(N=64, M=128).eval()
    new, _ = rewrite_for_dpu(model)
    fn = partial(partition_hyperprior, tile=256)
    delta = partition_delta(model, new, fn)
    summary = {net: (d["before"]["n_dpu_subgraphs"], d["before"]["n_cpu_ops"], d["before"]["deployable"],
                     d["after"]["n_dpu_subgraphs"], d["after"]["n_cpu_ops"], d["after"]["deployable"])
               for net, d in delta.items()}
    assert summary == {
        "g_a": (7, 6, False, 7, 6, False),
        "h_a": (1, 1, False, 1, 1, False),  # the codec's |y| (pre_ops abs) stays on the CPU
        "h_s": (1, 4, False, 1, 0, True),
        "g_s": (6, 10, False, 7, 6, False),
    }
    after = fn(new)
    g_s = after["g_s"]
    assert all(g_s.layer(f"deconv{i}").device == DPU for i in range(4))
    assert sorted(c.op for c in g_s.cpu_ops) == ["sqrt"] * 3 + ["square"] * 3
    assert all(c.name.startswith("igdn") for c in g_s.cpu_ops)
    assert after["h_s"].layer("relu0").device == DPU  # fused into the rewritten deconv0
    assert g_s.layer("deconv3").out_shape == (1, 1, 256, 256)
