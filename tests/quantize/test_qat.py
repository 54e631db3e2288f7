"""Quantization-aware training: the fake-int8 chain computes what the DPU computes, and trains."""

import torch
from torch import nn

from arch import load_arch
from models import registry
from quantize.builtin import FakeQuant, calibrate
from quantize.codec_int8 import calibrate_codec
from quantize.qat import QATChain, deployable, fake_quant, qat_model


def _relu_chain():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(4, 3, 4, 2, 1), nn.ReLU(),
                         nn.Conv2d(3, 2, 1)).double()


def test_forward_equals_the_integer_fake_quant_model():
    net = _relu_chain()
    x = [torch.rand(2, 2, 8, 8, dtype=torch.float64) * 3]
    spec = calibrate(net, x, load_arch())
    with torch.no_grad():
        q = QATChain(net, spec)(x[0])
        ref = FakeQuant(net, spec)(x[0]) * 2.0 ** -spec.layers[-1].fp_out
    assert torch.equal(q, ref)


def test_gradients_pass_inside_the_range_and_stop_outside():
    x = torch.tensor([0.3, 5.0, -0.26], requires_grad=True)
    y = fake_quant(x, 5)  # range [-4, 3.97]
    assert torch.allclose(y.detach(), torch.tensor([0.3125, 127 / 32, -0.25]))
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 0.0, 1.0]


def test_qat_model_trains_and_gives_back_deployable_networks():
    torch.manual_seed(0)
    model = registry.create("dpu-hyperprior", N=8, M=8)
    tiles = torch.rand(2, 1, 64, 64)
    specs, _ = calibrate_codec(model, tiles, load_arch())
    qm = qat_model(model, specs)
    assert isinstance(qm.g_a, QATChain) and isinstance(qm.g_s, QATChain)
    out = qm(tiles)
    assert out["x_hat"].shape == tiles.shape
    # the chain's weights get gradients through the rounding (straight through)
    x = torch.rand(1, 1, 64, 64)
    qm.g_a(x).pow(2).sum().backward()
    assert float(qm.g_a.net.conv0.weight.grad.abs().sum()) > 0
    dep = deployable(qm)
    assert isinstance(dep.g_s, nn.Sequential) and dep.g_s.deconv0.output_padding == (0, 0)
    assert model.g_s.deconv0.output_padding == (1, 1)  # the input model is not modified


def test_finetune_runs_and_the_package_is_bit_exact():
    from quantize.codec_int8 import build_int8_package
    from quantize.qat import finetune

    torch.manual_seed(0)
    model = registry.create("dpu-hyperprior", N=8, M=8)
    tiles = torch.rand(2, 1, 64, 64)
    specs, _ = calibrate_codec(model, tiles, load_arch())

    class Crops:
        def sample(self, n):
            return torch.rand(n, 1, 64, 64)

    lines = []
    dep = finetune(model, specs, Crops(), lmbda=100.0, steps=100, batch=1, lr=1e-4, log=lines.append)
    assert len(lines) == 1 and "fake int8" in lines[0]
    assert not torch.equal(dep.g_a.conv0.weight, model.g_a.conv0.weight)  # it trained
    pkg, rep = build_int8_package(dep, specs, tiles[:1], name="dpu-hyperprior", quality=1, tile=64,
                                  weights_sha256="0" * 64)
    assert all(r["emulator_equals_fakequant"] for r in rep["networks"].values())
