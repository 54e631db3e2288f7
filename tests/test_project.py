"""Project-level invariants: pins agree, layering holds, no machine paths."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lock_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_pyproject_pins_match_the_lock_file():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pyproject = {}
    for dep in deps:
        name, version = dep.split("==")  # every dependency is pinned exactly
        pyproject[name.lower()] = version
    assert pyproject == _lock_pins()


def test_torch_is_held_by_the_constraints_file():
    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    assert "torch==2.13.0" in lines
    assert _lock_pins()["torch"] == "2.13.0"


def test_codec_package_imports_neither_torch_nor_imagecodecs():
    """codec/ runs on the board: importing every module must not pull torch in."""
    modules = sorted(p.stem for p in (ROOT / "codec").glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module('codec.' + m)\n"
        "bad = [m for m in ('torch', 'imagecodecs', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"codec/ imported {out.stdout.strip()}"


def test_lower_layers_do_not_import_higher_ones():
    """Data flows one way: codec <- models <- quantize <- compile <- board <- pipelines."""
    order = ["codec", "models", "quantize", "compile", "board", "pipelines"]
    pattern = re.compile(r"^\s*(?:from|import)\s+(codec|models|quantize|compile|board|pipelines)\b", re.M)
    problems = []
    for i, pkg in enumerate(order):
        for py in (ROOT / pkg).rglob("*.py"):
            for used in pattern.findall(py.read_text()):
                if order.index(used) > i:
                    problems.append(f"{py.relative_to(ROOT)} imports {used}")
    assert not problems, problems


def test_no_machine_specific_absolute_paths_in_code():
    pattern = re.compile(r"/(work|root|home/[a-z]+)/|/opt/wheels")
    hits = []
    for pkg in ["codec", "models", "quantize", "compile", "board", "pipelines", "arch", "tests", ".ci"]:
        for f in (ROOT / pkg).rglob("*"):
            if f == Path(__file__).resolve():
                continue
            if f.is_file() and f.suffix in {".py", ".json", ".sh", ""} and "__pycache__" not in f.parts:
                text = f.read_text(errors="ignore")
                if pattern.search(text):
                    hits.append(str(f.relative_to(ROOT)))
    for name in ["Makefile", "pyproject.toml"]:
        if pattern.search((ROOT / name).read_text()):
            hits.append(name)
    assert not hits, hits


def test_bundled_samples_are_small_and_licensed():
    samples = sorted((ROOT / "samples").rglob("*.dcm"))
    assert {p.parent.name for p in samples} >= {"ct", "mr", "xray"}
    assert sum(p.stat().st_size for p in samples) < 5_000_000
    readme = (ROOT / "samples" / "README.md").read_text()
    for p in samples:
        assert p.name in readme, f"{p.name} has no provenance line in samples/README.md"
    assert any((ROOT / "samples" / "LICENSES").iterdir())
