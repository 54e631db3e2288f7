"""quantize/gdn_variants.py: the float / polynomial / simplified comparison. A quick run on a
small random GDNHyperprior; the committed q1 weights on 256 tiles of every bundled sample
(the figures of the final report) are marked slow. compile/ is imported here, in the tests only."""

from __future__ import annotations

import json
import math
from functools import partial

import pytest
import torch

from compile.partition import partition_hyperprior
from models.hyperprior import GDNHyperprior
from models.zoo import load_model
from quantize.gdn_variants import (
    VARIANTS,
    build_variant,
    format_report,
    measure_gdn_variants,
    psnr,
    sample_tiles,
)
from tests.conftest import sample_files
from tests.quantize.equivalence import same_state, state


@pytest.fixture(scope="module")
def small_report():
    torch.manual_seed(0)
    model = GDNHyperprior(N=8, M=12).eval()
    before = state(model)
    files = sample_files()[:2]
    tiles = sample_tiles(files, crop=64, per_image=1, seed=5)
    calibration = sample_tiles(files, crop=64, per_image=1, seed=6)
    out = measure_gdn_variants(model, tiles, calibration, partition_fn=partial(partition_hyperprior, tile=64))
    assert same_state(state(model), before)  # the model is not modified
    return out


def test_tiles_come_from_the_samples():
    tiles = sample_tiles(sample_files(), crop=64, per_image=1, seed=5)
    assert tiles.shape == (4, 1, 64, 64) and float(tiles.min()) >= 0 and float(tiles.max()) <= 1
    assert torch.equal(tiles, sample_tiles(sample_files(), crop=64, per_image=1, seed=5))


def test_partition_figures(small_report):
    got = {v: {net: (e[net]["dpu_subgraphs"], e[net]["cpu_ops"]) for net in ("g_a", "g_s")}
           for v, e in small_report["variants"].items()}
    assert got == {"float": {"g_a": (7, 6), "g_s": (7, 6)},  # square and root of 3 GDNs on the CPU
                   "polynomial": {"g_a": (1, 0), "g_s": (1, 0)},
                   "simplified": {"g_a": (1, 0), "g_s": (1, 0)}}
    assert list(small_report["variants"]) == list(VARIANTS)
    assert small_report["variants"]["polynomial"]["passes"]["g_s"] == [
        {"pass": "fold_batchnorm", "count": 0, "refusals": 0},
        {"pass": "deconv_output_padding", "count": 4, "refusals": 0},
        {"pass": "gdn_polynomial", "count": 3, "refusals": 0}]


def test_error_figures(small_report):
    v = small_report["variants"]
    # float: the exact passes only (g_s differs by float rounding)
    assert v["float"]["g_a"]["max_abs"] == 0 and math.isinf(v["float"]["g_a"]["psnr_vs_float"])
    assert v["float"]["g_s"]["max_abs"] <= 1e-5 * v["float"]["g_s"]["ref_max_abs"] + 1e-7
    for net in ("g_a", "g_s"):
        assert v["polynomial"][net]["max_abs"] <= 1e-4 * v["polynomial"][net]["ref_max_abs"] + 1e-6
    assert v["simplified"]["g_a"]["max_abs"] > v["polynomial"]["g_a"]["max_abs"]
    text = format_report(small_report)
    assert "polynomial  g_s       1       0" in text
    report = {**small_report, "variants": {k: {n: {m: (None if isinstance(x, float) and math.isinf(x) else x)
                                                   for m, x in e[n].items()} if n != "passes" else e[n]
                                               for n in e} for k, e in small_report["variants"].items()}}
    assert json.loads(json.dumps(report)) == report


def test_build_variant_checks_its_name():
    with pytest.raises(ValueError, match="unknown variant"):
        build_variant(torch.nn.Module(), "leaky", torch.zeros(1, 1, 64, 64))
    assert psnr(torch.zeros(2), torch.zeros(2)) == math.inf
    assert psnr(torch.zeros(4), torch.full((4,), 0.1)) == pytest.approx(20.0)


@pytest.mark.slow
def test_committed_weights_on_the_samples():
    """q1 on 8 crops of 256 of the bundled samples, ranges from 8 other crops (the report's command)."""
    tiles = sample_tiles(sample_files(), seed=1234)
    calibration = sample_tiles(sample_files(), seed=99)
    r = measure_gdn_variants(load_model(quality=1), tiles, calibration,
                             partition_fn=partial(partition_hyperprior, tile=256))
    v = r["variants"]
    for variant in ("polynomial", "simplified"):
        assert all((v[variant][n]["dpu_subgraphs"], v[variant][n]["cpu_ops"]) == (1, 0) for n in ("g_a", "g_s"))
    assert v["polynomial"]["g_s"]["psnr_vs_float"] > 65 and v["polynomial"]["g_a"]["psnr_vs_float"] > 65
    float_vs_input = v["float"]["end_to_end"]["psnr_vs_input"]
    assert abs(v["polynomial"]["end_to_end"]["psnr_vs_input"] - float_vs_input) < 0.01
    assert float_vs_input - v["simplified"]["end_to_end"]["psnr_vs_input"] < 0.5
