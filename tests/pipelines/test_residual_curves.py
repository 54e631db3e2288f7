"""``medcodec residual-eval --curves``: PSNR-vs-bpp points of lossy only, lossy + residual and residual only,
JPEG 2000 at the same bpp, on two tiny crops with the committed int8 codec (the DPU's integers, emulated)."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from pipelines.cli import main
from tests.conftest import sample_files


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A 48 x 64 crop of the MR sample and of the signed CT sample, as DICOM files."""
    folder = tmp_path_factory.mktemp("tiny")
    for name in ("mr_", "ct_signed"):
        path = next(p for p in sample_files() if name in p.name)
        ds = pydicom.dcmread(path)
        px = ds.pixel_array
        r0, c0 = px.shape[0] // 2 - 24, px.shape[1] // 2 - 32
        crop = np.ascontiguousarray(px[r0:r0 + 48, c0:c0 + 64])
        ds.Rows, ds.Columns = crop.shape
        ds.PixelData = crop.tobytes()
        ds.save_as(folder / path.name)
    return folder


def test_curves_json_table_and_plots(tiny_data, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["residual-eval", str(tiny_data), "--json", str(out), "--curves", "--model", "dpu-hyperprior",
                 "--backend", "int8", "--quality", "1", "--curve-qualities", "1", "--ladder", "3,0",
                 "--include", "*ct_signed*", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["backend"] == "int8" and result["settings"]["ladder"] == [3, 0]
    assert not result["failures"] and [r["path"] for r in result["images"]] == ["ct_signed_tcia_covid19.dcm"]
    for rec in result["images"]:
        c = rec["curves"]
        n = rec["rows"] * rec["cols"]
        (lossy,) = c["lossy"]
        assert lossy["quality"] == 1 and lossy["bpp"] == 8 * lossy["bytes"] / n and lossy["psnr_range"] > 0
        # psnr_range uses the image's own range as the peak, psnr_bits 2^BitsStored - 1
        peak_range, peak_bits = rec["range"][1] - rec["range"][0], 2 ** rec["bits_stored"] - 1
        assert lossy["psnr_bits"] - lossy["psnr_range"] == pytest.approx(20 * np.log10(peak_bits / peak_range))
        assert [p["max_error_bound"] for p in c["lossy_residual"]] == [3, 0]
        assert [p["max_error_bound"] for p in c["residual_only"]] == [3, 0]
        near, lossless = c["lossy_residual"]
        assert near["max_error"] <= 3 and lossless["max_error"] == 0 and lossless["psnr_range"] is None
        assert near["bytes"] == lossy["bytes"] + near["residual_bytes"]  # the same q1 tiles under the residual
        assert c["residual_only"][1]["bytes"] == c["residual_only"][1]["residual_bytes"]
        assert abs(near["j2k"]["target_bpp"] - near["bpp"]) < 1e-12 and near["j2k"]["psnr_bits"] > 0
        assert lossless["j2k"]["lossless"] and lossless["j2k"]["bpp"] > 0
    agg = result["aggregates"]["ALL"]["series"]
    assert agg["residual_only"][1]["lossless"] and agg["lossy"][0]["delta_psnr_range_vs_j2k"] is not None
    assert sorted(p.rsplit("/", 1)[-1] for p in result["plots"]) == ["curves_ALL.png", "curves_CT.png"]
    assert (tmp_path / "plots" / "curves_CT.png").stat().st_size > 1000
    table = capsys.readouterr().out
    assert "lossy q1" in table and "q1 + residual D=3" in table and "residual only D=0 (lossless)" in table


def test_curves_usage(tiny_data, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["residual-eval", str(tiny_data), "--json", str(out), "--curves", "--quality", "1",
                 "--quality", "2"]) == 1
    assert "--curves takes one --quality" in capsys.readouterr().err
    assert main(["residual-eval", str(tiny_data), "--json", str(out), "--curves", "--include", "none*"]) == 1
    assert "no DICOM files found matching --include" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["residual-eval", str(tiny_data), "--json", str(out), "--curves", "--ladder", "2,2"])
    assert not out.exists()
