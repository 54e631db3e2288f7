"""A tiny int8 codec package built in numpy alone, for the board runtime's tests.

Seeded integer weights, no torch, no training and no quantizer: the bytes of the networks, and
so every bitstream, depend only on this file (``quantize/`` can change without moving the
golden files). The codec it makes is lossy nonsense, but an exact one: every code path of the
int8 runtime runs (g_a, h_a, g_s on the runner; h_s and the entropy coder in integers).

Geometry (tile 64, N=4, M=6): g_a four 5x5 stride-2 convs 1->4->4->4->6 (64 -> 4), h_a 3x3
conv 6->4 + two 5x5 stride-2 convs (4 -> 1), g_s four 4x4 stride-2 deconvs 6->4->4->4->1
(4 -> 64), h_s two 4x4 stride-2 deconvs 4->4->6 (1 -> 4).
"""

from __future__ import annotations

import numpy as np

from codec.entropy import TableSet, gaussian_tables, pmf_from_probs
from codec.fixednet import FixedLayer, FixedNet
from codec.package import CodecPackage

TILE, N, M = 64, 4, 6
SCALES = [float(s) for s in np.exp(np.linspace(np.log(0.2), np.log(24.0), 16))]
#: (fp_in, fp_out) per network; what meta["fix"] records
FIX = {"g_a": (7, 3), "h_a": (3, 3), "g_s": (3, 7), "h_s": (0, 2)}


def _layers(rng, spec, fp_in: int, fp_out: int) -> list[FixedLayer]:
    """spec: (op, in, out, k, stride, padding, act); hidden layers at fix 4, the last at fp_out."""
    layers = []
    for i, (op, cin, cout, k, stride, pad, act) in enumerate(spec):
        shape = (cout, cin, k, k) if op == "conv" else (cin, cout, k, k)
        w = rng.integers(-24, 25, size=shape).astype(np.float64)
        b = rng.integers(-64, 65, size=cout).astype(np.float64)
        layers.append(FixedLayer(op=op, weight=w, bias=b, fp_w=7, fp_b=10,
                                 fp_out=fp_out if i == len(spec) - 1 else 4, stride=stride, padding=pad, act=act))
    return layers


def _net(rng, name: str, spec) -> FixedNet:
    fp_in, fp_out = FIX[name]
    return FixedNet(layers=_layers(rng, spec, fp_in, fp_out), fp_in=fp_in, bits=8)


def tiny_int8_package(quality: int = 1, model: str = "tiny-dpu", seed: int = 0) -> CodecPackage:
    rng = np.random.default_rng(1000 * seed + quality)
    lk = "leaky_relu"
    nets = {
        "g_a": _net(rng, "g_a", [("conv", 1, 4, 5, 2, 2, lk), ("conv", 4, 4, 5, 2, 2, lk),
                                 ("conv", 4, 4, 5, 2, 2, lk), ("conv", 4, M, 5, 2, 2, "none")]),
        "h_a": _net(rng, "h_a", [("conv", M, N, 3, 1, 1, lk), ("conv", N, N, 5, 2, 2, lk),
                                 ("conv", N, N, 5, 2, 2, "none")]),
        "g_s": _net(rng, "g_s", [("deconv", M, 4, 4, 2, 1, lk), ("deconv", 4, 4, 4, 2, 1, lk),
                                 ("deconv", 4, 4, 4, 2, 1, lk), ("deconv", 4, 1, 4, 2, 1, "none")]),
    }
    h_s = _net(rng, "h_s", [("deconv", N, N, 4, 2, 1, "relu"), ("deconv", N, M, 4, 2, 1, "relu")])
    sym = np.arange(-8, 9)
    rows = []
    for c in range(N):
        p = np.exp(-np.abs(sym) / (1.0 + c))
        rows.append(pmf_from_probs(np.concatenate([p / p.sum() * (1 - 1e-4), [1e-4]])))
    z_tables = TableSet(pmf=np.stack(rows), lengths=np.full(N, len(rows[0])), offsets=np.full(N, -8))
    meta = {
        "model": model, "quality": int(quality), "N": N, "M": M, "tile": TILE, "weights_sha256": "0" * 64,
        "scale_levels": len(SCALES), "scales": SCALES, "backend": "int8", "quantizer": "tests/board/tinypkg",
        "fix": {n: {"in": fp_in, "out": fp_out} for n, (fp_in, fp_out) in FIX.items()},
    }
    return CodecPackage(meta=meta, z_tables=z_tables, z_center=np.zeros(N, dtype=np.int64),
                        y_tables=gaussian_tables(SCALES), h_s=h_s, nets=nets)
