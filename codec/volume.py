"""Seed 001 for volumes: a learned inter-slice predictor plus the residual layer, lossless or near-lossless.

Founding document 001 (Nagoor et al., "Lossless compression for volumetric medical images using deep
neural network with local sampling") predicts every voxel with an MLP (1024-512-256-128-1, LeakyReLU)
from a local 3-D neighbourhood and codes the prediction error with an arithmetic coder. Here:

1. **Local sampling over the previous slices.** For voxel ``(s, r, c)`` the input is a window around
   ``(r, c)`` in each of the slices ``s-1, s-2, s-3`` (:data:`SAMPLINGS`): the seed's *3-D pyramid*
   (5x5, 9x9, 13x13: the apex at the voxel, widening away from it) or its *3-D cube* (11x11 in each).
   Outside the volume (borders, the slices before the first) is padded with the volume's minimum, as
   in the seed.
2. **The MLP, DPU-exact.** The network is the seed's, with LeakyReLU's slope at the DPU's 26/256, and
   it runs in power-of-two int8 exactly as the DPU computes it (``codec.fixednet``'s rules; the
   builtin quantizer of ``quantize/builtin.py`` made it). Its int8 input is the neighbourhood
   *relative to the co-located voxel of slice s-1* (``ref``) in units of ``2**shift`` stored values
   (``shift`` per volume, from the spread of slice-to-slice differences; clipped to +-127), plus
   ``ref``'s level over the volume's range; its int8 output is the correction ``c``:
   ``x_hat = clip(ref + c * 2**shift, lo, hi)``. Relative inputs and outputs keep the 12-16-bit
   precision that an int8 map of the whole range would lose (an int8 input keeps 8 bits of what it
   maps). Every matrix product is of int8 values with at most 1024 terms, so its partial sums stay
   below 2**24 and float32 BLAS computes them exactly, in any order, on any machine: the encoder and
   the decoder get the same ``x_hat``.
3. **The current slice's causal part, and the coder.** Slice ``s`` is coded by the residual layer
   (``codec/residual.py``) against ``x_hat``: its prediction blends ``x_hat`` (and ``x_hat`` plus the
   decoded neighbours' residuals) with the causal intra-slice predictors, its contexts see
   ``x_hat``'s gradient, and its adaptive tables feed constriction's range coder. The first slice has
   no ``x_hat`` (the residual layer alone). The residual stream carries the CRC-32 of ``x_hat``, so a
   decoder that computes another prediction stops instead of writing wrong voxels.

Parallelism: the seed decodes voxel by voxel. Because the MLP sees only decoded slices, one slice's
predictions are one batch (a fixed-shape network call per slice: on the DPU the MLP is a chain of
1x1 convolutions with LeakyReLU 26/256), and the residual layer decodes the slice in diagonal
wavefronts (``2 rows + cols`` vectorised steps, the seed's future work). A series is cut into groups of
``group`` slices (:data:`GROUP` in new files, HEAD ``group``; 0 or absent: one chain), each coded on its
own from its first slice, so the groups are decoded in parallel processes (``codec.parallel``) and one
slice needs only its group's slices before it; lossless encoding runs every slice as its own job (the
decoder's previous slices are the originals). What stays sequential is slice after slice in a group.

numpy + constriction only (it runs on a board too); ``models/mlp3d.py`` trains the network.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from codec import residual
from codec.errors import MedcodecError
from codec.fixednet import LEAKY_DEN, LEAKY_NUM, FixedNet
from codec.intconv import round_half_up, saturate
from codec.parallel import default_workers, map_processes

__all__ = ["SAMPLINGS", "DEPTH", "GROUP", "PreviousSlice", "VolumeError", "VolumePredictor", "choose_shift", "features", "encode_volume",
           "decode_volume", "load_predictor", "pack_meta", "unpack_meta"]

#: (slice offset dz, window side) per sampling, nearest slice first
SAMPLINGS: dict[str, tuple[tuple[int, int], ...]] = {
    "pyramid": ((1, 5), (2, 9), (3, 13)),
    "cube": ((1, 11), (2, 11), (3, 11)),
}
DEPTH = 3  # previous slices used
#: slices per group in new files: a group is coded on its own (its first slice without x_hat), so the
#: groups of a series decode in parallel and one slice needs only its group's slices before it
GROUP = 16
FEATURE_ONE = 128  # a feature's integer q stands for the real value q / 128 (the MLP's fp_in = 7)
FP_IN = 7
FP_OUT = 7
QMAX = 127  # features and targets are clipped to +-127 (symmetric, so fp_in stays 7)
MAX_SHIFT = 15
EXACT_TERMS = 1024  # int8 x int8 products summed over <= 1024 terms are exact in float32
assert LEAKY_DEN == 256  # the int32 LeakyReLU below shifts by 8
VOXELS_PER_CALL = 8192  # voxels per network call (whole rows): keeps the intermediates in cache


class VolumeError(MedcodecError):
    """A volume (or its stream) cannot be coded or decoded."""


def num_features(sampling: str) -> int:
    return sum(w * w for _, w in SAMPLINGS[sampling]) + 1


def choose_shift(vol: np.ndarray) -> int:
    """``shift`` for a volume: the smallest k with the 99th percentile of |slice - previous slice|
    <= 127 * 2**k (0 for a single slice). Any k decodes; this one keeps most differences unclipped."""
    if vol.shape[0] < 2:
        return 0
    d = np.abs(np.diff(vol.astype(np.int64), axis=0))
    p99 = float(np.percentile(d, 99))
    k = 0
    while k < MAX_SHIFT and p99 > QMAX * (1 << k):
        k += 1
    return k


def _rel(d: np.ndarray, shift: int) -> np.ndarray:
    """Integer differences -> int8 features: round half up at 2**-shift, clipped to +-127."""
    if shift > 0:
        d = (d + (1 << (shift - 1))) >> shift
    return np.clip(d, -QMAX, QMAX)


def _level(ref: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """ref's level over the volume's range as an integer in -127..127."""
    if hi <= lo:
        return np.zeros_like(ref)
    return ((ref - lo) * (2 * QMAX) + (hi - lo) // 2) // (hi - lo) - QMAX


def features(prev: np.ndarray, sampling: str, shift: int, lo: int, hi: int,
             rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The int8 network inputs for every voxel of one slice (or of ``rows`` of it).

    ``prev``: the slices s-1, s-2, s-3 (DEPTH, H, W), integers; missing slices already filled with
    ``lo``. Returns ``(X, ref)``: X (n, F) int8-valued int16 (nearest slice's window first, each
    window row-major, then the level), ref (n,) int64 the co-located voxel of slice s-1.
    """
    if sampling not in SAMPLINGS:
        raise VolumeError(f"unknown sampling {sampling!r}; one of {', '.join(SAMPLINGS)}")
    prev = np.asarray(prev, dtype=np.int64)
    _, h, w = prev.shape
    rows = rows or slice(0, h)
    r0, r1 = rows.start, rows.stop
    ref = prev[0, r0:r1, :]
    cols = []
    for dz, side in SAMPLINGS[sampling]:
        half = side // 2
        padded = np.pad(prev[dz - 1], half, mode="constant", constant_values=lo)
        for dy in range(side):
            band = padded[r0 + dy: r1 + dy]
            for dx in range(side):
                cols.append(_rel(band[:, dx: dx + w] - ref, shift))
    cols.append(_level(ref, lo, hi))
    x = np.stack(cols, axis=-1).reshape(-1, len(cols)).astype(np.int16)
    return x, ref.reshape(-1)


def _mlp_int(net: FixedNet, x: np.ndarray) -> np.ndarray:
    """A chain of 1x1 int8 layers on (n, F) integers: FixedLayer.forward's arithmetic, exactly.

    The products run in float32 BLAS (exact: int8 x int8, <= 1024 terms, so every partial sum is an
    integer below 2**24), the rest in int32: ``round_half_up(acc * 2**-cut)`` is
    ``(acc + 2**(cut-1)) >> cut`` and the DPU's LeakyReLU ``round_half_up(y * 26/256)`` is
    ``(26 y + 128) >> 8`` (a layer whose bias shift is negative takes the float64 path of the emulator).
    """
    h = np.asarray(x, dtype=np.float32)
    fp = net.fp_in
    for layer in net.layers:
        w = layer.weight
        if layer.op != "conv" or w.shape[2:] != (1, 1) or layer.stride != 1 or layer.padding != 0:
            raise VolumeError("the volume predictor must be a chain of 1x1 convolutions")
        if w.shape[1] > EXACT_TERMS:
            raise VolumeError(f"a layer with {w.shape[1]} inputs is not exact in float32 (at most {EXACT_TERMS})")
        wt = getattr(layer, "_wt32", None)
        if wt is None:
            wt = np.ascontiguousarray(w[:, :, 0, 0].T, dtype=np.float32)
            layer._wt32 = wt  # cached on the layer: the weights never change
        sb, cut = fp + layer.fp_w - layer.fp_b, fp + layer.fp_w - layer.fp_out
        prod = h @ wt
        if sb < 0 or cut < 0:  # not met by legal DPU positions of this network; the emulator's float64 path
            acc = prod.astype(np.float64)
            if layer.bias is not None:
                acc += np.asarray(layer.bias, dtype=np.float64) * (2.0 ** sb)
            if layer.act == "relu":
                acc = np.maximum(acc, 0.0)
            y = round_half_up(acc * (2.0 ** -cut))
            if layer.act == "leaky_relu":
                y = np.where(y < 0, round_half_up(y * LEAKY_NUM / LEAKY_DEN), y)
            h = saturate(y, net.bits).astype(np.float32)
        else:
            acc = prod.astype(np.int32)
            if layer.bias is not None:
                acc += (np.asarray(layer.bias, dtype=np.int64) << sb).astype(np.int32)
            if layer.act == "relu":
                np.maximum(acc, 0, out=acc)
            if cut > 0:
                acc += 1 << (cut - 1)
                acc >>= cut
            if layer.act == "leaky_relu":
                neg = acc < 0
                acc[neg] = (acc[neg] * LEAKY_NUM + LEAKY_DEN // 2) >> 8
            lo, hi = -(1 << (net.bits - 1)), (1 << (net.bits - 1)) - 1
            np.clip(acc, lo, hi, out=acc)
            h = acc.astype(np.float32)
        fp = layer.fp_out
    return h[:, 0].astype(np.int64)


@dataclass
class VolumePredictor:
    """The int8 MLP and how it samples: predicts a slice from the three before it."""

    net: FixedNet
    sampling: str

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise VolumeError(f"unknown sampling {self.sampling!r}")
        first = self.net.layers[0].weight.shape[1]
        if first != num_features(self.sampling):
            raise VolumeError(f"network takes {first} inputs, {self.sampling} sampling gives "
                              f"{num_features(self.sampling)}")
        if self.net.fp_in != FP_IN or self.net.fp_out != FP_OUT or self.net.bits != 8:
            raise VolumeError(f"volume predictor must be int8 with fp_in {FP_IN} and fp_out {FP_OUT}")

    def predict(self, prev: np.ndarray, shift: int, lo: int, hi: int) -> np.ndarray:
        """x_hat (H, W) int64 for the slice after ``prev`` (DEPTH, H, W; s-1 first)."""
        _, h, w = prev.shape
        out = np.empty((h, w), dtype=np.int64)
        step = max(1, VOXELS_PER_CALL // w)
        for r0 in range(0, h, step):
            r1 = min(h, r0 + step)
            x, ref = features(prev, self.sampling, shift, lo, hi, slice(r0, r1))
            c = _mlp_int(self.net, x)
            out[r0:r1] = np.clip(ref + c * (1 << shift), lo, hi).reshape(r1 - r0, w)
        return out


class PreviousSlice:
    """The zero-parameter reference predictor: slice s-1 as decoded is x_hat of slice s (no network; the
    residual layer's blend still mixes it with the causal intra-slice predictors)."""

    sampling = "previous-slice"
    #: what a file made with it records as its package hash (there are no weights)
    SHA256 = "0" * 63 + "1"

    def predict(self, prev: np.ndarray, shift: int, lo: int, hi: int) -> np.ndarray:
        return np.asarray(prev[0], dtype=np.int64).copy()


def _previous(recon: list[np.ndarray], s: int, lo: int, shape) -> np.ndarray:
    prev = np.full((DEPTH,) + tuple(shape), lo, dtype=np.int64)
    for i in range(DEPTH):
        if s - 1 - i >= 0:
            prev[i] = recon[s - 1 - i]
    return prev


def _xhat(predictor, before: list[np.ndarray], lo: int, hi: int, shift: int, shape, dtype) -> np.ndarray | None:
    """x_hat of the slice after ``before`` (the slices of its group before it, as the decoder has them;
    empty: the first slice of a group, coded without x_hat)."""
    if not before:
        return None
    return predictor.predict(_previous(before, len(before), lo, shape), shift, lo, hi).astype(dtype)


def _start(s: int, group: int) -> int:
    """The first slice of slice ``s``'s group (``group`` slices a group; 0: one group)."""
    return s - s % group if group else 0


def _encode_slice(window: np.ndarray, predictor, shift: int, lo: int, hi: int, max_error: int,
                  residual_predictor: str) -> tuple[bytes, np.ndarray]:
    """One slice of a lossless volume: ``window`` is the slices of its group before it (DEPTH at
    most) and the slice itself, last."""
    before = [np.asarray(w, dtype=np.int64) for w in window[:-1]]
    xh = _xhat(predictor, before, lo, hi, shift, window.shape[1:], window.dtype)
    enc = residual.encode(window[-1], x_hat=xh, max_error=max_error, predictor=residual_predictor)
    return enc.data, np.asarray(enc.recon, dtype=np.int64)


def _encode_chain(vol: np.ndarray, predictor, shift: int, lo: int, hi: int, max_error: int,
                  residual_predictor: str, step=None) -> list[bytes]:
    """The slices of one group, one after the other (near-lossless: each predicted from the
    reconstruction of those before it, as the decoder will have them)."""
    recon: list[np.ndarray] = []
    streams = []
    for s in range(vol.shape[0]):
        xh = _xhat(predictor, recon, lo, hi, shift, vol.shape[1:], vol.dtype)
        enc = residual.encode(vol[s], x_hat=xh, max_error=max_error, predictor=residual_predictor)
        streams.append(enc.data)
        recon.append(np.asarray(enc.recon, dtype=np.int64))
        if step is not None:
            step(1)
    return streams


def _groups(n: int, group: int) -> list[tuple[int, int]]:
    step = group or n
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _run_chains(fn, jobs: list[tuple], sizes: list[int], workers: int | None, progress) -> list:
    """One job per group: in this process when there is one job or one worker (progress slice by
    slice), else in worker processes (progress group by group)."""
    if len(jobs) <= 1 or (default_workers() if workers is None else workers) <= 1:
        return [fn(*job, step=progress) for job in jobs]
    return map_processes(fn, jobs, workers, None if progress is None else (lambda i: progress(sizes[i])))


def encode_volume(vol: np.ndarray, predictor: VolumePredictor | PreviousSlice, *, max_error: int = 0, shift: int | None = None,
                  progress=None, residual_predictor: str = "ls", workers: int | None = None,
                  group: int = 0) -> tuple[list[bytes], dict]:
    """Code a volume (S, H, W) of integers slice by slice; returns (one residual stream per slice, info).

    ``max_error`` 0: lossless; D >= 1: every voxel within D (later slices are predicted from the
    reconstruction the decoder will have). ``residual_predictor``: the residual layer's predictor
    (``residual.PREDICTORS``; with "ls" the previous slice's prediction joins its least-squares
    features: a 3-D least-squares predictor). ``group``: slices per independently coded group (the
    first slice of a group is coded on its own, the others from the slices of their group before
    them); 0: one group. ``info``: shift, lo, hi.

    The work runs in up to ``workers`` processes (``codec.parallel``; the streams never depend on it):
    lossless, every slice is a job (the decoder's previous slices are the originals); near-lossless,
    every group is one (each slice needs the reconstruction of the one before it).
    """
    vol = np.asarray(vol)
    if vol.ndim != 3 or vol.dtype.kind not in "iu" or vol.shape[0] < 1:
        raise VolumeError(f"need a 3-D integer volume, got {vol.shape} {vol.dtype}")
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group < 0:
        raise VolumeError(f"group must be an integer >= 0 (slices per group; 0: one group), got {group!r}")
    group = int(group)
    if workers is not None and workers < 1:
        raise VolumeError(f"workers must be at least 1, got {workers}")
    lo, hi = int(vol.min()), int(vol.max())
    shift = choose_shift(vol) if shift is None else int(shift)
    if not 0 <= shift <= MAX_SHIFT:
        raise VolumeError(f"shift {shift} outside 0..{MAX_SHIFT}")
    info = {"shift": shift, "lo": lo, "hi": hi}
    if max_error == 0:
        jobs = [(vol[max(_start(s, group), s - DEPTH):s + 1], predictor, shift, lo, hi, 0, residual_predictor)
                for s in range(vol.shape[0])]
        coded = map_processes(_encode_slice, jobs, workers, None if progress is None else (lambda _i: progress(1)))
        for s, (_, rec) in enumerate(coded):
            if not np.array_equal(rec, vol[s]):  # cannot happen: lossless; checked so that it never goes unseen
                raise VolumeError(f"internal error: slice {s} does not reconstruct exactly")
        return [data for data, _ in coded], info
    spans = _groups(vol.shape[0], group)
    jobs = [(vol[a:b], predictor, shift, lo, hi, max_error, residual_predictor) for a, b in spans]
    chains = _run_chains(_encode_chain, jobs, [b - a for a, b in spans], workers, progress)
    return [data for chain in chains for data in chain], info


def _decode_chain(streams: list[bytes], first: int, predictor, rows: int, cols: int, dtype,
                  shift: int, lo: int, hi: int, step=None) -> np.ndarray:
    """Slices ``first ..`` of one group, one after the other."""
    out = np.empty((len(streams), rows, cols), dtype=dtype)
    recon: list[np.ndarray] = []
    for s, data in enumerate(streams):
        xh = _xhat(predictor, recon, lo, hi, shift, (rows, cols), dtype)
        try:
            x = residual.decode(data, x_hat=xh, shape=(rows, cols), dtype=dtype)
        except MedcodecError as exc:
            raise VolumeError(f"slice {first + s}: {exc}") from None
        out[s] = x
        recon.append(np.asarray(x, dtype=np.int64))
        if step is not None:
            step(1)
    return out


def decode_volume(streams: list[bytes], predictor: VolumePredictor | PreviousSlice, *, rows: int, cols: int, dtype,
                  shift: int, lo: int, hi: int, progress=None, group: int = 0, workers: int | None = None,
                  slices=None) -> np.ndarray:
    """The inverse of :func:`encode_volume`: (S, rows, cols) of ``dtype``.

    The groups are decoded in up to ``workers`` processes. ``slices`` (indices): decode only those
    (and the slices of their groups before them) and return them in ascending order.
    """
    n = len(streams)
    if workers is not None and workers < 1:
        raise VolumeError(f"workers must be at least 1, got {workers}")
    wanted = sorted(set(range(n) if slices is None else (int(s) for s in slices)))
    if wanted and not 0 <= wanted[0] <= wanted[-1] < n:
        raise VolumeError(f"slice {wanted[-1] if wanted[-1] >= n else wanted[0]} out of range 0..{n - 1}")
    jobs, spans = [], []
    for a, b in _groups(n, group):
        last = max((s for s in wanted if a <= s < b), default=None)
        if last is not None:
            spans.append((a, last + 1))
            jobs.append((streams[a:last + 1], a, predictor, rows, cols, dtype, shift, lo, hi))
    chains = _run_chains(_decode_chain, jobs, [b - a for a, b in spans], workers, progress)
    full = {a + k: chain[k] for (a, _), chain in zip(spans, chains, strict=True) for k in range(len(chain))}
    out = np.empty((len(wanted), rows, cols), dtype=dtype)
    for k, s in enumerate(wanted):
        out[k] = full[s]
    return out


def load_predictor(path) -> VolumePredictor:
    """A predictor package (``.npz``: the FixedNet under ``mlp.*`` and the sampling) -> VolumePredictor."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        net = FixedNet.from_arrays(arrays, "mlp")
        sampling = str(arrays["sampling"])
    except (OSError, KeyError, ValueError) as exc:
        raise VolumeError(f"{path}: not a volume predictor package ({type(exc).__name__})") from None
    return VolumePredictor(net, sampling)


# -- per-slice metadata in one META chunk -------------------------------------------------------------
_U32 = struct.Struct(">I")


def pack_meta(blobs: list[bytes]) -> bytes:
    """u32 count, then u32 length + bytes per slice (each the slice's deflated DICOM metadata)."""
    return _U32.pack(len(blobs)) + b"".join(_U32.pack(len(b)) + bytes(b) for b in blobs)


def unpack_meta(data: bytes, count: int) -> list[bytes]:
    if len(data) < 4:
        raise VolumeError("META: truncated slice count")
    (n,) = _U32.unpack_from(data, 0)
    if n != count:
        raise VolumeError(f"META: {n} slices, HEAD says {count}")
    pos, out = 4, []
    for i in range(n):
        if len(data) - pos < 4:
            raise VolumeError(f"META: truncated at slice {i}")
        (k,) = _U32.unpack_from(data, pos)
        pos += 4
        if len(data) - pos < k:
            raise VolumeError(f"META: slice {i} needs {k} bytes, {len(data) - pos} left")
        out.append(data[pos: pos + k])
        pos += k
    if pos != len(data):
        raise VolumeError(f"META: {len(data) - pos} trailing bytes")
    return out


# -- the .mdc file of a volume ---------------------------------------------------------------------
#: HEAD ``kind`` of a volume file (an image file has none)
KIND = "volume"
MODE_LOSSLESS, MODE_NEAR_LOSSLESS = "lossless", "near-lossless"


def _schema():
    from codec.container import DEFAULT_HEAD_SCHEMA, Check

    keep = ("model", "checkpoint_sha256", "rows", "cols", "frames", "bits_stored", "signed")
    schema = {k: DEFAULT_HEAD_SCHEMA[k] for k in keep}
    schema.update({
        "kind": Check(str, lambda v: v == KIND, f"{KIND!r}"),
        "source": Check(str, lambda v: v in ("dicom", "npy"), "'dicom' or 'npy'"),
        "dtype": Check(str, lambda v: v in ("uint8", "int8", "uint16", "int16"), "an 8/16-bit integer dtype"),
        "mode": Check(str, lambda v: v in (MODE_LOSSLESS, MODE_NEAR_LOSSLESS), "'lossless' or 'near-lossless'"),
        "max_error": Check(int, lambda v: 0 <= v <= residual.MAX_ERROR_LIMIT, "an int in 0..65535"),
        "lo": int, "hi": int,
        "shift": Check(int, lambda v: 0 <= v <= MAX_SHIFT, f"an int in 0..{MAX_SHIFT}"),
        "names": Check(list, lambda v: all(isinstance(n, str) and n and "/" not in n and "\\" not in n
                                            and n not in (".", "..") for n in v) and len(set(v)) == len(v),
                       "a list of distinct plain file names"),
    })
    return schema


def is_volume(head: dict) -> bool:
    return isinstance(head, dict) and head.get("kind") == KIND


def compress_volume(vol: np.ndarray, predictor: VolumePredictor | PreviousSlice, *, model: str, package_sha256: str,
                    bits_stored: int, signed: bool, source: str = "dicom", metas: list[bytes] | None = None,
                    names: list[str] | None = None, max_error: int = 0, progress=None,
                    residual_predictor: str = "ls", group: int = GROUP, workers: int | None = None) -> bytes:
    """A volume (S, H, W) -> the bytes of a ``.mdc`` file (HEAD kind "volume", one RESD per slice).

    ``group``: slices per independently coded group (HEAD ``group``; 0: one chain, and no such key)."""
    from codec import container

    if not 0 <= max_error <= residual.MAX_ERROR_LIMIT:
        raise VolumeError(f"max error must be in 0..{residual.MAX_ERROR_LIMIT}, got {max_error}")
    vol = np.asarray(vol)
    streams, info = encode_volume(vol, predictor, max_error=max_error, progress=progress,
                                  residual_predictor=residual_predictor, group=group, workers=workers)
    names = list(names) if names is not None else [f"slice_{i:04d}{'.dcm' if source == 'dicom' else '.npy'}"
                                                     for i in range(vol.shape[0])]
    head = {"model": model, "checkpoint_sha256": package_sha256, "kind": KIND, "rows": int(vol.shape[1]),
            "cols": int(vol.shape[2]), "frames": int(vol.shape[0]), "bits_stored": int(bits_stored),
            "signed": bool(signed), "source": source, "dtype": str(vol.dtype),
            "mode": MODE_LOSSLESS if max_error == 0 else MODE_NEAR_LOSSLESS, "max_error": int(max_error),
            "lo": info["lo"], "hi": info["hi"], "shift": info["shift"], "names": names}
    if group:
        head["group"] = int(group)
    if len(names) != vol.shape[0]:
        raise VolumeError(f"{len(names)} names for {vol.shape[0]} slices")
    meta = None
    if metas is not None:
        if len(metas) != vol.shape[0]:
            raise VolumeError(f"{len(metas)} metadata blobs for {vol.shape[0]} slices")
        meta = pack_meta(metas)
    try:
        return container.write_container(head, [], meta, schema=_schema(), residuals=streams)
    except container.ContainerError as exc:
        raise VolumeError(str(exc)) from None


def read_volume(data: bytes):
    """Parse and check a volume ``.mdc``: (HEAD, per-slice metadata or None, residual streams)."""
    from codec import container

    try:
        c = container.read_container(data, schema=_schema())
    except container.ContainerError as exc:
        raise VolumeError(str(exc)) from None
    h = c.head
    if c.tiles:
        raise VolumeError(f"a volume file has no TILE chunks, this one has {len(c.tiles)}")
    if len(c.residuals) != h["frames"]:
        raise VolumeError(f"{len(c.residuals)} slice streams, HEAD says {h['frames']} slices")
    if len(h["names"]) != h["frames"] or h["lo"] > h["hi"]:
        raise VolumeError("HEAD: inconsistent names or value range")
    g = h.get("group", 0)
    if isinstance(g, bool) or not isinstance(g, int) or g < 0:
        raise VolumeError(f"HEAD: 'group' must be an int >= 0, got {g!r}")
    metas = unpack_meta(c.meta, h["frames"]) if c.meta is not None else None
    if h["source"] == "dicom" and metas is None:
        raise VolumeError("a DICOM volume without its metadata (META chunk)")
    return h, metas, c.residuals


def decompress_volume(data: bytes, predictor: VolumePredictor | PreviousSlice, progress=None, *,
                      slices=None, workers: int | None = None):
    """(HEAD, volume (S, H, W), per-slice metadata or None); every slice checked against its stream.

    ``slices`` (indices): only those, ascending (the volume is then (len(slices), H, W) and the
    metadata still every slice's)."""
    h, metas, streams = read_volume(data)
    vol = decode_volume(streams, predictor, rows=h["rows"], cols=h["cols"], dtype=np.dtype(h["dtype"]),
                        shift=h["shift"], lo=h["lo"], hi=h["hi"], progress=progress, group=h.get("group", 0),
                        workers=workers, slices=slices)
    if int(vol.min()) < h["lo"] or int(vol.max()) > h["hi"]:
        raise VolumeError("decoded values outside the HEAD's range")
    return h, vol, metas
