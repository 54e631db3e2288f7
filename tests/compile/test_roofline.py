"""compile.roofline against numbers computed by hand (B1600 from arch/ULTRA96.json:
PP 8, ICP 10, OCP 10, 1600 ops/cycle, 200 MHz -> peak 3.2e11 ops/s; default bandwidth
2 ports * 16 B * 200 MHz * 0.6 = 3.84e9 B/s)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from arch import load_arch
from compile.roofline import (
    RooflineParams,
    bandwidth_bytes_per_s,
    estimate,
    estimate_hyperprior,
    peak_ops_per_s,
)
from models.hyperprior import GDNHyperprior, complexity

ARCH = load_arch()


def test_peak_and_bandwidth_come_from_the_arch():
    assert peak_ops_per_s(ARCH) == 1600 * 200e6 == 3.2e11
    assert bandwidth_bytes_per_s(ARCH, RooflineParams()) == pytest.approx(3.84e9)
    assert bandwidth_bytes_per_s(ARCH, RooflineParams(bandwidth_bytes_per_s=1e9)) == 1e9
    slow = copy.deepcopy(ARCH)
    slow["dpu"]["core_clock_hz"] = 100_000_000
    assert peak_ops_per_s(slow) == 1.6e11 and bandwidth_bytes_per_s(slow, RooflineParams()) == pytest.approx(1.92e9)


def test_compute_bound_conv_by_hand():
    net = nn.Sequential(nn.Conv2d(10, 10, 3, padding=1), nn.ReLU())
    est = estimate(net, (1, 10, 8, 8), ARCH, RooflineParams(efficiency=0.5), name="t")
    (layer,) = est["layers"]
    assert layer["macs"] == 8 * 8 * 10 * 10 * 9 == 57600 and layer["ops"] == 115200
    assert layer["utilization"] == 1.0  # 10 | ICP, 10 | OCP, 8 | PP
    assert layer["compute_ms"] == pytest.approx(115200 / (3.2e11 * 0.5) * 1e3)  # 7.2e-4 ms
    assert layer["weight_bytes"] == 900 + 10 and layer["feature_bytes"] == 640 + 640 and layer["bytes"] == 2190
    assert layer["memory_ms"] == pytest.approx(2190 / 3.84e9 * 1e3)  # 5.703125e-4 ms
    assert layer["ms"] == pytest.approx(7.2e-4) and layer["bound"] == "compute"
    assert est["untimed_ops"] == {"relu": 1}
    assert est["total"]["ms"] == pytest.approx(7.2e-4)


def test_memory_bound_deconv_by_hand():
    net = nn.Sequential(nn.ConvTranspose2d(20, 10, 4, stride=2, padding=1))
    (layer,) = estimate(net, (1, 20, 5, 8), ARCH)["layers"]
    assert layer["out_shape"] == [1, 10, 10, 16]
    assert layer["macs"] == 5 * 8 * 20 * 10 * 16 == 128000  # per input pixel
    assert layer["utilization"] == 1.0  # 20/ICP, 10/OCP, input width 8/PP
    assert layer["compute_ms"] == pytest.approx(256000 / (3.2e11 * 0.6) * 1e3)  # 1.3333e-3 ms
    assert layer["bytes"] == (20 * 10 * 16 + 10) + (20 * 5 * 8 + 10 * 10 * 16) == 5610
    assert layer["memory_ms"] == pytest.approx(5610 / 3.84e9 * 1e3)  # 1.4609375e-3 ms
    assert layer["bound"] == "memory" and layer["ms"] == pytest.approx(1.4609375e-3)


def test_array_utilization_by_hand():
    net = nn.Sequential(nn.Conv2d(1, 1, 1))
    layer = estimate(net, (1, 1, 64, 60), ARCH)["layers"][0]
    # Cin 1 of ICP 10, Cout 1 of OCP 10, width 60 in 8 blocks of PP 8 (64)
    assert layer["utilization"] == pytest.approx(0.1 * 0.1 * 60 / 64)
    assert layer["compute_ms"] == pytest.approx(2 * 64 * 60 / (3.2e11 * 0.6 * 0.1 * 0.1 * 60 / 64) * 1e3)
    full = estimate(net, (1, 1, 64, 60), ARCH, RooflineParams(model_utilization=False))["layers"][0]
    assert full["utilization"] == 1.0 and full["bound"] == "memory"
    assert full["memory_ms"] == pytest.approx((1 + 1 + 2 * 64 * 60) / 3.84e9 * 1e3)


def test_network_total_is_the_sum_and_json_able():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 5, 2, 2), nn.LeakyReLU(26 / 256), nn.Conv2d(16, 16, 5, 2, 2),
                        nn.ConvTranspose2d(16, 8, 4, 2, 1))
    est = estimate(net, (1, 1, 64, 64), ARCH, name="n")
    assert len(est["layers"]) == 3
    for key in ("macs", "bytes", "compute_ms", "memory_ms", "ms"):
        assert est["total"][key] == pytest.approx(sum(layer[key] for layer in est["layers"]))
    assert all(layer["ms"] == max(layer["compute_ms"], layer["memory_ms"]) for layer in est["layers"])
    assert json.loads(json.dumps(est)) == est
    assert est["params"]["efficiency"] == 0.6 and est["input_shapes"] == [[1, 1, 64, 64]]


def test_hyperprior_macs_match_models_complexity():
    model = GDNHyperprior(N=16, M=24)
    est = estimate_hyperprior(model, tile=128)
    ref = complexity(model, 128, 128)
    for net in ("g_a", "h_a", "h_s", "g_s"):
        assert est[net]["total"]["macs"] == ref[net]["macs"], net
    assert est["g_a"]["untimed_ops"] == {"mul": 3, "rsqrt": 3, "square": 3}  # GDN's CPU part: not timed
    with pytest.raises(ValueError, match="multiple"):
        estimate_hyperprior(model, tile=100)


def test_params_are_checked():
    with pytest.raises(ValueError, match="efficiency"):
        RooflineParams(efficiency=0)
    with pytest.raises(ValueError, match="memory_efficiency"):
        RooflineParams(memory_efficiency=1.5)
    with pytest.raises(ValueError, match="bandwidth"):
        RooflineParams(bandwidth_bytes_per_s=-1)
