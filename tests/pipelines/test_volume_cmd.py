"""Volumes through the CLI: ``compress SERIES_DIR OUT.mdc``, ``decompress OUT.mdc DIR``, train-mlp3d, volume-eval.

A small throwaway predictor (seeded, tiny) stands in for the committed one, except in the test of the
committed package itself; compression quality is what ``medcodec volume-eval`` measures.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pydicom
import pytest

from codec import volume as V
from models import zoo
from models.mlp3d import save_package
from pipelines.cli import main
from tests.codec.test_volume import smooth_volume, tiny_predictor, write_series


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vzoo")
    pred = tiny_predictor()
    path = folder / "mlp3d-pyramid.npz"
    save_package(path, pred.net, pred.sampling)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "zoo.json").write_text(json.dumps({"mlp3d-pyramid": {"volume": {"package_sha256": sha}}}))
    return folder


@pytest.fixture
def tiny_zoo(weights_dir, monkeypatch):
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", weights_dir)
    return weights_dir


@pytest.fixture
def series(tmp_path):
    return write_series(tmp_path / "series", smooth_volume(shape=(5, 20, 24)))


@pytest.mark.parametrize("model", [None, "mlp3d-pyramid"])
def test_lossless_series_round_trip_byte_exact(tiny_zoo, series, tmp_path, capsys, model):
    mdc, out = tmp_path / "vol.mdc", tmp_path / "back"
    extra = ["--model", model] if model else []
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--no-progress", *extra]) == 0
    assert V.read_volume(mdc.read_bytes())[0]["model"] == (model or "prev-slice")
    assert "5 slices of 20x24" in capsys.readouterr().out
    assert main(["decompress", str(mdc), str(out), "--no-progress"]) == 0
    names = sorted(p.name for p in series.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for n in names:  # explicit VR sources come back byte for byte (SOP Instance UID kept, not lossy)
        assert (out / n).read_bytes() == (series / n).read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_near_lossless_series_marked_lossy_with_bound(tiny_zoo, series, tmp_path):
    mdc, out = tmp_path / "vol.mdc", tmp_path / "back"
    assert main(["compress", str(series), str(mdc), "--mode", "near-lossless", "--max-error", "2",
                 "--model", "mlp3d-pyramid", "--no-progress"]) == 0
    assert main(["decompress", str(mdc), str(out), "--no-progress"]) == 0
    for f in series.iterdir():
        a, b = pydicom.dcmread(f), pydicom.dcmread(out / f.name)
        assert np.abs(a.pixel_array.astype(int) - b.pixel_array.astype(int)).max() <= 2
        assert b.LossyImageCompression == "01" and "max abs error 2" in b.DerivationDescription
        assert b.SOPInstanceUID != a.SOPInstanceUID


def test_volume_errors_are_one_line(tiny_zoo, series, tmp_path, capsys):
    mdc = tmp_path / "vol.mdc"
    assert main(["compress", str(series), str(mdc), "--no-progress"]) == 1  # default mode is lossy
    assert "lossless" in capsys.readouterr().err
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--model", "gdn-hyperprior",
                 "--no-progress"]) == 0  # the image default names the volume default here
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--model", "dpu-hyperprior",
                 "--no-progress"]) == 1
    assert "not a volume model" in capsys.readouterr().err
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--no-progress"]) == 1  # exists
    out = tmp_path / "back"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert main(["decompress", str(mdc), str(out), "--no-progress"]) == 1  # exists: untouched
    assert (out / "keep.txt").read_text() == "user data"
    capsys.readouterr()
    assert main(["decompress", str(mdc), str(tmp_path / "x.dcm"), "--no-progress"]) == 1
    assert "name an output folder" in capsys.readouterr().err and not (tmp_path / "x.dcm").exists()
    data = mdc.read_bytes()
    bad = tmp_path / "bad.mdc"
    bad.write_bytes(data[:-40] + bytes([data[-40] ^ 0x55]) + data[-39:])
    capsys.readouterr()
    assert main(["decompress", str(bad), str(tmp_path / "b2"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not (tmp_path / "b2").exists()


def test_model_mismatch_refused(tiny_zoo, series, tmp_path, monkeypatch, capsys):
    mdc = tmp_path / "vol.mdc"
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--model", "mlp3d-pyramid",
                 "--no-progress"]) == 0
    other = tmp_path / "other"
    other.mkdir()
    pred = tiny_predictor(seed=9)
    save_package(other / "mlp3d-pyramid.npz", pred.net, pred.sampling)
    sha = hashlib.sha256((other / "mlp3d-pyramid.npz").read_bytes()).hexdigest()
    (other / "zoo.json").write_text(json.dumps({"mlp3d-pyramid": {"volume": {"package_sha256": sha}}}))
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", other)
    assert main(["decompress", str(mdc), str(tmp_path / "o"), "--no-progress"]) == 1
    assert "model mismatch" in capsys.readouterr().err


def test_committed_predictor_round_trip():
    """The committed package loads (sha256 checked) and codes a small volume bit-exact."""
    pred, sha = zoo.load_volume_predictor("mlp3d-pyramid")
    assert len(pred.net.layers) == 5 and [lay.weight.shape[0] for lay in pred.net.layers] == [1024, 512, 256, 128, 1]
    vol = smooth_volume(shape=(4, 24, 24))
    data = V.compress_volume(vol, pred, model="mlp3d-pyramid", package_sha256=sha, bits_stored=12, signed=False,
                             source="npy")
    _, out, _ = V.decompress_volume(data, pred)
    assert np.array_equal(out, vol)


def test_volume_eval_small(tiny_zoo, series, tmp_path):
    js = tmp_path / "ve.json"
    rc = main(["volume-eval", str(series), "--json", str(js), "--no-progress"])
    assert rc == 0
    report = json.loads(js.read_text())
    assert report["kernels"] == "numba"  # the residual layer's compiled kernels (numba is pinned)
    rec = report["records"][0]
    m = rec["methods"]
    assert {"mlp3d-pyramid", "residual-only", "previous-slice", "jpegls", "j2k", "jxl", "htj2k"} <= set(m)
    assert not rec["errors"]
    assert m["mlp3d-pyramid"]["0"]["max_error"] == 0 and m["mlp3d-pyramid"]["4"]["max_error"] <= 4
    assert len(m["mlp3d-pyramid"]["0"]["slice_bpp"]) == 5
    assert m["mlp3d-pyramid"]["0"]["file_bpp"] > m["mlp3d-pyramid"]["0"]["bpp"]  # HEAD + metadata on top
    assert m["previous-slice"]["2"]["max_error"] <= 2
    assert main(["volume-eval", str(series), "--model", "none", "--no-classical", "--json", str(js),
                 "--no-progress"]) == 0
    assert set(json.loads(js.read_text())["records"][0]["methods"]) == {"residual-only", "previous-slice"}


def test_train_smoke(tmp_path):
    from models.mlp3d import SERIES

    data = tmp_path / "data"
    for i, rel in enumerate(SERIES.values()):
        write_series(data / rel, smooth_volume(shape=(6, 16, 16), seed=i))
    out = tmp_path / "run"
    assert main(["train-mlp3d", "--data", str(data), "--out", str(out), "--steps", "3", "--batch", "16",
                 "--samples-per-slice", "50", "--train-slices", "4", "--hidden", "8,4", "--no-progress",
                 "--threads", "1"]) == 0
    rec = json.loads((out / "mlp3d-pyramid.json").read_text())
    assert rec["hidden"] == [8, 4] and rec["quant"]["fp_in"] == 7 and rec["quant"]["layers"][-1]["fp_out"] == 7
    pred = V.load_predictor(out / "mlp3d-pyramid.npz")
    assert pred.sampling == "pyramid"


def test_demo_volume_section(tiny_zoo, series, tmp_path, capsys):
    from pipelines.demo import volume_section

    volume_section(series, tmp_path)
    text = capsys.readouterr().out
    assert "pixels and elements identical" in text and "residual layer alone" in text and "JXL" in text
    assert "prev-slice (the default" in text and "mlp3d-pyramid (slice streams)" in text


def test_prev_slice_model_round_trip(series, tmp_path, capsys):
    """The zero-parameter reference model: no weights, the previous decoded slice as x_hat."""
    mdc, out = tmp_path / "vol.mdc", tmp_path / "back"
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--model", "prev-slice",
                 "--no-progress"]) == 0
    assert main(["decompress", str(mdc), str(out), "--no-progress"]) == 0
    for f in series.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes()
    assert main(["train-mlp3d", "--model", "prev-slice"]) == 1
    assert "not a trainable volume model" in capsys.readouterr().err


@pytest.mark.parametrize("pred", ["blend", "ls"])
def test_residual_predictor_reaches_every_slice(series, tmp_path, pred):
    """--residual-predictor for a series: every slice stream says which; the 3-D LS decodes byte-exact."""
    from codec import residual

    mdc, out = tmp_path / "vol.mdc", tmp_path / "back"
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--residual-predictor", pred,
                 "--no-progress"]) == 0
    _, _, streams = V.read_volume(mdc.read_bytes())
    assert {residual.read_header(s).predictor for s in streams} == {pred}
    assert main(["decompress", str(mdc), str(out), "--no-progress"]) == 0
    for f in series.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes()


def test_bench_volume(tiny_zoo, series):
    from pipelines.bench import bench_volume

    r = bench_volume(series)
    assert set(r["models"]) == {"prev-slice (ls)", "prev-slice (blend)", "mlp3d-pyramid (ls)"}
    assert all(v["bpp"] > 0 and v["encode_mvox_s"] > 0 for v in r["models"].values())
    assert "skipped" in bench_volume(series / "missing")


@pytest.mark.parametrize("model", [None, "mlp3d-pyramid"])
def test_groups_and_slices_through_the_cli(tiny_zoo, series, tmp_path, capsys, model):
    """--group 2 writes HEAD group 2; decompress --slices writes just those slices, byte for byte."""
    mdc = tmp_path / "vol.mdc"
    extra = ["--model", model] if model else []
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--group", "2", "--no-progress",
                 *extra]) == 0
    head = V.read_volume(mdc.read_bytes())[0]
    assert head["group"] == 2
    names = head["names"]  # the file's slice order (by position), which --slices counts in
    out = tmp_path / "some"
    assert main(["decompress", str(mdc), str(out), "--slices", "3,0-1", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([names[0], names[1], names[3]])
    for n in (names[0], names[1], names[3]):
        assert (out / n).read_bytes() == (series / n).read_bytes()
    whole = tmp_path / "whole"
    assert main(["decompress", str(mdc), str(whole), "--no-progress"]) == 0
    assert all((whole / n).read_bytes() == (series / n).read_bytes() for n in names)
    capsys.readouterr()


def test_group_and_slices_errors_are_one_line(tiny_zoo, series, tmp_path, capsys):
    mdc = tmp_path / "vol.mdc"
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--group", "-1", "--no-progress"]) == 1
    assert "--group" in capsys.readouterr().err and not mdc.exists()
    assert main(["compress", str(series), str(mdc), "--mode", "lossless", "--no-progress"]) == 0
    assert V.read_volume(mdc.read_bytes())[0]["group"] == V.GROUP
    for bad, what in (("5", "slices 0..4"), ("2-1", "N-M"), ("a", "not N or N-M"), ("-3", "N or N-M")):
        capsys.readouterr()
        out = tmp_path / f"o{bad}"
        assert main(["decompress", str(mdc), str(out), "--slices", bad, "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert what in err and err.count("\n") == 1 and not out.exists()
    img = tmp_path / "img.mdc"
    one = sorted(series.iterdir())[0]
    assert main(["compress", str(one), str(img), "--mode", "lossless", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["decompress", str(img), str(tmp_path / "x.dcm"), "--slices", "0", "--no-progress"]) == 1
    assert "--slices is for a volume file" in capsys.readouterr().err
