"""The medcodec command line: exit codes, one-line errors, and the demo/bench/info commands."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codec.dicom import read_dicom
from pipelines.cli import COMMANDS, build_parser, main
from tests.conftest import SAMPLES, sample_files

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=cwd, capture_output=True, text=True)


def _subcommands() -> list[str]:
    import argparse

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return list(action.choices)


def test_help_lists_every_command_and_exits_0():
    names = _subcommands()
    assert len(names) >= len(COMMANDS)
    assert {"compress", "decompress", "eval", "baseline", "train", "export", "demo", "bench", "info"} <= set(names)
    out = _cli("--help")
    assert out.returncode == 0
    for name in names:
        assert name in out.stdout
        # in process: one interpreter start per subcommand would cost minutes on a loaded 2-core machine
        with pytest.raises(SystemExit) as ex:
            main([name, "--help"])
        assert ex.value.code == 0, name


def test_bad_usage_exits_2():
    assert _cli().returncode == 2
    assert _cli("no-such-command").returncode == 2
    assert _cli("info").returncode == 2  # missing PATH


def test_user_error_is_one_line_without_traceback(tmp_path):
    bad = tmp_path / "not_dicom.dcm"
    bad.write_bytes(b"hello world" * 20)
    out = _cli("info", str(bad))
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(bad) in lines[0]
    missing = _cli("info", str(tmp_path / "missing.dcm"))
    assert missing.returncode == 1 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_info_reads_every_sample(capsys):
    assert main(["info", "--json", str(SAMPLES)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == len(sample_files())
    ct = next(r for r in rows if r["path"].endswith("ct_signed_tcia_covid19.dcm"))
    assert ct["signed"] and ct["min"] == -2000 and ct["max"] == 2136 and ct["bits_stored"] == 16


def test_demo_round_trips_samples_and_prints_baselines(tmp_path, capsys):
    one = tmp_path / "in"
    one.mkdir()
    shutil.copy(sample_files()[0], one)
    assert main(["demo", "--data", str(one), "--out", str(tmp_path / "out"), "--volume", ""]) == 0
    text = capsys.readouterr().out
    assert "pixels identical, elements identical" in text
    assert "Lossless" in text and "JPEG-LS" in text
    assert (tmp_path / "out" / "baseline.json").is_file()
    assert len(list((tmp_path / "out").glob("*.roundtrip.dcm"))) == 1
    assert "== 3b. medcodec lossless and near-lossless (D=2)" in text
    # the lossless .mdc decodes to the original pixels; the near-lossless one within 2
    original = read_dicom(sample_files()[0]).pixels
    stem = sample_files()[0].stem
    np.testing.assert_array_equal(read_dicom(tmp_path / "out" / f"{stem}.lossless.dcm").pixels, original)
    near = read_dicom(tmp_path / "out" / f"{stem}.near-lossless.dcm").pixels
    assert np.abs(near.astype(np.int64) - original).max() <= 2


def test_bench_writes_json_and_refuses_overwrite(tmp_path):
    one = tmp_path / "in"
    one.mkdir()
    shutil.copy(next(p for p in sample_files() if "mr" in p.name), one)
    target = tmp_path / "bench.json"
    assert main(["bench", "--data", str(one), "--json", str(target), "--repeat", "1", "--volume", "",
                 "--stripes", "256x300"]) == 0
    result = json.loads(target.read_text())
    assert result["stripes"]["shape"] == [256, 300] and result["stripes"]["stripes"] == 1
    assert result["stripes"]["runs"]["1"]["decode_s"] > 0
    lossless = result["images"][0]["lossless"]
    assert result["entropy_coding"]["symbols"] == 1_000_000
    assert {"medcodec-residual-ls", "medcodec-residual-blend", "jpegls"} <= set(lossless)
    assert lossless["medcodec-residual-ls"]["bpp"] < lossless["medcodec-residual-blend"]["bpp"]
    # the compiled kernels (the default here) beside the numpy code: the same bits, both timed
    assert result["machine"]["residual_backend"] == "numba"
    for pred in ("ls", "blend"):
        fast, slow = lossless[f"medcodec-residual-{pred}"], lossless[f"medcodec-residual-{pred}-numpy"]
        assert (fast["backend"], slow["backend"]) == ("numba", "numpy")
        assert fast["bpp"] == slow["bpp"] and slow["encode_mpix_s"] > 0 and slow["decode_mpix_s"] > 0
    before = target.read_bytes()
    assert main(["bench", "--data", str(one), "--json", str(target), "--repeat", "1"]) == 1
    assert target.read_bytes() == before


@pytest.mark.parametrize(("stage", "before"), [("quantize", "calibrate"), ("compile", "quantize")])
def test_a_stage_without_its_inputs_names_the_stage_to_run(stage, before, tmp_path, capsys):
    assert main(["stage", stage, "--quality", "1", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"make {before}" in err and "Traceback" not in err


def test_partition_report_shows_what_the_exact_rewrites_fix(tmp_path, capsys):
    out = tmp_path / "partition.json"
    assert main(["partition", "--quality", "1", "--rewrite", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    before, after = result["as trained"]["summary"], result["after exact rewrites"]["summary"]
    assert not any(s["deployable"] for s in before.values())  # GDN, abs and output_padding keep all off
    assert after["h_s"]["deployable"] and after["h_s"]["cpu_ops"] == 0
    assert not after["g_a"]["deployable"] and any("square" in r for r in after["g_a"]["cpu"])
    assert "does not deploy" in capsys.readouterr().out


def test_demo_lossless_section_without_classical_figures(tmp_path, capsys):
    """A classical codec missing from section 3's record prints as '-', never a traceback; the .mdc still checked."""
    from pipelines.demo import lossless_section

    f = next(p for p in sample_files() if "mr_" in p.name)
    rows = lossless_section([f], [{"path": f.name, "lossless": {"jpegls": {"bpp": 2.4}}}], tmp_path)
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith(f.name))
    assert " - " in line and "2.400" in line
    assert rows[0]["lossless"]["max_error"] == 0 and rows[0]["near-lossless"]["max_error"] <= 2
