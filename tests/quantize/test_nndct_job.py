"""quantize.nndct.render_docker_job: the self-contained job for the Vitis AI 2.5 docker.

- golden: the rendered script and run.sh for a small fixed network equal
  ``tests/quantize/golden/*.golden`` (``UPDATE_GOLDEN=1`` rewrites them; a missing golden fails);
- Python 3.7: the script parses with ``ast.parse(feature_version=(3, 7))`` and uses no
  annotation, walrus, positional-only parameter or f-string; ruff's pyflakes rules (undefined
  names, unused imports) pass with ``--target-version py37``; a real Python 3.7
  (``$MEDCODEC_PYTHON37`` or ``python3.7`` on PATH; skipped without one) byte-compiles it;
  run.sh passes ``bash -n``;
- the data files hold the state dict and the batches exactly;
- the script RUNS (host Python, FAKE pytorch_nndct of ``fake_nndct.py``): it rebuilds the
  network (same outputs as the original), calls torch_quantizer as the adapter does, and
  writes the xmodel where ``DockerJob.xmodel`` says.
"""

from __future__ import annotations

import ast
import json
import os
import runpy
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import jinja2
import numpy as np
import pytest
import torch
from torch import nn

from arch import load_arch
from quantize.nndct import (
    TEMPLATE_DIR,
    TEMPLATES,
    NndctError,
    describe_sequential,
    render_docker_job,
    render_run_sh,
    render_script,
    template_env,
)
from tests.quantize import fake_nndct

GOLDEN = Path(__file__).resolve().parent / "golden"
ARCH = load_arch()


def fixed_net() -> nn.Sequential:
    """Every layer kind the job rebuilds, small."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv0=nn.Conv2d(1, 4, 5, stride=2, padding=2), act0=nn.LeakyReLU(26 / 256),
        conv1=nn.Conv2d(4, 4, 3, stride=1, padding=1, bias=False), act1=nn.ReLU(),
        deconv2=nn.ConvTranspose2d(4, 3, 4, stride=2, padding=1), act2=nn.ReLU6(),
        out=nn.Identity(),
    ))


def fixed_batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.rand(2, 1, 16, 16, generator=g), torch.rand(3, 1, 16, 16, generator=g)]


@pytest.fixture
def job(tmp_path):
    return render_docker_job("g_a", fixed_net(), fixed_batches(), tmp_path / "job", ARCH)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if not path.is_file():
        pytest.fail(f"golden {path.relative_to(GOLDEN.parent)} is missing; create it with UPDATE_GOLDEN=1")
    assert text == path.read_text(), f"{name} differs from its golden (UPDATE_GOLDEN=1 to accept)"


def test_script_matches_golden(job):
    check_golden("nndct_job.py.golden", job.script.read_text())


def test_run_sh_matches_golden(job):
    check_golden("run.sh.golden", job.run_sh.read_text())


def test_render_is_deterministic_and_path_free(tmp_path, job):
    other = render_docker_job("g_a", fixed_net(), fixed_batches(), tmp_path / "elsewhere" / "job", ARCH)
    assert other.script.read_text() == job.script.read_text()
    assert other.run_sh.read_text() == job.run_sh.read_text()
    assert str(tmp_path) not in job.script.read_text() + job.run_sh.read_text()


def test_script_parses_as_python_37(job):
    src = job.script.read_text()
    tree = ast.parse(src, filename=str(job.script), feature_version=(3, 7))
    compile(tree, str(job.script), "exec")
    for node in ast.walk(tree):
        assert not isinstance(node, ast.NamedExpr), "walrus"
        assert not isinstance(node, (ast.AnnAssign, ast.JoinedStr)), f"annotation or f-string at line {node.lineno}"
        if isinstance(node, (ast.FunctionDef, ast.Lambda)):
            assert not node.args.posonlyargs, "positional-only parameters"
            assert all(a.annotation is None for a in node.args.args + node.args.kwonlyargs)
        if isinstance(node, ast.FunctionDef):
            assert node.returns is None


def test_script_compiles_under_a_real_python_37(job):
    """Optional: ``$MEDCODEC_PYTHON37`` or ``python3.7`` on PATH byte-compiles the script."""
    py37 = os.environ.get("MEDCODEC_PYTHON37")
    if not py37:
        py37 = shutil.which("python3.7")
        probe = py37 and subprocess.run([py37, "-c", "import sys; assert sys.version_info[:2] == (3, 7)"],
                                        capture_output=True)
        if not probe or probe.returncode != 0:  # none, or a shim that does not run
            pytest.skip("no working Python 3.7 interpreter (set MEDCODEC_PYTHON37)")
    out = subprocess.run([py37, "-c", "import sys, py_compile; assert sys.version_info[:2] == (3, 7); "
                          "py_compile.compile(sys.argv[1], doraise=True)", str(job.script)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_script_has_no_undefined_names(job):
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--isolated", "--select", "F",
                          "--target-version", "py37", str(job.script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_run_sh_is_valid_bash(job):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    subprocess.run([bash, "-n", str(job.run_sh)], check=True)
    assert os.access(job.run_sh, os.X_OK)
    text = job.run_sh.read_text()
    assert '"${MEDCODEC_VITIS_DOCKER:-xilinx/vitis-ai-cpu:2.5}"' in text
    assert "conda activate vitis-ai-pytorch && python nndct_job.py" in text


def test_data_files_hold_the_weights_and_batches(job):
    net = fixed_net()
    with np.load(job.weights) as npz:
        state = {k: npz[k] for k in npz.files}
    assert set(state) == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert state[k].dtype == np.float32 and np.array_equal(state[k], v.numpy())
    with np.load(job.calib) as npz:
        assert npz.files == ["batch_000", "batch_001"]
        for key, b in zip(npz.files, fixed_batches(), strict=True):
            assert np.array_equal(npz[key], b.numpy())
    assert job.xmodel == job.job_dir / "quantize_result" / "g_a_int.xmodel"


@pytest.mark.parametrize("generation", ["2.5", "3.5"])
def test_script_runs_against_the_fake(monkeypatch, job, generation):
    log = fake_nndct.install(monkeypatch, generation)
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(job.script), run_name="__main__")
    assert exc.value.code == 0
    steps = [step for step, _ in log]
    assert steps == ["init", "export_quant_config", "init", "export_xmodel"]
    assert log[1][1] == [2, 3]
    calib, test = log[0][1], log[2][1]
    assert tuple(test["input_args"][0].shape) == (1, 1, 16, 16)
    assert ("target" in calib) == ("target" in test) == (generation == "3.5")
    if generation == "3.5":
        assert calib["target"] == test["target"] == ARCH["dpu"]["fingerprint"]
    assert log[3][1] == {"output_dir": str(job.result_dir), "deploy_check": False}
    # the rebuilt network is the original one
    rebuilt, ref = test["module"], fixed_net().eval()
    assert type(rebuilt).__name__ == "g_a"
    x = fixed_batches()[1]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), ref(x))
    assert job.xmodel.read_bytes() == fake_nndct.FAKE_XMODEL_BYTES
    record = json.loads((job.result_dir / "job.json").read_text())
    assert record["net"] == "g_a" and record["calib_samples"] == 5 and record["xmodel"] == "g_a_int.xmodel"
    assert record["api"] == ("target" if generation == "3.5" else "no-target")


def test_describe_rejects_what_it_cannot_rebuild():
    with pytest.raises(NndctError, match="Sigmoid"):
        describe_sequential(nn.Sequential(nn.Conv2d(1, 1, 3), nn.Sigmoid()))
    with pytest.raises(NndctError, match="zero padding"):
        describe_sequential(nn.Sequential(nn.Conv2d(1, 1, 3, padding="same")))
    with pytest.raises(NndctError, match="nn.Sequential"):
        describe_sequential(nn.Conv2d(1, 1, 3))


def test_render_refusals(tmp_path):
    with pytest.raises(NndctError, match="identifier"):
        render_docker_job("g-a", fixed_net(), fixed_batches(), tmp_path, ARCH)
    other = json.loads(json.dumps(ARCH))
    other["runtime"]["vitis_ai_version"] = "3.5"
    with pytest.raises(NndctError, match="no nndct job template for Vitis AI 3.5"):
        render_script("g_a", describe_sequential(fixed_net()), (1, 16, 16), other)
    with pytest.raises(NndctError, match="identifier"):
        render_run_sh("import", ARCH)


def test_templates_fail_on_undefined_variables():
    assert TEMPLATES["2.5"] in os.listdir(TEMPLATE_DIR)
    with pytest.raises(jinja2.UndefinedError):
        template_env().get_template(TEMPLATES["2.5"]).render(net_name="g_a")
    with pytest.raises(jinja2.UndefinedError):
        template_env().get_template("nndct_run.sh.j2").render(net_name="g_a")
