"""board/vart_runner.py against a FAKE xir / vart (``fake_vart.py``); the real thing is marked ``board``.

- the runner's integers equal the emulator's for every network, through int8 NHWC C-contiguous
  buffers of the xmodel's exact dims (the fake refuses anything else), batch by batch;
- the whole codec through VartRunner gives the emulator's bitstream and pixels, bit for bit;
- every load check (subgraph count and device, tensor count, dims, fix_point, name,
  fingerprint, missing file) is a one-line VartError;
- the vendor modules are imported lazily, here only.
"""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from board import vart_runner
from board.runtime import network_entries
from board.vart_runner import VartError, VartRunner
from codec import gdncodec
from codec.dpunets import DPU_NETWORKS, EmulatorRunner, RunnerNetworks
from codec.package import load_package
from tests.board import fake_vart
from tests.board.rt_common import ARCH, fake_xmodels

pytest_plugins = ("tests.board.runtime_fixtures",)

ROOT = Path(__file__).resolve().parents[2]
FP = ARCH["dpu"]["fingerprint"]


@pytest.fixture
def fake(monkeypatch):
    fake_vart.install(monkeypatch)


@pytest.fixture(scope="module")
def xmodels(int8_packages, tmp_path_factory):
    return fake_xmodels(int8_packages, tmp_path_factory.mktemp("xm"))


def _expected(int8_packages, q=1):
    return network_entries(load_package(int8_packages[q]))


def test_available_follows_the_imports(monkeypatch):
    monkeypatch.setitem(sys.modules, "xir", None)  # None in sys.modules: "import xir" raises ImportError
    assert vart_runner.available() is False
    fake_vart.install(monkeypatch)
    assert vart_runner.available() is True


def test_vendor_modules_are_imported_lazily_and_only_here():
    vendor = {"xir", "vart", "pynq_dpu"}
    tree = ast.parse((ROOT / "board" / "vart_runner.py").read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name.split(".")[0] for n in top for a in n.names} | {
        (n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
    assert not names & vendor
    pattern = re.compile(r"^\s*(import|from)\s+(xir|vart|pynq_dpu)\b", re.M)
    users = [str(p.relative_to(ROOT)) for d in ("board", "codec") for p in (ROOT / d).rglob("*.py")
             if pattern.search(p.read_text())]
    assert users == []


def test_without_vendor_modules_the_error_is_one_line(monkeypatch, xmodels, int8_packages):
    monkeypatch.setitem(sys.modules, "xir", None)
    with pytest.raises(VartError, match="needs the 'xir' module") as e:
        VartRunner(xmodels[1], _expected(int8_packages))
    assert "\n" not in str(e.value)


def test_run_int_equals_the_emulator_through_int8_nhwc_buffers(fake, xmodels, int8_packages):
    pkg = load_package(int8_packages[1])
    runner = VartRunner(xmodels[1], _expected(int8_packages), fingerprint=FP)
    emu = EmulatorRunner(pkg.nets)
    rng = np.random.default_rng(3)
    for net in DPU_NETWORKS:
        assert (runner.fix_in(net), runner.fix_out(net)) == (emu.fix_in(net), emu.fix_out(net))
        shape = _expected(int8_packages)[net]["input"]["shape"]
        x = rng.integers(-128, 128, size=(3, *shape[1:])).astype(np.float64)
        fake_vart.CALLS.clear()
        got = runner.run_int(net, x)
        assert got.dtype == np.int8 and got.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(got, emu.run_int(net, x))
        assert len(fake_vart.CALLS) == 3  # batch 1 xmodel: one job per tile
        assert all(c["in_shape"][0] == 1 for c in fake_vart.CALLS)


def test_the_codec_through_vart_is_bit_exact_with_the_emulator(fake, xmodels, int8_packages):
    pkg = load_package(int8_packages[2])
    img = ((np.arange(100)[:, None] * 37 + np.arange(90)[None, :] * 11) % 4096).astype(np.uint16)
    src = gdncodec.Source(img, 12, False)
    emu = RunnerNetworks(EmulatorRunner(pkg.nets))
    dpu = RunnerNetworks(VartRunner(xmodels[2], _expected(int8_packages, 2), fingerprint=FP))
    a, b = gdncodec.compress(src, emu, pkg), gdncodec.compress(src, dpu, pkg)
    assert a == b
    np.testing.assert_array_equal(gdncodec.decompress(a, emu, pkg).pixels, gdncodec.decompress(a, dpu, pkg).pixels)
    assert dpu.calls == emu.calls and all(dpu.calls[n] > 0 for n in DPU_NETWORKS)


def test_an_xmodel_batch_of_two_is_filled_and_cut(fake, int8_packages, tmp_path):
    expected = _expected(int8_packages)
    for e in expected.values():
        for side in ("input", "output"):
            e[side]["dims"] = [2, *e[side]["dims"][1:]]
    paths = {n: fake_vart.write_xmodel(tmp_path / f"{n}.xmodel", int8_packages[1], n, e) for n, e in expected.items()}
    runner = VartRunner(paths, expected)
    x = np.random.default_rng(0).integers(-128, 128, size=(3, 1, 64, 64))
    fake_vart.CALLS.clear()
    got = runner.run_int("g_a", x)
    assert len(fake_vart.CALLS) == 2 and got.shape == (3, 6, 4, 4)
    np.testing.assert_array_equal(got, EmulatorRunner(load_package(int8_packages[1]).nets).run_int("g_a", x))


def test_run_int_refuses_values_that_are_not_int8(fake, xmodels, int8_packages):
    runner = VartRunner(xmodels[1], _expected(int8_packages))
    with pytest.raises(VartError, match="not int8-valued"):
        runner.run_int("g_a", np.full((1, 1, 64, 64), 128.0))
    with pytest.raises(VartError, match="not int8-valued"):
        runner.run_int("g_a", np.full((1, 1, 64, 64), 0.5))
    with pytest.raises(VartError, match="input of shape"):
        runner.run_int("g_a", np.zeros((1, 1, 32, 32)))


def _break(case: str, entry: dict):
    """Keyword arguments of write_xmodel that break one thing, and the message expected."""
    t_in = {"name": "x", "dims": entry["input"]["dims"], "fix_point": entry["input"]["fix_point"]}
    t_out = {"name": "y", "dims": entry["output"]["dims"], "fix_point": entry["output"]["fix_point"]}
    cpu = {"name": "subgraph_tail", "device": "CPU"}
    cases = {
        "input dims": ({"inputs": [dict(t_in, dims=[1, 32, 32, 1])]}, r"input tensor x has dims \[1, 32, 32, 1\]"),
        "output fix": ({"outputs": [dict(t_out, fix_point=t_out["fix_point"] + 1)]}, "output tensor y has fix_point"),
        "two inputs": ({"inputs": [t_in, t_in]}, "2 input tensors"),
        "two dpu": ({"extra_children": [{"name": "second", "device": "DPU"}]}, "2 DPU subgraphs"),
        "no dpu": ({"device": "CPU"}, "0 DPU subgraphs"),
        "cpu part": ({"extra_children": [cpu]}, r"not on the DPU: subgraph_tail \(CPU\)"),
        "fingerprint": ({"dpu_attrs": {"dpu_fingerprint": 0x101000016010405}}, "compiled for DPU fingerprint"),
        "name": ({"inputs": [dict(t_in, name="other")]}, "named 'other'"),
    }
    return cases[case]


@pytest.mark.parametrize("case", ["input dims", "output fix", "two inputs", "two dpu", "no dpu", "cpu part",
                                  "fingerprint", "name"])
def test_load_checks_give_one_line_errors(fake, int8_packages, xmodels, tmp_path, case):
    expected = _expected(int8_packages)
    if case == "name":
        expected["g_s"]["input"]["name"] = "x"
    kwargs, message = _break(case, expected["g_s"])
    paths = dict(xmodels[1])
    paths["g_s"] = fake_vart.write_xmodel(tmp_path / "g_s.xmodel", int8_packages[1], "g_s", expected["g_s"], **kwargs)
    with pytest.raises(VartError, match=message) as e:
        VartRunner(paths, expected, fingerprint=FP)
    assert "\n" not in str(e.value) and "g_s.xmodel (g_s)" in str(e.value)


def test_missing_xmodel_and_network_are_refused(fake, int8_packages, xmodels, tmp_path):
    with pytest.raises(VartError, match="xmodel missing"):
        VartRunner(dict(xmodels[1], h_a=tmp_path / "nope.xmodel"), _expected(int8_packages))
    with pytest.raises(VartError, match=r"no xmodel for network\(s\) \['g_s'\]"):
        VartRunner({k: v for k, v in xmodels[1].items() if k != "g_s"}, _expected(int8_packages))


@pytest.mark.board
def test_real_vart_runs_the_rendered_xmodels():
    """On the board (VART 2.5 + overlay): MEDCODEC_RUNTIME names a rendered runtime with xmodels."""
    rt_dir = os.environ.get("MEDCODEC_RUNTIME")
    if not rt_dir or not vart_runner.available():
        pytest.skip("needs a board with VART and MEDCODEC_RUNTIME=<rendered runtime with xmodels>")
    from board.app import Runtime, selftest

    rt = Runtime.load(rt_dir)
    for q in rt.qualities:
        assert selftest(rt, "vart", q, overlay=rt.manifest["runner"]["overlay"])["host_match"] is True
