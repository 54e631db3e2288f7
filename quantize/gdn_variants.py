"""What replacing GDN costs: the float codec against its two DPU-only GDN variants.

::

    tiles = sample_tiles(paths, seed=1234); calib = sample_tiles(paths, seed=99)
    report = measure_gdn_variants(load_model(quality=1), tiles, calib,
                                  partition_fn=functools.partial(compile.partition.partition_hyperprior, tile=256))
    print(format_report(report))

Variants (each network gets the exact passes :data:`quantize.passes.EXACT_DPU_PASSES` first,
so that the partition figures show the GDN alone; they change nothing numerically):

- ``float``: GDN / IGDN as trained (square and root on the CPU).
- ``polynomial``: ``gdn_polynomial`` (rsqrt by polynomial + Newton on the calibrated range of s).
- ``simplified``: ``gdn_simplified`` (x / (beta' + gamma'|x|), mapped from the trained
  parameters with a calibrated per-channel kappa; a different function, to be fine-tuned,
  so its figures are a starting point).

For each variant and each of ``g_a`` and ``g_s`` (the networks with GDN) the report gives
the partition (DPU subgraphs, CPU ops), the error of the network's output against the float
network on the same input (max abs, RMS; g_a's output is y, g_s's is x_hat from the float
model's integer latents), and the PSNR of the reconstructed tile against the float model's
reconstruction (both clamped to [0, 1]; for g_a: the float g_s decodes the variant's
``round(y)``). ``end_to_end`` runs both variant networks, and also gives the PSNR against
the input tile. PSNR is ``inf`` where the reconstructions are identical.

Layering: ``quantize/`` sits below ``compile/``, so the partition function is an argument
(as in :func:`quantize.rewrite.partition_delta`); without it the partition figures are left
out.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from models.data import load_images, validation_crops
from quantize.passes import EXACT_DPU_PASSES, run_passes
from quantize.passes.gdn_polynomial import GdnPolynomial, gdn_s_ranges
from quantize.passes.gdn_simplified import GdnSimplified, simplified_calibration
from quantize.passes.polyfit import under

__all__ = ["GDN_NETWORKS", "VARIANTS", "build_variant", "format_report", "measure_gdn_variants", "psnr", "sample_tiles"]

VARIANTS: tuple[str, ...] = ("float", "polynomial", "simplified")
#: the networks of a GDNHyperprior that hold GDN / IGDN layers
GDN_NETWORKS: tuple[str, ...] = ("g_a", "g_s")


def sample_tiles(paths: Sequence[str | Path], crop: int = 256, per_image: int = 2, seed: int = 1234) -> Tensor:
    """``[n, 1, crop, crop]`` crops in [0, 1] of the DICOM files ``paths`` (each image's own min..max map),
    at seeded positions (:func:`models.data.validation_crops`; flat crops avoided)."""
    images = []
    for p in map(Path, paths):
        images.extend(load_images(p.parent, [p.name]))
    tiles, _ = validation_crops(images, crop=crop, per_image=per_image, seed=seed)
    return tiles


def _both(model: nn.Module, x: Tensor) -> Tensor:
    """Drive g_a and g_s the way the codec does: g_s decodes the integer latents."""
    return model.g_s(torch.round(model.g_a(x)))


def build_variant(model: nn.Module, variant: str, calibration: Tensor, *, degree: int = 4, newton_steps: int = 3,
                  margin: float = 1.5, mapping: str = "calibrated", batch: int = 4) -> tuple[nn.Module, dict[str, list[dict]]]:
    """A copy of ``model`` with g_a and g_s rewritten for ``variant``, and the pass log per network.

    ``calibration`` tiles give the ranges the polynomials are fitted on and the simplified
    variant's kappa (``model`` is run on them in batches of ``batch``); ``mapping`` is
    ``gdn_simplified``'s.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    batches = list(torch.split(calibration, batch))
    passes: dict[str, list] = {net: list(EXACT_DPU_PASSES) for net in GDN_NETWORKS}
    opts = {"degree": degree, "newton_steps": newton_steps, "margin": margin}
    if variant == "polynomial":
        ranges = gdn_s_ranges(model, batches, run=_both)
        for net in GDN_NETWORKS:
            passes[net].append(GdnPolynomial(under(ranges, net), **opts))
    elif variant == "simplified":
        cal = simplified_calibration(model, batches, mapping=mapping, run=_both)
        for net in GDN_NETWORKS:
            passes[net].append(GdnSimplified(under(cal, net), mapping=mapping, **opts))
    new = copy.deepcopy(model)
    log = {}
    for net in GDN_NETWORKS:
        rewritten, log[net] = run_passes(getattr(new, net), passes[net])
        setattr(new, net, rewritten)
    return new.eval(), log


def psnr(a: Tensor, b: Tensor, peak: float = 1.0) -> float:
    """10 log10(peak^2 / MSE); ``inf`` for identical tensors."""
    mse = float(((a.double() - b.double()) ** 2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _err(new: Tensor, ref: Tensor) -> dict:
    d = (new.double() - ref.double())
    return {"max_abs": float(d.abs().max()), "rms": float(d.pow(2).mean().sqrt()),
            "ref_max_abs": float(ref.abs().max())}


@torch.no_grad()
def _run(model: nn.Module, tiles: Tensor, batch: int) -> dict[str, Tensor]:
    ys, xs = [], []
    for x in torch.split(tiles, batch):
        y = model.g_a(x)
        ys.append(y)
        xs.append(model.g_s(torch.round(y)))
    return {"y": torch.cat(ys), "x_hat": torch.cat(xs)}


def measure_gdn_variants(model: nn.Module, tiles: Tensor, calibration: Tensor | None = None, *,
                         variants: Sequence[str] = VARIANTS,
                         partition_fn: Callable[[nn.Module], dict] | None = None, degree: int = 4,
                         newton_steps: int = 3, margin: float = 1.5, mapping: str = "calibrated",
                         batch: int = 4) -> dict:
    """Partition and error figures of each GDN variant of ``model`` (a GDNHyperprior in eval mode).

    Args:
        tiles: ``[n, 1, H, W]`` evaluation tiles in [0, 1] (H, W multiples of 64).
        calibration: tiles the GDN ranges are measured on (default: ``tiles``, in-sample).
        partition_fn: ``model -> {network: report}`` with ``n_dpu_subgraphs`` / ``n_cpu_ops``
            (``functools.partial(compile.partition.partition_hyperprior, tile=256)``).

    Returns:
        ``{"tiles": n, "calibration_tiles": m, "options": {...}, "variants": {variant: {"g_a": {...},
        "g_s": {...}, "end_to_end": {...}, "passes": {...}}}}``, JSON-able except for ``inf`` PSNRs.
    """
    model = model.eval()
    calibration = tiles if calibration is None else calibration
    ref = _run(model, tiles, batch)
    x_ref = ref["x_hat"].clamp(0, 1)
    out: dict = {"tiles": int(tiles.shape[0]), "calibration_tiles": int(calibration.shape[0]),
                 "options": {"degree": degree, "newton_steps": newton_steps, "margin": margin,
                             "mapping": mapping}, "variants": {}}
    for variant in variants:
        new, log = build_variant(model, variant, calibration, degree=degree, newton_steps=newton_steps,
                                 margin=margin, mapping=mapping, batch=batch)
        parts = partition_fn(new) if partition_fn is not None else {}
        with torch.no_grad():
            y_v = torch.cat([new.g_a(x) for x in torch.split(tiles, batch)])
            xa = torch.cat([model.g_s(torch.round(y)) for y in torch.split(y_v, batch)])
            xs = torch.cat([new.g_s(torch.round(y)) for y in torch.split(ref["y"], batch)])
            xe = torch.cat([new.g_s(torch.round(y)) for y in torch.split(y_v, batch)])
        entry: dict = {
            "g_a": {**_err(y_v, ref["y"]), "psnr_vs_float": psnr(xa.clamp(0, 1), x_ref),
                    "latents_changed": float((torch.round(y_v) != torch.round(ref["y"])).double().mean())},
            "g_s": {**_err(xs, ref["x_hat"]), "psnr_vs_float": psnr(xs.clamp(0, 1), x_ref)},
            "end_to_end": {"psnr_vs_float": psnr(xe.clamp(0, 1), x_ref),
                           "psnr_vs_input": psnr(xe.clamp(0, 1), tiles)},
            "passes": {net: [{"pass": e["pass"], "count": e["count"], "refusals": len(e["refusals"])}
                             for e in entries] for net, entries in log.items()},
        }
        for net in GDN_NETWORKS:
            if net in parts:
                entry[net]["dpu_subgraphs"] = parts[net].n_dpu_subgraphs
                entry[net]["cpu_ops"] = parts[net].n_cpu_ops
        out["variants"][variant] = entry
    return out


def format_report(report: dict) -> str:
    """The figures of :func:`measure_gdn_variants` as a small table."""
    lines = [f"{report['tiles']} tiles, ranges from {report['calibration_tiles']} calibration tiles, "
             f"options {report['options']}",
             f"{'variant':<11} {'net':<4} {'DPU sg':>6} {'CPU ops':>7} {'max abs':>10} {'rms':>10} "
             f"{'PSNR vs float':>13}"]
    for variant, e in report["variants"].items():
        for net in GDN_NETWORKS:
            r = e[net]
            lines.append(f"{variant:<11} {net:<4} {r.get('dpu_subgraphs', '-')!s:>6} {r.get('cpu_ops', '-')!s:>7} "
                         f"{r['max_abs']:>10.3g} {r['rms']:>10.3g} {r['psnr_vs_float']:>13.2f}")
        ee = e["end_to_end"]
        lines.append(f"{variant:<11} both {'':>6} {'':>7} {'':>10} {'':>10} {ee['psnr_vs_float']:>13.2f}"
                     f"   (vs input {ee['psnr_vs_input']:.2f} dB)")
    return "\n".join(lines)

