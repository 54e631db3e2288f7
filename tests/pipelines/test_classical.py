"""Tests of pipelines.classical: bit-exact lossless round trips at every bit depth,
the near-lossless bound, the signed offset and its side bytes, rate targeting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipelines import classical as C
from tests.conftest import SAMPLES

LOSSLESS = [c.name for c in C.available_codecs("lossless")]
LOSSY = [c.name for c in C.available_codecs("lossy")]


def _phantom(rows, cols, lo, hi, seed, dtype):
    """Smooth anatomy-like structure + noise + a padding border, spanning [lo, hi]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    img = 0.5 + 0.3 * np.sin(xx / 7.0) * np.cos(yy / 11.0) + 0.1 * ((xx // 16 + yy // 12) % 2)
    img += rng.normal(0, 0.02, (rows, cols))
    img = lo + np.clip(img, 0, 1) * (hi - lo)
    img[:3, :] = lo  # padding outside the field of view
    img[-1, -1] = hi
    return np.round(img).astype(dtype)


# name -> (pixels, bits_stored, signed)
CASES = {
    "int16_ct_negative": (_phantom(70, 90, -2048, 3071, 1, np.int16), 16, True),
    "int16_full_range": (_phantom(40, 50, -32768, 32767, 2, np.int16), 16, True),
    "int16_small_range": (_phantom(40, 50, -20, 100, 3, np.int16), 16, True),
    "uint16_12bit": (_phantom(70, 90, 0, 4095, 4, np.uint16), 12, False),
    "uint16_10bit": (_phantom(64, 64, 0, 1023, 5, np.uint16), 10, False),
    "uint16_15bit": (_phantom(64, 64, 803, 26512, 6, np.uint16), 15, False),
    "uint16_16bit": (_phantom(33, 47, 0, 65535, 7, np.uint16), 16, False),
    "uint8": (_phantom(64, 80, 0, 255, 8, np.uint8), 8, False),
    "uint16_constant": (np.full((32, 32), 7, np.uint16), 12, False),
    "int8": (_phantom(40, 40, -100, 100, 9, np.int8), 8, True),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", LOSSLESS)
def test_lossless_round_trip_is_bit_exact(name, case):
    pixels, bits, signed = CASES[case]
    enc = C.encode_image(name, pixels, bits, signed)
    dec = C.decode_image(name, enc)
    assert dec.dtype == pixels.dtype and dec.shape == pixels.shape
    np.testing.assert_array_equal(dec, pixels)
    assert enc.n_bytes == sum(len(s) for s in enc.streams) + enc.side_bytes
    assert enc.bpp == pytest.approx(8 * enc.n_bytes / pixels.size)


def test_expected_codecs_are_registered():
    assert {"jpegls", "j2k", "jxl", "deflate"} <= set(LOSSLESS)
    assert set(LOSSY) == {"j2k-lossy", "jxl-lossy"}
    assert [c.name for c in C.available_codecs("near")] == ["jpegls-near"]
    for c in C.CODECS.values():
        assert c.kind in ("lossless", "near", "lossy")
        assert (c.rate is not None) == (c.kind == "lossy")


def test_signed_offset_precision_and_side_bytes():
    pixels, bits, signed = CASES["int16_ct_negative"]
    coded, offset, prec = C.to_coded(pixels, bits, signed)
    assert offset == -2048 and coded.dtype == np.uint16 and coded.min() == 0
    assert prec == (3071 + 2048).bit_length() == 13
    np.testing.assert_array_equal(C.from_coded(coded, offset, pixels.dtype), pixels)
    enc = C.encode_image("jpegls", pixels, bits, signed)
    assert enc.side_bytes == 2 and enc.offsets == [-2048] and enc.precisions == [13]
    # unsigned: no offset, BitsStored is the precision; small ranges go to uint8
    coded, offset, prec = C.to_coded(CASES["uint16_12bit"][0], 12, False)
    assert (offset, prec, coded.dtype) == (0, 12, np.uint16)
    assert C.encode_image("jpegls", CASES["uint16_12bit"][0], 12, False).side_bytes == 0
    coded, offset, prec = C.to_coded(CASES["int16_small_range"][0], 16, True)
    assert (offset, prec, coded.dtype) == (-20, 7, np.uint8)
    # deflate codes the raw stored bytes: no offset, no side bytes
    assert C.encode_image("deflate", pixels, bits, signed).side_bytes == 0


def test_unsigned_values_above_bits_stored_stay_exact():
    pixels = _phantom(40, 40, 0, 5000, 10, np.uint16)  # claims 12 bits, uses 13
    assert C.to_coded(pixels, 12, False)[2] == 13
    for name in LOSSLESS:
        np.testing.assert_array_equal(C.decode_image(name, C.encode_image(name, pixels, 12, False)), pixels)


def test_more_than_16_bits_is_refused():
    with pytest.raises(ValueError, match="not supported"):
        C.to_coded(np.array([[0, 70000]], dtype=np.int32), 32, True)


def test_multiframe_is_coded_per_frame_and_bytes_are_summed():
    frames = np.stack([CASES["int16_ct_negative"][0], CASES["int16_ct_negative"][0][::-1] // 2])
    enc = C.encode_image("j2k", frames, 16, True)
    assert len(enc.streams) == 2 and enc.side_bytes == 4
    assert enc.offsets == [int(frames[0].min()), int(frames[1].min())]
    assert enc.n_bytes == sum(map(len, enc.streams)) + 4
    assert enc.bpp == pytest.approx(8 * enc.n_bytes / frames.size)
    np.testing.assert_array_equal(C.decode_image("j2k", enc), frames)


@pytest.mark.parametrize("case", ["int16_ct_negative", "uint16_12bit", "uint16_10bit", "uint8"])
def test_near_lossless_error_bound_holds(case):
    pixels, bits, signed = CASES[case]
    sizes = []
    for near in (1, 2, 4):
        enc = C.encode_image("jpegls-near", pixels, bits, signed, near=near)
        dec = C.decode_image("jpegls-near", enc)
        err = np.abs(dec.astype(np.int64) - pixels.astype(np.int64)).max()
        assert 0 < err <= near
        sizes.append(enc.n_bytes)
    assert sizes[0] > sizes[1] > sizes[2]  # larger NEAR, fewer bytes


def test_deflate_decode_needs_shape_and_dtype():
    pixels = CASES["uint16_12bit"][0]
    codec = C.get_codec("deflate")
    data = codec.encode(pixels)
    with pytest.raises(ValueError, match="shape and dtype"):
        codec.decode(data)
    np.testing.assert_array_equal(codec.decode(data, shape=pixels.shape, dtype=pixels.dtype), pixels)


def _sample(name):
    from codec.dicom import read_dicom

    img = read_dicom(SAMPLES / name)
    return img.pixels, img.bits_stored, img.signed


@pytest.mark.parametrize("sample", ["ct/ct_unsigned12_tcia_lungdx.dcm", "ct/ct_signed_tcia_covid19.dcm"])
@pytest.mark.parametrize("name", LOSSY)
def test_rate_targeting_lands_within_3_percent_on_a_real_sample(name, sample):
    pixels, bits, signed = _sample(sample)
    history: dict = {}
    for target in (0.5, 1.0):
        res = C.encode_at_bpp(name, pixels, target, 0.03, bits_stored=bits, signed=signed, history=history)
        assert res.within_tol, (target, res.trace)
        assert abs(res.encoded.n_bytes * 8 / pixels.size / target - 1) <= 0.03
        assert res.bpp == pytest.approx(res.encoded.bpp)
        assert res.param == pytest.approx(res.trace[-1][0] if res.evaluations else res.param)
        dec = C.decode_image(name, res.encoded)
        assert dec.dtype == pixels.dtype and dec.shape == pixels.shape
        err = dec.astype(np.int64) - pixels.astype(np.int64)
        assert 0 < np.abs(err).max() < 2**bits  # lossy, but the right image


def test_unreachable_target_returns_the_closest_and_flags_it():
    pixels, bits, signed = CASES["uint16_10bit"]
    lossless_bpp = C.encode_image("j2k", pixels, bits, signed).bpp
    res = C.encode_at_bpp("j2k-lossy", pixels, lossless_bpp * 3, bits_stored=bits, signed=signed)
    assert not res.within_tol
    assert res.bpp == max(b for _, b in res.trace)  # the closest one it found
    res = C.encode_at_bpp("jxl-lossy", pixels, 0.001, bits_stored=bits, signed=signed, max_evals=4)
    assert not res.within_tol and res.evaluations <= 4


def test_encode_at_bpp_rejects_non_lossy_codecs():
    with pytest.raises(ValueError, match="no rate control"):
        C.encode_at_bpp("jpegls", CASES["uint8"][0], 1.0)


def test_a_corrupting_decoder_is_visible(monkeypatch):
    """The exactness check in the runner relies on decode_image returning what the codec decoded."""
    bad = dataclasses.replace(C.get_codec("j2k"), _decode=lambda data: C._j2k_decode(data) ^ 1)
    pixels, bits, signed = CASES["uint16_12bit"]
    dec = C.decode_image(bad, C.encode_image(bad, pixels, bits, signed))
    assert not np.array_equal(dec, pixels)


def test_codec_versions_names_the_libraries():
    v = C.codec_versions()
    for key in ("imagecodecs", "openjpeg", "charls", "libjxl", "openjph", "libdeflate"):
        assert v[key], key
