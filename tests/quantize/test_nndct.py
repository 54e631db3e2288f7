"""quantize.nndct, the in-process adapter: generation detection, the torch_quantizer
arguments, the calib/test call sequence and the output paths, against the FAKE
pytorch_nndct of ``fake_nndct.py`` (argument shapes only); the real vai_q_pytorch run is
marked ``toolchain`` and skips where pytorch_nndct does not import."""

from __future__ import annotations

import json
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

from arch import load_arch
from quantize.nndct import (
    GEN_VAI3,
    GEN_VAI25,
    NndctError,
    api_generation,
    as_named_sequential,
    available,
    quantize_nndct,
    quantizer_kwargs,
    xmodel_name,
)
from tests.quantize import fake_nndct

FP = load_arch()["dpu"]["fingerprint"]


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(conv0=nn.Conv2d(1, 4, 5, 2, 2), act0=nn.LeakyReLU(26 / 256),
                                     conv1=nn.Conv2d(4, 6, 3, 1, 1)))


def batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)]


def test_available_follows_importability(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_nndct", None)  # None in sys.modules: ImportError
    assert available() is False
    fake_nndct.install(monkeypatch, "2.5")
    assert available() is True


@pytest.mark.parametrize(("generation", "expected"), [("2.5", GEN_VAI25), ("3.5", GEN_VAI3)])
def test_api_generation_from_the_signature(generation, expected):
    _, apis, _ = fake_nndct.make_fake(generation)
    assert api_generation(apis.torch_quantizer) == expected


def test_api_generation_rejects_an_unknown_api():
    def torch_quantizer(mode, model):  # not vai_q_pytorch's keywords
        return None

    with pytest.raises(NndctError, match="no 'quant_mode' argument"):
        api_generation(torch_quantizer)


def test_quantizer_kwargs_shape():
    net, x = small_net(), torch.zeros(1, 1, 16, 16)
    k25 = quantizer_kwargs(GEN_VAI25, "calib", net, x, "out", FP)
    assert set(k25) == {"quant_mode", "module", "input_args", "output_dir", "device"}
    assert k25["quant_mode"] == "calib" and k25["module"] is net and k25["output_dir"] == "out"
    assert isinstance(k25["input_args"], tuple) and k25["input_args"][0] is x
    assert k25["device"] == torch.device("cpu")
    k3 = quantizer_kwargs(GEN_VAI3, "test", net, x, "out", FP)
    assert k3["target"] == "0x101000016010404"  # the fingerprint, never the name (VAI >= 3.0)
    assert set(k3) - set(k25) == {"target"}
    with pytest.raises(ValueError, match="quant_mode"):
        quantizer_kwargs(GEN_VAI25, "float", net, x, "out", FP)
    with pytest.raises(NndctError, match="fingerprint"):
        quantizer_kwargs(GEN_VAI3, "calib", net, x, "out", "DPUCZDX8G_ISA1_B1600")


def test_xmodel_name_follows_the_class():
    assert xmodel_name(nn.Sequential()) == "Sequential_int.xmodel"
    named = as_named_sequential(small_net(), "g_a")
    assert type(named).__name__ == "g_a" and xmodel_name(named) == "g_a_int.xmodel"
    for bad in ("g-a", "class", "1net", ""):
        with pytest.raises(NndctError, match="identifier"):
            as_named_sequential(small_net(), bad)


@pytest.mark.parametrize("generation", ["2.5", "3.5"])
def test_quantize_nndct_runs_calib_then_test(monkeypatch, tmp_path, generation):
    log = fake_nndct.install(monkeypatch, generation)
    net, data = small_net().train(), batches()
    ref = [p.detach().clone() for p in net.parameters()]
    res = quantize_nndct(net, data, tmp_path / "g_a", FP, net_name="g_a")

    steps = [step for step, _ in log]
    assert steps == ["init", "export_quant_config", "init", "export_xmodel"]
    calib, test = log[0][1], log[2][1]
    assert calib["quant_mode"] == "calib" and test["quant_mode"] == "test"
    assert tuple(calib["input_args"][0].shape) == (3, 1, 16, 16)  # traced on the first batch
    assert tuple(test["input_args"][0].shape) == (1, 1, 16, 16)  # export: batch size 1
    assert log[1][1] == [3, 2]  # every calibration batch went through quant_model
    assert log[3][1] == {"output_dir": str(tmp_path / "g_a"), "deploy_check": False}
    for kw in (calib, test):
        assert kw["output_dir"] == str(tmp_path / "g_a") and kw["device"] == torch.device("cpu")
        assert type(kw["module"]).__name__ == "g_a" and not kw["module"].training
        if generation == "3.5":
            assert kw["target"] == FP
        else:
            assert "target" not in kw

    assert res.generation == (GEN_VAI3 if generation == "3.5" else GEN_VAI25)
    assert res.xmodel == tmp_path / "g_a" / "g_a_int.xmodel"
    assert res.xmodel.read_bytes() == fake_nndct.FAKE_XMODEL_BYTES
    assert res.quant_info == tmp_path / "g_a" / "quant_info.json" and res.quant_info.is_file()
    manifest = json.loads(res.manifest.read_text())
    assert manifest == res.to_dict()
    assert manifest["calib_batches"] == 2 and manifest["calib_samples"] == 5 and manifest["fingerprint"] == FP
    # the caller's network is untouched: same parameters, still in training mode
    assert net.training and all(torch.equal(a, b) for a, b in zip(ref, net.parameters(), strict=True))


def test_quantize_nndct_without_a_name_uses_the_class_name(monkeypatch, tmp_path):
    fake_nndct.install(monkeypatch, "2.5")
    res = quantize_nndct(small_net(), batches(), tmp_path, FP)
    assert res.xmodel.name == "Sequential_int.xmodel"


def test_missing_pytorch_nndct_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pytorch_nndct", None)
    monkeypatch.setitem(sys.modules, "pytorch_nndct.apis", None)
    with pytest.raises(NndctError, match="render_docker_job") as exc:
        quantize_nndct(small_net(), batches(), tmp_path, FP)
    assert "\n" not in str(exc.value)


def test_bad_calibration_input(monkeypatch, tmp_path):
    fake_nndct.install(monkeypatch, "2.5")
    with pytest.raises(NndctError, match="no calibration batches"):
        quantize_nndct(small_net(), [], tmp_path, FP)
    with pytest.raises(NndctError, match="differ"):
        quantize_nndct(small_net(), [torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 8, 8)], tmp_path, FP)
    with pytest.raises(NndctError, match=r"\(N, C, H, W\)"):
        quantize_nndct(small_net(), [torch.zeros(16, 16)], tmp_path, FP)


def test_no_xmodel_written_is_an_error(monkeypatch, tmp_path):
    fake_nndct.install(monkeypatch, "2.5")
    quantizer = sys.modules["pytorch_nndct.apis"].torch_quantizer
    monkeypatch.setattr(quantizer, "export_xmodel", lambda self, output_dir="", deploy_check=False: None)
    with pytest.raises(NndctError, match="wrote no g_a_int.xmodel"):
        quantize_nndct(small_net(), batches(), tmp_path, FP, net_name="g_a")


@pytest.mark.toolchain
def test_real_vai_q_pytorch_exports_an_xmodel(tmp_path):
    pytest.importorskip("pytorch_nndct", reason="pytorch_nndct ships only in the Vitis AI docker")
    res = quantize_nndct(small_net(), batches(), tmp_path, FP, net_name="g_a")
    assert res.xmodel.is_file() and res.xmodel.stat().st_size > 0
    assert json.loads(res.quant_info.read_text())
