"""The DPU runner of the board runtime: ``codec.dpunets.NetRunner`` over VART 2.5 (DPU-PYNQ).

This is the one module that touches the vendor runtime (``xir``, ``vart`` and, to program the
overlay, ``pynq_dpu``); all three are imported inside functions, so importing this module needs
numpy and codec/ only. One compiled ``.xmodel`` per network (g_a, h_a, g_s)::

    graph = xir.Graph.deserialize(path)
    subs  = graph.get_root_subgraph().toposort_child_subgraph()   # children_topological_sort in C++
    dpu   = [s for s in subs if device(s) == "DPU"]                # exactly one, and no CPU subgraph
    runner = vart.Runner.create_runner(dpu[0], "run")

At load every network is checked against the runtime manifest, one line per problem: exactly
one DPU subgraph and no CPU one, one input and one output tensor, their ``dims`` (NHWC) and
``fix_point`` equal to the manifest's (which come from the int8 package), the tensor names when
the manifest gives them, and the DPU fingerprint when the xmodel records one.

``run_int(net, x_q)``: int8-valued (B, C, H, W) -> NHWC ``np.int8`` C-contiguous buffers of
the xmodel's batch, ``execute_async`` + ``wait`` per batch, NHWC int8 -> (B, C', H', W') int8.
Quantizing real values (round half up, saturate, with the fix point) is ``RunnerNetworks``'
job (``codec/dpunets.py``); VART's own float path truncates and wraps, so it is never used.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from codec.dpunets import DPU_NETWORKS
from codec.errors import MedcodecError

__all__ = ["VartError", "VartRunner", "available", "load_overlay"]

#: the subgraph devices a compiled network may have besides its DPU subgraph (the graph's input)
HOST_DEVICES = ("USER",)


class VartError(MedcodecError):
    """An xmodel that does not match the runtime manifest, or a VART call that failed."""


def _vendor(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise VartError(f"the VART runner needs the {name!r} module (VART 2.5 via DPU-PYNQ): {exc}") from None


def available() -> bool:
    """Whether ``xir`` and ``vart`` import (on a PYNQ image with pynq-dpu installed)."""
    try:
        importlib.import_module("xir")
        importlib.import_module("vart")
    except ImportError:
        return False
    return True


def load_overlay(bitfile: str = "dpu.bit"):
    """Program the DPU overlay (``pynq_dpu.DpuOverlay``); VART finds the DPU only after this."""
    pynq_dpu = _vendor("pynq_dpu")
    try:
        return pynq_dpu.DpuOverlay(bitfile)
    except Exception as exc:  # the overlay fails in vendor-specific ways; all are one user error
        raise VartError(f"cannot load the DPU overlay {bitfile!r} ({type(exc).__name__}: {exc})") from None


def _device(sub) -> str:
    return str(sub.get_attr("device")).upper() if sub.has_attr("device") else ""


def _children(graph) -> list:
    root = graph.get_root_subgraph()
    if hasattr(root, "toposort_child_subgraph"):  # the Python binding's name
        return list(root.toposort_child_subgraph())
    return list(root.children_topological_sort())


def _tensor_info(t) -> dict:
    return {"name": str(t.name), "dims": [int(d) for d in t.dims], "fix_point": int(t.get_attr("fix_point"))}


def dpu_subgraph(graph, where: str, fingerprint: str | None = None):
    """The graph's only DPU subgraph; a one-line error for zero, several, or CPU subgraphs."""
    subs = _children(graph)
    dpu = [s for s in subs if _device(s) == "DPU"]
    other = [f"{s.get_name()} ({_device(s) or 'no device'})" for s in subs
             if _device(s) != "DPU" and _device(s) not in HOST_DEVICES]
    if len(dpu) != 1:
        raise VartError(f"{where}: {len(dpu)} DPU subgraphs, the runtime needs exactly 1")
    if other:
        raise VartError(f"{where}: part of the network is not on the DPU: {', '.join(other)}")
    sub = dpu[0]
    if fingerprint is not None and sub.has_attr("dpu_fingerprint"):
        got = int(sub.get_attr("dpu_fingerprint"))
        if got != int(fingerprint, 16):
            raise VartError(f"{where}: compiled for DPU fingerprint {got:#x}, the board's is {fingerprint}")
    return sub


def check_tensors(runner, expected: dict, where: str) -> tuple[dict, dict]:
    """The runner's single input and output tensor, checked against the manifest's entry."""
    found = {}
    for side, tensors in (("input", runner.get_input_tensors()), ("output", runner.get_output_tensors())):
        if len(tensors) != 1:
            raise VartError(f"{where}: {len(tensors)} {side} tensors, the runtime needs exactly 1")
        info = _tensor_info(tensors[0])
        want = expected[side]
        if info["dims"] != [int(d) for d in want["dims"]]:
            raise VartError(f"{where}: {side} tensor {info['name']} has dims {info['dims']}, "
                            f"the manifest says {list(want['dims'])} (NHWC)")
        if info["fix_point"] != int(want["fix_point"]):
            raise VartError(f"{where}: {side} tensor {info['name']} has fix_point {info['fix_point']}, "
                            f"the package's is {want['fix_point']}")
        if want.get("name") and info["name"] != want["name"]:
            raise VartError(f"{where}: {side} tensor is named {info['name']!r}, the manifest says {want['name']!r}")
        found[side] = info
    return found["input"], found["output"]


class VartRunner:
    """``NetRunner`` on the DPU: one VART runner per network, checked against the manifest.

    ``xmodels``: network -> .xmodel path; ``expected``: network -> {"input": {...}, "output":
    {...}} with ``dims`` (NHWC, batch first), ``fix_point`` and optionally ``name`` (the runtime
    manifest's ``networks`` entry of one quality).
    """

    name = "vart"

    def __init__(self, xmodels: dict, expected: dict, *, fingerprint: str | None = None):
        xir = _vendor("xir")
        vart = _vendor("vart")
        missing = [n for n in DPU_NETWORKS if n not in xmodels]
        if missing:
            raise VartError(f"no xmodel for network(s) {missing}")
        self.runners: dict = {}
        self.tensors: dict[str, dict] = {}
        for net in DPU_NETWORKS:
            path = Path(xmodels[net])
            where = f"{path.name} ({net})"
            if not path.is_file():
                raise VartError(f"{path}: xmodel missing")
            if net not in expected:
                raise VartError(f"{where}: the manifest has no entry for {net}")
            graph = xir.Graph.deserialize(str(path))
            sub = dpu_subgraph(graph, where, fingerprint)
            runner = vart.Runner.create_runner(sub, "run")
            t_in, t_out = check_tensors(runner, expected[net], where)
            self.runners[net] = runner
            self.tensors[net] = {"input": t_in, "output": t_out, "subgraph": str(sub.get_name())}

    def fix_in(self, net: str) -> int:
        return self.tensors[net]["input"]["fix_point"]

    def fix_out(self, net: str) -> int:
        return self.tensors[net]["output"]["fix_point"]

    def describe(self) -> dict:
        """What was loaded: per network, subgraph name and tensor names, dims and fix points."""
        return {net: dict(t) for net, t in self.tensors.items()}

    def run_int(self, net: str, x_q: np.ndarray) -> np.ndarray:
        """int8-valued (B, C, H, W) -> int8 (B, C', H', W'), in batches of the xmodel's batch size."""
        x = np.asarray(x_q)
        in_dims = self.tensors[net]["input"]["dims"]
        out_dims = self.tensors[net]["output"]["dims"]
        if x.ndim != 4 or tuple(x.shape[1:]) != (in_dims[3], in_dims[1], in_dims[2]):
            raise VartError(f"{net}: input of shape {x.shape}, the xmodel takes (B, {in_dims[3]}, "
                            f"{in_dims[1]}, {in_dims[2]})")
        if x.size and (x.min() < -128 or x.max() > 127 or (x.dtype.kind == "f" and not np.array_equal(x, np.round(x)))):
            raise VartError(f"{net}: input is not int8-valued")
        nhwc = x.astype(np.int8).transpose(0, 2, 3, 1)
        runner = self.runners[net]
        batch = in_dims[0]
        out = np.empty((x.shape[0], *out_dims[1:]), dtype=np.int8)
        for start in range(0, x.shape[0], batch):
            n = min(batch, x.shape[0] - start)
            inp = np.zeros(in_dims, dtype=np.int8)  # C-contiguous, the tensor's exact dims
            inp[:n] = nhwc[start:start + n]
            res = np.empty(out_dims, dtype=np.int8)
            job = runner.execute_async([inp], [res])
            status = runner.wait(job)
            if isinstance(status, (int, np.integer)) and status != 0:
                raise VartError(f"{net}: the DPU job ended with status {status}")
            out[start:start + n] = res[:n]
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2))
