"""Tests of ``medcodec baseline`` (pipelines.baseline): the JSON it writes, the
table, failure reporting, and the CLI's refusals and exit codes."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pipelines import baseline as B
from pipelines import classical as C
from pipelines.cli import main
from tests.conftest import ROOT, SAMPLES

SMALL = SAMPLES / "xray" / "cr_mono1_10bit_chest.dcm"  # 440x440, 10-bit CR


@pytest.fixture
def fast(monkeypatch):
    """Fewer lossy targets: the CLI tests check plumbing, not rate control."""
    monkeypatch.setattr(B, "TARGETS_BPP", (0.5, 1.0))


def _data_dir(tmp_path, *, bad=False, good=True):
    d = tmp_path / "data"
    (d / "xray").mkdir(parents=True)
    if good:
        shutil.copy(SMALL, d / "xray" / "chest.dcm")
    if bad:
        (d / "broken.dcm").write_bytes(b"not a DICOM file at all" * 10)
    (d / "notes.png").write_bytes(b"\x89PNG ignored")
    return d


def test_cli_writes_json_with_records_aggregates_and_table(tmp_path, fast, capsys):
    data = _data_dir(tmp_path, bad=True)
    out = tmp_path / "baseline.json"
    assert main(["baseline", str(data), "--json", str(out), "--no-progress"]) == 0
    captured = capsys.readouterr()
    rep = json.loads(out.read_text())
    assert {"versions", "settings", "images", "skipped", "failures", "aggregates", "wall_s"} <= set(rep)
    assert rep["versions"]["imagecodecs"] and rep["versions"]["libjxl"]
    assert "coded_domain" in rep["settings"] and rep["settings"]["targets_bpp"] == [0.5, 1.0]
    assert rep["failures"] == []
    # the unreadable file is skipped with a warning, the PNG is not looked at
    assert [s["path"] for s in rep["skipped"]] == ["broken.dcm"]
    assert "warning: skipped" in captured.err and "broken.dcm" in captured.err
    assert "Traceback" not in captured.err

    (img,) = rep["images"]
    assert img["path"] == "xray/chest.dcm"
    assert (img["modality"], img["group"], img["rows"], img["cols"], img["frames"]) == ("CR", "XR", 440, 440, 1)
    assert img["bits_stored"] == 10 and img["signed"] is False
    assert img["coded"] == {"offset": [0], "precision": [10], "side_bytes": 0}
    assert set(img["lossless"]) == {c.name for c in C.available_codecs("lossless")}
    for rec in img["lossless"].values():
        assert rec["exact"] is True
        assert rec["bpp"] == pytest.approx(rec["bytes"] * 8 / (440 * 440))
        assert rec["encode_s"] >= 0 and rec["decode_s"] >= 0
    assert img["lossless"]["deflate"]["bpp"] > img["lossless"]["jpegls"]["bpp"]
    near = img["near_lossless"]["jpegls"]
    assert list(near) == ["1", "2", "4"]
    for lvl, rec in near.items():
        assert rec["bound_ok"] and rec["max_error"] <= int(lvl)
    assert set(img["lossy"]) == {"j2k", "jxl"}
    for per in img["lossy"].values():
        assert list(per) == ["0.5", "1"]
        for key, rec in per.items():
            assert rec["within_tol"] and abs(rec["bpp"] / float(key) - 1) <= 0.03
            for m in ("psnr_bits", "psnr_range", "ssim", "ms_ssim", "max_error", "encode_s", "decode_s"):
                assert rec[m] is not None, m
            assert rec["psnr_bits"] > rec["psnr_range"] > 20

    agg = rep["aggregates"]
    assert set(agg) == {"XR", "ALL"}
    assert agg["XR"]["lossless"]["jxl"]["mean_bpp"] == pytest.approx(img["lossless"]["jxl"]["bpp"])
    assert agg["XR"]["near_lossless"]["jpegls"]["2"]["mean_bpp"] == pytest.approx(near["2"]["bpp"])
    assert agg["XR"]["lossy"]["j2k"]["1"]["mean_psnr_bits"] == pytest.approx(img["lossy"]["j2k"]["1"]["psnr_bits"])
    assert agg["XR"]["lossy"]["jxl"]["0.5"]["mean_ms_ssim"] is not None

    for text in ("Lossless", "JPEG-LS", "deflate", "NEAR=4", "J2K@0.5", "JXL@1", "XR", "ALL"):
        assert text in captured.out, text
    assert not list(tmp_path.glob(".baseline.json.*"))  # no temporary left behind


def test_existing_output_is_refused_without_force_before_any_work(tmp_path, monkeypatch, capsys):
    data = _data_dir(tmp_path)
    out = tmp_path / "baseline.json"
    out.write_text("keep me")
    monkeypatch.setattr(B, "benchmark_file", lambda *a: pytest.fail("ran although the output exists"))
    assert main(["baseline", str(data), "--json", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert "use --force" in err and len(err.strip().splitlines()) == 1


def test_force_overwrites(tmp_path, fast, monkeypatch):
    monkeypatch.setattr(B, "TARGETS_BPP", (1.0,))
    data = _data_dir(tmp_path)
    out = tmp_path / "baseline.json"
    out.write_text("old")
    assert main(["baseline", str(data), "--json", str(out), "--no-progress", "--force"]) == 0
    assert json.loads(out.read_text())["n_images"] == 1


@pytest.mark.parametrize("what", ["missing", "empty", "file"])
def test_bad_data_dir_is_one_line_and_exit_1(tmp_path, capsys, what):
    data = tmp_path / "data"
    if what == "empty":
        data.mkdir()
        (data / "image.png").write_bytes(b"x")
    elif what == "file":
        data.write_bytes(b"x")
    out = tmp_path / "o.json"
    assert main(["baseline", str(data), "--json", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("medcodec baseline: error:")
    assert "Traceback" not in err
    assert not out.exists()


def test_nothing_readable_exits_1_but_records_the_skips(tmp_path, capsys):
    data = _data_dir(tmp_path, bad=True, good=False)
    out = tmp_path / "o.json"
    assert main(["baseline", str(data), "--json", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "could be read" in err and "Traceback" not in err
    rep = json.loads(out.read_text())
    assert rep["images"] == [] and [s["path"] for s in rep["skipped"]] == ["broken.dcm"]


def test_missing_output_directory_is_refused_up_front(tmp_path, capsys):
    data = _data_dir(tmp_path)
    assert main(["baseline", str(data), "--json", str(tmp_path / "no" / "o.json"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["baseline"],
    ["baseline", "somewhere"],  # --json is required
    ["baseline", "somewhere", "--json", "o.json", "--jobs", "0"],
    ["baseline", "somewhere", "--json", "o.json", "--bogus"],
])
def test_bad_usage_exits_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_subprocess_missing_dir_exit_code_and_stderr(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines", "baseline", str(tmp_path / "nope"), "--json", str(tmp_path / "o.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"medcodec baseline: error: {tmp_path / 'nope'}: no such directory"
    assert proc.stdout == ""
    proc = subprocess.run([sys.executable, "-m", "pipelines", "baseline"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_a_lossless_mismatch_is_a_loud_recorded_failure(tmp_path, fast, monkeypatch, capsys):
    good = C.get_codec("j2k")
    bad = dataclasses.replace(good, name="j2k", _decode=lambda data: C._j2k_decode(data) ^ 1)
    monkeypatch.setitem(C.CODECS, "j2k", bad)
    monkeypatch.setattr(B, "TARGETS_BPP", (1.0,))
    data = _data_dir(tmp_path)
    out = tmp_path / "o.json"
    assert main(["baseline", str(data), "--json", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "FAILURE: xray/chest.dcm: j2k lossless: decoded image is not bit-exact" in err
    rep = json.loads(out.read_text())
    assert rep["images"][0]["lossless"]["j2k"]["exact"] is False
    assert rep["failures"][0]["path"] == "xray/chest.dcm" and rep["failures"][0]["codec"] == "j2k"
    assert rep["aggregates"]["XR"]["lossless"]["j2k"]["not_exact"] == 1


def test_codec_errors_are_recorded_not_fatal():
    def boom(arr, prec, **kw):
        raise RuntimeError("codec exploded")

    broken = dataclasses.replace(C.get_codec("jxl"), _encode=boom)
    pixels = np.arange(200 * 200, dtype=np.uint16).reshape(200, 200) % 1000
    res, failures = B.benchmark_pixels(pixels, 10, False, lossless=[broken, C.get_codec("jpegls")],
                                       near=[], lossy=[])
    assert res["lossless"]["jxl"]["error"] == "RuntimeError: codec exploded"
    assert res["lossless"]["jpegls"]["exact"] is True
    assert failures == [{"codec": "jxl", "setting": "lossless", "error": "RuntimeError: codec exploded"}]


def test_signed_image_record_counts_the_offset(monkeypatch):
    rng = np.random.default_rng(0)
    pixels = (rng.integers(-1024, 2000, (180, 200))).astype(np.int16)
    res, failures = B.benchmark_pixels(pixels, 16, True, lossless=[C.get_codec("jpegls")], near=[],
                                       lossy=[C.get_codec("j2k-lossy")], targets=(2.0,))
    assert failures == []
    assert res["lossless"]["jpegls"]["side_bytes"] == 2
    rec = res["lossy"]["j2k"]["2"]
    assert rec["within_tol"] and rec["ms_ssim"] is not None  # 180 px >= 161


@pytest.mark.parametrize("modality,group", [
    ("CT", "CT"), ("MR", "MR"), ("CR", "XR"), ("DX", "XR"), ("RG", "XR"), ("MG", "XR"),
    ("US", "OTHER"), ("", "OTHER"), (None, "OTHER"), ("ct", "CT"),
])
def test_modality_groups(modality, group):
    assert B.modality_group(modality) == group


def test_parallel_jobs_give_the_same_records(tmp_path, fast):
    data = _data_dir(tmp_path)
    shutil.copy(SAMPLES / "mr" / "mr_t1w_studyforrest.dcm", data / "mr.dcm")
    outs = []
    for jobs in ("1", "2"):
        out = tmp_path / f"o{jobs}.json"
        assert main(["baseline", str(data), "--json", str(out), "--no-progress", "--jobs", jobs]) == 0
        outs.append(json.loads(out.read_text()))
    strip = lambda r: [(i["path"], {k: v["bytes"] for k, v in i["lossless"].items()}) for i in r["images"]]  # noqa: E731
    assert strip(outs[0]) == strip(outs[1])
    assert [i["path"] for i in outs[1]["images"]] == ["mr.dcm", "xray/chest.dcm"]
