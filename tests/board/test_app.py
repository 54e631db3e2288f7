"""board/app.py: the board application, run from inside a rendered runtime.

The subprocess tests run ``app.py`` with ``python -S`` and only site-packages on the path, so
nothing of this repository but the runtime's own copies can be imported, and they fail if
torch or any host-only package was imported. The VART path runs in-process on the FAKE xir /
vart (``fake_vart.py``): its bitstreams and pixels equal the emulator's.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pydicom
import pytest

from board import app
from board.app import Runtime, pixels_sha256, synthetic_image, validate_images
from board.runtime import SMOKE_TEST
from board.validate import compare
from codec import gdncodec, sources
from codec.dpunets import emulator_networks
from codec.sources import load_source
from tests.board import fake_vart
from tests.board.rt_common import MODEL

pytest_plugins = ("tests.board.runtime_fixtures",)

LENIENT = {"default": {}}


def _one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_selftest_runs_isolated_from_the_repository(rendered, run_app):
    out = run_app(rendered.out_dir, "selftest", check_rc=0)
    assert "runner: emulator (xir / vart do not import)" in out.stdout
    assert "matches the host emulator" in out.stdout
    assert not list(rendered.out_dir.rglob("__pycache__"))


def test_module_form_and_info(rendered, run_app):
    out = run_app(rendered.out_dir, "info", check_rc=0, module=True)  # python3 -m board.app info
    assert "model: tiny-dpu" in out.stdout and f"smoke test: {SMOKE_TEST}" in out.stdout


def test_compress_and_decompress_a_dicom(rendered, run_app, images_dir, tmp_path, capsys):
    dcm = next(images_dir.rglob("*.dcm"))
    mdc, back = tmp_path / "a.mdc", tmp_path / "a.dcm"
    out = run_app(rendered.out_dir, "compress", str(dcm), str(mdc), "--quality", "2", check_rc=0)
    assert "bpp" in out.stdout
    run_app(rendered.out_dir, "decompress", str(mdc), str(back), check_rc=0)
    ds = pydicom.dcmread(back)
    assert ds.LossyImageCompression == "01"
    # the same bytes and pixels as the codec in this process (the host's emulator)
    rt = Runtime.load(rendered.out_dir)
    pkg = rt.package(2)
    src = load_source(dcm)
    data = gdncodec.compress(src, emulator_networks(pkg), pkg)
    assert data == mdc.read_bytes()
    np.testing.assert_array_equal(ds.pixel_array, gdncodec.decompress(data, emulator_networks(pkg), pkg).pixels)

    root = ["--root", str(rendered.out_dir)]
    assert app.main(["decompress", str(mdc), str(back), *root]) == 1
    assert "output exists" in _one_error_line(capsys.readouterr().err)
    assert app.main(["decompress", str(mdc), str(tmp_path / "a.npy"), *root]) == 1
    assert "name the output *.dcm" in _one_error_line(capsys.readouterr().err)


def test_decompress_of_a_residual_only_file(rendered, run_app, images_dir, tmp_path):
    """A lossless file without a lossy layer (the host's default for lossless) decodes on the board, isolated
    from the repository (no torch, no host module), with no network run and the SOP Instance UID kept."""
    dcm = next(images_dir.rglob("*.dcm"))
    mdc, back = tmp_path / "a.mdc", tmp_path / "a.dcm"
    sources.compress_file(dcm, mdc, lambda: pytest.fail("no codec is needed"), mode="lossless")
    out = run_app(rendered.out_dir, "decompress", str(mdc), str(back), check_rc=0)
    assert "384x274 int16" in out.stdout
    a, b = pydicom.dcmread(dcm), pydicom.dcmread(back)
    np.testing.assert_array_equal(b.pixel_array, a.pixel_array)
    assert b.SOPInstanceUID == a.SOPInstanceUID and "LossyImageCompression" not in b


def test_validate_writes_metrics_json(rendered, run_app, images_dir, tmp_path, capsys):
    bad = tmp_path / "imgs"
    shutil.copytree(images_dir, bad)
    (bad / "broken.npy").write_bytes(b"not an array")
    metrics = tmp_path / "metrics.json"
    out = run_app(rendered.out_dir, "validate", str(bad), "--out", str(metrics), "--quality", "1", check_rc=1)
    assert "broken.npy q1" in out.stderr
    doc = json.loads(metrics.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    assert doc["schema"] == app.METRICS_SCHEMA and doc["qualities"] == [1] and doc["model"] == MODEL
    assert doc["runner"]["name"] == "emulator" and doc["images"] == 3
    assert [r["image"] for r in doc["results"]] == ["mr/mr_t1w_studyforrest.dcm", "ramp.npy"]
    assert [e["image"] for e in doc["errors"]] == ["broken.npy"]
    r = doc["results"][0]
    assert r["bpp"] == r["bytes"] * 8 / (r["rows"] * r["cols"])
    assert r["kind"] == "dicom" and r["bits_stored"] == 16 and r["ms_ssim"] is not None
    assert set(r["network_s"]) == {"g_a", "h_a", "g_s"} and r["network_tiles"]["g_a"] > 0
    assert len(r["bitstream_sha256"]) == 64 and len(r["decoded_sha256"]) == 64
    s = doc["summary"]["1"]
    assert s["images"] == 2 and s["images_per_s"] > 0 and set(s["network_ms_per_tile"]) == {"g_a", "h_a", "g_s"}
    assert app.main(["validate", str(images_dir), "--out", str(metrics), "--root", str(rendered.out_dir)]) == 1
    assert "output exists" in _one_error_line(capsys.readouterr().err)


def test_selftest_fails_when_the_host_hashes_differ(rendered, tmp_path, capsys):
    copy = tmp_path / "runtime"
    shutil.copytree(rendered.out_dir, copy)
    m = json.loads((copy / app.MANIFEST_NAME).read_text())
    m["selftest"]["expect"]["1"]["bitstream_sha256"] = "0" * 64
    (copy / app.MANIFEST_NAME).write_text(json.dumps(m))
    assert app.main(["selftest", "--root", str(copy)]) == 1
    assert "differs from the host emulator" in _one_error_line(capsys.readouterr().err)
    assert app.main(["selftest", "--root", str(copy), "--quality", "2"]) == 0


@pytest.mark.parametrize("argv, message", [
    (["selftest", "--quality", "7"], "quality 7 is not in this runtime"),
    (["compress", "missing.dcm", "x.mdc", "--quality", "1"], "missing.dcm: no such file"),
    (["selftest", "--runner", "vart"], "--runner vart: the xir / vart modules do not import"),
])
def test_errors_are_one_line(rendered, capsys, monkeypatch, tmp_path, argv, message):
    monkeypatch.setitem(sys.modules, "xir", None)
    monkeypatch.chdir(tmp_path)
    assert app.main([*argv, "--root", str(rendered.out_dir)]) == 1
    assert message in _one_error_line(capsys.readouterr().err)


def test_a_damaged_file_or_runtime_is_one_line(rendered, tmp_path, capsys):
    garbage = tmp_path / "g.mdc"
    garbage.write_bytes(b"\x89MDC nonsense")
    assert app.main(["decompress", str(garbage), str(tmp_path / "g.dcm"), "--root", str(rendered.out_dir)]) == 1
    assert "g.mdc" in _one_error_line(capsys.readouterr().err)
    assert app.main(["info", "--root", str(tmp_path)]) == 1
    assert "no runtime manifest" in _one_error_line(capsys.readouterr().err)
    broken = tmp_path / "rt"
    shutil.copytree(rendered.out_dir, broken)
    pkg = broken / "packages" / "tiny-dpu-q1.int8.npz"
    pkg.write_bytes(pkg.read_bytes()[:-5])
    assert app.main(["selftest", "--root", str(broken)]) == 1
    assert "sha256 mismatch" in _one_error_line(capsys.readouterr().err)


def test_runner_choice(rendered, rendered_vart, monkeypatch):
    monkeypatch.setitem(sys.modules, "xir", None)
    assert Runtime.load(rendered_vart.out_dir).choose_runner() == ("emulator", "xir / vart do not import")
    fake_vart.install(monkeypatch)
    assert Runtime.load(rendered_vart.out_dir).choose_runner()[0] == "vart"
    assert Runtime.load(rendered_vart.out_dir).choose_runner("emulator") == ("emulator", "requested")
    assert Runtime.load(rendered.out_dir).choose_runner() == ("emulator", "no xmodels for quality [1, 2]")
    with pytest.raises(app.AppError, match="no xmodels for quality"):
        Runtime.load(rendered.out_dir).choose_runner("vart")


def test_vart_selftest_loads_the_overlay_once(rendered_vart, monkeypatch, capsys):
    fake_vart.install(monkeypatch)
    assert app.main(["selftest", "--root", str(rendered_vart.out_dir)]) == 0
    out = capsys.readouterr().out
    assert "runner: vart" in out and "matches the host emulator" in out
    assert fake_vart.OVERLAYS == ["dpu.bit"] and fake_vart.CALLS
    fake_vart.OVERLAYS.clear()
    assert app.main(["selftest", "--root", str(rendered_vart.out_dir), "--overlay", "none", "--quality", "2"]) == 0
    assert fake_vart.OVERLAYS == []


def test_vart_validate_is_bit_exact_with_the_host(rendered_vart, images_dir, monkeypatch):
    host = validate_images(Runtime.load(rendered_vart.out_dir), "emulator", images_dir)
    fake_vart.install(monkeypatch)
    rt = Runtime.load(rendered_vart.out_dir)
    kind, reason = rt.choose_runner()
    board = validate_images(rt, kind, images_dir, reason=reason)
    assert board["runner"]["name"] == "vart"
    assert board["runner"]["details"]["1"]["g_a"]["input"]["name"] == "GA__input_0_fix"
    report = compare(host, board, LENIENT)
    assert report["ok"], report["failures"]
    assert report["counts"]["bit_exact"] == len(board["results"]) == 4


def test_pixels_sha256_and_the_synthetic_image_are_stable():
    img = synthetic_image(4, 5, 12)
    assert img.dtype == np.uint16 and img.max() <= 4095
    assert np.array_equal(img, synthetic_image(4, 5, 12))
    assert pixels_sha256(img) == pixels_sha256(img.astype(">u2"))  # byte order does not matter
    assert pixels_sha256(img) != pixels_sha256(img.astype(np.int16))  # dtype does
    assert pixels_sha256(img) != pixels_sha256(img.reshape(5, 4))  # shape does
