"""Residual-only .mdc files (HEAD lossy_layer "none"): the residual layer alone, no TILE, no model.

Coded and decoded by codec/ with no networks and no package (``nets`` and ``pkg`` None), so a host
without torch, or the board app, reads them; the decoder refuses every inconsistent HEAD and every
damaged stream with one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest

from codec import container, gdncodec, residual, sources
from codec.errors import MedcodecError
from tests.conftest import sample_files

ROOT = Path(__file__).resolve().parents[2]
MR = next(p for p in sample_files() if "mr_" in p.name)  # the smallest sample (384 x 274)


def _source(shape=(2, 30, 40)) -> gdncodec.Source:
    rng = np.random.default_rng(3)
    px = rng.integers(-32768, 32767, shape, endpoint=True).astype(np.int16)
    frames = px.reshape(-1, *shape[-2:])
    frames[0, :4, :4] = -32768
    frames[-1, -4:, -4:] = 32767
    frames[-1, 10:20, 10:30] = 7  # a flat patch
    return gdncodec.Source(px, 16, True, "npy")


def _no_codec(*args):
    raise AssertionError("a residual-only file asked for the networks")


@pytest.mark.parametrize("mode, d", [("lossless", None), ("near-lossless", 1), ("near-lossless", 40)])
def test_round_trip_without_networks(mode, d):
    src = _source()
    data = gdncodec.compress(src, None, None, mode=mode, max_error=d, lossy_layer="none")
    c = container.read_container(data)
    assert c.tiles == [] and len(c.residuals) == 2
    assert c.head["lossy_layer"] == "none" and c.head["tiles"] == 0 and c.head["mode"] == mode
    assert c.head["max_error"] == (d or 0)
    out = gdncodec.decompress(data, None, None).pixels
    assert out.shape == src.pixels.shape and out.dtype == np.int16
    err = int(np.abs(out.astype(np.int64) - src.pixels).max())
    assert err == 0 if d is None else 0 < err <= d
    assert not any(residual.read_header(s).has_xhat for s in c.residuals)


def test_target_psnr_without_networks():
    src = _source((1, 30, 40))
    data = gdncodec.compress(src, None, None, mode="near-lossless", target_psnr=60.0, lossy_layer="none")
    head = container.read_container(data).head
    out = gdncodec.decompress(data, None, None).pixels
    assert head["target_psnr"] == 60.0 and head["frame_max_error"] == [head["max_error"]]
    assert residual.psnr_for(src.pixels.reshape(out.shape), out, 16) >= 60.0


def test_mode_and_layer_checks():
    src = _source((1, 8, 8))
    with pytest.raises(MedcodecError, match="lossy mode needs the learned layer"):
        gdncodec.compress(src, None, None, lossy_layer="none")
    with pytest.raises(MedcodecError, match="unknown lossy layer 'nope'"):
        gdncodec.compress(src, None, None, mode="lossless", lossy_layer="nope")
    with pytest.raises(MedcodecError, match="needs the networks"):
        gdncodec.compress(src, None, None, mode="lossless", lossy_layer="learned")
    assert gdncodec.default_lossy_layer("lossy") == "learned"
    assert gdncodec.default_lossy_layer("lossless") == gdncodec.default_lossy_layer("near-lossless") == "none"


def _rewrite(data: bytes, head=None, residuals=None) -> bytes:
    c = container.read_container(data)
    return container.write_container(head if head is not None else c.head, c.tiles, meta=c.meta,
                                     residuals=c.residuals if residuals is None else residuals)


def test_inconsistent_or_damaged_residual_only_files_are_refused():
    src = _source((1, 20, 24))
    x = src.pixels[0]
    lossless = gdncodec.compress(src, None, None, mode="lossless", lossy_layer="none")
    near = gdncodec.compress(src, None, None, mode="near-lossless", max_error=5, lossy_layer="none")
    c = container.read_container(lossless)
    head, stream = c.head, c.residuals[0]
    learned_stream = residual.encode(x, x // 2 * 2, 0).data  # coded against an x_hat
    cases = {
        "mode 'lossy' is invalid for a file without a lossy layer": _rewrite(lossless, dict(head, mode="lossy")),
        "does not fit mode": _rewrite(lossless, dict(head, max_error=2)),
        "exceeds HEAD max_error 4": _rewrite(near, dict(head, mode="near-lossless", max_error=4)),
        "not an 8-16-bit integer type": _rewrite(lossless, dict(head, dtype="<f4")),
        "HEAD is inconsistent": _rewrite(lossless, dict(head, dtype="nonsense")),
        "residual stream is for 20x24, expected \\(20, 25\\)": _rewrite(lossless, dict(head, cols=25)),
        "does not fit uint8": _rewrite(lossless, dict(head, dtype="|u1")),
        "coded with a lossy layer but decoded without one": _rewrite(lossless, residuals=[learned_stream]),
        "residual stream corrupt": _rewrite(lossless, residuals=[stream[:-8] + bytes(8)]),
        "truncated": _rewrite(lossless, residuals=[stream[:30]]),
    }
    for message, data in cases.items():
        with pytest.raises(MedcodecError, match=message) as info:
            gdncodec.decompress(data, None, None)
        assert "\n" not in str(info.value), message


def test_a_learned_file_still_needs_its_model():
    head = {"model": "gdn-hyperprior", "checkpoint_sha256": "0" * 64, "quality": 2, "mode": "lossy", "rows": 4,
            "cols": 4, "frames": 1, "bits_stored": 12, "signed": False, "tile": 256, "tiles": 1}
    data = container.write_container(head, [[b"", b""]])
    with pytest.raises(MedcodecError, match="needs its model \\(gdn-hyperprior q2\\), which was not loaded"):
        gdncodec.decompress(data, None, None)


def test_files_through_sources_never_ask_for_a_codec(tmp_path):
    mdc, back = tmp_path / "a.mdc", tmp_path / "a.dcm"
    r = sources.compress_file(MR, mdc, _no_codec, mode="near-lossless", max_error=3)  # default: no lossy layer
    assert r["mode"] == "near-lossless D=3 (residual only, no lossy layer)"
    out = sources.decompress_file(mdc, back, _no_codec)
    assert out["head"]["lossy_layer"] == "none"
    src, dst = pydicom.dcmread(MR), pydicom.dcmread(back)
    err = np.abs(dst.pixel_array.astype(np.int64) - src.pixel_array).max()
    assert 0 < err <= 3 and dst.LossyImageCompression == "01"
    assert str(dst.LossyImageCompressionMethod) == sources.METHOD_RESIDUAL_NEAR_LOSSLESS
    assert "(residual layer only), max abs error 3" in str(dst.DerivationDescription)
    assert dst.SOPInstanceUID != src.SOPInstanceUID
    with pytest.raises(MedcodecError, match="lossy mode needs the learned layer"):
        sources.compress_file(MR, tmp_path / "b.mdc", _no_codec, lossy_layer="none")
    assert not (tmp_path / "b.mdc").exists()


_NO_TORCH = """
import sys
for name in ("torch", "imagecodecs", "models", "pipelines"):
    sys.modules[name] = None  # any import of these raises ImportError
import numpy as np
from codec import sources
def no_codec(head):
    raise SystemExit("asked for a codec")
r = sources.decompress_file(sys.argv[1], None, no_codec)
print(r["head"]["mode"], r["pixels"].shape, int(r["pixels"].sum()))
"""


def test_decompress_needs_no_torch(tmp_path):
    """Decoding a residual-only file imports nothing of the host (torch, models, pipelines)."""
    mdc = tmp_path / "a.mdc"
    arr = (np.arange(600, dtype=np.int64).reshape(20, 30) * 37 % 4001).astype(np.uint16)
    np.save(tmp_path / "a.npy", arr)
    sources.compress_file(tmp_path / "a.npy", mdc, _no_codec, mode="lossless")
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, str(mdc)], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["lossless", "(20,", "30)", str(int(arr.sum()))]
