"""The whole codec in DPU int8: rewrite, calibrate and quantize g_a, h_a, g_s and h_s.

::

    nets, log = dpu_networks(model)                  # exact rewrites; abs absorbed into h_a
    batches = calibration_batches(model, tiles)      # each network's real inputs
    pkg, report = quantize_codec(model, tiles, arch, name=..., quality=..., weights_sha256=...)

Each network is calibrated on its own float inputs, the way nndct calibrates a model:
g_a on the image tiles, h_a on the float model's y, g_s on round(y) (what the decoder
feeds it), h_s on round(z). The quantizer is ``quantize.builtin`` (power-of-two int8,
the DPU's rounding, legalised shifts); the result is an int8 ``CodecPackage``
(``codec/package.py``) whose networks the integer emulator (``codec/dpunets.py``) or a
DPU runs. The entropy tables are the float model's (``models/export.py``).

Only chains of conv / transposed conv + ReLU / LeakyReLU(26/256) quantize: the
LeakyReLU model ``dpu-hyperprior`` does; ``gdn-hyperprior`` does not (its GDNs are not
DPU operators: see the GDN passes in ``quantize/passes/`` for what replacing them costs),
and asking for it is a one-line error.

The report (JSON-able) gives per network the fix positions and SQNR of every layer, the
legalisation moves, and whether the emulator and the torch fake-quant model agree bit
for bit on calibration tiles (they must).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch import Tensor, nn

from codec.entropy import gaussian_tables
from codec.errors import MedcodecError
from codec.intconv import round_half_up
from codec.package import CodecPackage
from models.entropy import SCALE_LEVELS, scale_index, scale_table
from models.export import z_tables
from quantize.absorb_abs import absorb_abs
from quantize.builtin import FakeQuant, QuantSpec, calibrate, to_fixednet
from quantize.rewrite import rewrite_for_dpu

__all__ = ["DPU_ORDER", "QuantizeError", "build_int8_package", "calibrate_codec", "calibration_batches", "dpu_networks",
           "quantize_codec"]

#: the four deployed networks, in the order the report lists them
DPU_ORDER: tuple[str, ...] = ("g_a", "h_a", "g_s", "h_s")


class QuantizeError(MedcodecError):
    """A model the builtin DPU quantizer cannot take (e.g. GDN layers)."""


def dpu_networks(model: nn.Module) -> tuple[dict[str, nn.Sequential], dict]:
    """The four networks in their deployable float form (exact rewrites only) and the rewrite log."""
    new, log = rewrite_for_dpu(model)
    nets = {"g_a": new.g_a, "h_a": absorb_abs(new.h_a), "g_s": new.g_s, "h_s": new.h_s}
    log["h_a"] = list(log.get("h_a", [])) + [{"pass": "absorb_abs", "exact": True, "rewrites": 1}]
    return nets, log


@torch.no_grad()
def calibration_batches(model: nn.Module, tiles: Tensor, batch: int = 8) -> dict[str, list[Tensor]]:
    """Per network, its float inputs on ``tiles`` [B, 1, T, T], in batches of ``batch``."""
    model = model.eval()
    out: dict[str, list[Tensor]] = {n: [] for n in DPU_ORDER}
    for i in range(0, tiles.shape[0], batch):
        x = tiles[i:i + batch].float()
        y = model.g_a(x)
        z = torch.round(model.h_a(torch.abs(y)))
        out["g_a"].append(x.double())
        out["h_a"].append(y.double())
        out["g_s"].append(torch.round(y).double())
        out["h_s"].append(z.double())
    return out


def _bit_exact(net: nn.Sequential, spec: QuantSpec, fixed, batches: list[Tensor], n: int = 2) -> bool:
    fq = FakeQuant(net, spec)
    for b in batches[:1]:
        for x in b[:n]:
            a = fq(x).numpy()
            e = fixed.forward_int(fixed.quantize_input(x.numpy()))
            if not np.array_equal(a, e):
                return False
    return True


def _h_s_pin(h_s: nn.Sequential) -> dict[str, int]:
    # t is in scale-index space: the int8 output of h_s must reach the last table (63 -> fix 1)
    last = list(h_s.named_children())[-1][0]
    return {last: int(math.floor(math.log2(127 / (SCALE_LEVELS - 0.5))))}


@torch.no_grad()
def calibrate_codec(model: nn.Module, tiles: Tensor, arch: dict, *, name: str = "model",
                    progress=None) -> tuple[dict[str, QuantSpec], dict]:
    """Fix positions (legalised) of the four networks on ``tiles``; per-layer SQNR in the specs."""
    t0 = time.perf_counter()
    model = model.eval()
    nets, rewrite_log = dpu_networks(model)
    batches = calibration_batches(model, tiles)
    specs: dict[str, QuantSpec] = {}
    for net_name in DPU_ORDER:
        if progress is not None:
            progress(net_name)
        pin = _h_s_pin(nets["h_s"]) if net_name == "h_s" else None
        try:
            specs[net_name] = calibrate(nets[net_name], batches[net_name], arch, pin_fp_out=pin)
        except ValueError as exc:
            raise QuantizeError(f"{name}: {net_name} cannot be quantized by the builtin DPU quantizer ({exc})") \
                from None
    report = {"rewrites": rewrite_log, "calibration_tiles": int(tiles.shape[0]),
              "networks": {n: specs[n].to_dict() for n in DPU_ORDER}, "wall_s": time.perf_counter() - t0}
    return specs, report


@torch.no_grad()
def build_int8_package(model: nn.Module, specs: dict[str, QuantSpec], check_tiles: Tensor, *, name: str,
                       quality: int, tile: int, weights_sha256: str,
                       extra_meta: dict | None = None) -> tuple[CodecPackage, dict]:
    """The int8 package from calibrated ``specs``; checks emulator == fake-quant on ``check_tiles``."""
    t0 = time.perf_counter()
    model = model.eval()
    nets, _ = dpu_networks(model)
    batches = calibration_batches(model, check_tiles)
    fixed, report_nets = {}, {}
    for net_name in DPU_ORDER:
        spec = specs[net_name]
        fixed[net_name] = to_fixednet(nets[net_name], spec)
        report_nets[net_name] = {
            **spec.to_dict(),
            "emulator_equals_fakequant": _bit_exact(nets[net_name], spec, fixed[net_name], batches[net_name]),
        }
    hs = fixed["h_s"]
    if hs.fp_out < 0:
        raise QuantizeError(f"{name}: h_s output fix position {hs.fp_out} < 0 cannot index the scale table")
    zt, centers = z_tables(model)
    meta = {
        "model": name, "quality": int(quality), "N": int(model.N), "M": int(model.M), "tile": int(tile),
        "weights_sha256": weights_sha256, "scale_levels": SCALE_LEVELS,
        "scales": [float(s) for s in scale_table().double().numpy()],
        "backend": "int8", "quantizer": "builtin",
        "fix": {n: {"in": fixed[n].fp_in, "out": fixed[n].fp_out} for n in DPU_ORDER},
        "h_s": {"bits": hs.bits, "fp_out": hs.fp_out,
                "layers": [{"op": L.op, "fp_w": L.fp_w, "fp_out": L.fp_out, "act": L.act} for L in hs.layers]},
        **(extra_meta or {}),
    }
    pkg = CodecPackage(meta=meta, z_tables=zt, z_center=centers.astype(np.int64),
                       y_tables=gaussian_tables(scale_table().double().numpy()), h_s=hs,
                       nets={n: fixed[n] for n in ("g_a", "h_a", "g_s")})
    # how often the int8 h_s picks another table than the float h_s (a rate cost, never a decoding risk)
    z = torch.cat(batches["h_s"])
    k_float = scale_index(model.h_s(z.float())).numpy()
    k_int = np.stack([pkg.scale_index(zz.numpy()) for zz in z])
    g_a_fp = fixed["g_a"].fp_out
    report = {
        "model": name, "quality": int(quality), "backend": "int8", "quantizer": "builtin",
        "networks": report_nets,
        "scale_index_agreement": float((k_float == k_int).mean()),
        "scale_index_within_1": float((np.abs(k_float - k_int) <= 1).mean()),
        "scale_index_max_diff": int(np.abs(k_float - k_int).max()),
        "latent_step": 2.0 ** -g_a_fp if g_a_fp < 0 else 1.0,
        "y_saturated_fraction": float(np.mean(np.abs(round_half_up(
            torch.cat(batches["h_a"]).numpy() * 2.0**g_a_fp)) > 127)),
        "wall_s": time.perf_counter() - t0,
    }
    if g_a_fp < 0:
        report["warning"] = (f"g_a's output fix position is {g_a_fp}: the int8 latent steps by {2.0**-g_a_fp:g}, "
                             "coarser than the float codec's integer rounding")
    return pkg, report


def quantize_codec(model: nn.Module, tiles: Tensor, arch: dict, *, name: str, quality: int, tile: int,
                   weights_sha256: str, extra_meta: dict | None = None,
                   progress=None) -> tuple[CodecPackage, dict]:
    """Calibrate on ``tiles`` and build the int8 package in one call; the report has both parts."""
    specs, cal = calibrate_codec(model, tiles, arch, name=name, progress=progress)
    pkg, rep = build_int8_package(model, specs, tiles[:2], name=name, quality=quality, tile=tile,
                                  weights_sha256=weights_sha256, extra_meta=extra_meta)
    rep["rewrites"] = cal["rewrites"]
    rep["calibration_tiles"] = cal["calibration_tiles"]
    rep["wall_s"] += cal["wall_s"]
    return pkg, rep
