"""Lossless and near-lossless modes end to end: CLI, .mdc, DICOM out, with a small throwaway model.

The model is the randomly initialised one of test_compress.py: these tests check the residual layer's
plumbing (modes, lossy layer none / learned, RESD chunks, x_hat CRC, DICOM marking), not compression,
which ``medcodec residual-eval`` measures.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pydicom
import pytest

from codec import container, gdncodec, residual
from codec.dicom import read_dicom
from codec.errors import MedcodecError
from pipelines import compress as compress_cmd
from pipelines.cli import main
from tests.conftest import sample_files

MR = next(p for p in sample_files() if "mr_" in p.name)  # the smallest sample (384 x 274)


@pytest.mark.parametrize("layer", [None, "learned"])
def test_lossless_cli_round_trip_is_bit_exact_on_every_sample(tiny_zoo, tmp_path, monkeypatch, layer):
    src = tmp_path / "in"
    for p in sample_files():
        dst = src / p.relative_to(p.parents[1])
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    if layer is None:  # the default: residual only, no model is loaded to code or decode
        monkeypatch.setattr(compress_cmd, "load_codec", _no_model)
    argv = [] if layer is None else ["--lossy-layer", layer]
    assert main(["compress", str(src), str(tmp_path / "mdc"), "--quality", "1", "--mode", "lossless",
                 "--no-progress", *argv]) == 0
    assert main(["decompress", str(tmp_path / "mdc"), str(tmp_path / "out"), "--no-progress"]) == 0
    for p in sample_files():
        rel = p.relative_to(p.parents[1])
        c = container.read_container((tmp_path / "mdc" / rel).with_suffix(".mdc").read_bytes())
        head = c.head
        assert head["mode"] == "lossless" and head["max_error"] == 0
        if layer is None:
            assert head["lossy_layer"] == "none" and head["tiles"] == 0 and not c.tiles and len(c.residuals) == 1
            assert not set(container.LEARNED_LAYER_KEYS) & set(head)
        else:
            assert "lossy_layer" not in head and c.tiles and head["quality"] == 1
        a, b = pydicom.dcmread(p), pydicom.dcmread(tmp_path / "out" / rel)
        np.testing.assert_array_equal(read_dicom(tmp_path / "out" / rel).pixels, read_dicom(p).pixels)
        assert b.SOPInstanceUID == a.SOPInstanceUID
        assert b.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
        assert b.get("LossyImageCompression") == a.get("LossyImageCompression")
        assert "SourceImageSequence" not in b or "SourceImageSequence" in a
        for el in a:
            if el.keyword != "PixelData" and el.tag.element != 0:
                assert b[el.tag].value == el.value, el.keyword


def _no_model(*args, **kwargs):
    raise AssertionError("a residual-only file loaded a model")


@pytest.mark.parametrize("layer, method", [(None, "MEDCODEC_RES_NL"), ("none", "MEDCODEC_RES_NL"),
                                           ("learned", "MEDCODEC_GDN_NL")])
def test_near_lossless_cli_holds_the_bound_and_marks_the_dicom(tiny_zoo, tmp_path, capsys, monkeypatch, layer,
                                                               method):
    mdc, out = tmp_path / "a.mdc", tmp_path / "a.dcm"
    if layer != "learned":
        monkeypatch.setattr(compress_cmd, "load_codec", _no_model)
    argv = [] if layer is None else ["--lossy-layer", layer]
    assert main(["compress", str(MR), str(mdc), "--quality", "1", "--mode", "near-lossless",
                 "--max-error", "2", *argv]) == 0
    printed = capsys.readouterr().out
    assert "near-lossless D=2" in printed and ("residual only" in printed) == (layer != "learned")
    assert main(["decompress", str(mdc), str(out)]) == 0
    src, dst = pydicom.dcmread(MR), pydicom.dcmread(out)
    err = np.abs(read_dicom(out).pixels.astype(np.int64) - read_dicom(MR).pixels).max()
    assert 0 < err <= 2
    assert dst.LossyImageCompression == "01"
    methods = str(dst.LossyImageCompressionMethod)
    assert method in methods and ({"MEDCODEC_RES_NL", "MEDCODEC_GDN_NL"} - {method}).pop() not in methods
    assert "max abs error 2" in str(dst.DerivationDescription)
    assert ("residual layer only" in str(dst.DerivationDescription)) == (layer != "learned")
    assert dst.SOPInstanceUID != src.SOPInstanceUID
    assert dst.SourceImageSequence[-1].ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_target_psnr_cli(tiny_zoo, tmp_path):
    mdc, out = tmp_path / "a.mdc", tmp_path / "a.dcm"
    assert main(["compress", str(MR), str(mdc), "--quality", "1", "--mode", "near-lossless",
                 "--target-psnr", "72"]) == 0
    head = container.read_container(mdc.read_bytes()).head
    assert head["target_psnr"] == 72.0 and head["frame_max_error"] == [head["max_error"]]
    assert head["lossy_layer"] == "none" and head["tiles"] == 0
    assert main(["decompress", str(mdc), str(out)]) == 0
    x, y = read_dicom(MR).pixels, read_dicom(out).pixels
    assert residual.psnr_for(x, y, 16) >= 72.0
    assert np.abs(x.astype(np.int64) - y).max() <= head["max_error"]
    assert "PSNR >= 72 dB" in str(pydicom.dcmread(out).DerivationDescription)


@pytest.mark.parametrize("args, message", [
    (["--mode", "near-lossless"], "needs exactly one of"),
    (["--mode", "near-lossless", "--max-error", "1", "--target-psnr", "50"], "needs exactly one of"),
    (["--mode", "near-lossless", "--max-error", "0"], "max error must be an integer in 1.."),
    (["--mode", "lossless", "--max-error", "2"], "takes neither"),
    (["--max-error", "2"], "lossy mode takes neither"),
    (["--lossy-layer", "none"], "lossy mode needs the learned layer"),
    (["--mode", "lossy", "--lossy-layer", "none"], "lossy mode needs the learned layer"),
])
def test_mode_usage_errors_are_one_line(tiny_zoo, tmp_path, capsys, args, message):
    mdc = tmp_path / "a.mdc"
    assert main(["compress", str(MR), str(mdc), "--quality", "1", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not mdc.exists()


class _Shifted:
    """The same networks, but a synthesis that differs a little (another backend, another build)."""

    def __init__(self, nets):
        self.nets = nets

    def analysis(self, tiles):
        return self.nets.analysis(tiles)

    def synthesis(self, y_int):
        return self.nets.synthesis(y_int) + 1e-3


def _source(shape=(2, 40, 50)) -> gdncodec.Source:
    rng = np.random.default_rng(0)
    px = rng.integers(-32768, 32767, shape, endpoint=True).astype(np.int16)
    frames = px.reshape(-1, *shape[-2:])
    frames[0, :5, :5] = -32768
    frames[-1, -5:, -5:] = 32767
    return gdncodec.Source(px, 16, True, "npy")


def test_a_decoder_that_rebuilds_another_x_hat_fails_loudly(tiny_zoo):
    nets, pkg = compress_cmd.load_codec("gdn-hyperprior", 1)
    src = _source((60, 70))
    data = gdncodec.compress(src, nets, pkg, mode="lossless")
    np.testing.assert_array_equal(gdncodec.decompress(data, nets, pkg).pixels, src.pixels)
    with pytest.raises(MedcodecError, match="lossy layer mismatch") as info:
        gdncodec.decompress(data, _Shifted(nets), pkg)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mode, d", [("lossless", None), ("near-lossless", 3)])
def test_multiframe_full_range_int16_round_trip(tiny_zoo, mode, d):
    nets, pkg = compress_cmd.load_codec("gdn-hyperprior", 1)
    src = _source()
    data = gdncodec.compress(src, nets, pkg, mode=mode, max_error=d)
    c = container.read_container(data)
    assert len(c.residuals) == 2 and c.head["mode"] == mode and c.head["max_error"] == (d or 0)
    out = gdncodec.decompress(data, nets, pkg).pixels
    assert out.shape == src.pixels.shape and out.dtype == np.int16
    assert np.abs(out.astype(np.int64) - src.pixels).max() <= (d or 0)


def _rewrite(data: bytes, head=None, residuals=None) -> bytes:
    c = container.read_container(data)
    return container.write_container(head if head is not None else c.head, c.tiles, meta=c.meta,
                                     residuals=c.residuals if residuals is None else residuals)


def test_inconsistent_or_damaged_residual_files_are_refused(tiny_zoo):
    nets, pkg = compress_cmd.load_codec("gdn-hyperprior", 1)
    src = _source((1, 30, 40))
    lossless = gdncodec.compress(src, nets, pkg, mode="lossless")
    lossy = gdncodec.compress(src, nets, pkg)
    c = container.read_container(lossless)
    stream = c.residuals[0]
    cases = {
        "a lossy file holds residual": _rewrite(lossy, residuals=c.residuals),
        "residual streams for 1": _rewrite(lossless, residuals=[]),
        "does not fit mode": _rewrite(lossless, head=dict(c.head, max_error=1)),
        "mode is invalid": _rewrite(lossless, head=dict(c.head, mode="lossy-ish")),
        "exceeds HEAD max_error": _rewrite(gdncodec.compress(src, nets, pkg, mode="near-lossless", max_error=5),
                                           head=dict(c.head, mode="near-lossless", max_error=4)),
        "residual stream corrupt": _rewrite(lossless, residuals=[stream[:-8] + bytes(8)]),
        "truncated": _rewrite(lossless, residuals=[stream[:30]]),
    }
    for message, data in cases.items():
        with pytest.raises(MedcodecError, match=message) as info:
            gdncodec.decompress(data, nets, pkg)
        assert "\n" not in str(info.value), message


def test_residual_eval_writes_json(tiny_zoo, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(MR, data)
    out = tmp_path / "r.json"
    assert main(["residual-eval", str(data), "--json", str(out), "--quality", "1", "--levels", "2",
                 "--no-progress"]) == 0
    result = json.loads(out.read_text())
    rec = result["images"][0]
    assert rec["group"] == "MR" and not result["failures"]
    assert rec["residual_only"]["0"]["max_error"] == 0 and rec["residual_only"]["2"]["max_error"] <= 2
    q1 = rec["lossy_residual"]["q1"]
    assert q1["0"]["bytes"] == q1["lossy_bytes"] + q1["0"]["residual_bytes"]
    assert set(rec["classical"]["lossless"]) >= {"jpegls", "jxl"} and "2" in rec["classical"]["near"]
    agg = result["aggregates"]["MR"]
    assert agg["methods"]["residual-only"]["0"]["mean_bpp"] == rec["residual_only"]["0"]["bpp"]
    table = capsys.readouterr().out
    assert "Lossless: mean bpp" in table and "Near-lossless D=2" in table


def _predictors(mdc) -> set[str]:
    return {residual.read_header(r).predictor for r in container.read_container(mdc.read_bytes()).residuals}


def test_residual_predictor_option(tmp_path, monkeypatch):
    """--residual-predictor reaches every RESD stream; ls is the default; both decode bit-exact."""
    monkeypatch.setattr(compress_cmd, "load_codec", _no_model)
    sizes = {}
    for pred in (None, "blend", "ls"):
        mdc, out = tmp_path / f"{pred}.mdc", tmp_path / f"{pred}.dcm"
        argv = [] if pred is None else ["--residual-predictor", pred]
        assert main(["compress", str(MR), str(mdc), "--mode", "lossless", *argv]) == 0
        assert _predictors(mdc) == {pred or "ls"}
        assert main(["decompress", str(mdc), str(out)]) == 0
        np.testing.assert_array_equal(read_dicom(out).pixels, read_dicom(MR).pixels)
        sizes[pred] = mdc.stat().st_size
    assert sizes[None] == sizes["ls"] < sizes["blend"]


def test_a_large_frame_is_striped_through_the_cli(tmp_path, monkeypatch):
    """With the stripe thresholds lowered, the MR sample's RESD is striped, coded by 2 worker processes,
    decodes bit-exact through DICOM, and is the same file as one process writes."""
    monkeypatch.setattr(compress_cmd, "load_codec", _no_model)
    monkeypatch.setattr(residual, "STRIPE_PIXELS", 1 << 14)
    monkeypatch.setattr(residual, "MIN_STRIPE_ROWS", 64)
    files = {}
    for workers in ("1", "2"):
        monkeypatch.setenv("MEDCODEC_WORKERS", workers)
        mdc, out = tmp_path / f"w{workers}.mdc", tmp_path / f"w{workers}.dcm"
        assert main(["compress", str(MR), str(mdc), "--mode", "lossless", "--residual-predictor", "blend"]) == 0
        (stream,) = container.read_container(mdc.read_bytes()).residuals
        assert residual.read_header(stream).stripes == 384 // 64
        assert main(["decompress", str(mdc), str(out)]) == 0
        np.testing.assert_array_equal(read_dicom(out).pixels, read_dicom(MR).pixels)
        files[workers] = mdc.read_bytes()
    assert files["1"] == files["2"]


def test_a_bad_workers_setting_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(compress_cmd, "load_codec", _no_model)
    monkeypatch.setenv("MEDCODEC_WORKERS", "many")
    assert main(["compress", str(MR), str(tmp_path / "x.mdc"), "--mode", "lossless"]) == 1
    err = capsys.readouterr().err.strip()
    assert "MEDCODEC_WORKERS" in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "x.mdc").exists()


def test_residual_predictor_bad_choice_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compress", str(MR), str(tmp_path / "x.mdc"), "--mode", "lossless", "--residual-predictor", "mrp"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "x.mdc").exists()


def test_residual_eval_records_its_predictor(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(MR, data)
    bpp = {}
    for pred in residual.PREDICTORS:
        out = tmp_path / f"{pred}.json"
        assert main(["residual-eval", str(data), "--json", str(out), "--no-lossy-layer", "--no-classical",
                     "--levels", "1", "--residual-predictor", pred, "--no-progress"]) == 0
        result = json.loads(out.read_text())
        assert result["settings"]["residual"]["predictor"] == pred
        assert result["settings"]["residual"]["stripe_workers"] == residual.default_workers()  # one job
        assert result["settings"]["residual"]["kernels"] == "numba"  # numba is pinned: the compiled kernels
        bpp[pred] = result["images"][0]["residual_only"]["0"]["bpp"]
    assert bpp["ls"] < bpp["blend"]


def test_residual_eval_in_parallel_codes_each_files_stripes_serially(tmp_path):
    """--jobs 2: two spawned workers, each told (MEDCODEC_WORKERS=1) not to start stripe processes."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a.dcm", "b.dcm"):
        shutil.copy(MR, data / name)
    out = tmp_path / "r.json"
    assert main(["residual-eval", str(data), "--json", str(out), "--no-lossy-layer", "--no-classical",
                 "--levels", "1", "--residual-predictor", "blend", "--jobs", "2", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["settings"]["residual"]["stripe_workers"] == 1 and result["settings"]["jobs"] == 2
    a, b = (r["residual_only"]["0"]["bpp"] for r in result["images"])
    assert a == b
