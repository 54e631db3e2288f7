"""board/runtime.py: the rendered runtime folder.

- golden: the rendered files (``runtime_manifest.json``, ``README.md``) for the tiny packages
  with FAKE xmodels equal ``tests/board/golden/*.golden`` once every sha256 is replaced by
  ``<sha256>`` (package bytes carry zip timestamps); ``UPDATE_GOLDEN=1`` rewrites them and a
  missing golden fails;
- an unfilled template variable is an error (StrictUndefined);
- rendering is deterministic and holds no host path; the times are only in build_manifest.json;
- the code is copied unchanged, the layout is as documented, the shapes are the networks';
- bad inputs are one-line errors, and only an earlier runtime (or an empty folder) is replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import jinja2
import numpy as np
import pytest

from board import runtime
from board.runtime import (
    RENDERED,
    RuntimeRenderError,
    net_shapes,
    network_entries,
    render_file,
    render_runtime,
)
from codec.dpunets import DPU_NETWORKS
from codec.package import CodecPackage, load_package
from tests.board.rt_common import ARCH, MODEL, NAMES_Q1, fake_xmodels
from tests.board.tinypkg import tiny_int8_package

pytest_plugins = ("tests.board.runtime_fixtures",)

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden"
_SHA = re.compile(r"\b[0-9a-f]{64}\b")


def normalise(text: str) -> str:
    return _SHA.sub("<sha256>", text)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if not path.is_file():
        pytest.fail(f"golden {path.relative_to(GOLDEN.parent)} is missing; create it with UPDATE_GOLDEN=1")
    assert text == path.read_text(), f"{name} differs from its golden (UPDATE_GOLDEN=1 to accept)"


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_rendered_file_matches_golden(rendered_vart, name):
    check_golden(f"{name}.golden", normalise((rendered_vart.out_dir / name).read_text()))


def test_a_missing_golden_fails(monkeypatch):
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    with pytest.raises(pytest.fail.Exception, match="is missing"):
        check_golden("no-such-file.golden", "text")


def test_an_unfilled_template_variable_is_an_error(rendered_vart):
    with pytest.raises(jinja2.UndefinedError):
        render_file("runtime_manifest.json", {"model": "m"})
    with pytest.raises(jinja2.UndefinedError, match="smoke_test"):
        ctx = {"arch": {}, "model": "m", "model_hash": "h", "qualities": [], "overlay": "o", "prefer": "p",
               "schema": "s", "selftest": {"bits": 1, "cols": 1, "expect": {}, "quality": 1, "rows": 1}, "tile": 1}
        render_file("runtime_manifest.json", ctx)


def test_manifest_content(rendered, rendered_vart, int8_packages):
    m = rendered_vart.manifest
    assert m == json.loads((rendered_vart.out_dir / "runtime_manifest.json").read_text())
    assert m["runner"] == {"overlay": "dpu.bit", "prefer": "vart"} and rendered.manifest["runner"]["prefer"] == "emulator"
    assert m["smoke_test"] == rendered_vart.smoke_test == runtime.SMOKE_TEST
    assert runtime.SMOKE_TEST.startswith("{python} ") and runtime.SMOKE_TEST.endswith("app.py selftest")
    assert m["tile"] == 64 and m["arch"]["fingerprint"] == ARCH["dpu"]["fingerprint"]
    for q, path in int8_packages.items():
        e = m["qualities"][str(q)]
        pkg = load_package(rendered_vart.out_dir / e["package"])
        assert e["package_sha256"] == pkg.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        want = network_entries(pkg, NAMES_Q1 if q == 1 else None)
        for net in DPU_NETWORKS:
            got = e["networks"][net]
            assert got["input"] == want[net]["input"] and got["output"] == want[net]["output"]
            assert got["input"]["fix_point"] == pkg.meta["fix"][net]["in"]
            x = rendered_vart.out_dir / got["xmodel"]
            assert got["xmodel_sha256"] == hashlib.sha256(x.read_bytes()).hexdigest()
        assert rendered.manifest["qualities"][str(q)]["networks"]["g_a"]["xmodel"] is None
    assert m["qualities"]["1"]["networks"]["g_a"]["input"]["name"] == "GA__input_0_fix"
    assert m["qualities"]["2"]["networks"]["g_a"]["input"]["name"] is None
    assert m["model_hash"] != rendered.manifest["model_hash"]  # the xmodels are part of the model
    assert set(m["selftest"]["expect"]) == {"1", "2"}


def test_layout_and_copied_code(rendered_vart):
    out = rendered_vart.out_dir
    files = set(rendered_vart.files)
    assert files == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    codec_files = {f"codec/{p.name}" for p in (ROOT / "codec").glob("*.py")}
    assert codec_files <= files
    assert {"app.py", "board/__init__.py", "board/app.py", "board/vart_runner.py", "README.md",
            "runtime_manifest.json", "build_manifest.json", "packages/tiny-dpu-q1.int8.npz",
            "xmodels/q2/g_s.xmodel"} <= files
    assert not [f for f in files if "__pycache__" in f or f.startswith(("models/", "quantize/", "pipelines/"))]
    for f in codec_files | {"board/app.py", "board/vart_runner.py"}:
        assert (out / f).read_bytes() == (ROOT / f).read_bytes(), f
    assert (out / "app.py").read_bytes() == (ROOT / "board" / "launcher.py").read_bytes()
    build = json.loads((out / "build_manifest.json").read_text())
    assert {"rendered_utc", "render_s", "python", "files"} <= set(build)
    for f, sha in build["files"].items():
        assert hashlib.sha256((out / f).read_bytes()).hexdigest() == sha


def test_rendering_is_deterministic_and_path_free(int8_packages, tmp_path):
    a = render_runtime(int8_packages, tmp_path / "a" / "runtime", ARCH, MODEL)
    b = render_runtime(int8_packages, tmp_path / "b" / "runtime", ARCH, MODEL)
    for name in RENDERED:
        text = (a.out_dir / name).read_text()
        assert text == (b.out_dir / name).read_text()
        assert str(tmp_path) not in text and "/tmp" not in text
    assert a.manifest == b.manifest


def test_a_second_render_replaces_the_first(int8_packages, tmp_path):
    out = tmp_path / "runtime"
    render_runtime(int8_packages, out, ARCH, MODEL)
    (out / "stale.txt").write_text("old")
    render_runtime({1: int8_packages[1]}, out, ARCH, MODEL)
    assert not (out / "stale.txt").exists() and not (out / "packages" / "tiny-dpu-q2.int8.npz").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["runtime"]  # no temporary folder left


def test_net_shapes_are_the_networks_output_shapes():
    pkg = tiny_int8_package(1)
    x = {"g_a": np.zeros((1, 64, 64)), "g_s": np.zeros((6, 4, 4))}
    x["h_a"] = pkg.nets["g_a"].forward_int(x["g_a"])
    for net in DPU_NETWORKS:
        chw = x[net].shape
        assert net_shapes(pkg.nets[net], chw)[1] == pkg.nets[net].forward_int(x[net]).shape


def _pkg_file(tmp_path: Path, pkg: CodecPackage, name: str = "p.npz") -> Path:
    p = tmp_path / name
    p.write_bytes(pkg.to_bytes())
    return p


def test_bad_inputs_are_one_line_errors(int8_packages, tmp_path):
    out = tmp_path / "runtime"
    float_pkg = tiny_int8_package(1, MODEL)
    float_pkg.meta["backend"] = "float"
    other_tile = tiny_int8_package(2, MODEL)
    other_tile.meta["tile"] = 128
    broken_fix = tiny_int8_package(1, MODEL)
    broken_fix.meta["fix"]["g_a"]["out"] = 5
    cases = [
        ({}, None, "no int8 packages"),
        ({1: _pkg_file(tmp_path, float_pkg, "f.npz")}, None, "a float package"),
        ({1: int8_packages[1]}, None, "expected other-model q1", "other-model"),
        ({2: int8_packages[1]}, None, "holds tiny-dpu q1, expected tiny-dpu q2"),
        ({1: tmp_path / "missing.npz"}, None, "q1 package missing"),
        ({1: int8_packages[1], 2: _pkg_file(tmp_path, other_tile, "t.npz")}, None, "different tile sizes"),
        ({1: _pkg_file(tmp_path, broken_fix, "b.npz")}, None, "meta fix"),
        ({1: int8_packages[1]}, {3: {}}, "quality 3, which has no package"),
        ({1: int8_packages[1]}, {1: {"g_a": int8_packages[1]}}, r"xmodels for \['g_a'\]"),
        ({1: int8_packages[1]}, {1: dict.fromkeys(DPU_NETWORKS, tmp_path / "x.xmodel")}, "xmodel missing"),
    ]
    for pkgs, xm, message, *model in cases:
        with pytest.raises(RuntimeRenderError, match=message) as e:
            render_runtime(pkgs, out, ARCH, model[0] if model else MODEL, xm)
        assert "\n" not in str(e.value)
        assert not out.exists()


def test_a_foreign_folder_is_not_replaced(int8_packages, tmp_path):
    out = tmp_path / "runtime"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(RuntimeRenderError, match="not a rendered runtime"):
        render_runtime(int8_packages, out, ARCH, MODEL)
    assert (out / "mine.txt").read_text() == "keep"


def test_xmodels_need_all_three_networks_per_quality(int8_packages, tmp_path):
    xm = fake_xmodels({1: int8_packages[1]}, tmp_path / "xm")
    r = render_runtime(int8_packages, tmp_path / "runtime", ARCH, MODEL, xm)
    assert r.manifest["runner"]["prefer"] == "emulator"  # quality 2 has none
    assert r.manifest["qualities"]["1"]["networks"]["h_a"]["xmodel"] == "xmodels/q1/h_a.xmodel"


def test_the_overlay_and_smoke_command_are_module_data():
    assert runtime.SMOKE_TEST.startswith("{python} ")
    assert runtime.SELFTEST_IMAGE[0] % 64 and runtime.SELFTEST_IMAGE[1] % 64  # exercises tile padding
