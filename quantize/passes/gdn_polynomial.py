"""gdn_polynomial (APPROXIMATE): GDN / inverse GDN becomes :class:`models.layers.PolyGDN`, the same
layer built from DPU operators only, with the root replaced by a polynomial and Newton steps.

Why the DPU needs it
--------------------
GDN is ``x * rsqrt(beta + gamma x^2)`` (IGDN: ``sqrt``). The square, the root and any division
have no DPU path (``xop_creator.py`` leaves ``sqrt`` as a custom op; ``pow``/``rsqrt`` become
custom ops; research/vitis_ai.md sections 0.7 and 3), so every GDN splits g_a / g_s into
DPU -> CPU -> DPU pieces: 7 DPU subgraphs and 6 CPU ops for g_a on the 256 tile. DPU-PYNQ's
``load_model`` accepts exactly one subgraph.

Algebra
-------
``s = beta + gamma x^2`` is a 1x1 conv (weight gamma, bias beta) of the eltwise product
``x * square_operand(x)`` (a depthwise 1x1 conv of weight 1: the DPU's eltwise ``mult`` of two
distinct tensors, never of a tensor with itself; ``models/layers.py``). Then
``r ~ s^(-1/2)`` is :class:`models.layers.PolyPower`: s clamped to the fit interval (two
depthwise convs with ReLU), mapped to ``u`` in [-1, 1], a degree-d polynomial by Horner
(eltwise mul + depthwise conv per degree), then n Newton steps
``r <- r * (3/2 - s r^2 / 2)`` (three eltwise muls and a depthwise conv each). GDN is
``y = x * r``; IGDN is ``y = x * (s * r)``, since ``sqrt(s) = s * s^(-1/2)``.

Error bound
-----------
If ``r = s^(-1/2) (1 + e)`` then ``y' = y (1 + e)`` elementwise, for GDN and IGDN alike. For s
inside the fit interval ``|e| <= PowerFit.bound``: the fit's relative error range, measured
on a dense grid, pushed through the Newton map (``quantize/passes/polyfit.py``; the
arithmetic is float32, which adds about 1e-7 relative). The log line of each rewrite gives the
interval, the fit error and that bound. Outside the interval the clamp holds the polynomial
at its end and the Newton steps still converge toward the true value, with a larger error:
from below when ``s < lo``, from above when ``s > hi`` up to about ``3 hi``; hence the
``margin`` that widens the observed range. Further out each Newton factor is cut at 0 by a
fused ReLU, so the layer outputs 0 there instead of exploding. With at least one Newton
step ``|y'| <= (1 + bound) |y|`` for every s: the result never overshoots.

The interval comes from data
----------------------------
The pass takes ``ranges``: per GDN path, the per-channel min / max (or quantiles) of ``s``
on calibration tiles, measured by :func:`gdn_s_ranges`. The interval of channel c is
``[lo[c] / margin, hi[c] * margin]``. Without ranges for a GDN the pass refuses it (reason in
the log); it never guesses. Paths are relative to the module the pass runs on: ranges
measured on a whole codec (``"g_a.gdn0"``) are re-rooted with
``quantize.passes.polyfit.under(ranges, "g_a")`` for a pass over ``model.g_a`` (as
``quantize/gdn_variants.py`` does, one pass instance per network).

Measured (``quantize/gdn_variants.py``; committed weights q1-q4, 8 crops of 256 of the
bundled samples, ranges from 8 other crops): the reconstruction is within 71.8-74.3 dB
PSNR of the float model's (q1-q4), the end-to-end PSNR against the input unchanged to
0.01 dB, and g_a and g_s are one DPU subgraph each with no CPU op. In g_s some channels
have ``beta`` at its floor (1e-6), so ``s`` spans 1e4x there; the polynomial is poor at the
bottom of such a range (relative error near -1, and the log line's bound says so), which
costs little because IGDN's output ``x sqrt(s)`` is small there, and Newton only improves it.

Defaults: degree 4, 3 Newton steps, margin 1.5. On the same crops (q1 / q4, end to end
against the float model): 2 Newton steps lose 4.6 / 8.8 dB, degree 3 loses 2.5 / 5.0 dB;
margin 1.0 gains 2.6 / 3.6 dB on these crops but converges only up to about 3x the
calibrated maximum of s instead of 4.5x, so the default keeps the safer margin.

Refused (with the reason in the log): no ranges at all, no range for this GDN's path, a
range with the wrong channel count, a fit whose error leaves the Newton convergence region
(``-1 < e < sqrt(3) - 1``; raise the degree), a bound above ``max_rel_error`` (when set), and
subclasses of GDN (their forward may differ).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import GDN, PolyGDN
from quantize.passes.base import Pass, Site, register_pass
from quantize.passes.polyfit import ChannelRange, PowerFit, fit_power, observe_ranges

__all__ = ["GdnPolynomial", "gdn_s", "gdn_s_ranges", "poly_gdn"]


def gdn_s(gdn: GDN, x: Tensor) -> Tensor:
    """``s = beta + gamma x^2`` of ``gdn`` for its input ``x`` (effective parameters)."""
    beta, gamma = gdn.effective_params()
    c = gamma.shape[0]
    return F.conv2d(x * x, gamma.reshape(c, c, 1, 1).to(x.dtype), beta.to(x.dtype))


def gdn_s_ranges(module: nn.Module, batches: Iterable[Tensor], *, run: Callable | None = None,
                 quantiles: Sequence[float] = (0.0, 1.0)) -> dict[str, ChannelRange]:
    """Per GDN path (relative to ``module``), the per-channel range of ``s`` on ``batches``
    (see :func:`quantize.passes.polyfit.observe_ranges` for ``run`` and ``quantiles``)."""
    return observe_ranges(module, batches, gdn_s, GDN, run=run, quantiles=quantiles)


def poly_gdn(gdn: GDN, fit: PowerFit, clamp: bool = True) -> PolyGDN:
    """A :class:`PolyGDN` with ``gdn``'s effective beta / gamma and the fitted polynomial."""
    beta, gamma = gdn.effective_params()
    degree = fit.coeffs.shape[1] - 1
    new = PolyGDN(gdn.in_channels, inverse=gdn.inverse, degree=degree, newton_steps=fit.newton_steps, clamp=clamp)
    new = new.to(device=beta.device, dtype=beta.dtype)
    new.load_gdn(beta, gamma)
    new.rsqrt.configure(fit.lo, fit.hi, fit.coeffs)
    new.train(gdn.training)
    for p in new.parameters():
        p.requires_grad_(gdn.beta.requires_grad)
    return new


@register_pass
class GdnPolynomial(Pass):
    """GDN / IGDN -> PolyGDN: x * x by eltwise mul, 1x1 conv, rsqrt by polynomial + Newton (DPU ops only)."""

    name = "gdn_polynomial"
    exact = False
    types = (GDN,)

    def __init__(self, ranges: Mapping[str, ChannelRange] | None = None, degree: int = 4, newton_steps: int = 3,
                 margin: float = 1.5, clamp: bool = True, max_rel_error: float | None = None):
        if degree < 1 or newton_steps < 0:
            raise ValueError(f"need degree >= 1 and newton_steps >= 0, got {degree}, {newton_steps}")
        if margin < 1.0:
            raise ValueError(f"margin must be >= 1, got {margin}")
        self.ranges = None if ranges is None else dict(ranges)
        self.degree, self.newton_steps, self.margin, self.clamp = int(degree), int(newton_steps), float(margin), clamp
        self.max_rel_error = max_rel_error
        self._fits: dict[str, PowerFit] = {}

    def fit(self, path: str) -> PowerFit:
        """The fit for the GDN at ``path`` (cached)."""
        if path not in self._fits:
            r = self.ranges[path]
            lo = r.lo.double() / self.margin
            hi = torch.maximum(r.hi.double() * self.margin, lo * (1.0 + 1e-6))
            self._fits[path] = fit_power(lo, hi, -0.5, self.degree, self.newton_steps)
        return self._fits[path]

    def check(self, site: Site) -> str | None:
        m = site.module
        if type(m) is not GDN:
            return f"a {type(m).__name__} (subclass of GDN whose forward may differ)"
        if self.ranges is None:
            return ("no calibration statistics: the polynomial's interval must come from data; give "
                    "ranges=gdn_s_ranges(model, tiles) (quantize/passes/gdn_polynomial.py)")
        if site.path not in self.ranges:
            known = ", ".join(sorted(self.ranges)[:6]) or "none"
            return f"no calibration range of s for {site.path!r} (ranges has: {known})"
        r = self.ranges[site.path]
        if r.lo.numel() != m.in_channels:
            return f"the range has {r.lo.numel()} channels, the GDN {m.in_channels}"
        if not bool((r.lo > 0).all()):
            return "the range of s reaches 0 or below (s >= beta > 0 for a GDN): not a range of this layer"
        fit = self.fit(site.path)
        if not fit.converges:
            return (f"degree {self.degree} fits s^(-1/2) on its interval with relative error in "
                    f"[{fit.err_min:+.3g}, {fit.err_max:+.3g}], outside Newton's convergence region "
                    "(-1, sqrt(3) - 1): raise the degree")
        if self.max_rel_error is not None and fit.bound > self.max_rel_error:
            return (f"the bound on the relative error of s^(-1/2) on its interval, {fit.bound:.3g}, exceeds "
                    f"max_rel_error={self.max_rel_error:g} (raise the degree or the Newton steps)")
        return None

    def rewrite(self, site: Site) -> str:
        fit = self.fit(site.path)
        site.replace(poly_gdn(site.module, fit, self.clamp))
        kind = "IGDN" if site.module.inverse else "GDN"
        return (f"{kind} -> PolyGDN (degree {self.degree}, {self.newton_steps} Newton steps): s in "
                f"[{float(fit.lo.min()):.4g}, {float(fit.hi.max()):.4g}] (margin {self.margin:g}, max ratio "
                f"{float((fit.hi / fit.lo).max()):.3g} per channel), polynomial rel. error "
                f"[{fit.err_min:+.2e}, {fit.err_max:+.2e}] -> |y' - y| <= {fit.bound:.2e} |y| for s in the interval")
