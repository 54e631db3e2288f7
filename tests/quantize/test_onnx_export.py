"""quantize.onnx_export: one self-contained opset-17 file per network, accepted by
onnx.checker, ORT (optimisations off) matching torch, and the ONNX graph showing what the
DPU rewrites changed (ConvTranspose output_padding) and what is left (GDN's Sqrt/Mul).

Tolerance: float32, ``max|ort - torch| <= RTOL * max|torch| + ATOL`` with RTOL 1e-5 of the
output range and ATOL 1e-6 (the module's own check; re-checked here independently)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models.hyperprior import GDNHyperprior
from quantize.onnx_export import ATOL, OPSET, RTOL, OnnxExportError, export_onnx, input_shapes
from quantize.rewrite import NETWORKS, rewrite_for_dpu

N, M, TILE = 16, 24, 64


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = GDNHyperprior(N=N, M=M).eval()
    new, _ = rewrite_for_dpu(model)
    return model, new


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    model, new = models
    orig_dir, new_dir = tmp_path_factory.mktemp("orig"), tmp_path_factory.mktemp("rewritten")
    return export_onnx(model, orig_dir, tile=TILE), export_onnx(new, new_dir, tile=TILE)


def _attr(node: onnx.NodeProto, name: str):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return None


def _has_output_padding(path: str) -> bool:
    nodes = onnx.load(path).graph.node
    return any(n.op_type == "ConvTranspose" and any(_attr(n, "output_padding") or ()) for n in nodes)


def test_input_shapes():
    model = GDNHyperprior(N=N, M=M)
    assert input_shapes(model, 256) == {"g_a": (1, 1, 256, 256), "g_s": (1, M, 16, 16),
                                        "h_a": (1, M, 16, 16), "h_s": (1, N, 4, 4)}
    with pytest.raises(OnnxExportError):
        input_shapes(model, 96)


@pytest.mark.parametrize("net", NETWORKS)
def test_single_file_opset17_checker(exported, net):
    for report in exported:
        rep = report[net]
        path = Path(rep["path"])
        assert path.name == f"{net}.onnx" and sorted(p.name for p in path.parent.iterdir()) == \
            sorted(f"{n}.onnx" for n in NETWORKS)  # no external-data or temporary files beside it
        data = path.read_bytes()
        assert rep["size_bytes"] == len(data) and rep["sha256"] == hashlib.sha256(data).hexdigest()
        proto = onnx.load(str(path), load_external_data=False)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == OPSET == rep["opset"]
        onnx.checker.check_model(proto, full_check=True)
        dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
        assert dims == rep["input_shape"] == list(input_shapes(GDNHyperprior(N=N, M=M), TILE)[net])
        assert sum(rep["op_counts"].values()) == rep["n_nodes"] == len(proto.graph.node)


@pytest.mark.parametrize("net", NETWORKS)
def test_ort_matches_torch(models, exported, net):
    for model, report in zip(models, exported, strict=True):
        rep = report[net]
        assert rep["max_abs_diff"] <= rep["tolerance"]
        shape = rep["input_shape"]
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(123))
        if net == "g_a":
            x = x.abs().clamp(max=1.0)
        with torch.no_grad():
            ref = getattr(model, net)(x).numpy()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(rep["path"], sess_options=opts, providers=["CPUExecutionProvider"])
        out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        assert out.shape == ref.shape == tuple(rep["output_shape"])
        assert np.max(np.abs(out - ref)) <= RTOL * np.max(np.abs(ref)) + ATOL


def test_rewrite_removes_output_padding(exported):
    orig, new = exported
    assert _has_output_padding(orig["g_s"]["path"]) and _has_output_padding(orig["h_s"]["path"])
    assert not _has_output_padding(new["g_s"]["path"]) and not _has_output_padding(new["h_s"]["path"])
    assert new["g_s"]["op_counts"]["ConvTranspose"] == 4


def test_gdn_ops_present_in_g_a(exported):
    for report in exported:
        ops = report["g_a"]["op_counts"]
        assert ops["Conv"] == 4 + 3  # four convs + the 1x1 conv of each GDN
        assert ops["Sqrt"] == 3 and ops["Mul"] >= 6  # rsqrt -> Sqrt (+ Div); x*x and x*norm
        assert "Sqrt" in report["g_s"]["op_counts"]  # IGDN
        assert "Sqrt" not in report["h_a"]["op_counts"] and "Sqrt" not in report["h_s"]["op_counts"]


def test_subset_overwrite_and_errors(models, tmp_path):
    _, new = models
    first = export_onnx(new, tmp_path, tile=TILE, networks=("h_s",))
    again = export_onnx(new, tmp_path, tile=TILE, networks=("h_s",))  # replaces the file
    assert list(first) == ["h_s"] and first["h_s"]["sha256"] == again["h_s"]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h_s.onnx"]
    with pytest.raises(OnnxExportError):
        export_onnx(new, tmp_path, tile=TILE, networks=("g_x",))
    with pytest.raises(OnnxExportError):
        export_onnx(torch.nn.Linear(2, 2), tmp_path, tile=TILE, networks=("g_a",))
