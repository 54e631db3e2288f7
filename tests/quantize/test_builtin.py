"""quantize/builtin.py: rounding, saturation, the fix-position cap, the diffs scan, the modal
statistic, legalisation, and FakeQuant (torch) == FixedNet (numpy emulator) bit for bit."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from arch import load_arch
from quantize.builtin import (
    FakeQuant,
    LayerSpec,
    QuantSpec,
    calibrate,
    check_legal,
    diffs_fix_pos,
    legalize,
    non_overflow_fix_pos,
    quantize_tensor,
    to_fixednet,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def arch():
    return load_arch()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_rounding_ties():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], dtype=torch.float64)
    assert quantize_tensor(x, 0, "half_up").tolist() == [-2, -1, 0, 1, 2, 3]
    assert quantize_tensor(x, 0, "half_away").tolist() == [-3, -2, -1, 1, 2, 3]


def test_saturation():
    x = torch.tensor([-1000.0, -128.4, 126.6, 127.5, 1e9], dtype=torch.float64)
    assert quantize_tensor(x, 0, "half_up").tolist() == [-128, -128, 127, 127, 127]
    assert quantize_tensor(x, 0, "half_away").tolist() == [-128, -128, 127, 127, 127]


def test_fix_pos_cap_from_arch(arch):
    cap = arch["quantization"]["max_fix_pos"]
    tiny = torch.full((10,), 1e-6, dtype=torch.float64)
    assert diffs_fix_pos(tiny, "half_up", arch) == cap
    assert diffs_fix_pos(tiny, "half_away", arch) == cap
    assert diffs_fix_pos(torch.zeros(4), "half_up", arch) == cap


def test_non_overflow_position():
    assert non_overflow_fix_pos(torch.tensor([1.0]), 127, 12) == 6  # 64 <= 127 < 128
    assert non_overflow_fix_pos(torch.tensor([127.0]), 127, 12) == 0
    assert non_overflow_fix_pos(torch.tensor([127.01]), 127, 12) == -1
    assert non_overflow_fix_pos(torch.tensor([-1000.0]), 127, 12) == -3


def test_scan_prefers_mse_best_over_non_overflow(arch):
    x = (torch.rand(100_000, generator=_gen(0), dtype=torch.float64) * 2 - 1)
    x[0] = 10.0  # the outlier sets the non-overflow position
    f0 = non_overflow_fix_pos(x, 127, 12)
    assert f0 == 3

    def err(f):
        return float(torch.sum((quantize_tensor(x, f, "half_away") * 2.0**-f - x) ** 2))

    best = min(range(f0, f0 + 5), key=err)
    assert best != f0
    assert diffs_fix_pos(x, "half_away", arch) == best


def test_mode_across_batches(arch):
    net = nn.Sequential(OrderedDict(conv=nn.Conv2d(1, 1, 1, bias=False)))
    with torch.no_grad():
        net.conv.weight.fill_(1.0)
    small = torch.full((1, 1, 2, 2), 1.0)    # position 6
    big = torch.full((1, 1, 2, 2), 100.0)    # position 0
    spec = calibrate(net, [small, big, small], arch)
    assert spec.fp_in == 6
    spec = calibrate(net, [big, small, big], arch)
    assert spec.fp_in == 0


def _ls(fp_w, fp_b, fp_out):
    return LayerSpec(name="c", op="conv", act="none", stride=1, padding=0, output_padding=0,
                     fp_w=fp_w, fp_b=fp_b, fp_out=fp_out)


@pytest.mark.parametrize("fp_in,fp_w,fp_b,fp_out,want_out,want_b", [
    (10, 12, 10, 2, 6, 10),      # shift_cut 20 > 16: fp_out up to 6 (shift_cut 16)
    (0, 2, 2, 5, 2, 2),          # shift_cut -3 < 0: fp_out down to 2 (shift_cut 0)
    (6, 7, -10, 6, 6, -3),       # shift_bias 23 > 16: fp_b up to -3 (shift_bias 16)
    (4, 12, 17, 0, 0, 16),       # shift_cut 16 -> bound min(0, 0) = 0; shift_bias -1: fp_b down to 16
    (0, 6, 23, 6, 6, 22),        # shift_cut 0 -> bound -16; shift_bias -17: fp_b down to 22
    (4, 4, 12, 8, 8, 12),        # legal already: no move
])
def test_legalisation(arch, fp_in, fp_w, fp_b, fp_out, want_out, want_b):
    layers = [_ls(fp_w, fp_b, fp_out), _ls(6, 6, 6)]
    log = legalize(fp_in, layers, arch)
    assert (layers[0].fp_out, layers[0].fp_b) == (want_out, want_b)
    check_legal(QuantSpec(fp_in=fp_in, layers=layers), arch)  # the invariant, every layer
    moved = (want_out, want_b) != (fp_out, fp_b)
    assert bool(log) == moved
    if moved:  # the original positions break the invariant
        with pytest.raises(AssertionError):
            check_legal(QuantSpec(fp_in=fp_in, layers=[_ls(fp_w, fp_b, fp_out)]), arch)


def test_legalisation_propagates_to_next_layer(arch):
    # moving layer 0's fp_out changes layer 1's fp_in, hence its shift_cut
    layers = [_ls(12, 12, 2), _ls(0, 0, 6)]
    legalize(10, layers, arch)
    assert layers[0].fp_out == 6 and layers[1].fp_out == 6
    check_legal(QuantSpec(fp_in=10, layers=layers), arch)


def _assert_bit_exact(net, batches, arch, inputs):
    spec = calibrate(net, batches, arch)
    check_legal(spec, arch)
    fixed = to_fixednet(net, spec)
    fq = FakeQuant(net, spec)
    for x in inputs:
        for xi in x:
            xq_np = fixed.quantize_input(xi.numpy())
            xq_t = fq.quantize_input(xi)
            assert np.array_equal(xq_np, xq_t.numpy())
            ref = fixed.forward_int(xq_np)
            got = fq.forward_int(xq_t).numpy()
            assert got.shape == ref.shape
            assert np.array_equal(got, ref)
            assert np.array_equal(fq(xi).numpy(), ref)
    for ls in spec.layers:
        assert ls.sqnr_db is not None and not math.isnan(ls.sqnr_db)
    return spec


def test_bit_exact_conv_relu_conv(arch):
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        conv0=nn.Conv2d(3, 8, 3, padding=1), relu0=nn.ReLU(),
        conv1=nn.Conv2d(8, 4, 5, stride=2, padding=2))).eval()
    batches = [torch.randn(2, 3, 16, 16, generator=_gen(s)) * 2 for s in range(3)]
    spec = _assert_bit_exact(net, batches, arch, batches + [torch.randn(2, 3, 12, 20, generator=_gen(9)) * 5])
    assert spec.layers[0].act == "relu"


def test_bit_exact_leaky(arch):
    torch.manual_seed(1)
    net = nn.Sequential(OrderedDict(
        conv0=nn.Conv2d(2, 6, 3, padding=1), act0=nn.LeakyReLU(26 / 256),
        deconv1=nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1), act1=nn.LeakyReLU(26 / 256),
        conv2=nn.Conv2d(4, 3, 1))).eval()
    batches = [torch.randn(2, 2, 10, 10, generator=_gen(s)) for s in range(3)]
    spec = _assert_bit_exact(net, batches, arch, batches)
    assert [ls.act for ls in spec.layers] == ["leaky_relu", "leaky_relu", "none"]


def test_rejects_other_leaky_slope(arch):
    net = nn.Sequential(nn.Conv2d(1, 1, 1), nn.LeakyReLU(0.1))
    with pytest.raises(ValueError, match="26/256"):
        calibrate(net, [torch.randn(1, 1, 4, 4)], arch)


def test_bit_exact_rewritten_h_s(arch):
    from models.hyperprior import GDNHyperprior
    from quantize.rewrite import rewrite_for_dpu

    torch.manual_seed(0)
    model, _ = rewrite_for_dpu(GDNHyperprior(N=16, M=24).eval())
    h_s = model.h_s
    assert h_s.deconv0.kernel_size == (6, 6)
    batches = [torch.randint(-8, 9, (2, 16, 4, 4), generator=_gen(s)).double() for s in range(3)]
    spec = _assert_bit_exact(h_s, batches, arch, batches)
    assert spec.fp_in >= 0  # integer symbols are exact at fp_in


@pytest.fixture(scope="module")
def trained_h_a_input():
    from codec.dicom import read_dicom
    from models.zoo import load_model

    model = load_model("gdn-hyperprior", 1)  # committed weights: a failure here is a real failure
    px = read_dicom(ROOT / "samples/ct/ct_signed_tcia_covid19.dcm").pixels.astype(np.float64)
    px = (px - px.min()) / (px.max() - px.min())
    tiles = [torch.from_numpy(px[r:r + 128, c:c + 128]).float()[None, None]
             for r, c in ((128, 128), (256, 256), (192, 320))]
    with torch.no_grad():
        ys = [torch.abs(model.g_a(t)) for t in tiles]
    return model.h_a, ys


def test_bit_exact_trained_h_a(arch, trained_h_a_input):
    h_a, ys = trained_h_a_input
    spec = _assert_bit_exact(h_a, ys, arch, ys)
    print("trained h_a SQNR dB:", {ls.name: round(ls.sqnr_db, 2) for ls in spec.layers}, "fp_in", spec.fp_in)
    assert all(ls.sqnr_db > 10 for ls in spec.layers)


def test_pinned_output_fix_position_is_kept():
    from arch import load_arch
    from quantize.builtin import calibrate

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 1))
    x = [torch.rand(2, 2, 8, 8) * 4]
    free = calibrate(net, x, load_arch())
    pinned = calibrate(net, x, load_arch(), pin_fp_out={"2": free.layers[-1].fp_out - 2})
    assert pinned.layers[-1].fp_out == free.layers[-1].fp_out - 2
    assert pinned.layers[0].fp_out == free.layers[0].fp_out
