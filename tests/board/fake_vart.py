"""FAKE ``xir`` / ``vart`` / ``pynq_dpu`` modules, for tests ONLY (never shipped, never on a board).

They mimic the VART 2.5 Python API that ``board/vart_runner.py`` uses, and they are strict about
what the real runtime is strict about:

- ``xir.Graph.deserialize(path)`` reads a FAKE xmodel, a JSON file written by :func:`write_xmodel`
  (root subgraph -> children with a ``device`` attr, DPU tensors with ``dims`` and ``fix_point``);
- ``vart.Runner.create_runner(sub, "run")`` accepts only a DPU subgraph;
- ``execute_async(inputs, outputs)`` accepts only lists of ``np.int8``, C-contiguous arrays of
  exactly the tensor's dims (NHWC), as VART does for int8 buffers; it computes the network with
  the integer emulator (``FixedNet``) on the NCHW view of the buffer, so a wrong layout gives
  wrong numbers, and records every call in ``CALLS``.

``install(monkeypatch)`` puts the three modules into ``sys.modules``.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np

from codec.package import load_package

CALLS: list[dict] = []
OVERLAYS: list[str] = []


class FakeTensor:
    def __init__(self, d: dict):
        self.name = d["name"]
        self.dims = list(d["dims"])
        self._attrs = {"fix_point": d["fix_point"]}

    def get_attr(self, key):
        return self._attrs[key]

    def has_attr(self, key) -> bool:
        return key in self._attrs


class FakeSubgraph:
    def __init__(self, d: dict, net=None):
        self._name = d["name"]
        self._attrs = dict(d.get("attrs", {}))
        if d.get("device"):
            self._attrs["device"] = d["device"]
        self.inputs = [FakeTensor(t) for t in d.get("inputs", [])]
        self.outputs = [FakeTensor(t) for t in d.get("outputs", [])]
        self.children = [FakeSubgraph(c, net) for c in d.get("children", [])]
        self.net = net

    def get_name(self) -> str:
        return self._name

    def has_attr(self, key) -> bool:
        return key in self._attrs

    def get_attr(self, key):
        return self._attrs[key]

    def is_leaf(self) -> bool:
        return not self.children

    def toposort_child_subgraph(self):
        return list(self.children)


class FakeGraph:
    def __init__(self, doc: dict, net):
        self.root = FakeSubgraph(doc["root"], net)

    @staticmethod
    def deserialize(path: str) -> FakeGraph:
        doc = json.loads(Path(path).read_text())
        if doc.get("fake") != "xmodel":
            raise RuntimeError(f"{path}: not a FAKE xmodel")
        net = load_package(doc["package"]).nets[doc["net"]]
        return FakeGraph(doc, net)

    def get_root_subgraph(self) -> FakeSubgraph:
        return self.root


class FakeRunner:
    def __init__(self, sub: FakeSubgraph, mode: str):
        if mode != "run":
            raise ValueError(f"mode {mode!r}")
        if not sub.has_attr("device") or sub.get_attr("device") != "DPU":
            raise RuntimeError("create_runner: not a DPU subgraph")
        self.sub = sub
        self.jobs = 0

    @staticmethod
    def create_runner(sub, mode=""):
        return FakeRunner(sub, mode)

    def get_input_tensors(self):
        return self.sub.inputs

    def get_output_tensors(self):
        return self.sub.outputs

    def execute_async(self, inputs, outputs):
        for bufs, tensors, side in ((inputs, self.sub.inputs, "input"), (outputs, self.sub.outputs, "output")):
            if not isinstance(bufs, list) or len(bufs) != len(tensors):
                raise TypeError(f"{side}s must be a list of {len(tensors)} arrays")
            for b, t in zip(bufs, tensors, strict=True):
                if not isinstance(b, np.ndarray) or b.dtype != np.int8:
                    raise TypeError(f"{side} buffer: unsupported data type {getattr(b, 'dtype', type(b))}")
                if not b.flags["C_CONTIGUOUS"]:
                    raise TypeError(f"{side} buffer is not C-contiguous")
                if list(b.shape) != t.dims:
                    raise TypeError(f"{side} buffer shape {b.shape} != tensor dims {t.dims}")
        x = inputs[0].transpose(0, 3, 1, 2).astype(np.float64)  # NHWC -> NCHW
        y = np.stack([self.sub.net.forward_int(xi) for xi in x])
        outputs[0][...] = y.transpose(0, 2, 3, 1).astype(np.int8)
        CALLS.append({"subgraph": self.sub.get_name(), "in_shape": inputs[0].shape})
        self.jobs += 1
        return (self.jobs, 0)

    def wait(self, job):
        if not (isinstance(job, tuple) and len(job) == 2):
            raise TypeError("wait takes the (job_id, status) that execute_async returned")
        return 0


class FakeDpuOverlay:
    def __init__(self, bitfile):
        OVERLAYS.append(bitfile)


def modules() -> dict[str, types.ModuleType]:
    xir = types.ModuleType("xir")
    xir.Graph = FakeGraph
    vart = types.ModuleType("vart")
    vart.Runner = FakeRunner
    pynq_dpu = types.ModuleType("pynq_dpu")
    pynq_dpu.DpuOverlay = FakeDpuOverlay
    return {"xir": xir, "vart": vart, "pynq_dpu": pynq_dpu}


def install(monkeypatch) -> None:
    """The FAKE modules in ``sys.modules`` for this test (monkeypatch undoes it)."""
    CALLS.clear()
    OVERLAYS.clear()
    for name, mod in modules().items():
        monkeypatch.setitem(sys.modules, name, mod)


def write_xmodel(path, package, net: str, entry: dict, *, extra_children=(), dpu_attrs=None,
                 inputs=None, outputs=None, device="DPU") -> Path:
    """A FAKE xmodel of one network: a USER input subgraph and one DPU subgraph with the
    manifest ``entry``'s tensors (override ``inputs`` / ``outputs`` / ``device`` to break it)."""
    def tensor(side):
        t = entry[side]
        return {"name": t.get("name") or f"{net}_{side}_fix", "dims": t["dims"], "fix_point": t["fix_point"]}

    dpu = {"name": f"subgraph_{net}", "device": device, "attrs": dict(dpu_attrs or {}),
           "inputs": inputs if inputs is not None else [tensor("input")],
           "outputs": outputs if outputs is not None else [tensor("output")]}
    doc = {"fake": "xmodel", "package": str(package), "net": net,
           "root": {"name": "root", "children": [{"name": "subgraph_input", "device": "USER"}, dpu,
                                                 *extra_children]}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path
