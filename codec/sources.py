"""Image files in and out of the codec: DICOM, .npy and (with a decoder given) PNG.

Shared by the host CLI (``pipelines/codecio.py``) and the board app (``board/app.py``), so
both read an input into the same :class:`codec.gdncodec.Source` and write the same output:

- a DICOM is split into deflated metadata (kept in the ``.mdc``) and stored pixels at
  native depth; decoded, it gets every element back and is marked lossy (near-lossless:
  with its error bound in Derivation Description), unless the file is lossless, which
  keeps its SOP Instance UID and is not marked;
- ``.npy`` is a research input (2-D or 3-D, 8-16-bit integers), written back as ``.npy``;
- PNG needs a codec this package does not import (codec/ runs on the board: numpy,
  pydicom and constriction only). The host passes ``imagecodecs``' functions in
  (``png_decode`` / ``png_encode``); without them a PNG is a one-line error.

:func:`compress_file` / :func:`decompress_file` are one file through the codec, written
atomically; the caller says where the networks and the package come from (the zoo on the
host, the rendered runtime on the board). A residual-only file (no lossy layer: the default of
the lossless and near-lossless modes) is coded and decoded without asking for them, so no
network, package or torch is loaded.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from codec import container, gdncodec
from codec.dicom import LossyInfo, merge_dicom, split_dicom
from codec.errors import MedcodecError
from codec.fileio import atomic_write, check_writable
from codec.gdncodec import Networks, Source
from codec.package import CodecPackage

__all__ = ["METHOD", "METHOD_NEAR_LOSSLESS", "METHOD_RESIDUAL_NEAR_LOSSLESS", "bits_for", "compress_file", "decompress_file", "encode_output", "has_preamble", "kind_of",
           "load_source", "lossy_info", "output_suffix", "read_head"]

#: () -> (networks, package) for compressing; (HEAD) -> (networks, package) for decompressing
CodecFor = Callable[..., tuple[Networks, CodecPackage]]

METHOD = "MEDCODEC_GDN"  # Lossy Image Compression Method (0028,2114): a 16-char code string
METHOD_NEAR_LOSSLESS = "MEDCODEC_GDN_NL"  # the learned layer plus the near-lossless residual layer
METHOD_RESIDUAL_NEAR_LOSSLESS = "MEDCODEC_RES_NL"  # the near-lossless residual layer alone (no lossy layer)


def has_preamble(path) -> bool:
    """True when the file has a DICOM preamble ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def kind_of(path) -> str:
    """"dicom", "png" or "npy", from the suffix (or the DICOM preamble)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".png":
        return "png"
    if suffix == ".npy":
        return "npy"
    if suffix in (".dcm", ".dicom", "") or has_preamble(path):
        return "dicom"
    raise MedcodecError(f"{path}: unsupported input type {suffix!r} (DICOM, .png or .npy)")


def bits_for(arr: np.ndarray) -> int:
    """The bits (8..16) an integer array without a BitsStored needs."""
    if arr.dtype.kind == "i":
        span = max(abs(int(arr.min())), abs(int(arr.max())) + 1)
        return max(8, min(16, span.bit_length() + 1))
    return max(8, min(16, int(arr.max()).bit_length()))


def load_source(path, png_decode: Callable[[bytes], np.ndarray] | None = None) -> Source:
    """Read one input file into a ``Source`` (stored values and what to record)."""
    path = Path(path)
    if not path.is_file():
        raise MedcodecError(f"{path}: no such file")
    kind = kind_of(path)
    if kind == "dicom":
        meta, img = split_dicom(path)
        return Source(img.pixels, img.bits_stored, img.signed, "dicom", img.photometric, meta)
    if kind == "png":
        if png_decode is None:
            raise MedcodecError(f"{path}: PNG input needs a PNG decoder, which this installation lacks")
        try:
            arr = np.asarray(png_decode(path.read_bytes()))
        except Exception as exc:  # any decoder failure is one user error
            raise MedcodecError(f"{path}: not a readable PNG ({type(exc).__name__})") from None
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim != 2:
            raise MedcodecError(f"{path}: only single-channel (grey) PNG is supported, got shape {arr.shape}")
        return Source(arr, arr.dtype.itemsize * 8, False, "png")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # a damaged .npy can fail in many ways; all of them are one user error
        raise MedcodecError(f"{path}: not a readable .npy file ({type(exc).__name__})") from None
    if arr.ndim not in (2, 3) or arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2:
        raise MedcodecError(f"{path}: need a 2-D or 3-D array of 8-16-bit integers, got {arr.shape} {arr.dtype}")
    return Source(arr, bits_for(arr), arr.dtype.kind == "i", "npy")


def output_suffix(head: dict) -> str:
    """The suffix of a decoded file: the format it came from."""
    return {"dicom": ".dcm", "png": ".png", "npy": ".npy"}.get(head.get("source", ""), ".npy")


def lossy_info(head: dict, pixels: np.ndarray, compressed_bytes: int) -> LossyInfo | None:
    """What a decoded DICOM says about its compression (HEAD ``mode``): None when lossless (the
    SOP Instance UID is kept, nothing is marked); else ratio and method, and for near-lossless the
    error bound in Derivation Description."""
    mode = head.get("mode", gdncodec.FORMAT_MODE_LOSSY)
    if mode == gdncodec.FORMAT_MODE_LOSSLESS:
        return None
    ratio = round(pixels.size * pixels.dtype.itemsize / max(1, compressed_bytes), 2)
    if mode == gdncodec.FORMAT_MODE_NEAR_LOSSLESS:
        alone = container.is_residual_only(head)
        text = (f"medcodec near-lossless{' (residual layer only)' if alone else ''}, "
                f"max abs error {int(head['max_error'])} (stored values)")
        if head.get("target_psnr") is not None:
            text += f", chosen for PSNR >= {float(head['target_psnr']):g} dB"
        return LossyInfo(ratio=ratio, method=METHOD_RESIDUAL_NEAR_LOSSLESS if alone else METHOD_NEAR_LOSSLESS,
                         description=text)
    return LossyInfo(ratio=ratio, method=METHOD)


def encode_output(head: dict, pixels: np.ndarray, meta: bytes | None, compressed_bytes: int,
                  png_encode: Callable[[np.ndarray], bytes] | None = None) -> bytes:
    """Decoded pixels -> the bytes of the output file (DICOM, marked lossy unless lossless; PNG; .npy)."""
    source = head.get("source")
    if source == "dicom":
        if meta is None:
            raise MedcodecError("the file has no DICOM metadata (META chunk)")
        return merge_dicom(meta, pixels, lossy_info(head, pixels, compressed_bytes))
    if source == "png":
        if png_encode is None:
            raise MedcodecError("the file holds a PNG image; writing PNG needs an encoder this installation lacks")
        return png_encode(pixels)
    buf = io.BytesIO()
    np.save(buf, pixels, allow_pickle=False)
    return buf.getvalue()


def compress_file(src_path, dst, codec: CodecFor, *, force: bool = False,
                  png_decode: Callable[[bytes], np.ndarray] | None = None, mode: str = "lossy",
                  max_error: int | None = None, target_psnr: float | None = None,
                  lossy_layer: str | None = None, residual_predictor: str = "ls") -> dict:
    """One image file -> a ``.mdc`` file; ``codec()`` gives the networks and the package.

    ``mode`` / ``max_error`` / ``target_psnr`` / ``lossy_layer`` / ``residual_predictor``: as
    :func:`codec.gdncodec.compress`;
    ``lossy_layer`` None is the mode's default (:func:`codec.gdncodec.default_lossy_layer`: the
    learned layer for lossy, none for lossless and near-lossless). Without a lossy layer ``codec``
    is not called.
    """
    gdncodec.check_mode(mode, max_error, target_psnr, lossy_layer)
    layer = gdncodec.default_lossy_layer(mode) if lossy_layer is None else lossy_layer
    dst = check_writable(dst, force)
    src = load_source(src_path, png_decode)
    nets, pkg = codec() if layer == gdncodec.LAYER_LEARNED else (None, None)
    timing = gdncodec.Timing()
    t0 = time.perf_counter()
    data = gdncodec.compress(src, nets, pkg, timing=timing, mode=mode, max_error=max_error,
                             target_psnr=target_psnr, lossy_layer=layer, residual_predictor=residual_predictor)
    enc_s = time.perf_counter() - t0
    atomic_write(dst, data, force=force)
    head = container.read_container(data).head
    label = head["mode"] + (f" D={head['max_error']}" if head["mode"] == gdncodec.FORMAT_MODE_NEAR_LOSSLESS else "")
    if layer == gdncodec.LAYER_NONE:
        label += " (residual only, no lossy layer)"
    return {"bytes": len(data), "bpp": len(data) * 8 / src.pixels.size, "encode_s": enc_s, "timing": timing,
            "mode": label, "head": head}


def read_head(data: bytes, where) -> dict:
    """The HEAD of a ``.mdc`` file (checked), with a quality unless the file has no lossy layer;
    one-line errors naming ``where``."""
    try:
        head = container.read_container(data).head
    except container.ContainerError as exc:
        raise MedcodecError(f"{where}: {exc}") from None
    if not container.is_residual_only(head) and not isinstance(head.get("quality"), int):
        raise MedcodecError(f"{where}: HEAD has no quality")
    return head


def decompress_file(src_path, dst, codec: CodecFor, *, force: bool = False,
                    png_encode: Callable[[np.ndarray], bytes] | None = None) -> dict:
    """A ``.mdc`` file -> the image file it came from (``dst`` None: nothing written).

    ``codec(head)`` gives the networks and the package the file names (model, quality); it is not
    called for a residual-only file, which needs neither.
    """
    src_path = Path(src_path)
    if not src_path.is_file():
        raise MedcodecError(f"{src_path}: no such file")
    data = src_path.read_bytes()
    head = read_head(data, src_path)
    nets, pkg = (None, None) if container.is_residual_only(head) else codec(head)
    if dst is not None:
        dst = Path(dst)
        want = output_suffix(head)
        if dst.suffix.lower() != want:
            raise MedcodecError(f"{src_path}: holds a {head.get('source')} image; name the output *{want}")
        check_writable(dst, force)
    timing = gdncodec.Timing()
    t0 = time.perf_counter()
    try:
        dec = gdncodec.decompress(data, nets, pkg, timing=timing)
    except MedcodecError as exc:
        raise MedcodecError(f"{src_path}: {exc}") from None
    dec_s = time.perf_counter() - t0
    out = encode_output(dec.head, dec.pixels, dec.meta, len(data), png_encode)
    if dst is not None:
        atomic_write(dst, out, force=force)
    return {"decode_s": dec_s, "pixels": dec.pixels, "head": dec.head, "output": out, "timing": timing}
