"""Export a trained GDNHyperprior into a codec package (``codec/package.py``).

What is exported, and how:

- z tables: the EntropyBottleneck's factorized density, evaluated in float64 per
  channel on integer z values around the channel's rounded median, plus an escape
  bin for the tails; turned into 16-bit integer pmfs once, here.
- y tables: the Gaussian conditional for each of the 64 fixed scales (escape bin
  for the tails), built by ``codec.entropy.gaussian_tables``.
- h_s: quantized to a 16-bit FixedNet (power-of-two scales like the DPU, but 16
  bits so that it follows the float h_s closely). Weight fix positions come from
  the weights' range; activation fix positions from running the float h_s on the
  hyper-latents of calibration tiles (largest value x 1.25 headroom). The output
  fix position is fixed so that t in [-128, 128) fits: t is in scale-index space.

The float h_s decides nothing at coding time: both sides use the FixedNet. The
export reports how often its table index differs from the float one (a rate cost
only, never a decoding risk).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from codec.entropy import TableSet, gaussian_tables, pmf_from_probs
from codec.fixednet import FixedLayer, FixedNet
from codec.intconv import round_half_away
from codec.package import CodecPackage
from models.entropy import SCALE_LEVELS, scale_index, scale_table

HS_BITS = 16
T_FP_OUT = 8  # t in scale-index space: |t| < 128 fits 16 bits at 2^-8
ACT_HEADROOM = 1.25
Z_TAIL = 1e-6  # probability mass left outside each z table (goes to its escape bin)


def _fp_for(max_abs: float, bits: int, cap: int = 24) -> int:
    """Largest fix position f with max_abs * 2^f <= 2^(bits-1) - 1."""
    if max_abs <= 0:
        return cap
    return int(min(cap, math.floor(math.log2((2 ** (bits - 1) - 1) / max_abs))))


@torch.no_grad()
def z_tables(model) -> tuple[TableSet, np.ndarray]:
    """Per-channel integer pmfs over z_int - center, center = round(median)."""
    eb = model.entropy_bottleneck
    q = eb.quantiles[:, 0, :].double()
    centers = torch.round(q[:, 1]).long()
    rows, offsets = [], []
    for c in range(eb.channels):
        lo = int(math.floor(q[c, 0].item())) - 1
        hi = int(math.ceil(q[c, 2].item())) + 1
        lo, hi = min(lo, int(centers[c]) - 1), max(hi, int(centers[c]) + 1)
        values = torch.arange(lo, hi + 1, dtype=torch.float64).reshape(1, 1, -1)
        p = eb._channel_likelihood(c, values).reshape(-1).numpy()
        p = np.maximum(p, 0.0)
        tail = max(0.0, 1.0 - float(p.sum()))
        probs = np.concatenate([p, [max(tail, Z_TAIL)]])
        rows.append(pmf_from_probs(probs))
        offsets.append(lo - int(centers[c]))
    width = max(len(r) for r in rows)
    pmf = np.zeros((len(rows), width), dtype=np.int64)
    for c, r in enumerate(rows):
        pmf[c, : len(r)] = r
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    return TableSet(pmf=pmf, lengths=lengths, offsets=np.array(offsets, dtype=np.int64)), centers.numpy()


def _conv_layers(net: nn.Module) -> list[tuple[nn.Module, str]]:
    """(conv or deconv module, fused activation) in order."""
    mods = list(net.children())
    out = []
    for i, m in enumerate(mods):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            act = "relu" if i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU) else "none"
            out.append((m, act))
        elif not isinstance(m, nn.ReLU):
            raise ValueError(f"h_s holds a {type(m).__name__}; only conv/deconv/ReLU can be exported")
    return out


@torch.no_grad()
def fixed_h_s(h_s: nn.Module, z_calib: torch.Tensor, bits: int = HS_BITS) -> FixedNet:
    """Quantize h_s (conv/deconv + ReLU) to a FixedNet; z_calib: integer z, [B, N, h, w]."""
    layers = []
    x = z_calib.double()
    convs = _conv_layers(h_s)
    fp_in = 0
    for i, (m, act) in enumerate(convs):
        w = m.weight.detach().double()
        b = m.bias.detach().double() if m.bias is not None else torch.zeros(w.shape[1 if isinstance(m, nn.ConvTranspose2d) else 0])
        if isinstance(m, nn.ConvTranspose2d):
            x = nn.functional.conv_transpose2d(x, w, b, stride=m.stride, padding=m.padding, output_padding=m.output_padding)
        else:
            x = nn.functional.conv2d(x, w, b, stride=m.stride, padding=m.padding)
        if act == "relu":
            x = torch.relu(x)
        fp_w = _fp_for(float(w.abs().max()), bits)
        last = i == len(convs) - 1
        fp_out = T_FP_OUT if last else _fp_for(float(x.abs().max()) * ACT_HEADROOM, bits)
        fp_b = fp_in + fp_w
        layers.append(FixedLayer(
            op="deconv" if isinstance(m, nn.ConvTranspose2d) else "conv",
            weight=round_half_away(w.numpy() * 2.0**fp_w),
            bias=round_half_away(b.numpy() * 2.0**fp_b),
            fp_w=fp_w, fp_b=fp_b, fp_out=fp_out,
            stride=int(m.stride[0]), padding=int(m.padding[0]),
            output_padding=int(getattr(m, "output_padding", (0,))[0]), act=act,
        ))
        fp_in = fp_out
    return FixedNet(layers=layers, fp_in=0, bits=bits)


@torch.no_grad()
def calibration_z(model, tiles: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """Integer hyper-latents round(z) of calibration tiles [B, 1, T, T]."""
    zs = []
    for i in range(0, tiles.shape[0], batch):
        y = model.g_a(tiles[i:i + batch])
        zs.append(torch.round(model.h_a(torch.abs(y))))
    return torch.cat(zs)


@torch.no_grad()
def export_package(model, tiles: torch.Tensor, *, name: str, quality: int, tile: int,
                   weights_sha256: str, extra_meta: dict | None = None) -> tuple[CodecPackage, dict]:
    """Build the package and a report {index agreement of fixed vs float h_s, ...}."""
    model = model.eval()
    z = calibration_z(model, tiles)
    zt, centers = z_tables(model)
    hs = fixed_h_s(model.h_s, z)
    y_tables = gaussian_tables(scale_table().double().numpy())
    meta = {
        "model": name, "quality": int(quality), "N": int(model.N), "M": int(model.M), "tile": int(tile),
        "weights_sha256": weights_sha256, "scale_levels": SCALE_LEVELS,
        "scales": [float(s) for s in scale_table().double().numpy()],
        "h_s": {"bits": hs.bits, "fp_out": hs.fp_out, "layers": [
            {"op": L.op, "fp_w": L.fp_w, "fp_out": L.fp_out, "act": L.act} for L in hs.layers]},
        "calibration_tiles": int(tiles.shape[0]),
        **(extra_meta or {}),
    }
    pkg = CodecPackage(meta=meta, z_tables=zt, z_center=centers.astype(np.int64), y_tables=y_tables, h_s=hs)
    # agreement between the float reference index and the integer one, on the calibration set
    k_float = scale_index(model.h_s(z.float())).numpy()
    k_int = np.stack([pkg.scale_index(z[b].numpy().astype(np.float64)) for b in range(z.shape[0])])
    diff = np.abs(k_float - k_int)
    report = {"index_agreement": float((diff == 0).mean()), "index_max_diff": int(diff.max()),
              "z_range": [int(z.min()), int(z.max())], "h_s_fix_positions": meta["h_s"]["layers"]}
    return pkg, report


class TorchNetworks:
    """The float networks of a GDNHyperprior behind ``codec.gdncodec.Networks`` (host side)."""

    def __init__(self, model, threads: int | None = None):
        self.model = model.eval()
        if threads:
            torch.set_num_threads(int(threads))

    @torch.no_grad()
    def analysis(self, tiles: np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32))[:, None]
        y = self.model.g_a(x)
        z = self.model.h_a(torch.abs(y))
        return y.numpy(), z.numpy()

    @torch.no_grad()
    def synthesis(self, y_int: np.ndarray):
        y = torch.from_numpy(np.ascontiguousarray(y_int, dtype=np.float32))
        return self.model.g_s(y).clamp_(0.0, 1.0)[:, 0].numpy()
