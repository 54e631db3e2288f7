"""quantize/passes/base.py: the registry, Site, run_passes (copy once, fixed point, cap, log)."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from quantize.passes import (
    EXACT_DPU_PASSES,
    PASSES,
    Pass,
    PassError,
    PassNotConverged,
    Site,
    get_pass,
    iter_sites,
    register_pass,
    run_passes,
)
from tests.quantize.equivalence import same_state, state


class Countdown(nn.Module):
    """A toy module; the toy pass below lowers ``n`` by one per sweep."""

    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return x


class CountdownPass(Pass):
    """Countdown(n > 0) -> Countdown(n - 1): one rewrite per site and sweep, n sweeps to converge."""

    name = "countdown"
    types = (Countdown,)

    def check(self, site: Site) -> str | None:
        return "n is 0 (nothing to do)" if site.module.n == 0 else None

    def rewrite(self, site: Site) -> str:
        site.replace(Countdown(site.module.n - 1))
        return f"n {site.module.n} -> {site.module.n - 1}"


class ForeverPass(CountdownPass):
    """Never converges: rewrites every Countdown in every sweep."""

    name = "forever"

    def check(self, site: Site) -> str | None:
        return None


def _toy(n: int = 3) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("a", Countdown(n)), ("b", Countdown(0))]))


def _mixed() -> nn.Sequential:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.normal_()
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(2, 4, 3, padding=1)), ("bn", bn), ("act", nn.LeakyReLU(0.2)),
        ("up", nn.ConvTranspose2d(4, 2, 5, 2, 2, output_padding=1)),
    ]))


# -- the registry ----------------------------------------------------------------------------------


def test_registry_holds_the_rules_with_their_docs():
    assert {"fold_batchnorm", "deconv_output_padding", "leaky_relu_slope"} <= set(PASSES)
    for name, cls in PASSES.items():
        p = get_pass(name)
        assert isinstance(p, cls) and p.name == name and p.doc
    assert [get_pass(n).exact for n in EXACT_DPU_PASSES] == [True, True]
    assert get_pass("leaky_relu_slope").exact is False


def test_registry_rejects_a_duplicate_name():
    class Again(Pass):
        name = "fold_batchnorm"

    before = dict(PASSES)
    with pytest.raises(ValueError, match="'fold_batchnorm' is already registered"):
        register_pass(Again)
    assert PASSES == before  # the first registration is kept


def test_registry_rejects_a_nameless_pass_and_unknown_names():
    class Nameless(Pass):
        pass

    with pytest.raises(ValueError, match="no pass name"):
        register_pass(Nameless)
    with pytest.raises(PassError, match="unknown pass 'nope'"):
        get_pass("nope")
    with pytest.raises(PassError, match="unknown pass"):
        run_passes(nn.Identity(), ["nope"])
    with pytest.raises(PassError, match="not one string"):
        run_passes(nn.Identity(), "fold_batchnorm")


# -- sites ------------------------------------------------------------------------------------------


def test_sites_are_named_children_at_any_depth():
    inner = nn.Sequential(OrderedDict([("c", Countdown(1))]))
    holder = nn.Module()
    holder.block = inner
    holder.other = Countdown(2)
    sites = list(iter_sites(holder, Countdown))
    assert [s.path for s in sites] == ["block.c", "other"]
    assert sites[0].parent is inner and sites[0].previous() is None
    assert sites[1].previous() is None  # not in a Sequential: its producer is unknown
    seq = _mixed()
    bn = next(s for s in iter_sites(seq, nn.BatchNorm2d))
    assert bn.previous().path == "conv"


# -- run_passes -------------------------------------------------------------------------------------


def test_fixed_point_takes_as_many_sweeps_as_needed():
    new, log = run_passes(_toy(3), [CountdownPass()])
    assert new.a.n == 0 and new.b.n == 0
    (entry,) = log
    # 3 sweeps rewrite a (3 -> 2 -> 1 -> 0), the 4th finds nothing: the fixed point
    assert entry["count"] == 3 and entry["iterations"] == 4 and entry["converged"]
    assert [r["detail"] for r in entry["rewrites"]] == ["n 3 -> 2", "n 2 -> 1", "n 1 -> 0"]
    # b was 0 from the start: refused; a is 0 now, but the pass made it so: not listed
    assert entry["refusals"] == [{"path": "b", "type": "Countdown", "reason": "n is 0 (nothing to do)"}]


def test_iteration_cap_raises_with_the_log():
    with pytest.raises(PassNotConverged, match="max_iters=3") as info:
        run_passes(_toy(3), [CountdownPass()], max_iters=3)  # needs 4 sweeps
    assert info.value.log[-1]["iterations"] == 3 and info.value.log[-1]["converged"] is False
    assert run_passes(_toy(3), [CountdownPass()], max_iters=4)[1][0]["converged"]
    with pytest.raises(PassNotConverged) as info:
        run_passes(_toy(1), [CountdownPass(), ForeverPass()], max_iters=5)
    assert [e["pass"] for e in info.value.log] == ["countdown", "forever"]
    assert info.value.log[1]["count"] == 2 * 5  # both sites, every sweep
    with pytest.raises(PassNotConverged):
        ForeverPass().apply(_toy(1), max_iters=2)
    with pytest.raises(PassError, match="max_iters"):
        run_passes(_toy(1), [CountdownPass()], max_iters=0)


def test_input_module_is_untouched():
    model = _mixed()
    before, text = state(model), repr(model)
    new, log = run_passes(model, [*EXACT_DPU_PASSES, "leaky_relu_slope"])
    assert same_state(state(model), before) and repr(model) == text
    assert new is not model and [e["count"] for e in log] == [1, 1, 1]
    assert not same_state(state(new), before)
    result = get_pass("fold_batchnorm").apply(model)
    assert result.module is not model and same_state(state(model), before) and result.count == 1


def test_log_is_json_and_measures_the_change_with_a_probe():
    model = _mixed()
    x = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    _, log = run_passes(model, [*EXACT_DPU_PASSES, "leaky_relu_slope"], probe=x)
    assert json.loads(json.dumps(log)) == log
    change = {e["pass"]: e["max_abs_change"] for e in log}
    assert change["fold_batchnorm"] < 1e-5 and change["deconv_output_padding"] < 1e-5
    assert change["leaky_relu_slope"] > 1e-3  # 0.2 -> 26/256 is a real change
    assert {e["pass"]: e["exact"] for e in log} == {"fold_batchnorm": True, "deconv_output_padding": True,
                                                    "leaky_relu_slope": False}
