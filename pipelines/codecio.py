"""Reading inputs and writing outputs for the learned codec: DICOM, PNG, .npy.

A DICOM is split into deflated metadata (kept in the ``.mdc``) and stored pixels
at native depth; PNG and .npy are research inputs (grey, 8-16 bits). Decoded
output goes back into the format it came from.
"""

from __future__ import annotations

import io
from pathlib import Path

import imagecodecs
import numpy as np

from codec.dicom import LossyInfo, merge_dicom, split_dicom
from codec.errors import MedcodecError
from codec.gdncodec import Source
from pipelines.paths import has_preamble

METHOD = "MEDCODEC_GDN"  # Lossy Image Compression Method (0028,2114): a 16-char code string


def kind_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix == ".npy":
        return "npy"
    if suffix in (".dcm", ".dicom", "") or has_preamble(path):
        return "dicom"
    raise MedcodecError(f"{path}: unsupported input type {suffix!r} (DICOM, .png or .npy)")


def _bits_for(arr: np.ndarray) -> int:
    if arr.dtype.kind == "i":
        span = max(abs(int(arr.min())), abs(int(arr.max())) + 1)
        return max(8, min(16, span.bit_length() + 1))
    return max(8, min(16, int(arr.max()).bit_length()))


def load_source(path) -> Source:
    """Read one input file into a ``Source`` (stored values and what to record)."""
    path = Path(path)
    if not path.is_file():
        raise MedcodecError(f"{path}: no such file")
    kind = kind_of(path)
    if kind == "dicom":
        meta, img = split_dicom(path)
        return Source(img.pixels, img.bits_stored, img.signed, "dicom", img.photometric, meta)
    if kind == "png":
        try:
            arr = imagecodecs.png_decode(path.read_bytes())
        except Exception as exc:
            raise MedcodecError(f"{path}: not a readable PNG ({type(exc).__name__})") from None
        if arr.ndim == 3 and arr.shape[2] in (1,):
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise MedcodecError(f"{path}: only single-channel (grey) PNG is supported, got shape {arr.shape}")
        return Source(arr, arr.dtype.itemsize * 8, False, "png")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise MedcodecError(f"{path}: not a readable .npy file ({type(exc).__name__})") from None
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        raise MedcodecError(f"{path}: need a 2-D or 3-D array of 8-16-bit integers, got {arr.shape} {arr.dtype}")
    return Source(arr, _bits_for(arr), arr.dtype.kind == "i", "npy")


def output_suffix(head: dict) -> str:
    return {"dicom": ".dcm", "png": ".png", "npy": ".npy"}.get(head.get("source", ""), ".npy")


def encode_output(head: dict, pixels: np.ndarray, meta: bytes | None, compressed_bytes: int) -> bytes:
    """Decoded pixels -> the bytes of the output file (DICOM marked lossy, PNG, or .npy)."""
    source = head.get("source")
    if source == "dicom":
        if meta is None:
            raise MedcodecError("the file has no DICOM metadata (META chunk)")
        raw = pixels.size * pixels.dtype.itemsize
        ratio = raw / max(1, compressed_bytes)
        return merge_dicom(meta, pixels, LossyInfo(ratio=round(ratio, 2), method=METHOD))
    if source == "png":
        return imagecodecs.png_encode(pixels)
    buf = io.BytesIO()
    np.save(buf, pixels, allow_pickle=False)
    return buf.getvalue()
