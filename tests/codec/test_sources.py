"""codec/sources.py: image files in and out, shared by the host CLI and the board app."""

from __future__ import annotations

import numpy as np
import pytest

from codec import sources
from codec.errors import MedcodecError
from tests.conftest import sample_files


def test_kinds_and_preamble(tmp_path):
    dcm = sample_files()[0]
    bare = tmp_path / "IM0001"
    bare.write_bytes(dcm.read_bytes())
    assert sources.has_preamble(bare) and not sources.has_preamble(tmp_path / "missing")
    assert [sources.kind_of(p) for p in (dcm, bare, tmp_path / "a.PNG", tmp_path / "a.npy")] == \
        ["dicom", "dicom", "png", "npy"]
    with pytest.raises(MedcodecError, match="unsupported input type"):
        sources.kind_of(tmp_path / "a.txt")


def test_npy_round_trip_and_bits(tmp_path):
    arr = (np.arange(12, dtype=np.int16).reshape(3, 4) - 6) * 100
    np.save(tmp_path / "a.npy", arr)
    src = sources.load_source(tmp_path / "a.npy")
    assert src.kind == "npy" and src.signed and src.bits_stored == sources.bits_for(arr) == 11
    out = sources.encode_output({"source": "npy"}, arr, None, 10)
    (tmp_path / "b.npy").write_bytes(out)
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), arr)


def test_png_needs_a_codec_from_the_caller(tmp_path):
    (tmp_path / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(MedcodecError, match="needs a PNG decoder"):
        sources.load_source(tmp_path / "a.png")
    grey = np.zeros((2, 3), np.uint8)
    src = sources.load_source(tmp_path / "a.png", png_decode=lambda data: grey[..., None])
    assert src.kind == "png" and src.pixels.shape == (2, 3) and src.bits_stored == 8
    with pytest.raises(MedcodecError, match="writing PNG needs an encoder"):
        sources.encode_output({"source": "png"}, grey, None, 1)
    assert sources.encode_output({"source": "png"}, grey, None, 1, png_encode=lambda a: b"P") == b"P"
