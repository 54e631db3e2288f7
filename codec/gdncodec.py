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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from codec import container
from codec.entropy import decode, decode_factorized, encode, encode_factorized
from codec.errors import MedcodecError
from codec.intconv import round_half_up
from codec.package import CodecPackage
from codec.tiling import TileGrid, merge_tiles, split_tiles

FORMAT_MODE_LOSSY = "lossy"
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


def compress(src: Source, nets: Networks, pkg: CodecPackage, *, weights_sha256: str = "",
             timing: Timing | None = None, map_mode: str = "minmax") -> bytes:
    """Stored pixels -> a complete ``.mdc`` file (bytes)."""
    px = np.asarray(src.pixels)
    frames = [px] if px.ndim == 2 else list(px)
    if px.ndim not in (2, 3) or px.dtype.kind not in "iu" or px.dtype.itemsize > 2:
        raise MedcodecError(f"unsupported pixel array (shape {px.shape}, dtype {px.dtype}); need 8-16-bit integers")
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
        "model": pkg.name, "quality": pkg.quality, "checkpoint_sha256": pkg.sha256,
        "weights_sha256": weights_sha256 or pkg.meta.get("weights_sha256", ""),
        "mode": FORMAT_MODE_LOSSY, "source": src.kind,
        "rows": int(px.shape[-2]), "cols": int(px.shape[-1]), "frames": len(frames),
        "dtype": px.dtype.str, "bits_stored": int(src.bits_stored), "signed": bool(src.signed),
        "photometric": src.photometric, "input_map": maps,
        "tile": tile, "grid": [grid.grid_rows, grid.grid_cols], "tiles": len(streams),
    }
    return container.write_container(head, streams, meta=src.meta)


@dataclass
class Decoded:
    head: dict
    pixels: np.ndarray
    meta: bytes | None


def read(data: bytes, pkg: CodecPackage) -> container.Container:
    """Parse and check a file against the loaded package (model and hash)."""
    c = container.read_container(data, expected_model=pkg.name, expected_sha256=pkg.sha256)
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
    if any(lo > hi for lo, hi in maps) or h.get("mode") != FORMAT_MODE_LOSSY:
        raise container.ContainerError("HEAD input map or mode is invalid")
    return c


def decompress(data: bytes, nets: Networks, pkg: CodecPackage, timing: Timing | None = None) -> Decoded:
    """A ``.mdc`` file -> stored pixels (native dtype) and the DICOM metadata."""
    c = read(data, pkg)
    h = c.head
    grid = TileGrid(int(h["rows"]), int(h["cols"]), int(h["tile"]))
    dtype = np.dtype(h["dtype"])
    x01 = decode_tiles(c.tiles, nets, pkg, timing)
    frames = []
    for f, (lo, hi) in enumerate(h["input_map"]):
        img = merge_tiles(grid, x01[f * grid.count:(f + 1) * grid.count])
        frames.append(from_unit(img, int(lo), int(hi), dtype))
    pixels = frames[0] if len(frames) == 1 else np.stack(frames)
    return Decoded(head=h, pixels=pixels, meta=c.meta)
