"""Classical image codecs behind one interface, for baselines and comparisons.

Every codec is a :class:`ClassicalCodec` in :data:`CODECS` (``name -> codec``)
with ``kind`` ``"lossless"``, ``"near"`` (near-lossless, parameter ``near``) or
``"lossy"`` (rate parameter in ``codec.rate``). ``codec.encode(arr, precision,
**params) -> bytes`` and ``codec.decode(data) -> ndarray`` work on one frame in
the *coded domain* (below); :func:`encode_image` / :func:`decode_image` work on a
DICOM's stored values (one frame or a ``(frames, rows, cols)`` stack, coded per
frame) and :func:`encode_at_bpp` finds the lossy setting that lands on a target
bit rate. Everything runs in-process; no codec writes a file.

Coded domain: signed data, and telling the codecs the true precision
--------------------------------------------------------------------
JPEG-LS has no signed mode, and every codec here codes best when it knows how
many bits the samples really use, so each frame is mapped to non-negative
integers before coding (:func:`to_coded`):

* signed stored values (PixelRepresentation 1, int8/int16): ``x - min(frame)``,
  with precision ``P = bit_length(max - min)``. The offset ``min`` is side
  information: it is stored in the image's own dtype (2 bytes per frame for
  int16) and **counted in the bytes** of every codec that uses it; decoding adds
  it back, and the bit-exact check is made on the original stored values.
* unsigned stored values: no offset (no side information); ``P = max(BitsStored,
  bit_length(max))`` (BitsStored is the real precision; the ``max`` guard keeps
  files whose values overflow BitsStored exact).
* ``P`` is at least 2 (CharLS's lower limit). ``P <= 8`` is passed as uint8,
  ``9 <= P <= 16`` as uint16; more than 16 bits is refused.

What each encoder is told (imagecodecs 2026.3.6 unless said otherwise):

* JPEG-LS: ``imagecodecs.jpegls_encode`` has no precision argument (it codes
  uint16 as 16-bit, which costs 0.5-3 % on 10-13-bit data), so encoding goes
  through pyjpegls (CharLS 2.4.2, in-process, a locked dependency) with
  ``bits_stored = P`` and no SPIFF header (as DICOM holds it); decoding, and so
  the exactness check, goes through imagecodecs' CharLS 2.4.3. Without pyjpegls
  it falls back to imagecodecs (16-bit precision).
* JPEG 2000 (OpenJPEG): ``bitspersample = P`` (imagecodecs honours 9-15 for
  uint16 and 1-7 for uint8; 8 and 16 are the container sizes), raw J2K
  codestream (no JP2 box), one tile, one quality layer, default resolutions.
  Lossless: reversible 5/3. Lossy: irreversible 9/7. imagecodecs exposes no
  compression-ratio rate control for lossy JPEG 2000, only OpenJPEG's
  fixed-quality mode whose ``level`` is a target PSNR in dB (relative to
  ``2^P - 1``); :func:`encode_at_bpp` bisects that.
* JPEG-XL (libjxl): ``bitspersample = P`` (uint16 with P <= 8 is rejected by
  libjxl, hence uint8 there). Lossless: effort 7 (libjxl's default). Lossy:
  VarDCT, effort 7, parameter ``distance`` (bisected). imagecodecs tags uint16
  input as linear-light grey and uint8 as sRGB grey (no option to change it).
* HTJ2K (OpenJPH): reversible; imagecodecs signals the container depth (8 or
  16 bits), there is no precision argument.
* deflate: libdeflate level 12 of the raw stored bytes (little-endian, the
  image's own dtype, no offset) -- the floor any image codec should beat.

Bit rates are ``8 * bytes / (rows * cols * frames)`` from the real length of the
codestreams plus the side information.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import imagecodecs
import numpy as np

try:  # CharLS with a settable precision; see the module docstring.
    import jpeg_ls as _pyjpegls
except ImportError:  # pragma: no cover - pyjpegls is in requirements.lock
    _pyjpegls = None

__all__ = [
    "CODECS",
    "ClassicalCodec",
    "EncodedImage",
    "RateControl",
    "RateResult",
    "available_codecs",
    "codec_versions",
    "decode_image",
    "encode_at_bpp",
    "encode_image",
    "from_coded",
    "get_codec",
    "to_coded",
]

MIN_PRECISION = 2
MAX_PRECISION = 16

JXL_LOSSLESS_EFFORT = 7
JXL_LOSSY_EFFORT = 7
DEFLATE_LEVEL = 12  # libdeflate's strongest level
NUMTHREADS = 1  # single-threaded codecs: honest per-codec timings


# --------------------------------------------------------------------------
# coded domain
# --------------------------------------------------------------------------


def _frame_precision(frame: np.ndarray, bits_stored: int, signed: bool) -> tuple[int, int]:
    """``(offset, precision)`` for one frame of stored values."""
    lo = int(frame.min())
    hi = int(frame.max())
    if signed:
        offset = lo
        prec = (hi - lo).bit_length()
    else:
        if lo < 0:
            raise ValueError("unsigned image with negative values")
        offset = 0
        prec = max(int(bits_stored), hi.bit_length())
    prec = max(prec, MIN_PRECISION)
    if prec > MAX_PRECISION:
        raise ValueError(f"{prec}-bit samples are not supported (at most {MAX_PRECISION})")
    return offset, prec


def to_coded(frame: np.ndarray, bits_stored: int, signed: bool) -> tuple[np.ndarray, int, int]:
    """Map one frame of stored values to the coded domain.

    Returns ``(coded, offset, precision)``: ``coded`` is uint8 (precision <= 8) or
    uint16 and equals ``frame - offset``.
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"expected one 2-D frame, got shape {frame.shape}")
    if frame.dtype.kind not in "ui":
        raise ValueError(f"integer samples expected, got {frame.dtype}")
    offset, prec = _frame_precision(frame, bits_stored, signed)
    dtype = np.uint8 if prec <= 8 else np.uint16
    if offset == 0 and frame.dtype == dtype:
        coded = np.ascontiguousarray(frame)
    else:
        coded = np.ascontiguousarray((frame.astype(np.int32) - offset).astype(dtype))
    return coded, offset, prec


def from_coded(coded: np.ndarray, offset: int, dtype) -> np.ndarray:
    """Inverse of :func:`to_coded`: add the offset back, clip to ``dtype``."""
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype)
    out = coded.astype(np.int64) + int(offset)
    if out.size and (out.min() < info.min or out.max() > info.max):  # lossy overshoot
        out = np.clip(out, info.min, info.max)
    return out.astype(dtype)


# --------------------------------------------------------------------------
# codec wrappers: one small encode/decode pair per codec
# --------------------------------------------------------------------------


def _jpegls_encode(arr: np.ndarray, prec: int, near: int = 0) -> bytes:
    near = int(near)
    if _pyjpegls is not None:
        rows, cols = arr.shape
        return bytes(_pyjpegls.encode_buffer(arr.tobytes(), rows, cols, 1, prec, lossy_error=near))
    return imagecodecs.jpegls_encode(arr, level=near)


def _jpegls_decode(data: bytes) -> np.ndarray:
    return imagecodecs.jpegls_decode(data)


def _j2k_bps(arr: np.ndarray, prec: int) -> int:
    return prec if arr.dtype == np.uint16 or prec < 8 else 8


def _j2k_lossless_encode(arr: np.ndarray, prec: int) -> bytes:
    return imagecodecs.jpeg2k_encode(
        arr, codecformat="J2K", bitspersample=_j2k_bps(arr, prec), reversible=True,
        numthreads=NUMTHREADS,
    )


def _j2k_lossy_encode(arr: np.ndarray, prec: int, psnr_db: float = 45.0) -> bytes:
    level = float(min(max(psnr_db, 1.0), 1000.0))
    return imagecodecs.jpeg2k_encode(
        arr, level=level, codecformat="J2K", bitspersample=_j2k_bps(arr, prec),
        reversible=False, numthreads=NUMTHREADS,
    )


def _j2k_decode(data: bytes) -> np.ndarray:
    return imagecodecs.jpeg2k_decode(data, numthreads=NUMTHREADS)


def _jxl_lossless_encode(arr: np.ndarray, prec: int) -> bytes:
    return imagecodecs.jpegxl_encode(
        arr, lossless=True, effort=JXL_LOSSLESS_EFFORT, bitspersample=prec,
        numthreads=NUMTHREADS,
    )


def _jxl_lossy_encode(arr: np.ndarray, prec: int, distance: float = 1.0) -> bytes:
    return imagecodecs.jpegxl_encode(
        arr, lossless=False, distance=float(distance), effort=JXL_LOSSY_EFFORT,
        bitspersample=prec, numthreads=NUMTHREADS,
    )


def _jxl_decode(data: bytes) -> np.ndarray:
    return imagecodecs.jpegxl_decode(data, numthreads=NUMTHREADS)


def _htj2k_encode(arr: np.ndarray, prec: int) -> bytes:
    return imagecodecs.htj2k_encode(arr, reversible=True)


def _htj2k_decode(data: bytes) -> np.ndarray:
    return imagecodecs.htj2k_decode(data)


def _deflate_encode(arr: np.ndarray, prec: int) -> bytes:
    le = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
    return imagecodecs.deflate_encode(le.tobytes(), level=DEFLATE_LEVEL)


def _deflate_decode(data: bytes) -> bytes:
    return imagecodecs.deflate_decode(data)


# --------------------------------------------------------------------------
# the common interface
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class RateControl:
    """How :func:`encode_at_bpp` searches a lossy codec's parameter.

    The search runs in ``u = x`` or ``u = -x`` (bit rate increasing in ``u``),
    where ``x = log(param)`` when ``log`` else ``param``.
    """

    param: str  # keyword passed to ``encode``
    lo: float
    hi: float
    log: bool  # search in log(param)
    increasing: bool  # bpp increases with the parameter
    slope: float  # typical d log(bpp) / d u, for the first steps
    guess: Callable[[float, int], float]  # (target_bpp, precision) -> param

    def to_u(self, value: float) -> float:
        x = math.log(value) if self.log else value
        return x if self.increasing else -x

    def from_u(self, u: float) -> float:
        x = u if self.increasing else -u
        return math.exp(x) if self.log else x

    @property
    def u_bounds(self) -> tuple[float, float]:
        a, b = self.to_u(self.lo), self.to_u(self.hi)
        return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class ClassicalCodec:
    """One classical codec setting family behind a common interface."""

    name: str  # registry key
    label: str  # short heading for tables
    kind: str  # "lossless" | "near" | "lossy"
    library: str  # the library that does the work
    settings: dict  # fixed settings, for the record
    _encode: Callable = field(repr=False)
    _decode: Callable = field(repr=False)
    raw: bool = False  # codes the stored bytes as they are (no coded domain)
    rate: RateControl | None = None

    def encode(self, arr: np.ndarray, precision: int | None = None, **params) -> bytes:
        """Encode one coded-domain frame (uint8/uint16, 2-D) to a codestream."""
        arr = np.ascontiguousarray(arr)
        if precision is None:
            precision = max(MIN_PRECISION, int(arr.max()).bit_length()) if arr.size else 8
        return bytes(self._encode(arr, int(precision), **params))

    def decode(self, data: bytes, shape=None, dtype=None) -> np.ndarray:
        """Decode one codestream. ``shape``/``dtype`` are needed only by ``raw``
        codecs (deflate), whose stream carries no image header."""
        out = self._decode(data)
        if self.raw:
            if shape is None or dtype is None:
                raise ValueError(f"{self.name}: decode needs shape and dtype")
            out = np.frombuffer(out, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
            out = out.astype(np.dtype(dtype), copy=False)
        return out

    def describe(self) -> dict:
        d = {"label": self.label, "kind": self.kind, "library": self.library, **self.settings}
        if self.rate is not None:
            d["rate_parameter"] = self.rate.param
            d["rate_parameter_range"] = [self.rate.lo, self.rate.hi]
        return d


def _j2k_guess(target_bpp: float, prec: int) -> float:
    # Typical images here land near 0.5 bpp at 38-50 dB (relative to 2^P - 1),
    # with ~6 dB per bit per pixel; the search corrects the rest.
    return 42.0 + 6.02 * math.log2(max(target_bpp, 1e-3) / 0.5)


def _jxl_guess(target_bpp: float, prec: int) -> float:
    return min(max((1.5 / max(target_bpp, 1e-3)) ** 1.1, 0.1), 20.0)


_JLS_LIB = (
    "pyjpegls/CharLS (encode, bits_stored=P); imagecodecs charls (decode)"
    if _pyjpegls is not None
    else "imagecodecs charls (16-bit precision for uint16)"
)

_REGISTRY: list[ClassicalCodec] = [
    ClassicalCodec(
        "jpegls", "JPEG-LS", "lossless", _JLS_LIB, {"near": 0},
        _jpegls_encode, _jpegls_decode,
    ),
    ClassicalCodec(
        "j2k", "J2K", "lossless", "imagecodecs openjpeg",
        {"transform": "reversible 5/3", "format": "J2K codestream", "layers": 1},
        _j2k_lossless_encode, _j2k_decode,
    ),
    ClassicalCodec(
        "jxl", "JXL", "lossless", "imagecodecs libjxl",
        {"effort": JXL_LOSSLESS_EFFORT, "format": "bare codestream"},
        _jxl_lossless_encode, _jxl_decode,
    ),
    ClassicalCodec(
        "htj2k", "HTJ2K", "lossless", "imagecodecs openjph",
        {"transform": "reversible 5/3", "precision": "container (8/16 bits)"},
        _htj2k_encode, _htj2k_decode,
    ),
    ClassicalCodec(
        "deflate", "deflate", "lossless", "imagecodecs libdeflate",
        {"level": DEFLATE_LEVEL, "input": "raw stored bytes, little-endian"},
        _deflate_encode, _deflate_decode, raw=True,
    ),
    ClassicalCodec(
        "jpegls-near", "JPEG-LS", "near", _JLS_LIB, {"parameter": "near"},
        _jpegls_encode, _jpegls_decode,
    ),
    ClassicalCodec(
        "j2k-lossy", "J2K", "lossy", "imagecodecs openjpeg",
        {"transform": "irreversible 9/7", "format": "J2K codestream", "layers": 1,
         "rate_control": "OpenJPEG fixed quality (target PSNR in dB), bisected"},
        _j2k_lossy_encode, _j2k_decode,
        rate=RateControl("psnr_db", 5.0, 200.0, log=False, increasing=True,
                         slope=0.115, guess=_j2k_guess),
    ),
    ClassicalCodec(
        "jxl-lossy", "JXL", "lossy", "imagecodecs libjxl",
        {"effort": JXL_LOSSY_EFFORT, "mode": "VarDCT",
         "rate_control": "butteraugli distance, bisected"},
        _jxl_lossy_encode, _jxl_decode,
        rate=RateControl("distance", 0.01, 25.0, log=True, increasing=False,
                         slope=0.9, guess=_jxl_guess),
    ),
]


def _available(codec: ClassicalCodec) -> bool:
    mod = {"jpegls": "JPEGLS", "j2k": "JPEG2K", "jxl": "JPEGXL", "htj2k": "HTJ2K",
           "deflate": "DEFLATE"}[codec.name.split("-")[0]]
    try:
        return bool(getattr(imagecodecs, mod).available)
    except Exception:  # pragma: no cover
        return False


CODECS: dict[str, ClassicalCodec] = {c.name: c for c in _REGISTRY if _available(c)}


def available_codecs(kind: str | None = None) -> list[ClassicalCodec]:
    """The registered codecs (of one ``kind``), in table order."""
    return [c for c in CODECS.values() if kind is None or c.kind == kind]


def get_codec(name: str | ClassicalCodec) -> ClassicalCodec:
    if isinstance(name, ClassicalCodec):
        return name
    try:
        return CODECS[name]
    except KeyError:
        raise KeyError(f"unknown codec {name!r}; have {', '.join(CODECS)}") from None


def codec_versions() -> dict:
    """Versions of imagecodecs and of the codec libraries it was built with."""
    v = imagecodecs.version(dict)
    keys = ("imagecodecs", "openjpeg", "charls", "libjxl", "openjph", "libdeflate", "zlib", "numpy")
    out = {k: v.get(k) for k in keys}
    if _pyjpegls is not None:
        try:
            from importlib.metadata import version

            out["pyjpegls"] = version("pyjpegls")
        except Exception:  # pragma: no cover
            out["pyjpegls"] = "unknown"
        # pyjpegls has no version call for the CharLS it bundles; 1.5.1 ships 2.4.2
        out["pyjpegls_charls"] = "2.4.2" if out["pyjpegls"] == "1.5.1" else "unknown"
    return out


# --------------------------------------------------------------------------
# whole images: per frame, side information counted
# --------------------------------------------------------------------------


@dataclass
class EncodedImage:
    """A stored-value image (one frame or a stack) coded per frame."""

    codec: str
    streams: list[bytes]  # one codestream per frame
    offsets: list[int]  # per-frame offset added back on decode
    precisions: list[int]  # per-frame coded precision P
    side_bytes: int  # side information (the offsets), counted in n_bytes
    shape: tuple  # stored shape, (rows, cols) or (frames, rows, cols)
    dtype: str  # stored dtype
    params: dict
    encode_s: float

    @property
    def n_bytes(self) -> int:
        return sum(len(s) for s in self.streams) + self.side_bytes

    @property
    def n_pixels(self) -> int:
        return int(np.prod(self.shape))

    @property
    def bpp(self) -> float:
        return 8.0 * self.n_bytes / self.n_pixels


def _frames(pixels: np.ndarray) -> list[np.ndarray]:
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        return [pixels]
    if pixels.ndim == 3:
        return [pixels[i] for i in range(pixels.shape[0])]
    raise ValueError(f"expected (rows, cols) or (frames, rows, cols), got shape {pixels.shape}")


def _defaults(pixels: np.ndarray, bits_stored, signed) -> tuple[int, bool]:
    if signed is None:
        signed = pixels.dtype.kind == "i"
    if bits_stored is None:
        bits_stored = pixels.dtype.itemsize * 8
    return int(bits_stored), bool(signed)


def encode_image(codec, pixels: np.ndarray, bits_stored: int | None = None,
                 signed: bool | None = None, **params) -> EncodedImage:
    """Encode stored values (2-D or a frame stack) with ``codec`` and ``params``.

    ``bits_stored``/``signed`` default to the dtype's size and sign. Signed
    frames are offset to unsigned (2 side bytes per int16 frame, counted).
    """
    codec = get_codec(codec)
    pixels = np.asarray(pixels)
    bits_stored, signed = _defaults(pixels, bits_stored, signed)
    streams, offsets, precs = [], [], []
    side = 0
    t_enc = 0.0
    for frame in _frames(pixels):
        if codec.raw:
            t0 = time.perf_counter()
            streams.append(codec.encode(frame, frame.dtype.itemsize * 8, **params))
            t_enc += time.perf_counter() - t0
            offsets.append(0)
            precs.append(frame.dtype.itemsize * 8)
            continue
        coded, offset, prec = to_coded(frame, bits_stored, signed)
        t0 = time.perf_counter()
        streams.append(codec.encode(coded, prec, **params))
        t_enc += time.perf_counter() - t0
        offsets.append(offset)
        precs.append(prec)
        if signed:
            side += pixels.dtype.itemsize  # the offset, in the stored dtype
    return EncodedImage(codec.name, streams, offsets, precs, side, tuple(pixels.shape),
                        pixels.dtype.str, dict(params), t_enc)


def decode_image(codec, enc: EncodedImage, *, timing: dict | None = None) -> np.ndarray:
    """Decode an :class:`EncodedImage` back to stored values (shape and dtype of
    the original). ``timing['decode_s']`` receives the codec time if given."""
    codec = get_codec(codec)
    dtype = np.dtype(enc.dtype)
    frame_shape = enc.shape[-2:]
    out = []
    t_dec = 0.0
    for stream, offset in zip(enc.streams, enc.offsets, strict=True):
        t0 = time.perf_counter()
        dec = codec.decode(stream, shape=frame_shape, dtype=dtype)
        t_dec += time.perf_counter() - t0
        if dec.shape != tuple(frame_shape):
            raise ValueError(f"{codec.name}: decoded shape {dec.shape} != {tuple(frame_shape)}")
        out.append(dec if codec.raw else from_coded(dec, offset, dtype))
    if timing is not None:
        timing["decode_s"] = t_dec
    return out[0] if len(enc.shape) == 2 else np.stack(out)


# --------------------------------------------------------------------------
# rate targeting
# --------------------------------------------------------------------------


@dataclass
class RateResult:
    """Outcome of :func:`encode_at_bpp`."""

    encoded: EncodedImage
    target_bpp: float
    param: float  # value of ``codec.rate.param`` used
    within_tol: bool
    evaluations: int  # encodes made by this call
    trace: list = field(default_factory=list)  # [(param, bpp)] in evaluation order

    @property
    def bpp(self) -> float:
        return self.encoded.bpp

    @property
    def rel_error(self) -> float:
        return self.bpp / self.target_bpp - 1.0


def encode_at_bpp(codec, pixels: np.ndarray, target_bpp: float, tol: float = 0.03, *,
                  bits_stored: int | None = None, signed: bool | None = None,
                  max_evals: int = 10, history: dict | None = None) -> RateResult:
    """Encode with a lossy codec at ``target_bpp`` (within ``tol`` relative).

    Searches ``codec.rate.param`` by safeguarded interpolation of log(bpp)
    (regula falsi with bisection fallback). Encodings already made for the same
    image can be passed in ``history`` (``{param: EncodedImage}``, filled in by
    this call), so consecutive targets start from a bracket. If the target
    cannot be met within ``tol`` (parameter range or ``max_evals`` exhausted, or
    a rate step), the closest encoding is returned with ``within_tol=False``.
    """
    codec = get_codec(codec)
    rc = codec.rate
    if rc is None:
        raise ValueError(f"{codec.name} has no rate control (kind {codec.kind})")
    if not target_bpp > 0:
        raise ValueError("target_bpp must be positive")
    pixels = np.asarray(pixels)
    bits_stored, signed = _defaults(pixels, bits_stored, signed)
    if history is None:
        history = {}
    u_lo, u_hi = rc.u_bounds
    log_t = math.log(target_bpp)
    trace = []
    evals = 0

    def err(enc: EncodedImage) -> float:
        return math.log(enc.bpp) - log_t

    def evaluate(u: float) -> EncodedImage:
        nonlocal evals
        param = rc.from_u(u)
        enc = encode_image(codec, pixels, bits_stored, signed, **{rc.param: param})
        history[param] = enc
        trace.append((param, enc.bpp))
        evals += 1
        return enc

    def closest():
        return min(history.items(), key=lambda kv: abs(kv[1].bpp / target_bpp - 1.0))

    prec = max(_frame_precision(f, bits_stored, signed)[1] for f in _frames(pixels))
    eps = 1e-6
    narrow = tol / rc.slope  # a bracket this narrow in u should already hold the target
    signs: list[int] = []  # error signs of this call's encodes, in order
    scan = 0  # steps of the local scan used once the curve turns out to be jumpy
    while True:
        if history:
            param, enc = closest()
            if abs(enc.bpp / target_bpp - 1.0) <= tol + 1e-12:
                return RateResult(enc, target_bpp, param, True, evals, trace)
            if evals >= max_evals:
                return RateResult(enc, target_bpp, param, False, evals, trace)
        pts = sorted((rc.to_u(p), err(e)) for p, e in history.items())
        u_new = None
        if not pts:
            u_new = rc.to_u(min(max(rc.guess(target_bpp, prec), rc.lo), rc.hi))
        else:
            # adjacent points (in parameter order) that straddle the target; the
            # rate curve may be non-monotonic, so take the narrowest such pair
            crossings = [(pts[i], pts[i + 1]) for i in range(len(pts) - 1)
                         if pts[i][1] < 0 < pts[i + 1][1]]
            if crossings:
                (ul, el), (uh, eh) = min(crossings, key=lambda c: c[1][0] - c[0][0])
                if uh - ul > narrow:
                    # regula falsi with the Illinois correction: when the same
                    # end has been kept for a while, halve the other end's weight
                    run = 0
                    for sg in reversed(signs):
                        if sg != signs[-1]:
                            break
                        run += 1
                    if run > 1 and signs[-1] < 0:
                        eh *= 0.5 ** (run - 1)
                    elif run > 1:
                        el *= 0.5 ** (run - 1)
                    frac = -el / (eh - el)
                    if not 0.02 <= frac <= 0.98:
                        frac = 0.5
                    u_new = ul + frac * (uh - ul)
                else:
                    # the curve jumps over the target here (rate steps, or a
                    # non-monotonic curve): probe around it
                    scan += 1
                    k = (scan + 1) // 2
                    u_new = 0.5 * (ul + uh) + (k * narrow if scan % 2 else -k * narrow)
            elif all(e < 0 for _, e in pts) or all(e > 0 for _, e in pts):
                # one-sided: extrapolate from the end nearest the target
                end_pts = pts[::-1] if pts[0][1] < 0 else pts
                u0, e0 = end_pts[0]
                slope = rc.slope
                if len(end_pts) > 1 and end_pts[1][0] != u0:
                    s = (e0 - end_pts[1][1]) / (u0 - end_pts[1][0])
                    if s > 0:
                        slope = min(max(s, rc.slope / 4), rc.slope * 4)
                step = -e0 / slope * 1.1  # overshoot a little to get a bracket
                step = max(min(step, 3.0 / rc.slope), -3.0 / rc.slope)
                u_new = u0 + step
        if u_new is not None:
            u_new = min(max(u_new, u_lo), u_hi)
            if any(abs(u_new - u) <= eps * max(1.0, abs(u)) for u, _ in pts):
                u_new = None  # at a bound already tried: unreachable
        if u_new is None:
            param, enc = closest()
            return RateResult(enc, target_bpp, param, False, evals, trace)
        enc = evaluate(u_new)
        signs.append(1 if err(enc) > 0 else -1)
