"""Shared by the GDN passes: per-channel range statistics from calibration data, and the
polynomial + Newton fits of ``s ** exponent`` (exponent -1/2 or -1) that
:class:`models.layers.PolyPower` computes. Not a rule itself (no ``@register_pass`` here).

Ranges come from data
---------------------
A polynomial only approximates ``s^(-1/2)`` on an interval, so the interval must be the
range of ``s`` the layer actually sees. :func:`observe_ranges` runs a module on calibration
batches with a forward hook on every layer of the given types and records, per layer path
and per channel, the min / max (always exact) and optional quantiles (from a strided
subsample) of a quantity computed from the layer's input (for GDN: ``s = beta + gamma x^2``).
The paths are relative to the module it was given: ``observe_ranges(model, ...)`` gives
``"g_a.gdn0"``; :func:`under` re-roots a table for a pass run on ``model.g_a``.

The fit
-------
On ``[lo, hi]`` per channel, ``u = 2 (s - lo) / (hi - lo) - 1`` and ``p(u) = sum_k c_k u^k``
minimises the RELATIVE error ``(p - f) / f`` of ``f = s ** exponent`` in least squares on
``nodes`` Chebyshev points (weights ``1 / f``): close to the minimax relative error, and
relative error is what the Newton steps square away::

    rsqrt:       r (3/2 - s r^2 / 2)  has relative error  g(e) = -3/2 e^2 - 1/2 e^3   (r = f (1 + e))
    reciprocal:  r (2 - s r)          has relative error  g(e) = -e^2

Both maps send ``[e_min, e_max]`` into ``[min(g(e_min), g(e_max)), 0]`` and are increasing
below 0, so after n steps the error on the interval is bounded by ``|g^(n-1)(min(g(e_min),
g(e_max)))|`` (:func:`newton_bound`), given the fit's error range measured on a dense grid
(:func:`fit_power`). The steps converge only while ``-1 < e`` (r stays positive) and
``e < sqrt(3) - 1`` (rsqrt) or ``e < 1`` (reciprocal); :attr:`PowerFit.converges` checks it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ChannelRange",
    "PowerFit",
    "fit_power",
    "newton_bound",
    "newton_map",
    "observe_ranges",
    "under",
]

T = TypeVar("T")

#: upper limit of the relative error before Newton for which the steps converge
_CONVERGES_BELOW = {-0.5: math.sqrt(3.0) - 1.0, -1.0: 1.0}


@dataclass(frozen=True)
class ChannelRange:
    """Per-channel statistics of one layer's quantity over the calibration data."""

    lo: Tensor  #: [C] the lower quantile (the min for quantile 0)
    hi: Tensor  #: [C] the upper quantile (the max for quantile 1)
    min: Tensor  #: [C] exact minimum
    max: Tensor  #: [C] exact maximum
    count: int  #: values seen per channel
    quantiles: tuple[float, float] = (0.0, 1.0)

    def to_dict(self) -> dict:
        """JSON-able summary (over the channels)."""
        return {"lo_min": float(self.lo.min()), "hi_max": float(self.hi.max()),
                "max_ratio": float((self.hi / self.lo.clamp_min(1e-30)).max()), "count": self.count,
                "quantiles": list(self.quantiles), "channels": int(self.lo.numel())}


def run_hooked(module: nn.Module, batches: Iterable[Tensor], hooked: Mapping[str, nn.Module],
               make_hook: Callable[[str], Callable], run: Callable[[nn.Module, Tensor], object] | None = None) -> None:
    """Feed ``batches`` through ``module`` (or ``run(module, batch)``) with ``make_hook(name)`` as a forward
    hook on each of ``hooked``; the hooks are removed however the run ends."""
    handles = [m.register_forward_hook(make_hook(name)) for name, m in hooked.items()]
    try:
        for batch in batches:
            if run is None:
                module(batch)
            else:
                run(module, batch)
    finally:
        for h in handles:
            h.remove()


def under(ranges: Mapping[str, T], prefix: str) -> dict[str, T]:
    """The entries below ``prefix`` with the prefix cut: ``under(r, "g_a")["gdn0"] is r["g_a.gdn0"]``
    (for any table keyed by module path: ranges, calibrations)."""
    head = prefix.rstrip(".") + "."
    return {k[len(head):]: v for k, v in ranges.items() if k.startswith(head)}


@torch.no_grad()
def observe_ranges(module: nn.Module, batches: Iterable[Tensor], quantity: Callable[[nn.Module, Tensor], Tensor],
                   types: type | tuple[type, ...], *, run: Callable[[nn.Module, Tensor], object] | None = None,
                   quantiles: Sequence[float] = (0.0, 1.0), max_samples: int = 1 << 18
                   ) -> dict[str, ChannelRange]:
    """Per-channel range of ``quantity(layer, layer_input)`` ([B, C, H, W]) at every layer of ``types``.

    Args:
        module: run as given (put it in eval mode first); hooks are removed afterwards.
        batches: calibration inputs.
        quantity: what to record, from the layer and its input tensor.
        run: ``run(module, batch)`` drives the module (default ``module(batch)``), e.g.
            ``lambda m, x: m.g_s(torch.round(m.g_a(x)))`` for both transforms of a codec.
        quantiles: (low, high); min and max are exact, other quantiles come from a strided
            subsample of at most ``max_samples`` values per channel and layer.
    """
    q_lo, q_hi = (float(q) for q in quantiles)
    if not 0.0 <= q_lo < q_hi <= 1.0:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    need_samples = (q_lo, q_hi) != (0.0, 1.0)
    stats: dict[str, dict] = {}

    def hook(path: str):
        def record(layer: nn.Module, args: tuple, _out) -> None:
            v = quantity(layer, args[0]).detach().double()
            v = v.transpose(0, 1).reshape(v.shape[1], -1)  # [C, B*H*W]
            st = stats.setdefault(path, {"min": None, "max": None, "count": 0, "samples": []})
            vmin, vmax = v.min(1).values, v.max(1).values
            st["min"] = vmin if st["min"] is None else torch.minimum(st["min"], vmin)
            st["max"] = vmax if st["max"] is None else torch.maximum(st["max"], vmax)
            st["count"] += v.shape[1]
            if need_samples:
                st["samples"].append(v)
        return record

    run_hooked(module, batches, {n: m for n, m in module.named_modules() if isinstance(m, types)}, hook, run)
    out = {}
    for path, st in stats.items():
        lo, hi = st["min"], st["max"]
        if need_samples:
            v = torch.cat(st["samples"], dim=1)
            v = v[:, :: max(1, math.ceil(v.shape[1] / max_samples))]
            lo = torch.quantile(v, q_lo, dim=1) if q_lo > 0 else lo
            hi = torch.quantile(v, q_hi, dim=1) if q_hi < 1 else hi
        out[path] = ChannelRange(lo=lo, hi=hi, min=st["min"], max=st["max"], count=st["count"],
                                 quantiles=(q_lo, q_hi))
    return out


def newton_map(e: np.ndarray | float, exponent: float) -> np.ndarray | float:
    """The relative error after one Newton step from relative error ``e``."""
    return -1.5 * e**2 - 0.5 * e**3 if exponent == -0.5 else -(e**2)


def newton_bound(e_min: float, e_max: float, exponent: float, steps: int) -> float:
    """Bound on |relative error| after ``steps`` Newton steps from errors in ``[e_min, e_max]``
    (which must lie in the convergence region; see the module docstring)."""
    if steps == 0:
        return max(abs(e_min), abs(e_max))
    e = min(newton_map(e_min, exponent), newton_map(e_max, exponent), 0.0)
    for _ in range(steps - 1):
        e = newton_map(e, exponent)
    return abs(e)


@dataclass(frozen=True)
class PowerFit:
    """A per-channel polynomial for ``s ** exponent`` on ``[lo, hi]`` and its measured errors."""

    exponent: float
    lo: Tensor  #: [C] float64
    hi: Tensor  #: [C] float64
    coeffs: Tensor  #: [C, degree + 1] float64, power basis in u
    err_min: float  #: min over channels and the grid of (p - f) / f
    err_max: float  #: max of the same
    newton_steps: int

    @property
    def converges(self) -> bool:
        return -1.0 < self.err_min and self.err_max < _CONVERGES_BELOW[self.exponent]

    @property
    def bound(self) -> float:
        """|relative error| of the result on the interval, after the Newton steps."""
        return newton_bound(self.err_min, self.err_max, self.exponent, self.newton_steps)

    def to_dict(self) -> dict:
        return {"exponent": self.exponent, "degree": int(self.coeffs.shape[1] - 1),
                "newton_steps": self.newton_steps, "interval": [float(self.lo.min()), float(self.hi.max())],
                "max_ratio": float((self.hi / self.lo).max()), "fit_rel_error": [self.err_min, self.err_max],
                "rel_error_bound": self.bound, "converges": self.converges}


def fit_power(lo: Tensor, hi: Tensor, exponent: float, degree: int, newton_steps: int, *, nodes: int = 256,
              grid: int = 4097) -> PowerFit:
    """Least-squares relative-error fit of ``s ** exponent`` on ``[lo[c], hi[c]]`` for every channel.

    ``lo`` must be positive and below ``hi``. The error range is measured on ``grid`` evenly
    spaced points of each interval (float64).
    """
    lo_np = lo.detach().double().cpu().numpy()
    hi_np = hi.detach().double().cpu().numpy()
    if not (np.all(lo_np > 0) and np.all(hi_np > lo_np)):
        raise ValueError("need 0 < lo < hi in every channel")
    u = np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    vander = np.polynomial.chebyshev.chebvander(u, degree)
    ug = np.linspace(-1.0, 1.0, grid)
    coeffs = np.empty((lo_np.size, degree + 1))
    e_min, e_max = math.inf, -math.inf
    for c, (a, b) in enumerate(zip(lo_np, hi_np, strict=True)):
        s = a + (u + 1.0) * 0.5 * (b - a)
        f = s**exponent
        cheb, *_ = np.linalg.lstsq(vander / f[:, None], np.ones_like(f), rcond=None)
        coeffs[c] = np.polynomial.chebyshev.cheb2poly(cheb)
        sg = a + (ug + 1.0) * 0.5 * (b - a)
        err = np.polynomial.polynomial.polyval(ug, coeffs[c]) / sg**exponent - 1.0
        e_min, e_max = min(e_min, float(err.min())), max(e_max, float(err.max()))
    return PowerFit(exponent=float(exponent), lo=torch.from_numpy(lo_np), hi=torch.from_numpy(hi_np),
                    coeffs=torch.from_numpy(coeffs), err_min=e_min, err_max=e_max, newton_steps=int(newton_steps))
