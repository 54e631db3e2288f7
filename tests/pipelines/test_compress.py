"""compress / decompress through real files, with a small throwaway model.

The model here is randomly initialised (seeded): these tests check the codec
machinery (container, entropy coding, integer h_s, tiling, DICOM out), not
compression quality, which `medcodec eval` measures on the trained zoo.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from codec import container
from codec.dicom import read_dicom
from models import zoo
from pipelines import compress as compress_cmd
from pipelines.cli import main
from tests.conftest import sample_files

ROOT = Path(__file__).resolve().parents[2]
CT = next(p for p in sample_files() if "ct_signed" in p.name)


def test_dicom_round_trip_is_valid_lossy_dicom(tiny_zoo, tmp_path):
    mdc, out = tmp_path / "a.mdc", tmp_path / "a.dcm"
    assert main(["compress", str(CT), str(mdc), "--quality", "1"]) == 0
    assert main(["decompress", str(mdc), str(out)]) == 0
    src, dst = pydicom.dcmread(CT), pydicom.dcmread(out)
    assert dst.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert dst.LossyImageCompression == "01"
    assert "MEDCODEC_GDN" in str(dst.LossyImageCompressionMethod)
    assert float(str(dst.LossyImageCompressionRatio).split("\\")[-1]) > 1
    assert dst.SOPInstanceUID != src.SOPInstanceUID
    changed = {"PixelData", "SOPInstanceUID", "LossyImageCompression", "LossyImageCompressionRatio",
               "LossyImageCompressionMethod", "SourceImageSequence"}
    for el in src:
        if el.keyword not in changed and el.tag.element != 0:
            assert dst[el.tag].value == el.value, el.keyword
    px = dst.pixel_array
    assert px.shape == (512, 512) and px.dtype == np.int16
    lo, hi = int(src.pixel_array.min()), int(src.pixel_array.max())
    assert px.min() >= lo and px.max() <= hi


def test_existing_output_needs_force_and_is_untouched(tiny_zoo, tmp_path):
    mdc = tmp_path / "a.mdc"
    mdc.write_bytes(b"keep me")
    assert main(["compress", str(CT), str(mdc), "--quality", "1"]) == 1
    assert mdc.read_bytes() == b"keep me"


DECODE = """
import hashlib, sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[3]))
from models import zoo
from pathlib import Path
zoo.WEIGHTS_DIR = Path(sys.argv[2])
from codec import gdncodec, container
from pipelines.compress import load_codec
data = Path(sys.argv[1]).read_bytes()
nets, pkg = load_codec("gdn-hyperprior", 1)
c = container.read_container(data)
from codec.entropy import decode_factorized
import numpy as np
ks = []
for s in c.tiles:
    z = decode_factorized(s[0], (64, 4, 4), pkg.z_tables).astype(np.int64) + pkg.z_center[:, None, None]
    ks.append(pkg.scale_index(z))
dec = gdncodec.decompress(data, nets, pkg)
print(hashlib.sha256(np.stack(ks).tobytes()).hexdigest(), hashlib.sha256(dec.pixels.tobytes()).hexdigest())
"""


def test_decoding_is_bit_exact_across_processes_and_thread_counts(tiny_zoo, tmp_path):
    mdc = tmp_path / "a.mdc"
    assert main(["compress", str(CT), str(mdc), "--quality", "1"]) == 0
    results = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        out = subprocess.run([sys.executable, "-c", DECODE, str(mdc), str(tiny_zoo), threads],
                             cwd=ROOT, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        results.add(out.stdout.strip())
    assert len(results) == 1, results


def test_encoder_and_decoder_choose_the_same_tables(tiny_zoo):
    """The encoder's scale indices equal what the decoder rebuilds from the z stream."""
    from codec import gdncodec
    from codec.entropy import decode_factorized

    nets, pkg = compress_cmd.load_codec("gdn-hyperprior", 1)
    img = read_dicom(CT).pixels
    tile = gdncodec.to_unit(img, int(img.min()), int(img.max()))[:256, :256]
    y, z = nets.analysis(tile[None])
    k_enc = pkg.scale_index(gdncodec._z_int(z[0]))
    streams = gdncodec.encode_tiles([tile], nets, pkg)
    z_dec = decode_factorized(streams[0][0], z[0].shape, pkg.z_tables).astype(np.int64) + pkg.z_center[:, None, None]
    assert np.array_equal(pkg.scale_index(z_dec), k_enc)


@pytest.mark.parametrize("shape", [(300, 517), (64, 64), (1, 1)])
def test_odd_sizes_and_npy_round_trip(tiny_zoo, tmp_path, shape):
    arr = (np.random.default_rng(0).integers(0, 4096, shape)).astype(np.uint16)
    src, mdc, out = tmp_path / "a.npy", tmp_path / "a.mdc", tmp_path / "b.npy"
    np.save(src, arr)
    assert main(["compress", str(src), str(mdc), "--quality", "1"]) == 0
    assert main(["decompress", str(mdc), str(out)]) == 0
    back = np.load(out)
    assert back.shape == arr.shape and back.dtype == arr.dtype


def test_png_in_png_out_and_wrong_suffix_refused(tiny_zoo, tmp_path):
    import imagecodecs

    arr = (np.arange(200 * 180) % 251).astype(np.uint8).reshape(200, 180)
    src, mdc = tmp_path / "a.png", tmp_path / "a.mdc"
    src.write_bytes(imagecodecs.png_encode(arr))
    assert main(["compress", str(src), str(mdc), "--quality", "1"]) == 0
    assert main(["decompress", str(mdc), str(tmp_path / "b.dcm")]) == 1
    assert main(["decompress", str(mdc), str(tmp_path / "b.png")]) == 0
    assert imagecodecs.png_decode((tmp_path / "b.png").read_bytes()).shape == arr.shape


def _chunk_bounds(data: bytes) -> list[int]:
    pos, out = 10, []
    while pos < len(data):
        out.append(pos)
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return out


def test_damaged_files_give_one_line_errors(tiny_zoo, tmp_path, capsys):
    mdc = tmp_path / "a.mdc"
    assert main(["compress", str(CT), str(mdc), "--quality", "1"]) == 0
    good = mdc.read_bytes()
    bounds = _chunk_bounds(good)
    assert len(bounds) >= 4
    bad = tmp_path / "bad.mdc"
    cases = [good[:b] for b in bounds[1:]] + [good[: b + 7] for b in bounds]
    for b in bounds:  # one flipped bit inside every chunk's payload (or CRC)
        flipped = bytearray(good)
        flipped[min(b + 9, len(good) - 1)] ^= 0x10
        cases.append(bytes(flipped))
    for i, case in enumerate(cases):
        bad.write_bytes(case)
        out = tmp_path / f"out{i}.dcm"
        assert main(["decompress", str(bad), str(out)]) == 1, i
        assert not out.exists()
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0]


def test_wrong_model_hash_is_refused(tiny_zoo, tmp_path):
    mdc = tmp_path / "a.mdc"
    assert main(["compress", str(CT), str(mdc), "--quality", "1"]) == 0
    c = container.read_container(mdc.read_bytes())
    head = dict(c.head, checkpoint_sha256="ab" * 32)
    forged = container.write_container(head, c.tiles, meta=c.meta)
    mdc.write_bytes(forged)
    out = tmp_path / "x.dcm"
    assert main(["decompress", str(mdc), str(out)]) == 1
    assert not out.exists()


def test_damaged_package_is_refused(weights_dir, tmp_path, monkeypatch):
    broken = tmp_path / "zoo"
    shutil.copytree(weights_dir, broken)
    p = broken / "gdn-hyperprior-q1.npz"
    p.write_bytes(p.read_bytes()[:-10])
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", broken)
    monkeypatch.setattr(compress_cmd, "_CACHE", {})
    assert main(["compress", str(CT), str(tmp_path / "a.mdc"), "--quality", "1"]) == 1


def test_folder_in_folder_out(tiny_zoo, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    shutil.copy(CT, src / "sub" / "ct.dcm")
    np.save(src / "x.npy", np.zeros((70, 70), dtype=np.uint16))
    assert main(["compress", str(src), str(tmp_path / "mdc"), "--quality", "1", "--no-progress"]) == 0
    assert (tmp_path / "mdc" / "sub" / "ct.mdc").is_file() and (tmp_path / "mdc" / "x.mdc").is_file()
    assert main(["decompress", str(tmp_path / "mdc"), str(tmp_path / "out"), "--no-progress"]) == 0
    assert (tmp_path / "out" / "sub" / "ct.dcm").is_file() and (tmp_path / "out" / "x.npy").is_file()


def test_eval_writes_json_and_plots(tiny_zoo, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(next(p for p in sample_files() if "mr_" in p.name), data)
    out = tmp_path / "eval.json"
    assert main(["eval", str(data), "--json", str(out), "--qualities", "1", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    rec = result["images"][0]
    assert rec["learned"][0]["bytes"] > 0 and rec["learned"][0]["bpp"] > 0
    # the classical twin was rate-targeted to the learned point's bpp
    twin = rec["classical"]["j2k-lossy"][0]
    assert twin["target_bpp"] == rec["learned"][0]["bpp"]
    assert set(result["aggregates"]) >= {"MR"}
    assert all(Path(p).is_file() for p in result["plots"])
    assert "BD-rate" in capsys.readouterr().out
    assert main(["eval", str(data), "--json", str(out), "--qualities", "1", "--no-progress"]) == 1  # exists


def test_multiframe_dicom_round_trip(tiny_zoo, tmp_path):
    from tests.codec.test_dicom import make_dataset, save

    ds = make_dataset((3, 70, 90), 16, 12, signed=True)
    src = save(ds, tmp_path / "mf.dcm")
    mdc, out = tmp_path / "mf.mdc", tmp_path / "mf_out.dcm"
    assert main(["compress", str(src), str(mdc), "--quality", "1"]) == 0
    head = container.read_container(mdc.read_bytes()).head
    assert head["frames"] == 3 and head["tiles"] == 3 and len(head["input_map"]) == 3
    assert main(["decompress", str(mdc), str(out)]) == 0
    back = read_dicom(out)
    assert back.pixels.shape == (3, 70, 90) and back.pixels.dtype == np.int16 and back.frames == 3
    assert int(pydicom.dcmread(out).NumberOfFrames) == 3


def test_eval_reports_every_backend_on_the_same_images(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(next(p for p in sample_files() if "mr_" in p.name), data)
    out = tmp_path / "eval.json"
    assert main(["eval", str(data), "--json", str(out), "--model", "dpu-hyperprior", "--qualities", "1,2",
                 "--backend", "float,rewritten,int8", "--no-progress"]) == 0
    result = json.loads(out.read_text())
    rec = result["images"][0]
    assert set(rec["backends"]) == {"float", "rewritten", "int8"}
    f, r, i = (rec["backends"][b] for b in ("float", "rewritten", "int8"))
    # the rewrites are exact: the same bytes up to float rounding of the networks
    assert abs(f[0]["bpp"] - r[0]["bpp"]) < 0.01 and abs(f[0]["psnr_range"] - r[0]["psnr_range"]) < 0.05
    assert i[0]["bytes"] > 0 and i[0]["bpp"] != f[0]["bpp"]  # int8 is a different codec
    agg = result["aggregates"]["MR"]["backends"]["int8"]
    assert len(agg["delta_psnr_range_vs_float"]) == 2 and len(agg["bpp_ratio_vs_float"]) == 2
    assert "rewritten" in capsys.readouterr().out
    assert main(["eval", str(data), "--json", str(out), "--backend", "float,bogus", "--force"]) == 1
