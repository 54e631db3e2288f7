"""DICOM in and out: read the stored pixels, split off the metadata, rebuild a file.

numpy + pydicom only (this module also runs on the board).

Reading
-------
:func:`read_dicom` returns a :class:`DicomImage`: the *stored* pixel values at
their native bit depth (no Rescale Slope/Intercept, no MONOCHROME1 inversion,
no windowing) and the rest of the dataset. Supported: one sample per pixel,
MONOCHROME1/MONOCHROME2, Bits Allocated 8 or 16, Bits Stored 8..16 with High
Bit = Bits Stored - 1, signed or unsigned, single- or multi-frame. Native
transfer syntaxes (Implicit/Explicit VR Little Endian, Deflated, Explicit VR Big
Endian) are decoded here with numpy; encapsulated ones (JPEG, JPEG-LS,
JPEG 2000, RLE, ...) through pydicom's pixel plugins, and a missing plugin is a
:class:`~codec.errors.DicomError` that says what to install. Bits above Bits
Stored (old overlay planes) are discarded: unsigned values are masked, signed
values are sign-extended from bit Bits Stored - 1, as pydicom does.

pydicom reads a truncated file without complaint (a short last value, a
partial element header, a Pixel Data element shorter than its length field),
so the reader checks the structure itself: every defined-length value must be
complete, the last element must end at the end of the file, pydicom must not
have hit end-of-file inside an undefined-length element, and native Pixel Data
must hold Rows x Columns x Frames x BitsAllocated/8 bytes (up to 7 zero bytes
of padding after the last element are tolerated). Every failure is a
:class:`DicomError` whose message is one line: ``"<path>: <reason>"``. The
input file is only ever opened for reading.

Split and merge
---------------
:func:`split_dicom` cuts a file into two parts:

* the *metadata*: the dataset without Pixel Data, plus the File Meta
  Information (original Transfer Syntax UID included), written as a DICOM
  Part 10 stream (128 zero bytes, ``DICM``, group 0002, then the dataset in
  the source encoding, raw element values copied as read) and compressed with
  zlib. It is self-describing: ``pydicom.dcmread(io.BytesIO(zlib.decompress(meta)))``
  opens it;
* the *pixels*: the :class:`DicomImage` whose array the codec compresses.

:func:`merge_dicom` rebuilds a complete DICOM file from the metadata and a
pixel array. The output is always Explicit VR Little Endian with native
(uncompressed) Pixel Data: OW for 16-bit, OB for 8-bit (padded to even
length), Bits Allocated/Stored, High Bit and Pixel Representation from the
source. Every element of the source comes back with the same tag, VR and
value, with these exceptions:

* Pixel Data is the new array.
* File Meta: Transfer Syntax UID becomes Explicit VR Little Endian and the
  group length is recomputed. Missing Type 1 file-meta elements are added
  (from the dataset's SOP Class/Instance UIDs for a source without File Meta),
  and so are Samples per Pixel and High Bit if the source left them out.
* The preamble is written as 128 zero bytes: some sources (the NEMA WG04
  files) carry a TIFF header there whose offsets would point into the wrong
  bytes of the rebuilt file.
* Group Length elements (gggg,0000) outside group 0002 are dropped: they are
  retired (PS3.5 7.2) and would be wrong after re-encoding; pydicom never
  writes them.
* Elements that only describe encapsulated Pixel Data are dropped: Extended
  Offset Table (7FE0,0001), Extended Offset Table Lengths (7FE0,0002),
  Encapsulated Pixel Data Value Total Length (7FE0,0003), Pixel Data Provider
  URL (0028,7FE0).
* Implicit VR sources get each element's VR from the data dictionary
  (ambiguous VRs such as ``US or SS`` resolved from Pixel Representation,
  private elements of known creators from the private dictionary, unknown
  private elements as UN with their bytes unchanged). Big endian sources are
  converted to little endian (OW/OF/OL/OD/OV values are byte-swapped; UN
  values are copied unchanged since their structure is unknown).
* Odd-length values (non-conformant) are padded to even length: a space for
  text VRs, a zero byte otherwise.
* A source with a transfer syntax that is always lossy (JPEG baseline or
  extended, JPEG-LS near-lossless) whose Lossy Image Compression is not
  already "01" gets the lossy marking below (ratio = native size / size of
  the encapsulated data) but keeps its SOP Instance UID: the standard requires
  the flag once pixel data have been through a lossy codec. This is done by
  :func:`split_dicom` (it knows the compressed size), so the metadata already
  carries it; :func:`read_dicom`'s dataset is left as read. JPEG 2000 and
  HTJ2K can be either lossless or lossy, so they are left as they are.

With ``lossy=LossyInfo(ratio, method)`` (the codec was lossy), as PS3.3
C.7.6.1.1.5 asks:

* Lossy Image Compression (0028,2110) = "01";
* Lossy Image Compression Ratio (0028,2112) and Method (0028,2114): the new
  ratio and method are *appended* to the values already there, so a source
  that was already lossy keeps its history (a history that was incomplete,
  e.g. a ratio without a method, stays as incomplete as it was);
* a new SOP Instance UID (0008,0018), also written to Media Storage SOP
  Instance UID (0002,0003);
* the original instance is referenced in Source Image Sequence (0008,2112):
  one item is appended with its SOP Class and Instance UIDs and Purpose of
  Reference (DCM 121320, "Uncompressed predecessor");
* with ``LossyInfo.description`` (e.g. a near-lossless codec's error bound),
  that text is appended to Derivation Description (0008,2111), after "; "
  when the source already had one.

Nothing else changes (Image Type, dates, Implementation Class UID stay).

pydicom warnings and value validation are switched off while this module
reads and writes (the files are real-world data, often slightly non-conformant);
this touches pydicom's process-wide settings for the duration of a call, so do
not run these functions concurrently from several threads.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom import config as _config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import DSfloat, format_number_as_ds

from codec.errors import DicomError, MedcodecError
from codec.fileio import atomic_write

__all__ = [
    "DicomImage",
    "LossyInfo",
    "read_dicom",
    "split_dicom",
    "merge_dicom",
    "write_dicom",
    "SUPPORTED_PHOTOMETRIC",
]

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")

PIXEL_DATA = Tag(0x7FE0, 0x0010)
_FLOAT_PIXEL_DATA = (Tag(0x7FE0, 0x0008), Tag(0x7FE0, 0x0009))
#: Elements that only make sense next to encapsulated Pixel Data.
ENCAPSULATION_ONLY = (
    Tag(0x7FE0, 0x0001),  # Extended Offset Table
    Tag(0x7FE0, 0x0002),  # Extended Offset Table Lengths
    Tag(0x7FE0, 0x0003),  # Encapsulated Pixel Data Value Total Length
    Tag(0x0028, 0x7FE0),  # Pixel Data Provider URL (JPIP)
)
#: Transfer syntaxes that are lossy by definition, and the method they imply.
_ALWAYS_LOSSY = {
    "1.2.840.10008.1.2.4.50": "ISO_10918_1",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51": "ISO_10918_1",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.81": "ISO_14495_1",  # JPEG-LS Near-Lossless
}
_NATIVE_LE = (ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)
_PREAMBLE = b"\x00" * 128
_UNDEFINED = 0xFFFFFFFF
_TEXT_VRS = frozenset(
    "AE AS CS DA DS DT IS LO LT PN SH ST TM UC UR UT".split()
)  # padded with a space; UI and binary VRs with a zero byte
_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_CS_RE = re.compile(r"[A-Z0-9_ ]{1,16}")
_UNCOMPRESSED_PREDECESSOR = ("121320", "DCM", "Uncompressed predecessor")


class _Bad(Exception):
    """Internal: a reason why a dataset is unusable (wrapped by the callers)."""


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception as one short line (pydicom's messages can be paragraphs)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


@contextlib.contextmanager
def _quiet_pydicom(record: list | None = None):
    """No pydicom warnings and no value validation for the duration."""
    with warnings.catch_warnings(record=record is not None) as caught:
        warnings.simplefilter("always" if record is not None else "ignore")
        with _config.disable_value_validation():
            yield
    if record is not None:
        record.extend(str(w.message) for w in caught)


# --------------------------------------------------------------------------- #
# Data classes
# --------------------------------------------------------------------------- #


@dataclass(eq=False)
class DicomImage:
    """A decoded DICOM image.

    ``pixels`` holds the STORED values (no rescale, no MONOCHROME1 inversion) in
    their native dtype: uint8/int8 for Bits Allocated 8, uint16/int16 for 16,
    shape (rows, cols) for a single frame and (frames, rows, cols) for
    multi-frame data. ``dataset`` is the whole dataset without Pixel Data, with
    ``file_meta`` (synthesised for a source that had none).
    """

    path: str
    pixels: np.ndarray
    bits_stored: int
    signed: bool
    photometric: str
    modality: str
    dataset: pydicom.Dataset = field(repr=False)

    @property
    def rows(self) -> int:
        return int(self.pixels.shape[-2])

    @property
    def cols(self) -> int:
        return int(self.pixels.shape[-1])

    @property
    def frames(self) -> int:
        return 1 if self.pixels.ndim == 2 else int(self.pixels.shape[0])

    def frame_list(self) -> list[np.ndarray]:
        """The frames as a list of 2-D arrays (views, not copies)."""
        if self.pixels.ndim == 2:
            return [self.pixels]
        return [self.pixels[i] for i in range(self.pixels.shape[0])]

    @property
    def value_range(self) -> tuple[int, int]:
        """(min, max) of the stored values as Python ints."""
        return int(self.pixels.min()), int(self.pixels.max())


@dataclass(frozen=True)
class LossyInfo:
    """What a lossy codec did, for the Lossy Image Compression elements.

    ``ratio``: uncompressed size / compressed size (finite, > 0), written as DS.
    ``method``: a Code String (upper-case letters, digits, "_" and space, at
    most 16 characters), e.g. "ISO_15444_1" or a medcodec method name.
    ``description``: optional text for Derivation Description (printable
    ASCII, at most 256 characters), e.g. "near-lossless, max error 2".
    """

    ratio: float
    method: str
    description: str | None = None

    def __post_init__(self):
        try:
            ratio = float(self.ratio)
        except (TypeError, ValueError):
            raise MedcodecError(f"lossy compression ratio {self.ratio!r} is not a number") from None
        if not math.isfinite(ratio) or ratio <= 0:
            raise MedcodecError(f"lossy compression ratio {self.ratio!r} must be finite and > 0")
        if not isinstance(self.method, str) or not _CS_RE.fullmatch(self.method):
            raise MedcodecError(
                f"lossy compression method {self.method!r} is not a DICOM code string "
                "(A-Z, 0-9, '_' or space, 1 to 16 characters)"
            )
        d = self.description
        if d is not None and (not isinstance(d, str) or not 0 < len(d) <= 256 or not d.isprintable()
                              or not d.isascii()):
            raise MedcodecError(f"lossy description {d!r} must be 1 to 256 printable ASCII characters")


@dataclass(frozen=True)
class _Layout:
    """The pixel description shared by reading and merging."""

    rows: int
    cols: int
    frames: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(f"{'i' if self.signed else 'u'}{self.bits_allocated // 8}")

    @property
    def nbytes(self) -> int:
        return self.rows * self.cols * self.frames * (self.bits_allocated // 8)

    @property
    def limits(self) -> tuple[int, int]:
        if self.signed:
            return -(1 << (self.bits_stored - 1)), (1 << (self.bits_stored - 1)) - 1
        return 0, (1 << self.bits_stored) - 1


def _int_attr(ds: Dataset, keyword: str, default: int | None = None) -> int:
    if keyword not in ds or ds[keyword].is_empty:
        if default is None:
            raise _Bad(f"missing {keyword}")
        return default
    value = ds[keyword].value
    if isinstance(value, (list, MultiValue)):
        raise _Bad(f"{keyword} has several values")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _Bad(f"invalid {keyword} {value!r}") from None


def _layout(ds: Dataset) -> _Layout:
    """Check the Image Pixel attributes; raise _Bad with a reason otherwise."""
    if "PhotometricInterpretation" not in ds or ds["PhotometricInterpretation"].is_empty:
        raise _Bad("missing PhotometricInterpretation")
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise _Bad(
            f"unsupported photometric interpretation {photometric!r} "
            "(only MONOCHROME1 and MONOCHROME2 are supported)"
        )
    spp = _int_attr(ds, "SamplesPerPixel", 1)
    if spp != 1:
        raise _Bad(f"unsupported SamplesPerPixel {spp} (only 1 is supported)")
    rows, cols = _int_attr(ds, "Rows"), _int_attr(ds, "Columns")
    if rows < 1 or cols < 1:
        raise _Bad(f"invalid image size {rows}x{cols}")
    frames = _int_attr(ds, "NumberOfFrames", 1)
    if frames < 1:
        raise _Bad(f"invalid NumberOfFrames {frames}")
    bits_allocated = _int_attr(ds, "BitsAllocated")
    bits_stored = _int_attr(ds, "BitsStored")
    if not 8 <= bits_stored <= 16:
        raise _Bad(f"unsupported BitsStored {bits_stored} (must be 8 to 16)")
    if bits_allocated not in (8, 16):
        raise _Bad(f"unsupported BitsAllocated {bits_allocated} (must be 8 or 16)")
    if bits_stored > bits_allocated:
        raise _Bad(f"BitsStored {bits_stored} exceeds BitsAllocated {bits_allocated}")
    high_bit = _int_attr(ds, "HighBit", bits_stored - 1)
    if high_bit != bits_stored - 1:
        raise _Bad(f"unsupported HighBit {high_bit} (must be BitsStored - 1 = {bits_stored - 1})")
    representation = _int_attr(ds, "PixelRepresentation")
    if representation not in (0, 1):
        raise _Bad(f"invalid PixelRepresentation {representation}")
    return _Layout(rows, cols, frames, bits_allocated, bits_stored, representation == 1, photometric)


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _open_dataset(path: Path) -> tuple[pydicom.FileDataset, int]:
    """dcmread with the checks pydicom leaves out; returns (dataset, file size)."""
    if not path.exists():
        raise DicomError(path, "no such file")
    if path.is_dir():
        raise DicomError(path, "is a directory")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise DicomError(path, f"cannot open: {exc.strerror or _one_line(exc)}") from exc
    with fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(132)
        fh.seek(max(0, size - 8))
        tail = fh.read(8)
        fh.seek(0)
        if not head:
            raise DicomError(path, "not a DICOM file (empty file)")
        if head[128:132] == b"DICM":
            force = False
        elif head[:2] in (b"\x02\x00", b"\x08\x00") and len(head) >= 8:
            # No preamble: a bare File Meta group or a bare (ACR-NEMA style) dataset.
            force = True
        else:
            raise DicomError(path, "not a DICOM file (no 'DICM' marker after the 128-byte preamble)")
        messages: list[str] = []
        try:
            with _quiet_pydicom(record=messages):
                ds = pydicom.dcmread(fh, force=force)
        except InvalidDicomError as exc:
            raise DicomError(path, f"not a DICOM file ({_one_line(exc)})") from exc
        except EOFError as exc:
            raise DicomError(path, f"truncated file ({_one_line(exc)})") from exc
        except OSError as exc:
            if exc.errno is not None:  # a real I/O error
                raise DicomError(path, f"cannot read: {exc.strerror or _one_line(exc)}") from exc
            # pydicom raises a bare OSError for a missing item tag
            raise DicomError(path, f"corrupt or truncated DICOM data ({_one_line(exc)})") from exc
        except Exception as exc:  # struct.error, ValueError, ... from a corrupt stream
            raise DicomError(path, f"corrupt or truncated DICOM data ({_one_line(exc)})") from exc
    if any("End of file" in m or "EOF" in m for m in messages):
        raise DicomError(path, "truncated file (end of file inside a data element)")
    _check_file_meta(ds, path, size, preamble=not force)
    if not ds._dict:
        raise DicomError(path, "truncated file: no data set after the File Meta Information")
    _check_complete(ds, path, size, tail)
    return ds, size


def _check_file_meta(ds: Dataset, path: Path, size: int, preamble: bool) -> None:
    """The File Meta group must be as long as its group length says."""
    meta = getattr(ds, "file_meta", None)
    if not meta or "FileMetaInformationGroupLength" not in meta:
        return
    try:
        group_length = int(meta.FileMetaInformationGroupLength)
    except (TypeError, ValueError):
        raise DicomError(path, "truncated or corrupt File Meta Information (bad group length)") from None
    end = (132 if preamble else 0) + 12 + group_length
    if end > size:
        raise DicomError(path, "truncated file (inside the File Meta Information)")


def _check_complete(ds: Dataset, path: Path, size: int, tail: bytes) -> None:
    """Raise DicomError if any value read is shorter than its length field, or
    the last element does not end at the end of the file (up to 7 zero bytes
    of padding are tolerated; ``tail`` is the file's last 8 bytes)."""
    for elem in _raw_elements(ds):
        if elem.length != _UNDEFINED and elem.value is not None and len(elem.value) != elem.length:
            raise DicomError(
                path,
                f"truncated file: element {elem.tag} has {len(elem.value)} of {elem.length} bytes",
            )
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # positions refer to the inflated stream
    # The element that starts last in the file (tags should be ascending, but
    # a non-conformant writer may not sort them).
    last = max(
        (ds.get_item(tag) for tag in ds._dict),
        key=lambda e: (e.value_tell if isinstance(e, RawDataElement) else e.file_tell) or 0,
    )
    if not isinstance(last, RawDataElement) or last.value is None:
        return  # an undefined-length sequence: its end is not recorded
    if last.length == _UNDEFINED:
        end = last.value_tell + len(last.value) + 8  # + sequence delimiter
    else:
        end = last.value_tell + last.length
    if end > size:
        raise DicomError(
            path, f"truncated file: {last.tag} ends {end - size} bytes after the end of the file"
        )
    if end < size:
        left = size - end
        if left < 8 and not any(tail[-left:]):
            return  # zero padding after the last element
        if left < 8:
            raise DicomError(path, f"truncated file: {left} stray bytes after the last data element")
        raise DicomError(path, f"corrupt file: {left} bytes after {last.tag} could not be parsed")


def _raw_elements(ds: Dataset):
    """Raw elements of ds and of every sequence pydicom already parsed."""
    for tag in list(ds._dict):
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            yield elem
        elif elem.VR == "SQ" and isinstance(elem.value, Sequence):
            for item in elem.value:
                yield from _raw_elements(item)


def _source_ts(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return UID(str(ts).strip("\x00 "))
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _restore_bits(arr: np.ndarray, layout: _Layout) -> np.ndarray:
    """Keep only the BitsStored low bits (sign-extended when signed), in place."""
    unused = layout.bits_allocated - layout.bits_stored
    if unused:
        unsigned = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
        if layout.signed:
            unsigned <<= unused
            arr >>= unused  # arithmetic shift on the signed view
        else:
            unsigned &= (1 << layout.bits_stored) - 1
    return arr


def _decode_native(ds: Dataset, layout: _Layout, little_endian: bool, path: Path) -> np.ndarray:
    elem = ds.get_item(PIXEL_DATA)
    value = elem.value
    if isinstance(elem, RawDataElement) and elem.length == _UNDEFINED:
        raise DicomError(path, "Pixel Data is encapsulated but the transfer syntax is native")
    if not isinstance(value, (bytes, bytearray)):
        raise DicomError(path, "Pixel Data has no value")
    if len(value) < layout.nbytes:
        raise DicomError(
            path,
            f"truncated Pixel Data: {len(value)} of {layout.nbytes} bytes "
            f"({layout.frames} frame(s) of {layout.rows}x{layout.cols}, {layout.bits_allocated}-bit)",
        )
    if little_endian:
        count = layout.rows * layout.cols * layout.frames
        return np.frombuffer(value, dtype=layout.dtype.newbyteorder("<"), count=count).astype(layout.dtype)
    # Big endian (retired): byte order depends on the VR (8-bit data in OW is
    # word-swapped), which pydicom's native decoder knows.
    return get_decoder(ExplicitVRBigEndian).as_array(ds)[0].astype(layout.dtype)


def _decode_encapsulated(ds: Dataset, layout: _Layout, ts: UID, path: Path) -> np.ndarray:
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DicomError(path, f"unsupported transfer syntax {ts.name} ({ts})") from None
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin installed"
        raise DicomError(
            path,
            f"no decoder available for {ts.name} ({ts}) pixel data (install one of: {missing})",
        )
    try:
        arr, _ = decoder.as_array(ds)
    except Exception as exc:
        raise DicomError(path, f"cannot decode {ts.name} pixel data ({_one_line(exc)})") from exc
    if arr.dtype.kind not in "ui":
        raise DicomError(path, f"decoder returned {arr.dtype} pixels, expected {layout.dtype}")
    return arr.astype(layout.dtype)


def _load(path) -> tuple[DicomImage, UID, int | None]:
    """read_dicom, plus the source transfer syntax and encapsulated byte count."""
    path = Path(path)
    ds, _ = _open_dataset(path)
    ts = _source_ts(ds)
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        meta = ds.file_meta if getattr(ds, "file_meta", None) is not None else FileMetaDataset()
        meta.TransferSyntaxUID = ts
        ds.file_meta = meta
    try:
        with _quiet_pydicom():
            if PIXEL_DATA not in ds._dict:
                if any(t in ds._dict for t in _FLOAT_PIXEL_DATA):
                    raise DicomError(path, "float pixel data is not supported")
                raise DicomError(path, "no Pixel Data element (not an image, or the file is truncated)")
            try:
                layout = _layout(ds)
            except _Bad as exc:
                raise DicomError(path, str(exc)) from exc
            encapsulated_size = None
            if ts in _NATIVE_LE or ts == ExplicitVRBigEndian:
                arr = _decode_native(ds, layout, ts != ExplicitVRBigEndian, path)
            else:
                encapsulated_size = len(ds.get_item(PIXEL_DATA).value or b"")
                arr = _decode_encapsulated(ds, layout, ts, path)
            shape = (
                (layout.rows, layout.cols)
                if layout.frames == 1
                else (layout.frames, layout.rows, layout.cols)
            )
            if arr.size != layout.rows * layout.cols * layout.frames:
                raise DicomError(path, f"decoded {arr.size} pixels, expected {shape}")
            arr = np.ascontiguousarray(arr.reshape(shape))
            _restore_bits(arr, layout)
            del ds[PIXEL_DATA]
            modality = ds.get("Modality", "") or ""
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(path, f"cannot read DICOM data ({_one_line(exc)})") from exc
    image = DicomImage(
        path=str(path),
        pixels=arr,
        bits_stored=layout.bits_stored,
        signed=layout.signed,
        photometric=layout.photometric,
        modality=str(modality).strip(),
        dataset=ds,
    )
    return image, ts, encapsulated_size


def read_dicom(path) -> DicomImage:
    """Read a DICOM file into its stored pixel array and the rest of the dataset.

    Raises :class:`DicomError` (one-line message ``"<path>: <reason>"``) for a
    missing, non-DICOM, truncated or unsupported file, or when the decoder for a
    compressed transfer syntax is not installed.
    """
    return _load(path)[0]


# --------------------------------------------------------------------------- #
# Split
# --------------------------------------------------------------------------- #


def _serialise(ds: pydicom.FileDataset) -> bytes:
    """The dataset (no Pixel Data) as a Part 10 stream in its own encoding."""
    saved = getattr(ds, "preamble", None)
    ds.preamble = _PREAMBLE
    try:
        buf = io.BytesIO()
        with _quiet_pydicom():
            dcmwrite(buf, ds)
        return buf.getvalue()
    finally:
        ds.preamble = saved


def split_dicom(path) -> tuple[bytes, DicomImage]:
    """Read ``path`` and return ``(meta, image)``.

    ``meta`` is the non-pixel part (File Meta Information and every element
    except Pixel Data) as a zlib-compressed DICOM Part 10 stream; ``image`` is
    :func:`read_dicom`'s result. ``merge_dicom(meta, image.pixels)`` rebuilds the
    file.
    """
    image, ts, encapsulated_size = _load(path)
    ds = image.dataset
    try:
        with _quiet_pydicom():
            for keyword in ("SOPClassUID", "SOPInstanceUID"):
                if not ds.get(keyword):
                    raise DicomError(path, f"missing {keyword} (needed to rebuild the file)")
            if ts in _ALWAYS_LOSSY and str(ds.get("LossyImageCompression", "")).strip() != "01":
                # Decoded from a lossy transfer syntax: the image has been lossy
                # compressed and the rebuilt file must say so (PS3.3 C.7.6.1.1.5).
                ratio = image.pixels.nbytes / max(1, encapsulated_size or 1)
                ds = copy.deepcopy(ds)
                _mark_lossy(ds, ratio, _ALWAYS_LOSSY[ts])
        blob = _serialise(ds)
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(path, f"cannot serialise the metadata ({_one_line(exc)})") from exc
    return zlib.compress(blob, 9), image


# --------------------------------------------------------------------------- #
# Merge
# --------------------------------------------------------------------------- #


def _parse_meta(meta: bytes) -> pydicom.FileDataset:
    if not isinstance(meta, (bytes, bytearray, memoryview)):
        raise MedcodecError(f"DICOM metadata must be bytes, got {type(meta).__name__}")
    try:
        blob = zlib.decompress(bytes(meta))
    except zlib.error as exc:
        raise MedcodecError(f"corrupt DICOM metadata (not zlib data: {_one_line(exc)})") from exc
    if blob[128:132] != b"DICM":
        raise MedcodecError("corrupt DICOM metadata (not a DICOM stream)")
    try:
        with _quiet_pydicom():
            ds = pydicom.dcmread(io.BytesIO(blob))
    except Exception as exc:
        raise MedcodecError(f"corrupt DICOM metadata ({_one_line(exc)})") from exc
    if "TransferSyntaxUID" not in ds.file_meta:
        raise MedcodecError("corrupt DICOM metadata (no Transfer Syntax UID)")
    if PIXEL_DATA in ds._dict:
        raise MedcodecError("DICOM metadata already holds Pixel Data")
    return ds


def _check_pixels(pixels, layout: _Layout) -> np.ndarray:
    if not isinstance(pixels, np.ndarray):
        raise MedcodecError(f"pixels must be a numpy array, got {type(pixels).__name__}")
    want = layout.dtype
    if pixels.dtype.kind != want.kind or pixels.dtype.itemsize != want.itemsize:
        raise MedcodecError(
            f"pixel dtype {pixels.dtype} does not match the metadata ({want}: "
            f"BitsAllocated {layout.bits_allocated}, PixelRepresentation {int(layout.signed)})"
        )
    plane = (layout.rows, layout.cols)
    allowed = [(layout.frames, *plane)]
    if layout.frames == 1:
        allowed.insert(0, plane)
    if pixels.shape not in allowed:
        raise MedcodecError(
            f"pixel array shape {pixels.shape} does not match the metadata "
            f"{' or '.join(str(s) for s in allowed)}"
        )
    if pixels.size:
        lo, hi = int(pixels.min()), int(pixels.max())
        low, high = layout.limits
        if lo < low or hi > high:
            kind = "signed" if layout.signed else "unsigned"
            raise MedcodecError(
                f"pixel values [{lo}, {hi}] outside the range of {layout.bits_stored}-bit "
                f"{kind} data [{low}, {high}]"
            )
    return np.ascontiguousarray(pixels, dtype=want.newbyteorder("<"))


def _as_list(value) -> list:
    if value is None or value == "":
        return []
    if isinstance(value, (list, MultiValue)):
        return list(value)
    return [value]


def _mark_lossy(ds: Dataset, ratio: float, method: str) -> None:
    """Lossy Image Compression = 01, append ratio and method to the history."""
    ds.LossyImageCompression = "01"
    ratios = _as_list(ds.get("LossyImageCompressionRatio"))
    ratios.append(DSfloat(format_number_as_ds(float(ratio))))
    methods = _as_list(ds.get("LossyImageCompressionMethod"))
    methods.append(method)
    ds.LossyImageCompressionRatio = ratios if len(ratios) > 1 else ratios[0]
    ds.LossyImageCompressionMethod = methods if len(methods) > 1 else methods[0]


def _add_derivation(ds: Dataset, text: str) -> None:
    """Append ``text`` to Derivation Description (ST, at most 1024 characters)."""
    old = str(ds.get("DerivationDescription", "") or "").strip()
    ds.DerivationDescription = (f"{old}; {text}" if old else text)[:1024]


def _new_instance(ds: Dataset) -> None:
    """New SOP Instance UID; reference the old one in Source Image Sequence."""
    old_uid = ds.SOPInstanceUID
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _UNCOMPRESSED_PREDECESSOR
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = old_uid
    item.PurposeOfReferenceCodeSequence = Sequence([code])
    if "SourceImageSequence" in ds:
        ds.SourceImageSequence.append(item)
    else:
        ds.SourceImageSequence = Sequence([item])
    new_uid = generate_uid()
    ds.SOPInstanceUID = new_uid
    ds.file_meta.MediaStorageSOPInstanceUID = new_uid


def _normalise_elements(ds: Dataset, big_endian: bool) -> None:
    """Parse every sequence, pad odd-length raw values, byte-swap O* VRs of a
    big endian source (pydicom converts the other VRs itself)."""
    for tag in list(ds._dict):
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            vr = elem.VR
            if vr is None or vr == "SQ" or (big_endian and vr in _SWAP_WIDTH):
                elem = ds[tag]  # convert: VR lookup / sequence parsing / value access
            elif elem.length != _UNDEFINED and elem.value is not None and len(elem.value) % 2:
                pad = b" " if vr in _TEXT_VRS else b"\x00"
                ds._dict[tag] = elem._replace(value=elem.value + pad, length=elem.length + 1)
                continue
            else:
                continue
        if elem.VR == "SQ":
            for item in elem.value or []:
                _normalise_elements(item, big_endian)
        elif big_endian and elem.VR in _SWAP_WIDTH and isinstance(elem.value, (bytes, bytearray)):
            width = _SWAP_WIDTH[elem.VR]
            value = bytes(elem.value)
            if len(value) % width == 0:
                elem.value = np.frombuffer(value, dtype=f">u{width}").astype(f"<u{width}").tobytes()


def _output_meta(ds: Dataset) -> FileMetaDataset:
    old = ds.file_meta
    meta = FileMetaDataset()
    if "FileMetaInformationGroupLength" not in old:
        meta.FileMetaInformationGroupLength = 0  # pydicom writes the real value
    for elem in old:
        meta.add(elem)
    if "FileMetaInformationVersion" not in meta:
        meta.FileMetaInformationVersion = b"\x00\x01"
    if not meta.get("MediaStorageSOPClassUID"):
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if not meta.get("MediaStorageSOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if not meta.get("ImplementationClassUID"):
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def merge_dicom(meta: bytes, pixels: np.ndarray, lossy: LossyInfo | None = None) -> bytes:
    """Rebuild a complete DICOM file (Explicit VR Little Endian, native pixels).

    ``meta`` comes from :func:`split_dicom`; ``pixels`` must match it (shape,
    dtype, values within Bits Stored and the signedness), else
    :class:`MedcodecError`. With ``lossy``, the lossy elements and a new SOP
    Instance UID are set (see the module docstring). Returns the file's bytes.
    """
    if lossy is not None and not isinstance(lossy, LossyInfo):
        raise MedcodecError(f"lossy must be a LossyInfo or None, got {type(lossy).__name__}")
    ds = _parse_meta(meta)
    try:
        with _quiet_pydicom():
            try:
                layout = _layout(ds)
            except _Bad as exc:
                raise MedcodecError(f"invalid DICOM metadata: {exc}") from exc
            for keyword in ("SOPClassUID", "SOPInstanceUID"):
                if not ds.get(keyword):
                    raise MedcodecError(f"invalid DICOM metadata: missing {keyword}")
            data = _check_pixels(pixels, layout).tobytes()
            if len(data) % 2:
                data += b"\x00"
            big_endian = not ds.original_encoding[1]
            _normalise_elements(ds, big_endian)
            for tag in ENCAPSULATION_ONLY:
                if tag in ds._dict:
                    del ds[tag]
            if "SamplesPerPixel" not in ds:
                ds.SamplesPerPixel = 1
            if "HighBit" not in ds:
                ds.HighBit = layout.bits_stored - 1
            ds.file_meta = _output_meta(ds)
            if lossy is not None:
                _mark_lossy(ds, lossy.ratio, lossy.method)
                if lossy.description:
                    _add_derivation(ds, lossy.description)
                _new_instance(ds)
            ds[PIXEL_DATA] = DataElement(PIXEL_DATA, "OW" if layout.bits_allocated == 16 else "OB", data)
            ds.preamble = _PREAMBLE
            buf = io.BytesIO()
            dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    except MedcodecError:
        raise
    except Exception as exc:
        raise MedcodecError(f"cannot rebuild the DICOM file ({_one_line(exc)})") from exc
    return buf.getvalue()


def write_dicom(path, data: bytes, force: bool = False) -> Path:
    """Write a file from :func:`merge_dicom` atomically (temporary file + rename).

    Refuses to overwrite an existing file unless ``force`` (OutputExistsError).
    """
    if not isinstance(data, (bytes, bytearray)) or bytes(data[128:132]) != b"DICM":
        raise MedcodecError(f"{path}: refusing to write data that is not a DICOM file")
    return atomic_write(path, bytes(data), force=force)
