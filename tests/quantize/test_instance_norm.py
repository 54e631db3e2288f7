"""instance_norm (APPROXIMATE): count, structure (then fold_batchnorm folds it; the partition
loses its CPU op), numerics (exact where the image's statistics are the calibrated ones, or
for an eval InstanceNorm with running statistics) and the measured cost where per-image
statistics differ, negative cases."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from compile.partition import partition
from quantize.passes import get_pass, run_passes
from quantize.passes.instance_norm import InstanceNormToBatchNorm, NormStats, instance_norm_stats
from tests.quantize.equivalence import assert_equivalent, outputs, same_state, state


def _model(affine: bool = True, **norm_kw) -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(1, 8, 3, padding=1)), ("norm", nn.InstanceNorm2d(8, affine=affine, **norm_kw)),
        ("relu", nn.ReLU()), ("conv1", nn.Conv2d(8, 4, 3, padding=1))])).eval()
    if affine:
        with torch.no_grad():
            m.norm.weight.normal_(1, 0.2)
            m.norm.bias.normal_(0, 0.2)
    return m


def _images(n: int, seed: int, gain=(0.5, 2.0), offset=(-1.0, 1.0)) -> torch.Tensor:
    """n images ``a z + b``: z white noise, per-image gain a and offset b drawn uniformly."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, 16, 16, generator=g)
    a = gain[0] + (gain[1] - gain[0]) * torch.rand(n, 1, 1, 1, generator=g)
    b = offset[0] + (offset[1] - offset[0]) * torch.rand(n, 1, 1, 1, generator=g)
    return a * z + b


def _rms_rel(new: nn.Module, ref: nn.Module, x: torch.Tensor) -> float:
    y, y2 = outputs(ref, x), outputs(new, x)
    return float((y2 - y).pow(2).mean().sqrt() / y.pow(2).mean().sqrt())


def test_count_on_minimal_models():
    model = _model()
    x = _images(8, 1)
    stats = instance_norm_stats(model, [x[:4], x[4:]])
    assert list(stats) == ["norm"] and (stats["norm"].count, stats["norm"].images) == (8 * 256, 8)
    result = InstanceNormToBatchNorm(stats).apply(model)
    assert (result.count, result.iterations) == (1, 2)
    # an eval InstanceNorm with running statistics needs no calibration
    tracked = _model(track_running_stats=True)
    assert InstanceNormToBatchNorm().apply(tracked).count == 1


def test_structure_after_and_the_fold():
    model = _model()
    x = _images(8, 1)
    stats = instance_norm_stats(model, [x])
    new, log = run_passes(model, [InstanceNormToBatchNorm(stats)])
    bn = new.norm
    assert type(bn) is nn.BatchNorm2d and not bn.training and bn.eps == model.norm.eps
    torch.testing.assert_close(bn.running_mean, stats["norm"].mean.float())
    torch.testing.assert_close(bn.running_var, stats["norm"].var.float())
    torch.testing.assert_close(bn.weight, model.norm.weight)
    assert "calibration statistics of 8 images" in log[0]["rewrites"][0]["detail"]
    # then fold_batchnorm folds it into conv0, and the network deploys
    folded, log2 = run_passes(model, [InstanceNormToBatchNorm(stats), "fold_batchnorm"])
    assert list(folded._modules) == ["conv0", "relu", "conv1"] and log2[1]["count"] == 1
    before, after = partition(model, (1, 1, 16, 16)), partition(folded, (1, 1, 16, 16))
    assert [c.op for c in before.cpu_ops] == ["instance_norm", "relu"]
    assert (after.n_dpu_subgraphs, after.n_cpu_ops, after.deployable) == (1, 0, True)
    plain, _ = run_passes(_model(affine=False), [InstanceNormToBatchNorm(stats)])
    assert plain.norm.weight is None and plain.norm.running_mean is not None


def test_exact_where_the_statistics_match():
    """Calibrated on one image, the BatchNorm IS that image's InstanceNorm (rtol 1e-5 of the range);
    an eval InstanceNorm with running statistics is rewritten exactly too."""
    model = _model()
    x = _images(3, 2)
    for i in range(3):
        one = x[i:i + 1]
        new, _ = run_passes(model, [InstanceNormToBatchNorm(instance_norm_stats(model, [one])), "fold_batchnorm"])
        assert_equivalent(outputs(new, one), outputs(model, one))
    tracked = _model(track_running_stats=True)
    with torch.no_grad():
        tracked.norm.running_mean.normal_()
        tracked.norm.running_var.uniform_(0.5, 2)
    new, log = run_passes(tracked, [InstanceNormToBatchNorm()])
    assert "(exact: an eval InstanceNorm with running statistics" in log[0]["rewrites"][0]["detail"]
    assert_equivalent(outputs(new, x), outputs(tracked, x))


def test_what_it_costs_where_per_image_statistics_differ():
    """Measured relative RMS error of the network output (documented in the pass's docstring):
    the BatchNorm normalises every image with the pooled calibration statistics, IN with its own.

    - gain 1, offset 0 (only sampling noise in the 16x16 images' statistics), calibrated on the
      same kind: ~9 %;
    - gain 0.9-1.1, offset +-0.1: ~15 %;
    - gain 0.5-2, offset +-1: ~54 % on new images, ~48 % on the calibration images themselves;
    - a 4x contrast change or an offset of 3: 137 % / 236 %.
    It is a change of function: fine-tune with the BatchNorm in place.
    """
    model = _model()
    measured = {}
    for name, gain, offset in [("iid", (1.0, 1.0), (0.0, 0.0)), ("mild", (0.9, 1.1), (-0.1, 0.1)),
                               ("wide", (0.5, 2.0), (-1.0, 1.0))]:
        cal = _images(8, 1, gain, offset)
        new, _ = run_passes(model, [InstanceNormToBatchNorm(instance_norm_stats(model, [cal])), "fold_batchnorm"])
        measured[name] = _rms_rel(new, model, _images(8, 2, gain, offset))
        if name == "wide":
            measured["wide_on_calibration"] = _rms_rel(new, model, cal)
            measured["contrast_4x"] = _rms_rel(new, model, _images(8, 3, (4.0, 4.0), (0.0, 0.0)))
            measured["offset_3"] = _rms_rel(new, model, _images(8, 3, (1.0, 1.0), (3.0, 3.0)))
    expected = {"iid": 0.09, "mild": 0.15, "wide": 0.54, "wide_on_calibration": 0.48, "contrast_4x": 1.37,
                "offset_3": 2.36}
    assert measured == pytest.approx(expected, rel=0.1)
    assert measured["iid"] < measured["mild"] < measured["wide"] < measured["contrast_4x"]


class _SubIN(nn.InstanceNorm2d):
    pass


def _negatives():
    model = _model()
    stats = instance_norm_stats(model, [_images(2, 1)])
    wrong = {"norm": NormStats(mean=torch.zeros(3), var=torch.ones(3), count=1, images=1)}
    sub = _model()
    sub.norm = _SubIN(8)
    return [
        ("no_stats", model, InstanceNormToBatchNorm(), "no calibration statistics (no stats given)"),
        ("registered_default", model, get_pass("instance_norm"), "no running statistics of its own"),
        ("other_path", model, InstanceNormToBatchNorm({"g_a.norm": stats["norm"]}), "no stats for 'norm'"),
        ("channels", model, InstanceNormToBatchNorm(wrong), "the statistics have 3 channels, the InstanceNorm 8"),
        ("subclass", sub, InstanceNormToBatchNorm(stats), "subclass of InstanceNorm2d"),
    ]


@pytest.mark.parametrize("case", _negatives(), ids=lambda c: c[0])
def test_negative_cases_are_left_untouched(case):
    _, model, pass_, reason = case
    before, text = state(model), repr(model)
    new, log = run_passes(model, [pass_])
    assert log[0]["count"] == 0 and reason in log[0]["refusals"][0]["reason"], log[0]["refusals"]
    assert same_state(state(new), before) and repr(new) == text
