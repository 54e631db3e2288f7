"""The DPU build stages end to end on the virtual board (hardware in the loop, without the hardware).

rewrite -> calibrate -> quantize -> compile -> runtime -> deploy (sshd on 127.0.0.1) -> validate,
for one quality on one bundled sample: every stage writes its manifest and report, the board's
bitstreams equal the host emulator's, and a missing earlier stage is a one-line error.
"""

from __future__ import annotations

import json

import pytest

from board import inventory, sim
from pipelines.stages import StageConfig, StageError, run_stage, stage_dir
from tests.conftest import SAMPLES

ORDER = ("rewrite", "calibrate", "quantize", "compile", "runtime", "deploy", "validate")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not sim.is_available():
        pytest.skip("OpenSSH's sshd is not installed (CI installs openssh-server)")
    was_up = sim.status(inventory.sim_dir("sim")) is not None
    cfg = StageConfig(board="sim", model="dpu-hyperprior", qualities=(1,), data=str(SAMPLES),
                      out=str(tmp_path_factory.mktemp("build")), calib_tiles=2, validate_limit=1)
    reports = {name: run_stage(name, cfg) for name in ORDER}
    yield cfg, reports
    if not was_up:
        sim.down(inventory.sim_dir("sim"))


def test_every_stage_writes_manifest_and_report(built):
    cfg, _ = built
    for name in ORDER:
        d = stage_dir(cfg, name)
        man = json.loads((d / "manifest.json").read_text())
        assert man["stage"] == name and man["arch"]["fingerprint"] == "0x101000016010404"
        assert man["config"]["board"] == "sim" and man["wall_s"] >= 0
        assert json.loads((d / "report.json").read_text())
    # later stages record the hashes of what they read
    assert any(k.startswith("calibrate/") for k in json.loads((stage_dir(cfg, "quantize") / "manifest.json")
                                                             .read_text())["inputs"])


def test_rewritten_networks_deploy_and_the_trained_ones_do_not(built):
    _, reports = built
    part = reports["rewrite"]["qualities"]["q1"]["partition"]
    for net in ("g_a", "h_a", "g_s", "h_s"):
        assert part["rewritten"][net]["dpu_subgraphs"] == 1 and part["rewritten"][net]["cpu_ops"] == 0
    assert not part["as_trained"]["g_s"]["deployable"]  # output_padding deconvs
    assert part["as_trained"]["h_a"]["cpu_ops"] == 1  # abs
    assert max(reports["rewrite"]["qualities"]["q1"]["max_abs_change"].values()) < 1e-4


def test_quantize_is_bit_exact_and_compile_says_no_xmodel(built):
    cfg, reports = built
    q = reports["quantize"]["qualities"]["q1"]
    assert all(n["emulator_equals_fakequant"] for n in q["networks"].values())
    assert (stage_dir(cfg, "quantize") / "report.html").read_text().count("<svg") >= 1
    c = reports["compile"]
    assert c["xmodel"] is False and "no xmodel" in c["note"]
    assert not list(stage_dir(cfg, "compile").rglob("*.xmodel"))
    assert all(v > 0 for v in c["qualities"]["q1"]["roofline_ms"].values())


def test_board_bitstreams_equal_the_host_emulator(built):
    _, reports = built
    rep = reports["validate"]["boards"]["sim"]
    assert rep["ok"]
    same = [c for c in rep["checks"] if c["check"] == "bitstream_sha256"]
    assert same and all(c["ok"] for c in same)
    assert reports["deploy"]["boards"]["sim"]["ok"]


def test_a_stage_without_its_input_stage_names_it(tmp_path):
    cfg = StageConfig(board="sim", qualities=(1,), out=str(tmp_path))
    with pytest.raises(StageError, match="make calibrate"):
        run_stage("quantize", cfg)
