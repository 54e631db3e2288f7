"""Tests for codec.dicom: reading stored pixels, split/merge round trips, lossy
marking, and one-line errors for bad input.

The round trip runs on every bundled sample and on every file of the shared
data set (those skip when it is absent). Everything else uses the bundled
samples or small synthetic files built in ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from codec.dicom import (
    DicomImage,
    LossyInfo,
    merge_dicom,
    read_dicom,
    split_dicom,
    write_dicom,
)
from codec.errors import DicomError, MedcodecError, OutputExistsError
from tests.conftest import ROOT, SAMPLES, SHARED_DATA, sample_files, shared_files

CT_SIGNED = SAMPLES / "ct" / "ct_signed_tcia_covid19.dcm"  # explicit VR, int16
CT_IMPLICIT = SAMPLES / "ct" / "ct_unsigned12_tcia_lungdx.dcm"  # implicit VR, 12-bit uint16
MR_IMPLICIT = SAMPLES / "mr" / "mr_t1w_studyforrest.dcm"
CR_MONO1 = SAMPLES / "xray" / "cr_mono1_10bit_chest.dcm"  # MONOCHROME1, has group lengths
MG1_J2K = SHARED_DATA / "mammo" / "nema_wg04" / "MG1_J2KI.dcm"

# Real files carry values pydicom finds too long (e.g. SH of 22 characters) when
# the comparisons below convert them; that is the data, not a failure.
pytestmark = pytest.mark.filterwarnings("ignore:The value length:UserWarning")

PIXEL_DATA = 0x7FE00010
LOSSY_TAGS = {0x00282110, 0x00282112, 0x00282114}
CHANGED_BY_LOSSY = LOSSY_TAGS | {0x00080018, 0x00082112}


def _rel(path: Path) -> str:
    for base in (ROOT, SHARED_DATA):
        try:
            return str(path.relative_to(base))
        except ValueError:
            pass
    return str(path)


def _shared_params():
    files = shared_files()
    if not files:
        return [
            pytest.param(
                None,
                id="shared",
                marks=pytest.mark.skip(reason=f"shared data set not found at {SHARED_DATA}"),
            )
        ]
    return [pytest.param(f, id=f"shared/{_rel(f)}") for f in files]


ALL_FILES = [pytest.param(f, id=_rel(f)) for f in sample_files()] + _shared_params()


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _reread(data: bytes) -> pydicom.FileDataset:
    return pydicom.dcmread(io.BytesIO(data))


def _one_line_error(excinfo, path) -> str:
    """Assert the DicomError message is one line naming the file; return the reason."""
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith(f"{path}: "), message
    assert excinfo.value.path == str(path)
    return message[len(str(path)) + 2 :]


# --------------------------------------------------------------------------- #
# Element-by-element comparison
# --------------------------------------------------------------------------- #


def _raw_equal(a: bytes, b: bytes) -> bool:
    """Raw values must match byte for byte, except that an odd-length source
    value may have gained one padding byte."""
    return a == b or (len(a) % 2 == 1 and len(b) == len(a) + 1 and b[:-1] == a and b[-1:] in (b" ", b"\x00"))


def assert_same_elements(a: Dataset, b: Dataset, where: str = "", skip=frozenset()) -> None:
    """Every element of ``a`` is in ``b`` with the same tag, VR and value
    (recursively); raw bytes compared where both sides are still raw. Group
    lengths and the tags in ``skip`` are not compared."""
    tags_a = {t for t in a.keys() if t.element != 0 and t not in skip}
    tags_b = {t for t in b.keys() if t.element != 0 and t not in skip}
    assert tags_a == tags_b, f"{where}: missing {sorted(tags_a - tags_b)}, extra {sorted(tags_b - tags_a)}"
    for tag in sorted(tags_a):
        raw_a, raw_b = a.get_item(tag), b.get_item(tag)  # before pydicom converts them
        elem_a, elem_b = a[tag], b[tag]
        here = f"{where}{tag}"
        assert elem_a.VR == elem_b.VR, f"{here}: VR {elem_a.VR} != {elem_b.VR}"
        if elem_a.VR == "SQ":
            assert len(elem_a.value) == len(elem_b.value), f"{here}: item count"
            for i, (item_a, item_b) in enumerate(zip(elem_a.value, elem_b.value, strict=True)):
                assert_same_elements(item_a, item_b, f"{here}[{i}].")
            continue
        assert elem_a.value == elem_b.value, f"{here}: {elem_a.value!r:.80} != {elem_b.value!r:.80}"
        if (
            isinstance(raw_a, RawDataElement)
            and isinstance(raw_b, RawDataElement)
            and raw_a.value is not None
        ):
            assert _raw_equal(raw_a.value, raw_b.value), (
                f"{here}: raw {raw_a.value[:40]!r} != {raw_b.value[:40]!r}"
            )


def assert_same_file_meta(a: Dataset, b: Dataset, skip=frozenset()) -> None:
    ignore = {0x00020000, 0x00020010} | set(skip)
    meta_a = {e.tag: (e.VR, e.value) for e in a.file_meta if e.tag not in ignore}
    meta_b = {e.tag: (e.VR, e.value) for e in b.file_meta if e.tag not in ignore}
    assert meta_a == meta_b


def _file_meta_end(data: bytes) -> int:
    """Walk the explicit VR LE group 0002 elements; return where they end."""
    pos = 132
    while int.from_bytes(data[pos : pos + 2], "little") == 0x0002:
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR"):
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return pos


def assert_valid_output(out: bytes) -> pydicom.FileDataset:
    """The rebuilt file: zero preamble, Explicit VR LE, native OW/OB pixels,
    consistent pixel module, correct file meta group length, no other group
    lengths, no ambiguous VRs."""
    assert out[:128] == b"\x00" * 128 and out[128:132] == b"DICM"
    ds = _reread(out)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not ds.is_implicit_VR and ds.is_little_endian
    assert _file_meta_end(out) == 132 + 12 + ds.file_meta.FileMetaInformationGroupLength
    elem = ds["PixelData"]
    assert not elem.is_undefined_length
    assert elem.VR == ("OW" if ds.BitsAllocated == 16 else "OB")
    assert len(elem.value) % 2 == 0
    assert ds.HighBit == ds.BitsStored - 1
    assert ds.BitsAllocated in (8, 16) and ds.PixelRepresentation in (0, 1)
    for e in ds.iterall():
        assert e.tag.element != 0, f"group length {e.tag} written"
        assert e.VR and len(e.VR) == 2, f"{e.tag} has VR {e.VR!r}"
    return ds


# --------------------------------------------------------------------------- #
# Lossless round trip on every real file
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("path", ALL_FILES)
def test_lossless_round_trip(path, tmp_path):
    before = _sha(path)
    meta, image = split_dicom(path)
    assert isinstance(meta, bytes) and zlib.decompress(meta)[128:132] == b"DICM"
    out = merge_dicom(meta, image.pixels)
    assert _sha(path) == before, "the input file was modified"

    original = pydicom.dcmread(path)
    rebuilt = assert_valid_output(out)
    assert_same_elements(original, rebuilt, skip={PIXEL_DATA})
    assert_same_file_meta(original, rebuilt)

    # identical pixels: rebuilt file (pydicom and read_dicom) == read_dicom(source) == pydicom(source)
    assert np.array_equal(rebuilt.pixel_array, image.pixels)
    assert np.array_equal(original.pixel_array, image.pixels)
    written = write_dicom(tmp_path / "out.dcm", out)
    again = read_dicom(written)
    assert again.pixels.dtype == image.pixels.dtype
    assert np.array_equal(again.pixels, image.pixels)
    assert (again.bits_stored, again.signed, again.photometric, again.modality) == (
        image.bits_stored,
        image.signed,
        image.photometric,
        image.modality,
    )
    # splitting the rebuilt file gives the same file again
    meta2, image2 = split_dicom(written)
    assert merge_dicom(meta2, image2.pixels) == out
    assert _sha(path) == before


def test_read_dicom_fields_signed_ct():
    image = read_dicom(CT_SIGNED)
    assert isinstance(image, DicomImage)
    assert image.path == str(CT_SIGNED)
    assert image.pixels.dtype == np.int16 and image.pixels.shape == (512, 512)
    assert image.pixels.flags.c_contiguous and image.pixels.flags.writeable
    assert image.signed is True and image.bits_stored == 16
    assert image.photometric == "MONOCHROME2" and image.modality == "CT"
    assert (image.rows, image.cols, image.frames) == (512, 512, 1)
    lo, hi = image.value_range
    assert type(lo) is int and type(hi) is int and lo < 0 < hi
    assert (lo, hi) == (int(image.pixels.min()), int(image.pixels.max()))
    assert len(image.frame_list()) == 1 and image.frame_list()[0].shape == (512, 512)
    assert "PixelData" not in image.dataset
    assert image.dataset.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert image.dataset.RescaleIntercept is not None  # metadata kept, no rescale applied


def test_stored_values_are_not_rescaled_or_inverted():
    image = read_dicom(CR_MONO1)
    ds = pydicom.dcmread(CR_MONO1)
    assert image.photometric == "MONOCHROME1"
    raw = np.frombuffer(ds.PixelData, dtype="<u2").reshape(ds.Rows, ds.Columns)
    assert np.array_equal(image.pixels, raw)  # stored values, not inverted
    meta, _ = split_dicom(CR_MONO1)
    rebuilt = _reread(merge_dicom(meta, image.pixels))
    assert rebuilt.PhotometricInterpretation == "MONOCHROME1"
    assert rebuilt.PixelData == ds.PixelData


def test_signed_values_preserved():
    meta, image = split_dicom(CT_SIGNED)
    assert image.pixels.min() < 0
    rebuilt = _reread(merge_dicom(meta, image.pixels))
    assert rebuilt.PixelRepresentation == 1
    assert rebuilt.pixel_array.dtype == np.int16
    assert np.array_equal(rebuilt.pixel_array, image.pixels)


def test_implicit_vr_source_gets_explicit_vrs():
    original = pydicom.dcmread(CT_IMPLICIT)
    assert original.is_implicit_VR
    meta, image = split_dicom(CT_IMPLICIT)
    assert image.pixels.dtype == np.uint16 and image.bits_stored == 12 and not image.signed
    rebuilt = assert_valid_output(merge_dicom(meta, image.pixels))
    assert not rebuilt.is_implicit_VR
    private = [e for e in rebuilt if e.tag.is_private]
    assert private, "private elements must be kept"
    assert_same_elements(original, rebuilt, skip={PIXEL_DATA})


def test_group_lengths_are_dropped_and_file_meta_length_recomputed():
    original = pydicom.dcmread(CR_MONO1)
    assert any(e.tag.element == 0 for e in original), "sample should carry group lengths"
    meta, image = split_dicom(CR_MONO1)
    assert_valid_output(merge_dicom(meta, image.pixels))  # checks both


# --------------------------------------------------------------------------- #
# Synthetic files
# --------------------------------------------------------------------------- #


def make_dataset(
    shape=(16, 12),
    bits_allocated=16,
    bits_stored=12,
    signed=False,
    photometric="MONOCHROME2",
    pixels: np.ndarray | None = None,
    seed=0,
) -> Dataset:
    """A small valid secondary-capture-like dataset with native pixels."""
    frames = shape[0] if len(shape) == 3 else 1
    rows, cols = shape[-2:]
    if pixels is None:
        rng = np.random.default_rng(seed)
        lo, hi = (
            (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1)
            if signed
            else (0, (1 << bits_stored) - 1)
        )
        dtype = f"{'i' if signed else 'u'}{bits_allocated // 8}"
        pixels = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.PatientName = "Test^Synthetic"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if bits_allocated == 16 else "OB"
    return ds


def save(ds: Dataset, path: Path, **kwargs) -> Path:
    ds.save_as(path, enforce_file_format=kwargs.pop("enforce_file_format", True), **kwargs)
    return path


@pytest.mark.parametrize(
    "bits_allocated,bits_stored,signed,shape",
    [
        (8, 8, False, (5, 3)),  # odd byte count: OB padded
        (8, 8, True, (7, 9)),
        (16, 16, False, (16, 12)),
        (16, 12, True, (16, 12)),
        (16, 9, False, (3, 10, 6)),  # multi-frame
        (16, 15, True, (2, 4, 5)),
    ],
)
def test_synthetic_round_trip(tmp_path, bits_allocated, bits_stored, signed, shape):
    ds = make_dataset(shape, bits_allocated, bits_stored, signed)
    src = save(ds, tmp_path / "in.dcm")
    meta, image = split_dicom(src)
    expected = np.frombuffer(ds.PixelData, dtype=f"<{'i' if signed else 'u'}{bits_allocated // 8}").reshape(
        shape
    )
    assert image.pixels.dtype == expected.dtype.newbyteorder("=")
    assert np.array_equal(image.pixels, expected)
    assert image.frames == (shape[0] if len(shape) == 3 else 1)
    assert len(image.frame_list()) == image.frames
    assert all(f.shape == shape[-2:] for f in image.frame_list())
    out = merge_dicom(meta, image.pixels)
    rebuilt = assert_valid_output(out)
    assert_same_elements(pydicom.dcmread(src), rebuilt, skip={PIXEL_DATA})
    assert np.array_equal(read_dicom(write_dicom(tmp_path / "out.dcm", out)).pixels, expected)
    if bits_allocated == 8 and expected.size % 2:
        assert len(rebuilt.PixelData) == expected.size + 1


def test_bits_above_bits_stored_are_discarded(tmp_path):
    # 12-bit signed stored with zero high bits, and unsigned with overlay bits set
    values = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    stored = (values.view(np.uint16) & 0x0FFF).astype(np.uint16)
    ds = make_dataset((1, 4), 16, 12, signed=True, pixels=stored.view(np.int16))
    image = read_dicom(save(ds, tmp_path / "signed.dcm"))
    assert np.array_equal(image.pixels, values)
    noisy = np.array([[0xF000 | 5, 0x1000 | 4095]], dtype=np.uint16)
    ds = make_dataset((1, 2), 16, 12, signed=False, pixels=noisy)
    image = read_dicom(save(ds, tmp_path / "overlay.dcm"))
    assert image.pixels.tolist() == [[5, 4095]]


def test_odd_length_values_are_padded(tmp_path):
    ds = make_dataset()
    ds.StudyDescription = "ABC"  # LO, written padded as "ABC "
    ds.StudyInstanceUID = "1.2.3"  # UI, written padded as "1.2.3\0"
    src = save(ds, tmp_path / "odd.dcm")
    data = src.read_bytes()
    for old, new in ((b"LO\x04\x00ABC ", b"LO\x03\x00ABC"), (b"UI\x06\x001.2.3\x00", b"UI\x05\x001.2.3")):
        assert data.count(old) == 1
        data = data.replace(old, new)
    src.write_bytes(data)
    original = pydicom.dcmread(src)
    assert original.get_item(0x00081030).length == 3
    meta, image = split_dicom(src)
    out = merge_dicom(meta, image.pixels)
    raw = _reread(out)
    assert raw.get_item(0x00081030).value == b"ABC "
    assert raw.get_item(0x0020000D).value == b"1.2.3\x00"
    rebuilt = assert_valid_output(out)
    assert rebuilt.StudyDescription == "ABC" and rebuilt.StudyInstanceUID == "1.2.3"
    assert_same_elements(original, rebuilt, skip={PIXEL_DATA})


def test_preamble_is_zeroed(tmp_path):
    ds = make_dataset()
    ds.preamble = b"II*\x00\x4a\x18\x08\x00" + b"\x00" * 120  # a TIFF header, as in the NEMA files
    src = save(ds, tmp_path / "tiff.dcm")
    assert src.read_bytes()[:4] == b"II*\x00"
    meta, image = split_dicom(src)
    out = merge_dicom(meta, image.pixels)
    assert out[:128] == b"\x00" * 128


def test_dataset_without_preamble_or_file_meta(tmp_path):
    ds = make_dataset()
    del ds.file_meta
    src = tmp_path / "raw.dcm"
    pydicom.dcmwrite(src, ds, implicit_vr=True, little_endian=True)
    assert src.read_bytes()[:2] == b"\x08\x00"
    meta, image = split_dicom(src)
    assert image.dataset.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    rebuilt = assert_valid_output(merge_dicom(meta, image.pixels))
    assert rebuilt.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert rebuilt.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert_same_elements(pydicom.dcmread(src, force=True), rebuilt, skip={PIXEL_DATA})
    assert np.array_equal(rebuilt.pixel_array, image.pixels)


def test_deflated_source(tmp_path):
    ds = make_dataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    src = save(ds, tmp_path / "deflated.dcm")
    meta, image = split_dicom(src)
    rebuilt = assert_valid_output(merge_dicom(meta, image.pixels))
    assert_same_elements(pydicom.dcmread(src), rebuilt, skip={PIXEL_DATA})
    assert np.array_equal(rebuilt.pixel_array, make_dataset().pixel_array)


def test_big_endian_source(tmp_path):
    ds = make_dataset()
    expected = ds.pixel_array.copy()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = expected.astype(">u2").tobytes()
    ds.add_new(0x00291000 | 0x10, "LO", "MEDCODEC TEST")
    ds.add_new(0x00291001, "OW", np.array([1, 2, 0x1234], dtype=">u2").tobytes())
    src = save(ds, tmp_path / "be.dcm")
    meta, image = split_dicom(src)
    assert np.array_equal(image.pixels, expected)
    rebuilt = assert_valid_output(merge_dicom(meta, image.pixels))
    assert np.array_equal(rebuilt.pixel_array, expected)
    assert (rebuilt.Rows, rebuilt.Columns, rebuilt.BitsStored) == (16, 12, 12)
    assert rebuilt[0x00291001].value == np.array([1, 2, 0x1234], dtype="<u2").tobytes()


def _rle_multiframe(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """Three-frame RLE file with an Extended Offset Table."""
    ds = make_dataset((3, 8, 6), 16, 12)
    expected = ds.pixel_array.copy()
    ds.compress(RLELossless, encapsulate_ext=True, generate_instance_uid=False)
    assert "ExtendedOffsetTable" in ds
    return save(ds, tmp_path / "rle.dcm"), expected


def test_encapsulated_source_loses_encapsulation_only_elements(tmp_path):
    src, expected = _rle_multiframe(tmp_path)
    meta, image = split_dicom(src)
    assert image.pixels.shape == (3, 8, 6) and np.array_equal(image.pixels, expected)
    rebuilt = assert_valid_output(merge_dicom(meta, image.pixels))
    assert "ExtendedOffsetTable" not in rebuilt and "ExtendedOffsetTableLengths" not in rebuilt
    assert np.array_equal(rebuilt.pixel_array, expected)
    assert_same_elements(pydicom.dcmread(src), rebuilt, skip={PIXEL_DATA, 0x7FE00001, 0x7FE00002})


@pytest.mark.skipif(not get_encoder(JPEGLSNearLossless).is_available, reason="no JPEG-LS encoder")
def test_lossy_transfer_syntax_source_is_marked_lossy(tmp_path):
    ds = make_dataset((32, 32), 16, 12)
    ds.compress(JPEGLSNearLossless, jls_error=3, generate_instance_uid=False)
    src = save(ds, tmp_path / "jls.dcm")
    meta, image = split_dicom(src)
    assert "LossyImageCompression" not in image.dataset  # read_dicom itself reports the source
    rebuilt = _reread(merge_dicom(meta, image.pixels))
    assert rebuilt.LossyImageCompression == "01"
    assert rebuilt.LossyImageCompressionMethod == "ISO_14495_1"
    assert float(rebuilt.LossyImageCompressionRatio) > 1
    assert rebuilt.SOPInstanceUID == ds.SOPInstanceUID


# --------------------------------------------------------------------------- #
# Lossy merge
# --------------------------------------------------------------------------- #


def test_lossy_merge_marks_elements_and_new_uid():
    original = pydicom.dcmread(CT_SIGNED)
    before = _sha(CT_SIGNED)
    meta, image = split_dicom(CT_SIGNED)
    pixels = np.clip(image.pixels.astype(np.int32) + 3, -32768, 32767).astype(np.int16)
    rebuilt = assert_valid_output(merge_dicom(meta, pixels, LossyInfo(ratio=12.5, method="ISO_15444_1")))
    assert _sha(CT_SIGNED) == before
    assert rebuilt.LossyImageCompression == "01"
    assert str(rebuilt.LossyImageCompressionRatio) == "12.5"
    assert rebuilt.LossyImageCompressionMethod == "ISO_15444_1"
    new_uid = rebuilt.SOPInstanceUID
    assert new_uid != original.SOPInstanceUID and UID(new_uid).is_valid
    assert rebuilt.file_meta.MediaStorageSOPInstanceUID == new_uid
    ref = rebuilt.SourceImageSequence[-1]
    assert ref.ReferencedSOPInstanceUID == original.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == original.SOPClassUID
    code = ref.PurposeOfReferenceCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("121320", "DCM")
    assert np.array_equal(rebuilt.pixel_array, pixels)
    assert_same_elements(original, rebuilt, skip={PIXEL_DATA} | CHANGED_BY_LOSSY)
    assert_same_file_meta(original, rebuilt, skip={0x00020003})


def test_lossy_merge_gives_a_fresh_uid_each_time():
    meta, image = split_dicom(MR_IMPLICIT)
    lossy = LossyInfo(8, "MEDCODEC_V1")
    a, b = (_reread(merge_dicom(meta, image.pixels, lossy)) for _ in range(2))
    assert a.SOPInstanceUID != b.SOPInstanceUID


def test_lossy_merge_appends_to_existing_history(tmp_path):
    ds = make_dataset()
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = ["8", "4.5"]
    ds.LossyImageCompressionMethod = ["ISO_10918_1", "ISO_14495_1"]
    ds.SourceImageSequence = [Dataset()]
    ds.SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4"
    src = save(ds, tmp_path / "lossy.dcm")
    meta, image = split_dicom(src)
    rebuilt = _reread(merge_dicom(meta, image.pixels, LossyInfo(20, "ISO_15444_1")))
    assert rebuilt.LossyImageCompression == "01"
    assert [str(v) for v in rebuilt.LossyImageCompressionRatio] == ["8", "4.5", "20.0"]
    assert list(rebuilt.LossyImageCompressionMethod) == ["ISO_10918_1", "ISO_14495_1", "ISO_15444_1"]
    assert len(rebuilt.SourceImageSequence) == 2
    assert rebuilt.SourceImageSequence[0].ReferencedSOPInstanceUID == "1.2.3.4"
    assert rebuilt.SourceImageSequence[1].ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_lossy_merge_on_the_already_lossy_jpeg2000_mammogram(shared_data):
    if not MG1_J2K.exists():
        pytest.skip("MG1_J2KI.dcm not in the shared data set")
    original = pydicom.dcmread(MG1_J2K, stop_before_pixels=True)
    meta, image = split_dicom(MG1_J2K)
    assert image.pixels.shape == (4664, 3064) and image.bits_stored == 12
    rebuilt = _reread(merge_dicom(meta, image.pixels, LossyInfo(40, "ISO_15444_1")))
    assert [str(v) for v in rebuilt.LossyImageCompressionRatio] == [
        str(original.LossyImageCompressionRatio),
        "40.0",
    ]
    assert rebuilt.LossyImageCompressionMethod == "ISO_15444_1"


@pytest.mark.parametrize(
    "ratio,method",
    [
        (0, "ISO_15444_1"),
        (-2, "X"),
        (float("nan"), "X"),
        (float("inf"), "X"),
        ("abc", "X"),
        (10, "iso_15444_1"),
        (10, "A" * 17),
        (10, ""),
        (10, None),
        (10, "BAD-CHAR"),
    ],
)
def test_lossy_info_is_validated(ratio, method):
    with pytest.raises(MedcodecError):
        LossyInfo(ratio, method)


# --------------------------------------------------------------------------- #
# Merge validation
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def ct_implicit_split():
    return split_dicom(CT_IMPLICIT)  # 512x512 uint16, BitsStored 12


@pytest.mark.parametrize(
    "make_pixels,match",
    [
        (lambda p: p[:, :-1], "shape"),
        (lambda p: p[None, None], "shape"),
        (lambda p: np.stack([p, p]), "shape"),
        (lambda p: p.astype(np.float32), "dtype"),
        (lambda p: p.astype(np.int16), "dtype"),
        (lambda p: p.astype(np.uint8), "dtype"),
        (lambda p: p.astype(np.int32), "dtype"),
        (lambda p: p.tolist(), "numpy array"),
        (lambda p: np.where(p == p.max(), 4096, p).astype(np.uint16), "outside the range"),
    ],
    ids=["cols", "4d", "frames", "float", "signed", "uint8", "int32", "list", "over-12-bit"],
)
def test_merge_rejects_pixels_that_do_not_fit(ct_implicit_split, make_pixels, match):
    meta, image = ct_implicit_split
    with pytest.raises(MedcodecError, match=match):
        merge_dicom(meta, make_pixels(image.pixels))


def test_merge_checks_signed_range(tmp_path):
    meta, image = split_dicom(save(make_dataset((4, 4), 16, 12, signed=True), tmp_path / "s.dcm"))
    ok = image.pixels.copy()
    ok[0, 0], ok[0, 1] = -2048, 2047
    merge_dicom(meta, ok)
    for bad in (-2049, 2048):
        pixels = image.pixels.copy()
        pixels[0, 0] = bad
        with pytest.raises(MedcodecError, match=r"12-bit signed data \[-2048, 2047\]"):
            merge_dicom(meta, pixels)


def test_merge_accepts_single_frame_as_3d_and_big_endian_arrays(ct_implicit_split):
    meta, image = ct_implicit_split
    expected = merge_dicom(meta, image.pixels)
    assert merge_dicom(meta, image.pixels[None]) == expected
    assert merge_dicom(meta, image.pixels.astype(">u2")) == expected
    assert merge_dicom(meta, np.asfortranarray(image.pixels)) == expected


@pytest.mark.parametrize(
    "meta",
    [b"", b"not zlib at all", zlib.compress(b"x" * 300), "text", zlib.compress(b"\0" * 128 + b"DICM")],
    ids=["empty", "garbage", "not-dicom", "str", "dicm-only"],
)
def test_merge_rejects_corrupt_metadata(meta):
    with pytest.raises(MedcodecError):
        merge_dicom(meta, np.zeros((2, 2), np.uint16))


def test_merge_rejects_a_non_lossyinfo(ct_implicit_split):
    meta, image = ct_implicit_split
    with pytest.raises(MedcodecError, match="LossyInfo"):
        merge_dicom(meta, image.pixels, lossy=(10, "X"))


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    "content,reason",
    [
        (b"", "empty file"),
        (b"hello, this is a text file\n" * 20, "not a DICOM file"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not a DICOM file"),
        (b"\x00" * 128 + b"DICX" + b"\x00" * 64, "not a DICOM file"),
    ],
    ids=["empty", "text", "png", "bad-magic"],
)
def test_not_a_dicom_file(tmp_path, content, reason):
    path = tmp_path / "bad.dcm"
    path.write_bytes(content)
    with pytest.raises(DicomError) as excinfo:
        read_dicom(path)
    assert reason in _one_line_error(excinfo, path)
    with pytest.raises(DicomError):
        split_dicom(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DicomError) as excinfo:
        read_dicom(tmp_path / "nope.dcm")
    assert "no such file" in _one_line_error(excinfo, tmp_path / "nope.dcm")
    with pytest.raises(DicomError) as excinfo:
        read_dicom(tmp_path)
    assert "directory" in _one_line_error(excinfo, tmp_path)


def _pixel_value_offset(data: bytes) -> int:
    """Offset of the first byte of the (last) Pixel Data value."""
    ds = pydicom.dcmread(io.BytesIO(data))
    return ds.get_item(PIXEL_DATA).value_tell


@pytest.mark.parametrize("source", [CT_SIGNED, CT_IMPLICIT], ids=["explicit", "implicit"])
@pytest.mark.parametrize(
    "where",
    [
        "preamble",
        "after-DICM",
        "file-meta",
        "header-value",
        "element-header",
        "pixel-header",
        "pixel-start",
        "pixel-middle",
        "last-byte",
    ],
)
def test_truncated_file(tmp_path, source, where):
    data = source.read_bytes()
    pixels = _pixel_value_offset(data)
    ds = pydicom.dcmread(source)
    study_date = ds.get_item(0x00080020).value_tell  # a value in the middle of the header
    cut = {
        "preamble": 64,
        "after-DICM": 132,
        "file-meta": 150,
        "header-value": study_date + 3,
        "element-header": study_date + ds.get_item(0x00080020).length + 3,
        "pixel-header": pixels - 4,
        "pixel-start": pixels + 10,
        "pixel-middle": pixels + (len(data) - pixels) // 2,
        "last-byte": len(data) - 1,
    }[where]
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[:cut])
    with pytest.raises(DicomError) as excinfo:
        read_dicom(path)
    reason = _one_line_error(excinfo, path)
    assert "truncated" in reason or "not a DICOM file" in reason


def test_truncation_sweep_of_a_small_file(tmp_path):
    """Cut a small file at every byte: each cut must fail cleanly."""
    data = save(make_dataset((4, 3)), tmp_path / "small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    for cut in range(1, len(data)):
        path.write_bytes(data[:cut])
        with pytest.raises(DicomError) as excinfo:
            read_dicom(path)
        _one_line_error(excinfo, path)


def test_trailing_bytes_after_the_last_element(tmp_path):
    data = save(make_dataset((4, 3)), tmp_path / "small.dcm").read_bytes()
    path = tmp_path / "tail.dcm"
    path.write_bytes(data + b"\x00\x00")  # zero padding: harmless
    assert read_dicom(path).pixels.shape == (4, 3)
    path.write_bytes(data + b"\xfc\xff\xfc")  # the start of another element header
    with pytest.raises(DicomError) as excinfo:
        read_dicom(path)
    assert "truncated" in _one_line_error(excinfo, path)


def test_truncated_encapsulated_pixel_data(tmp_path):
    src, _ = _rle_multiframe(tmp_path)
    data = src.read_bytes()
    pixels = _pixel_value_offset(data)
    path = tmp_path / "cut.dcm"
    for cut in (pixels + 6, pixels + 40, (pixels + len(data)) // 2, len(data) - 9, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(DicomError) as excinfo:
            read_dicom(path)
        assert "truncated" in _one_line_error(excinfo, path)


def test_truncated_jpeg2000_mammogram(tmp_path, shared_data):
    if not MG1_J2K.exists():
        pytest.skip("MG1_J2KI.dcm not in the shared data set")
    data = MG1_J2K.read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomError) as excinfo:
        read_dicom(path)
    assert "truncated" in _one_line_error(excinfo, path)


def test_no_pixel_data(tmp_path):
    ds = pydicom.dcmread(CT_SIGNED)
    del ds.PixelData
    path = tmp_path / "nopix.dcm"
    ds.save_as(path)
    with pytest.raises(DicomError) as excinfo:
        read_dicom(path)
    assert "no Pixel Data" in _one_line_error(excinfo, path)


def test_decoder_unavailable(tmp_path, monkeypatch):
    src, _ = _rle_multiframe(tmp_path)
    monkeypatch.setattr(get_decoder(RLELossless), "_available", {})
    with pytest.raises(DicomError) as excinfo:
        read_dicom(src)
    reason = _one_line_error(excinfo, src)
    assert "no decoder available" in reason and "RLE Lossless" in reason


def test_jpeg2000_decoder_unavailable(monkeypatch, shared_data):
    if not MG1_J2K.exists():
        pytest.skip("MG1_J2KI.dcm not in the shared data set")
    monkeypatch.setattr(get_decoder(JPEG2000), "_available", {})
    with pytest.raises(DicomError) as excinfo:
        read_dicom(MG1_J2K)
    assert "no decoder available for JPEG 2000" in _one_line_error(excinfo, MG1_J2K)


def test_undecodable_encapsulated_data(tmp_path):
    ds = make_dataset((8, 6))
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.NumberOfFrames = 2  # frames the data does not hold
    path = save(ds, tmp_path / "bad_rle.dcm")
    with pytest.raises(DicomError) as excinfo:
        read_dicom(path)
    _one_line_error(excinfo, path)


@pytest.mark.parametrize("photometric,spp", [("RGB", 3), ("PALETTE COLOR", 1), ("YBR_FULL", 3)])
def test_unsupported_photometric(tmp_path, photometric, spp):
    ds = make_dataset((4, 4), 8, 8)
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = spp
    if spp == 3:
        ds.PlanarConfiguration = 0
        ds.PixelData = bytes(4 * 4 * 3)
    path = save(ds, tmp_path / "color.dcm")
    with pytest.raises(DicomError) as excinfo:
        read_dicom(path)
    reason = _one_line_error(excinfo, path)
    assert "unsupported photometric interpretation" in reason and photometric in reason


@pytest.mark.parametrize(
    "bits_allocated,bits_stored,match",
    [
        (8, 7, "BitsStored 7"),
        (16, 17, "BitsStored 17"),
        (32, 24, "BitsStored 24"),
        (32, 16, "BitsAllocated 32"),
        (1, 1, "BitsStored 1"),
        (16, 4, "BitsStored 4"),
    ],
)
def test_unsupported_bit_depth(tmp_path, bits_allocated, bits_stored, match):
    ds = make_dataset((4, 4), 16, 12)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    path = save(ds, tmp_path / "bits.dcm")
    with pytest.raises(DicomError) as excinfo:
        read_dicom(path)
    assert match in _one_line_error(excinfo, path)


def test_inconsistent_high_bit(tmp_path):
    ds = make_dataset((4, 4), 16, 12)
    ds.HighBit = 15
    path = save(ds, tmp_path / "hb.dcm")
    with pytest.raises(DicomError, match="HighBit 15"):
        read_dicom(path)


def test_split_needs_sop_uids(tmp_path):
    ds = make_dataset()
    del ds.SOPInstanceUID
    path = save(ds, tmp_path / "nouid.dcm")
    read_dicom(path)  # reading is fine
    with pytest.raises(DicomError, match="missing SOPInstanceUID"):
        split_dicom(path)


# --------------------------------------------------------------------------- #
# Output
# --------------------------------------------------------------------------- #


def test_write_dicom_refuses_overwrite_and_leaves_no_temporary(tmp_path):
    meta, image = split_dicom(MR_IMPLICIT)
    data = merge_dicom(meta, image.pixels)
    target = tmp_path / "out.dcm"
    assert write_dicom(target, data) == target
    assert target.read_bytes() == data
    with pytest.raises(OutputExistsError):
        write_dicom(target, b"\0" * 128 + b"DICM")
    assert target.read_bytes() == data
    lossy = merge_dicom(meta, image.pixels, LossyInfo(5, "MEDCODEC"))
    write_dicom(target, lossy, force=True)
    assert target.read_bytes() == lossy
    assert os.listdir(tmp_path) == ["out.dcm"]
    with pytest.raises(MedcodecError, match="not a DICOM file"):
        write_dicom(tmp_path / "other.dcm", b"junk")
    assert os.listdir(tmp_path) == ["out.dcm"]


def test_module_stays_numpy_and_pydicom_only():
    code = (
        "import sys; import codec.dicom as d; d.read_dicom(sys.argv[1]); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'imagecodecs')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(CT_SIGNED)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
