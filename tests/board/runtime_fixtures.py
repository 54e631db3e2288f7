"""Fixtures of the board runtime tests (a pytest plugin: ``pytest_plugins`` in each test module).

- ``int8_packages``: the tiny numpy-built int8 packages (``tinypkg.py``) for qualities 1 and 2,
  written once per session;
- ``rendered``: a runtime rendered from them without xmodels (it prefers the emulator);
- ``rendered_vart``: one with FAKE xmodels (``fake_vart.py``) for both qualities, and tensor
  names for quality 1 (it prefers VART);
- ``images_dir``: a small validation folder (one bundled DICOM, one .npy);
- ``run_app``: runs ``app.py`` of a rendered runtime in a fresh Python that cannot see this
  repository (``-S``, only site-packages on the path), and fails if torch or any host-only
  package was imported.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from board.runtime import render_runtime
from tests.board.rt_common import ARCH, MODEL, NAMES_Q1, QUALITIES, fake_xmodels
from tests.board.tinypkg import tiny_int8_package
from tests.conftest import sample_files

# runs app.py (or board.app) as __main__ and refuses any host-only module it pulled in
_WRAPPER = (
    "import runpy, sys\n"
    "entry, sys.argv = sys.argv[1], ['app.py'] + sys.argv[2:]\n"
    "rc = 0\n"
    "try:\n"
    "    if entry == '-m':\n"
    "        runpy.run_module('board.app', run_name='__main__', alter_sys=True)\n"
    "    else:\n"
    "        runpy.run_path('app.py', run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    rc = e.code\n"
    "bad = sorted(m for m in ('torch', 'imagecodecs', 'matplotlib', 'models', 'quantize', 'pipelines', 'arch',\n"
    "                         'tests', 'jinja2', 'fabric') if m in sys.modules)\n"
    "if bad:\n"
    "    print('host-only modules imported: ' + ','.join(bad), file=sys.stderr)\n"
    "    rc = 99\n"
    "sys.exit(rc)\n"
)


@pytest.fixture(scope="session")
def int8_packages(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("int8pkg")
    out = {}
    for q in QUALITIES:
        out[q] = folder / f"tiny-q{q}.int8.npz"
        out[q].write_bytes(tiny_int8_package(q, MODEL).to_bytes())
    return out


@pytest.fixture(scope="session")
def rendered(int8_packages, tmp_path_factory):
    return render_runtime(int8_packages, tmp_path_factory.mktemp("rt") / "runtime", ARCH, MODEL)


@pytest.fixture(scope="session")
def rendered_vart(int8_packages, tmp_path_factory):
    base = tmp_path_factory.mktemp("rtv")
    xm = fake_xmodels(int8_packages, base / "compiled", NAMES_Q1)
    return render_runtime(int8_packages, base / "runtime", ARCH, MODEL, xm, tensor_names={1: NAMES_Q1})


@pytest.fixture(scope="session")
def images_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    mr = next(p for p in sample_files() if p.parent.name == "mr")
    (folder / "mr").mkdir()
    shutil.copyfile(mr, folder / "mr" / mr.name)
    r = np.arange(170)[:, None]
    c = np.arange(180)[None, :]
    np.save(folder / "ramp.npy", ((r * 13 + c * 7) % 1000 - 300).astype(np.int16))
    return folder


@pytest.fixture(scope="session")
def run_app():
    site = sysconfig.get_paths()["purelib"]

    def run(runtime_dir: Path, *args: str, check_rc: int | None = None, module: bool = False):
        """``python3 app.py ARGS`` (or ``python3 -m board.app ARGS``) inside ``runtime_dir``."""
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": site, "PYTHONDONTWRITEBYTECODE": "1", "LC_ALL": "C.UTF-8"}
        out = subprocess.run([sys.executable, "-S", "-c", _WRAPPER, "-m" if module else "app.py", *args], cwd=runtime_dir, env=env,
                             capture_output=True, text=True, timeout=120)
        assert "host-only modules imported" not in out.stderr, out.stderr
        if check_rc is not None:
            assert out.returncode == check_rc, (out.stdout, out.stderr)
        return out

    return run
