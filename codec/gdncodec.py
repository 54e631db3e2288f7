"""The GDN hyperprior codec around its networks: input map, tiling, entropy coding, container.

Everything that is not a network lives here, numpy-only, so the host and the board
run the same code. The networks come in through a small interface (``Networks``):
on the host they are torch modules (``models/runtime.py``); on the board, the DPU
or the integer emulator. The hyper-synthesis h_s is not among them: it runs here,
in exact integers (``CodecPackage.scale_index``), because the table choice must be
identical on both sides.

Per tile (T x T, T = the package's tile size)::

    x01 --analysis--> y (M, T/16, T/16), z (N, T/64, T/64)        [network, float]
    z_int = round(z);  z symbols = z_int - center   -> factorized tables   (stream 0)
    k = scale_index(z_int)                          [integers only, both sides]
    y_int = round(y)                                -> Gaussian table k    (stream 1)
    decoder: streams -> z_int -> k -> y_int --synthesis--> x01_hat          [network, float]

Stored values map to the network's [0, 1] input with the image's own range
(per frame): x01 = (x - lo) / (hi - lo); lo and hi go into the file, so nothing is
clipped and no display window is applied.

Modes (HEAD ``mode``)::

    "lossy"          the tiles only
    "near-lossless"  tiles + per frame a residual stream (RESD chunk, ``codec/residual.py``):
                     |x - decoded| <= HEAD max_error everywhere (a fixed D, or the largest D whose
                     PSNR meets HEAD target_psnr, chosen per frame)
    "lossless"       tiles + residual streams with D = 0: bit-exact

The residual layer codes x against x_hat, the lossy layer's reconstruction exactly as the decoder
rebuilds it (the encoder decodes its own tiles through the same function as ``decompress``); each
residual stream carries the CRC-32 of its x_hat, so a decoder whose networks (another backend, another
build) rebuild a different x_hat stops with a one-line error instead of returning wrong pixels.

Lossy layer (``lossy_layer``): ``"learned"`` (the tiles above) or ``"none"``: a *residual-only* file
(near-lossless or lossless only), whose RESD streams are coded without x_hat, with no TILE and a HEAD
that names no model (``lossy_layer: "none"``, ``tiles: 0``; ``docs/container.md``). Coding and decoding
it needs no networks and no package (``nets`` and ``pkg`` may be None). Measured on the 62 images of
the shared data set (``docs/residual.md``), residual-only lossless is 6-27 % smaller than the committed
learned layer plus the residual, which is why the command line makes it the default of those modes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from codec import container, residual
from codec.entropy import decode, decode_factorized, encode, encode_factorized
from codec.errors import MedcodecError
from codec.intconv import round_half_up
from codec.package import CodecPackage
from codec.tiling import TileGrid, merge_tiles, split_tiles

FORMAT_MODE_LOSSY = "lossy"
FORMAT_MODE_NEAR_LOSSLESS = "near-lossless"
FORMAT_MODE_LOSSLESS = "lossless"
MODES = (FORMAT_MODE_LOSSY, FORMAT_MODE_NEAR_LOSSLESS, FORMAT_MODE_LOSSLESS)
LAYER_LEARNED = container.LAYER_LEARNED  # the lossy layer is the learned codec's tiles
LAYER_NONE = container.LAYER_NONE  # residual-only: no lossy layer
LOSSY_LAYERS = container.LOSSY_LAYERS
BATCH_TILES = 8  # tiles per network call: bounds memory on the board


class Networks(Protocol):
    def analysis(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, T) float32 in [0, 1] -> y (B, M, T/16, T/16), z (B, N, T/64, T/64), float."""

    def synthesis(self, y_int: np.ndarray) -> np.ndarray:
        """(B, M, T/16, T/16) integer-valued -> (B, T, T) float in [0, 1]."""


@dataclass
class Timing:
    analysis_s: float = 0.0
    synthesis_s: float = 0.0
    hyper_s: float = 0.0
    coding_s: float = 0.0
    residual_s: float = 0.0
    extra: dict = field(default_factory=dict)


INPUT_MAPS = ("minmax", "container")


def input_map(frame: np.ndarray, mode: str = "minmax", bits_stored: int = 16, signed: bool = False) -> tuple[int, int]:
    """(lo, hi) of the affine map to [0, 1].

    ``minmax`` (the default, what the models are trained with): the frame's own min and max stored
    values. ``container``: the whole range BitsStored allows (for measuring what the choice costs: CT
    uses about 12 of its 16 bits, so this spends the network's precision on values that never occur).
    """
    if mode == "minmax":
        return int(frame.min()), int(frame.max())
    if mode == "container":
        return (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    raise ValueError(f"unknown input map {mode!r} (one of {INPUT_MAPS})")


def to_unit(frame: np.ndarray, lo: int, hi: int) -> np.ndarray:
    scale = float(hi - lo) if hi > lo else 1.0
    return ((frame.astype(np.float64) - lo) / scale).astype(np.float32)


def from_unit(x01: np.ndarray, lo: int, hi: int, dtype) -> np.ndarray:
    scale = float(hi - lo) if hi > lo else 1.0
    x = round_half_up(np.asarray(x01, dtype=np.float64) * scale + lo)
    return np.clip(x, lo, hi).astype(dtype)


def _z_int(z: np.ndarray) -> np.ndarray:
    return np.clip(round_half_up(z), -(2**15), 2**15 - 1)


def encode_tiles(tiles: list[np.ndarray], nets: Networks, pkg: CodecPackage, timing: Timing | None = None) -> list[list[bytes]]:
    """Unit-range tiles -> per tile [z stream, y stream]."""
    timing = timing or Timing()
    out: list[list[bytes]] = []
    for start in range(0, len(tiles), BATCH_TILES):
        batch = np.stack(tiles[start:start + BATCH_TILES]).astype(np.float32)
        t0 = time.perf_counter()
        y, z = nets.analysis(batch)
        timing.analysis_s += time.perf_counter() - t0
        for b in range(batch.shape[0]):
            t0 = time.perf_counter()
            z_int = _z_int(z[b])
            k = pkg.scale_index(z_int)
            t1 = time.perf_counter()
            y_int = round_half_up(y[b]).astype(np.int64)
            z_sym = z_int.astype(np.int64) - pkg.z_center[:, None, None]
            out.append([encode_factorized(z_sym, pkg.z_tables), encode(y_int, k, pkg.y_tables)])
            timing.hyper_s += t1 - t0
            timing.coding_s += time.perf_counter() - t1
    return out


def decode_tiles(streams: list[list[bytes]], nets: Networks, pkg: CodecPackage, timing: Timing | None = None) -> list[np.ndarray]:
    """Per tile [z stream, y stream] -> unit-range tiles (float)."""
    timing = timing or Timing()
    tile = pkg.tile
    n, m = int(pkg.meta["N"]), int(pkg.meta["M"])
    z_shape = (n, tile // 64, tile // 64)
    out: list[np.ndarray] = []
    ys = []
    for i, s in enumerate(streams):
        if len(s) != 2:
            raise MedcodecError(f"tile {i}: expected 2 streams, found {len(s)}")
        t0 = time.perf_counter()
        z_int = decode_factorized(s[0], z_shape, pkg.z_tables).astype(np.int64) + pkg.z_center[:, None, None]
        t1 = time.perf_counter()
        k = pkg.scale_index(np.clip(z_int, -(2**15), 2**15 - 1))
        t2 = time.perf_counter()
        ys.append(decode(s[1], k, pkg.y_tables).astype(np.float32))
        timing.coding_s += (t1 - t0) + (time.perf_counter() - t2)
        timing.hyper_s += t2 - t1
        if ys[-1].shape != (m, tile // 16, tile // 16):
            raise MedcodecError(f"tile {i}: latent shape {ys[-1].shape} does not match the model")
    for start in range(0, len(ys), BATCH_TILES):
        t0 = time.perf_counter()
        x = nets.synthesis(np.stack(ys[start:start + BATCH_TILES]))
        timing.synthesis_s += time.perf_counter() - t0
        out.extend(np.asarray(x[b], dtype=np.float32) for b in range(x.shape[0]))
    return out


@dataclass
class Source:
    """Pixels to code and what to record about them."""

    pixels: np.ndarray  # stored values, (rows, cols) or (frames, rows, cols)
    bits_stored: int
    signed: bool
    kind: str = "npy"  # "dicom" | "png" | "npy"
    photometric: str = "MONOCHROME2"
    meta: bytes | None = None  # deflated DICOM metadata, if any


def default_lossy_layer(mode: str) -> str:
    """The lossy layer a mode gets when none is asked for: the learned one for lossy coding, none
    (residual-only) for lossless and near-lossless, which is smaller with the committed models
    (``docs/residual.md``)."""
    return LAYER_LEARNED if mode == FORMAT_MODE_LOSSY else LAYER_NONE


def check_mode(mode: str, max_error: int | None, target_psnr: float | None, lossy_layer: str | None = None) -> None:
    """Raise MedcodecError unless the mode, its parameters and the lossy layer (None: the mode's
    default) go together."""
    if mode not in MODES:
        raise MedcodecError(f"unknown mode {mode!r} (one of {', '.join(MODES)})")
    if lossy_layer is not None and lossy_layer not in LOSSY_LAYERS:
        raise MedcodecError(f"unknown lossy layer {lossy_layer!r} (one of {', '.join(LOSSY_LAYERS)})")
    if mode == FORMAT_MODE_LOSSY and lossy_layer == LAYER_NONE:
        raise MedcodecError("lossy mode needs the learned layer; without a lossy layer the mode is lossless or "
                            "near-lossless")
    if mode == FORMAT_MODE_NEAR_LOSSLESS:
        if (max_error is None) == (target_psnr is None):
            raise MedcodecError("near-lossless mode needs exactly one of a max error D >= 1 or a target PSNR")
        if max_error is not None and (isinstance(max_error, bool) or not isinstance(max_error, int)
                                      or not 1 <= max_error <= residual.MAX_ERROR_LIMIT):
            raise MedcodecError(f"max error must be an integer in 1..{residual.MAX_ERROR_LIMIT}, got {max_error!r}")
        if target_psnr is not None and (isinstance(target_psnr, bool) or not isinstance(target_psnr, (int, float))
                                        or not 0 < float(target_psnr) < 1000):
            raise MedcodecError(f"target PSNR must be a number of dB in (0, 1000), got {target_psnr!r}")
    elif max_error not in (None, 0) or target_psnr is not None:
        raise MedcodecError(f"{mode} mode takes neither a max error nor a target PSNR")


def _frames_of(px: np.ndarray) -> list[np.ndarray]:
    return [px] if px.ndim == 2 else list(px)


def _rebuild(streams: list[list[bytes]], grid: TileGrid, maps, dtype, nets: Networks, pkg: CodecPackage,
             timing: Timing | None) -> list[np.ndarray]:
    """Tile streams -> the lossy reconstruction per frame (stored values): what every decoder sees."""
    x01 = decode_tiles(streams, nets, pkg, timing)
    return [from_unit(merge_tiles(grid, x01[f * grid.count:(f + 1) * grid.count]), int(lo), int(hi), dtype)
            for f, (lo, hi) in enumerate(maps)]


def _pixels(src: Source) -> np.ndarray:
    px = np.asarray(src.pixels)
    if px.ndim not in (2, 3) or px.dtype.kind not in "iu" or px.dtype.itemsize > 2 or px.size == 0:
        raise MedcodecError(f"unsupported pixel array (shape {px.shape}, dtype {px.dtype}); need 8-16-bit integers")
    return px


def lossy_layer(src: Source, nets: Networks, pkg: CodecPackage, *, timing: Timing | None = None,
                map_mode: str = "minmax") -> tuple[dict, list[list[bytes]]]:
    """Stored pixels -> (HEAD of a lossy file, tile streams)."""
    px = _pixels(src)
    frames = _frames_of(px)
    tile = pkg.tile
    maps, tiles = [], []
    grid = None
    for f in frames:
        lo, hi = input_map(f, map_mode, src.bits_stored, src.signed)
        maps.append([lo, hi])
        grid, ts = split_tiles(to_unit(f, lo, hi), tile)
        tiles.extend(ts)
    streams = encode_tiles(tiles, nets, pkg, timing)
    head = {
        "model": pkg.name, "quality": pkg.quality, "checkpoint_sha256": pkg.sha256, "backend": pkg.backend,
        "weights_sha256": pkg.meta.get("weights_sha256", ""),
        "mode": FORMAT_MODE_LOSSY, "source": src.kind,
        "rows": int(px.shape[-2]), "cols": int(px.shape[-1]), "frames": len(frames),
        "dtype": px.dtype.str, "bits_stored": int(src.bits_stored), "signed": bool(src.signed),
        "photometric": src.photometric, "input_map": maps,
        "tile": tile, "grid": [grid.grid_rows, grid.grid_cols], "tiles": len(streams),
    }
    return head, streams


_learned_layer = lossy_layer  # ``compress`` has a keyword of the same name


def residual_only_head(src: Source) -> dict:
    """The HEAD of a residual-only file before its mode is set: geometry and what to write back."""
    px = _pixels(src)
    return {
        container.LOSSY_LAYER_KEY: LAYER_NONE, "mode": FORMAT_MODE_LOSSLESS, "source": src.kind,
        "rows": int(px.shape[-2]), "cols": int(px.shape[-1]), "frames": len(_frames_of(px)),
        "dtype": px.dtype.str, "bits_stored": int(src.bits_stored), "signed": bool(src.signed),
        "photometric": src.photometric, "tiles": 0,
    }


def lossy_reconstruction(head: dict, streams: list[list[bytes]], nets: Networks, pkg: CodecPackage,
                         timing: Timing | None = None) -> list[np.ndarray]:
    """x_hat per frame, from a HEAD and tile streams, exactly as :func:`decompress` rebuilds it."""
    grid = TileGrid(int(head["rows"]), int(head["cols"]), int(head["tile"]))
    return _rebuild(streams, grid, head["input_map"], np.dtype(head["dtype"]), nets, pkg, timing)


def compress(src: Source, nets: Networks | None, pkg: CodecPackage | None, *, weights_sha256: str = "",
             timing: Timing | None = None, map_mode: str = "minmax", mode: str = FORMAT_MODE_LOSSY,
             max_error: int | None = None, target_psnr: float | None = None,
             lossy_layer: str = LAYER_LEARNED, residual_predictor: str = "ls") -> bytes:
    """Stored pixels -> a complete ``.mdc`` file (bytes).

    ``mode`` ``"lossy"`` (the default), ``"lossless"``, or ``"near-lossless"`` with either
    ``max_error`` (D >= 1: ``|x - decoded| <= D``) or ``target_psnr`` (dB, peak 2**bits_stored - 1:
    the largest D per frame whose PSNR meets it; see ``residual.encode_for_psnr``).
    ``lossy_layer`` ``"learned"`` (the default: tiles, then the residual against their x_hat) or
    ``"none"`` (residual-only, lossless / near-lossless only; ``nets`` and ``pkg`` are not used
    and may be None). ``residual_predictor``: the residual layer's predictor, one of
    ``residual.PREDICTORS`` ("ls", the default: smallest; "blend": about 6 times faster).
    """
    check_mode(mode, max_error, target_psnr, lossy_layer)
    timing = timing if timing is not None else Timing()
    if lossy_layer == LAYER_NONE:
        head, streams = residual_only_head(src), []
    else:
        if nets is None or pkg is None:
            raise MedcodecError("the learned lossy layer needs the networks and the codec package")
        head, streams = _learned_layer(src, nets, pkg, timing=timing, map_mode=map_mode)
        if weights_sha256:
            head["weights_sha256"] = weights_sha256
    residuals: list[bytes] = []
    if mode != FORMAT_MODE_LOSSY:
        if lossy_layer == LAYER_NONE:
            x_hats = [None] * head["frames"]
        else:
            x_hats = lossy_reconstruction(head, streams, nets, pkg, timing)
        t0 = time.perf_counter()
        bounds = []
        for f, (x, x_hat) in enumerate(zip(_frames_of(np.asarray(src.pixels)), x_hats, strict=True)):
            try:
                if target_psnr is not None:
                    enc, _ = residual.encode_for_psnr(x, float(target_psnr), src.bits_stored, x_hat,
                                                      predictor=residual_predictor)
                else:
                    enc = residual.encode(x, x_hat, max_error or 0, predictor=residual_predictor)
            except residual.ResidualError as exc:
                raise MedcodecError(f"frame {f}: {exc}" if len(x_hats) > 1 else str(exc)) from None
            residuals.append(enc.data)
            bounds.append(enc.header.max_error)
        timing.residual_s += time.perf_counter() - t0
        head["max_error"] = max(bounds)
        head["mode"] = FORMAT_MODE_LOSSLESS if head["max_error"] == 0 else FORMAT_MODE_NEAR_LOSSLESS
        if target_psnr is not None:
            head["target_psnr"] = float(target_psnr)
            head["frame_max_error"] = bounds
    return container.write_container(head, streams, meta=src.meta, residuals=residuals)


@dataclass
class Decoded:
    head: dict
    pixels: np.ndarray
    meta: bytes | None


def _read_residual_only(c: container.Container) -> container.Container:
    h = c.head
    try:
        dtype = np.dtype(h["dtype"])
    except (KeyError, TypeError, ValueError) as exc:
        raise container.ContainerError(f"HEAD is inconsistent ({type(exc).__name__}: {exc})") from None
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        raise container.ContainerError(f"HEAD dtype {h['dtype']!r} is not an 8-16-bit integer type")
    if h.get("mode") not in (FORMAT_MODE_NEAR_LOSSLESS, FORMAT_MODE_LOSSLESS):
        raise container.ContainerError(f"HEAD mode {h.get('mode')!r} is invalid for a file without a lossy layer "
                                       "(lossless or near-lossless)")
    return c


def read(data: bytes, pkg: CodecPackage | None) -> container.Container:
    """Parse and check a file against the loaded package (model and hash); a residual-only file
    needs none (``pkg`` may be None), a file with a learned layer needs its package."""
    c = container.read_container(data, expected_model=None if pkg is None else pkg.name,
                                 expected_sha256=None if pkg is None else pkg.sha256)
    h = c.head
    if container.is_residual_only(h):
        c = _read_residual_only(c)
    elif pkg is None:
        raise container.ContainerError(f"the file's lossy layer needs its model ({h.get('model')} "
                                       f"q{h.get('quality')}), which was not loaded")
    else:
        _read_learned(c, pkg)
    if h["mode"] != FORMAT_MODE_LOSSY:
        d = h.get("max_error")
        if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= residual.MAX_ERROR_LIMIT \
                or (d == 0) != (h["mode"] == FORMAT_MODE_LOSSLESS):
            raise container.ContainerError(f"HEAD max_error {d!r} does not fit mode {h['mode']!r}")
        if len(c.residuals) != int(h["frames"]):
            raise container.ContainerError(f"{h['mode']} file has {len(c.residuals)} residual streams for "
                                           f"{h['frames']} frame(s)")
    return c


def _read_learned(c: container.Container, pkg: CodecPackage) -> None:
    h = c.head
    try:
        grid = TileGrid(int(h["rows"]), int(h["cols"]), int(h["tile"]))
        frames = int(h["frames"])
        dtype = np.dtype(h["dtype"])
        maps = [(int(lo), int(hi)) for lo, hi in h["input_map"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise container.ContainerError(f"HEAD is inconsistent ({type(exc).__name__}: {exc})") from None
    if int(h["tile"]) != pkg.tile:
        raise container.ContainerError(f"tile size {h['tile']} differs from the model's {pkg.tile}")
    if len(maps) != frames or grid.count * frames != len(c.tiles) or dtype.kind not in "iu":
        raise container.ContainerError("HEAD geometry does not match the tiles")
    if any(lo > hi for lo, hi in maps) or h.get("mode") not in MODES:
        raise container.ContainerError("HEAD input map or mode is invalid")
    if h["mode"] == FORMAT_MODE_LOSSY and c.residuals:
        raise container.ContainerError("a lossy file holds residual (RESD) chunks")


def decompress(data: bytes, nets: Networks | None, pkg: CodecPackage | None,
               timing: Timing | None = None) -> Decoded:
    """A ``.mdc`` file -> stored pixels (native dtype) and the DICOM metadata.

    Lossless and near-lossless files get their residual applied; a residual stream that does not
    match the rebuilt x_hat, or whose bound exceeds HEAD max_error, raises MedcodecError. A
    residual-only file (HEAD ``lossy_layer: "none"``) needs neither ``nets`` nor ``pkg``.
    """
    c = read(data, pkg)
    h = c.head
    timing = timing if timing is not None else Timing()
    if container.is_residual_only(h):
        frames = [None] * int(h["frames"])
    else:
        frames = lossy_reconstruction(h, c.tiles, nets, pkg, timing)
    if h["mode"] != FORMAT_MODE_LOSSY:
        t0 = time.perf_counter()
        out = []
        shape, dtype = (int(h["rows"]), int(h["cols"])), np.dtype(h["dtype"])
        for f, (stream, x_hat) in enumerate(zip(c.residuals, frames, strict=True)):
            where = f"frame {f}: " if len(frames) > 1 else ""
            try:
                bound = residual.read_header(stream).max_error
                if bound > int(h["max_error"]):
                    raise residual.ResidualError(f"residual bound {bound} exceeds HEAD max_error {h['max_error']}")
                out.append(residual.decode(stream, x_hat, shape=shape, dtype=dtype))
            except residual.ResidualError as exc:
                raise MedcodecError(f"{where}{exc}") from None
        frames = out
        timing.residual_s += time.perf_counter() - t0
    pixels = frames[0] if len(frames) == 1 else np.stack(frames)
    return Decoded(head=h, pixels=pixels, meta=c.meta)
