"""The residual layer (codec/residual.py): exact round trips, the near-lossless bound on adversarial
images, histogram packing, the target-PSNR search, and one-line errors for every damaged stream."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from codec import residual
from codec.dicom import read_dicom
from codec.errors import MedcodecError
from codec.residual import ResidualError
from tests.conftest import sample_files

I16, U16 = np.iinfo(np.int16), np.iinfo(np.uint16)


def _crop(path, rows=48, cols=64) -> np.ndarray:
    px = read_dicom(path).pixels
    r0, c0 = (px.shape[0] - rows) // 2, (px.shape[1] - cols) // 2
    return np.ascontiguousarray(px[r0:r0 + rows, c0:c0 + cols])


def _coarse(x: np.ndarray, step: int = 16) -> np.ndarray:
    """A stand-in for a lossy reconstruction: x rounded to a coarse grid (same dtype, in range)."""
    info = np.iinfo(x.dtype)
    return np.clip((x.astype(np.int64) // step) * step + step // 2, info.min, info.max).astype(x.dtype)


def _round_trip(x, x_hat=None, d=0, **kw) -> tuple[residual.Encoded, np.ndarray]:
    enc = residual.encode(x, x_hat, d, **kw)
    out = residual.decode(enc.data, x_hat, shape=x.shape, dtype=x.dtype)
    assert out.dtype == x.dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, enc.recon)
    assert int(np.abs(out.astype(np.int64) - x).max()) <= d
    return enc, out


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: p.stem)
@pytest.mark.parametrize("with_xhat", [False, True], ids=["residual-only", "with-xhat"])
def test_lossless_round_trip_on_sample_crops(path, with_xhat):
    x = _crop(path)
    x_hat = _coarse(x) if with_xhat else None
    enc, out = _round_trip(x, x_hat, 0)
    np.testing.assert_array_equal(out, x)
    h = enc.header
    assert (h.rows, h.cols, h.max_error, h.has_xhat) == (48, 64, 0, with_xhat)
    assert (h.lo, h.hi) == (int(x.min()), int(x.max()))
    assert len(enc.data) * 8 / x.size < read_dicom(path).bits_stored  # it compresses


def _adversarial() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    check = (np.indices((9, 11)).sum(axis=0) % 2).astype(bool)
    edges = np.zeros((17, 23), dtype=np.int64)
    edges[:, 11:] = 4000
    edges[8:, :] = -3000
    return {
        "noise_int16": rng.integers(I16.min, I16.max, (20, 24), endpoint=True).astype(np.int16),
        "noise_uint16": rng.integers(0, U16.max, (19, 21), endpoint=True).astype(np.uint16),
        "checker_int16_extremes": np.where(check, I16.min, I16.max).astype(np.int16),
        "checker_uint16_extremes": np.where(check, 0, U16.max).astype(np.uint16),
        "edges_int16": edges.astype(np.int16),
        "constant_int16_min": np.full((6, 5), I16.min, dtype=np.int16),
        "constant_uint16_max": np.full((5, 6), U16.max, dtype=np.uint16),
        "one_pixel_int16_min": np.array([[I16.min]], dtype=np.int16),
        "one_pixel_uint16_max": np.array([[U16.max]], dtype=np.uint16),
        "row_1x9": rng.integers(0, 1000, (1, 9)).astype(np.uint16),
        "column_9x1": rng.integers(-500, 500, (9, 1)).astype(np.int16),
        "odd_13x7_uint8": rng.integers(0, 255, (13, 7), endpoint=True).astype(np.uint8),
        "int8_extremes": np.where(check, -128, 127).astype(np.int8),
    }


ADVERSARIAL = _adversarial()


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
@pytest.mark.parametrize("d", [0, 1, 3, 1000, residual.MAX_ERROR_LIMIT])
def test_max_error_bound_holds_on_adversarial_images(name, d):
    x = ADVERSARIAL[name]
    info = np.iinfo(x.dtype)
    rng = np.random.default_rng(d)
    hats = [None, rng.integers(info.min, info.max, x.shape, endpoint=True).astype(x.dtype),
            np.full(x.shape, info.max if x.min() < 0 or x.min() == 0 else info.min, dtype=x.dtype)]
    for x_hat in hats:
        enc, out = _round_trip(x, x_hat, d)
        if d == 0:
            np.testing.assert_array_equal(out, x)
        assert int(out.min()) >= int(x.min()) and int(out.max()) <= int(x.max())  # clipped to the range
        assert not enc.header.packed or d == 0


def test_encoding_is_deterministic_and_decodes_to_the_reported_reconstruction():
    x = _crop(sample_files()[0])
    a, b = residual.encode(x, None, 2), residual.encode(x.copy(), None, 2)
    assert a.data == b.data
    assert residual.read_header(a.data) == a.header


def test_near_lossless_uses_fewer_bits_as_the_bound_grows():
    x = _crop(sample_files()[0], 64, 64)
    sizes = [len(residual.encode(x, None, d).data) for d in (0, 1, 2, 4, 8)]
    assert sizes == sorted(sizes, reverse=True)


# --------------------------------------------------------------------------- histogram packing


def test_histogram_packing_round_trip_on_a_sparse_image():
    rng = np.random.default_rng(1)
    smooth = np.cumsum(rng.integers(-2, 3, (40, 40)), axis=1) + 300
    x = (smooth * 3 + 7).astype(np.uint16)  # every third value: a third of the range is used
    enc, out = _round_trip(x, None, 0)
    assert enc.header.packed
    np.testing.assert_array_equal(out, x)
    plain = residual.encode(x, None, 0, pack=False)
    assert not plain.header.packed and len(enc.data) < len(plain.data)
    enc_h, out_h = _round_trip(x, _coarse(x, 8), 0)  # x_hat mapped to ranks with the same table
    assert enc_h.header.packed
    np.testing.assert_array_equal(out_h, x)


def test_packing_is_never_used_near_losslessly():
    x = (np.arange(30 * 30).reshape(30, 30) % 50 * 5).astype(np.int16)
    assert not residual.encode(x, None, 1).header.packed
    with pytest.raises(ResidualError, match="lossless coding only"):
        residual.encode(x, None, 1, pack=True)


def test_forced_packing_of_a_dense_image_is_a_no_op():
    x = np.arange(64, dtype=np.uint16).reshape(8, 8)
    assert not residual.encode(x, None, 0, pack=True).header.packed


# --------------------------------------------------------------------------- target PSNR


def test_target_psnr_picks_the_largest_bound_that_meets_it():
    x = _crop(sample_files()[0], 64, 64)
    bits = 16
    target = 75.0
    enc, p = residual.encode_for_psnr(x, target, bits)
    d = enc.header.max_error
    assert d >= 1 and p >= target
    assert p == residual.psnr_for(x, residual.decode(enc.data, shape=x.shape, dtype=x.dtype), bits)
    assert residual.psnr_for(x, residual.encode(x, None, d + 1).recon, bits) < target


def test_an_unreachable_target_psnr_gives_lossless():
    x = _crop(sample_files()[0], 32, 32)
    enc, p = residual.encode_for_psnr(x, 200.0, 16)
    assert enc.header.max_error == 0 and p == math.inf


@pytest.mark.parametrize("bad", [0, -3, float("nan"), float("inf"), "60", True])
def test_invalid_target_psnr_is_refused(bad):
    with pytest.raises(ResidualError, match="target PSNR"):
        residual.encode_for_psnr(np.zeros((4, 4), np.uint16), bad, 12)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [-1, residual.MAX_ERROR_LIMIT + 1, 1.0, True, None])
def test_invalid_max_error_is_refused(bad):
    with pytest.raises(ResidualError, match="max error"):
        residual.encode(np.zeros((4, 4), np.uint16), None, bad)


@pytest.mark.parametrize("x", [np.zeros((4, 4), np.float32), np.zeros((2, 4, 4), np.uint16),
                               np.zeros((0, 4), np.uint16), np.zeros((4, 4), np.int32)],
                         ids=["float", "3d", "empty", "int32"])
def test_unsupported_arrays_are_refused(x):
    with pytest.raises(ResidualError):
        residual.encode(x)


def test_x_hat_must_match_the_frame():
    x = np.zeros((4, 4), np.uint16)
    with pytest.raises(ResidualError, match="does not match"):
        residual.encode(x, np.zeros((4, 5), np.uint16))
    with pytest.raises(ResidualError, match="does not match"):
        residual.encode(x, np.zeros((4, 4), np.int16))


def _one_line_error(data, x_hat=None, shape=(12, 10), dtype=np.int16) -> str:
    with pytest.raises(ResidualError) as info:
        residual.decode(data, x_hat, shape=shape, dtype=dtype)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def coded():
    rng = np.random.default_rng(3)
    x = (np.cumsum(rng.integers(-40, 41, (12, 10)), axis=0) - 100).astype(np.int16)
    x_hat = _coarse(x, 32)
    return x, x_hat, residual.encode(x, x_hat, 0).data


def test_a_different_x_hat_is_refused_by_its_crc(coded):
    x, x_hat, data = coded
    other = x_hat.copy()
    other[3, 4] += 1
    assert "lossy layer mismatch" in _one_line_error(data, other)
    assert "coded with a lossy layer but decoded without" in _one_line_error(data, None)


def test_decoding_with_or_without_a_lossy_layer_must_match_the_stream(coded):
    x, x_hat, _ = coded
    msg = _one_line_error(residual.encode(x).data, x_hat)
    assert "without a lossy layer but decoded with" in msg


def test_wrong_shape_or_dtype_is_refused(coded):
    x, x_hat, data = coded
    assert "12x10" in _one_line_error(data, None, shape=(12, 11))
    tiny = residual.encode(np.array([[-5, 300]], np.int16)).data
    assert "does not fit" in _one_line_error(tiny, None, shape=(1, 2), dtype=np.uint8)
    with pytest.raises(ResidualError, match="needs x_hat, or shape and dtype"):
        residual.decode(residual.encode(x).data)


def test_every_truncation_is_refused(coded):
    x, x_hat, data = coded
    for n in range(len(data)):
        _one_line_error(data[:n], x_hat)
    _one_line_error(data + b"\0", x_hat)
    _one_line_error(data + b"\0\0\0\0", x_hat)


def test_every_bit_flip_in_the_header_and_many_in_the_body_are_refused(coded):
    x, x_hat, data = coded
    header = residual._HEAD.size + 4
    rnd = random.Random(6)
    positions = list(range(8 * header)) + rnd.sample(range(8 * header, 8 * len(data)), 150)
    for bit in positions:
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        _one_line_error(bytes(bad), x_hat)


def test_damage_in_a_packed_stream_is_refused_or_harmless():
    """A flip in the packing table is refused, except in the deflate stream's padding bits, which
    decode to the same table: the output is then still exact (the reconstruction CRC says so)."""
    x = (np.arange(20 * 20).reshape(20, 20) % 37 * 4).astype(np.uint16)
    enc = residual.encode(x, None, 0, pack=True)
    assert enc.header.packed
    refused = 0
    for bit in range(8 * residual._HEAD.size, 8 * min(len(enc.data), residual._HEAD.size + 40)):
        bad = bytearray(enc.data)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            out = residual.decode(bytes(bad), None, shape=x.shape, dtype=x.dtype)
        except ResidualError as exc:
            assert "\n" not in str(exc)
            refused += 1
        else:
            np.testing.assert_array_equal(out, x)
    assert refused >= 300


@pytest.mark.parametrize("junk", [b"", b"MDRS", b"XXXX" + bytes(40), bytes(range(60))])
def test_garbage_is_refused(junk):
    _one_line_error(junk)


def test_errors_are_medcodec_errors():
    assert issubclass(ResidualError, MedcodecError)
    with pytest.raises(TypeError):
        residual.decode("text", shape=(1, 1), dtype=np.uint8)
