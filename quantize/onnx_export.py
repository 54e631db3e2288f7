"""Export the four networks of a GDNHyperprior to ONNX (inspection, ONNX-based Vitis AI flows).

::

    new_model, _ = rewrite_for_dpu(model)
    report = export_onnx(new_model, "out/onnx")      # out/onnx/g_a.onnx ... h_s.onnx

Each network becomes ONE self-contained file ``<network>.onnx`` (weights inside, no
external data), opset :data:`OPSET` (17), with fixed input shapes for one ``tile`` x
``tile`` tile (``tile=256``: g_a (1,1,256,256), g_s (1,M,16,16), h_a (1,M,16,16),
h_s (1,N,4,4)), simplified with onnxsim, then run with onnxruntime and compared with torch.

Exporter: the legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``). The
dynamo exporter (torch's default) needs ``onnxscript``, which is not a dependency of this
project; the TorchScript path produces opset 17 directly and embeds the weights.

Check: onnxruntime, ``CPUExecutionProvider``, graph optimisations disabled
(``ORT_DISABLE_ALL``, so the file is checked as written), one seeded input per network
(standard normal; uniform [0, 1) for g_a). Tolerance: ``max|ort - torch| <= ATOL + RTOL *
max|torch|`` with ``RTOL = 1e-5`` of the output range (max|torch|, as in the rewrite tests'
``tests/quantize/equivalence.py``: about 100 float32 ulps of the largest output) and
``ATOL = 1e-6`` for outputs near 0 (float32; the differences are kernel summation order). A failed check, a failed
simplification or a rejected model raises :class:`OnnxExportError`; no file is written for
that network (files are written atomically, :func:`codec.fileio.atomic_write`, after the check).

Report, ``{network: {...}}`` (JSON-able): ``path``, ``opset``, ``input_shape``,
``output_shape``, ``op_counts`` (node count by op type, sorted by name), ``n_nodes``,
``max_abs_diff``, ``tolerance``, ``output_range``, ``size_bytes``, ``sha256``.

Layering: ``quantize/`` imports ``codec`` and ``models`` only.
"""

from __future__ import annotations

import copy
import hashlib
import io
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxsim
import torch
from torch import nn

from codec.errors import MedcodecError
from codec.fileio import atomic_write

__all__ = ["ATOL", "NETWORKS", "OPSET", "RTOL", "OnnxExportError", "export_onnx", "input_shapes"]

#: the deployed networks of a GDNHyperprior
NETWORKS: tuple[str, ...] = ("g_a", "g_s", "h_a", "h_s")
OPSET = 17
RTOL = 1e-5  # of the torch output's range, max|torch|
ATOL = 1e-6
#: downsampling of y (g_a, four stride-2 convs) and of z (h_a adds two more)
_Y_STRIDE, _Z_STRIDE = 16, 64


class OnnxExportError(MedcodecError):
    """An export, simplification or ORT-vs-torch check failed."""


def input_shapes(model: nn.Module, tile: int = 256) -> dict[str, tuple[int, int, int, int]]:
    """The fixed input shape of each network for one ``tile`` x ``tile`` tile."""
    if tile <= 0 or tile % _Z_STRIDE:
        raise OnnxExportError(f"tile must be a positive multiple of {_Z_STRIDE}, got {tile}")
    n, m = int(model.N), int(model.M)
    ty, tz = tile // _Y_STRIDE, tile // _Z_STRIDE
    return {"g_a": (1, 1, tile, tile), "g_s": (1, m, ty, ty), "h_a": (1, m, ty, ty), "h_s": (1, n, tz, tz)}


def _seeded_input(net: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if net == "g_a":
        return torch.rand(*shape, generator=gen, dtype=torch.float32)
    return torch.randn(*shape, generator=gen, dtype=torch.float32)


def _export_bytes(net: nn.Module, x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=OPSET,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)
    return buf.getvalue()


def _run_ort(data: bytes, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _export_one(name: str, net: nn.Module, shape: tuple[int, ...], seed: int) -> tuple[bytes, dict]:
    net = copy.deepcopy(net).eval()
    x = _seeded_input(name, shape, seed)
    with torch.no_grad():
        ref = net(x).numpy()
        data = _export_bytes(net, x)
    model = onnx.load_from_string(data)
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise OnnxExportError(f"{name}: onnxsim could not validate the simplified model")
    try:
        onnx.checker.check_model(simplified, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise OnnxExportError(f"{name}: onnx.checker rejected the model: {exc}") from exc
    opsets = {o.domain: o.version for o in simplified.opset_import}
    if opsets.get("", opsets.get("ai.onnx")) != OPSET:
        raise OnnxExportError(f"{name}: expected opset {OPSET}, got {opsets}")
    data = simplified.SerializeToString()
    out = _run_ort(data, x.numpy())
    if out.shape != ref.shape:
        raise OnnxExportError(f"{name}: ORT output shape {out.shape} != torch {ref.shape}")
    diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64))))
    out_range = float(np.max(np.abs(ref)))
    tol = ATOL + RTOL * out_range
    if not diff <= tol:
        raise OnnxExportError(f"{name}: max |ORT - torch| = {diff:.3g} > tolerance {tol:.3g}")
    counts = Counter(node.op_type for node in simplified.graph.node)
    return data, {
        "opset": OPSET,
        "input_shape": list(shape),
        "output_shape": list(ref.shape),
        "op_counts": dict(sorted(counts.items())),
        "n_nodes": len(simplified.graph.node),
        "max_abs_diff": diff,
        "tolerance": tol,
        "output_range": out_range,
        "size_bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def export_onnx(model: nn.Module, out_dir, tile: int = 256, networks: Sequence[str] = NETWORKS,
                *, seed: int = 0) -> dict[str, dict]:
    """Export ``networks`` of ``model`` to ``out_dir/<network>.onnx``; return the report.

    ``model`` is not modified (each network is deep-copied and put in eval mode). Existing
    files are replaced. ``out_dir`` is created if missing.
    """
    unknown = [n for n in networks if n not in NETWORKS]
    if unknown:
        raise OnnxExportError(f"unknown network(s) {unknown}; expected a subset of {list(NETWORKS)}")
    missing = [n for n in networks if not isinstance(getattr(model, n, None), nn.Module)]
    if missing:
        raise OnnxExportError(f"{type(model).__name__} has no network(s) {missing}")
    shapes = input_shapes(model, tile)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict] = {}
    for i, name in enumerate(networks):
        data, rep = _export_one(name, getattr(model, name), shapes[name], seed + i)
        path = atomic_write(out / f"{name}.onnx", data, force=True)
        report[name] = {"path": str(path), **rep}
    return report
