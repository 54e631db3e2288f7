"""gdn_simplified (APPROXIMATE, CHANGES THE FUNCTION): GDN / inverse GDN becomes the simplified GDN
of Johnston et al. 2019, :class:`models.layers.SimplifiedGDN`, built from DPU operators only::

    GDN   y = x / d        IGDN   y = x * d,        d = beta' + gamma' |x|

This is a different layer, not an approximation of the trained one: the pass maps the
trained beta / gamma to a STARTING POINT, and the model NEEDS FINE-TUNING (with the
simplified layers in place) to recover its rate-distortion performance. ``exact = False``;
each rewrite's log line gives the calibration's estimate of the layer's output change, and
``quantize/gdn_variants.py`` measures the whole codec on real tiles.

Why the DPU needs it
--------------------
As for ``gdn_polynomial``: square, root and division have no DPU path. The simplified form
has no root and no square: ``|x| = relu(x) + relu(-x)`` is a 1x1 conv with weight ``[I; -I]``
and a fused ReLU, and ``gamma' |x|`` is the 1x1 conv ``[gamma', gamma']`` over both halves
(bias ``beta'``). IGDN is then one eltwise mul. GDN still divides: ``1 / d`` is a polynomial
plus Newton steps ``r <- r (2 - d r)`` (:class:`models.layers.PolyPower`, exponent -1) on an
interval of ``d`` measured on calibration data, as in ``gdn_polynomial``.

The mapping (documented choice)
-------------------------------
GDN's denominator ``sqrt(s)`` is the Euclidean norm of ``v_c = (sqrt(beta_c),
sqrt(gamma_cj) |x_j|)_j``. The pass keeps the same vector and sums it instead::

    beta'_c = sqrt(beta_c),      gamma'_cj = kappa_c sqrt(gamma_cj)

- ``beta' = sqrt(beta)`` matches the trained layer to first order at ``x = 0`` (slope
  ``1 / sqrt(beta)``, resp. ``sqrt(beta)``).
- ``kappa = 1`` (``mapping="sqrt"``, data-free) makes ``d`` the l1 norm of ``v_c``, so
  ``||v||_2 <= d <= sqrt(K) ||v||_2`` (K = C + 1 terms): exact when one term dominates, and up to
  sqrt(K) too large when many are alike, which trained gammas make the rule (their diagonal
  holds 5-40 % of the mass on the committed weights). Measured on q1 it costs 9.4 dB of
  end-to-end PSNR against the input (35.96 -> 26.53 dB).
- ``mapping="calibrated"`` (default) fits kappa per channel on calibration data by weighted
  least squares, ``d ~ sqrt(s)`` where the output is sensitive to it::

      kappa_c = sum w a b / sum w a^2,   a = sum_j sqrt(gamma_cj) |x_j|,  b = sqrt(s) - sqrt(beta_c)
      w = x_c^2 / s^2 (GDN: dy = -x dd / d^2)   or   w = x_c^2 (IGDN: dy = x dd)

  (:func:`simplified_calibration`). On the committed weights and crops of the bundled samples
  (ranges and kappa from other crops) the fitted kappas are 0.001-0.6, and the codec's
  end-to-end PSNR against the input drops by 0.11 / 0.14 / 0.21 / 0.19 dB (q1-q4) before any
  fine-tuning; its reconstruction is 44-47 dB from the float model's (``quantize/gdn_variants.py``).

The calibration also gives each layer's first-order relative RMS output change on the
calibration data, ``sqrt(sum w (d - sqrt(s))^2 / sum y^2)``, for the chosen kappa and for kappa
= 1; the log line reports both.

Refused (with the reason in the log): no calibration for the layer (``mapping="calibrated"``
needs one for every GDN and IGDN, ``"sqrt"`` only for forward GDNs, for the range of d), a
calibration made for the other mapping or with the wrong channel count, a reciprocal fit
outside Newton's convergence region (``|e| < 1``) or with a bound above ``max_rel_error``
(when set), and subclasses of GDN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import GDN, SimplifiedGDN
from quantize.passes.base import Pass, Site, register_pass
from quantize.passes.polyfit import ChannelRange, PowerFit, fit_power, observe_ranges, run_hooked

__all__ = ["MAPPINGS", "GdnSimplified", "SimplifiedCalibration", "simplified_calibration", "simplified_d",
           "simplified_params", "simplified_reference"]

MAPPINGS = ("calibrated", "sqrt")


def simplified_params(gdn: GDN, kappa: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(beta', gamma') = (sqrt(beta), kappa[:, None] * sqrt(gamma))`` from the effective parameters
    (``kappa`` None: 1)."""
    beta, gamma = gdn.effective_params()
    g = torch.sqrt(gamma.clamp_min(0))
    if kappa is not None:
        g = g * kappa.to(g.dtype).reshape(-1, 1)
    return torch.sqrt(beta.clamp_min(0)), g


def simplified_d(gdn: GDN, x: Tensor, kappa: Tensor | None = None) -> Tensor:
    """``d = beta' + gamma' |x|`` of the mapped layer for the GDN input ``x``."""
    beta, gamma = simplified_params(gdn, kappa)
    c = gamma.shape[0]
    return F.conv2d(x.abs(), gamma.reshape(c, c, 1, 1).to(x.dtype), beta.to(x.dtype))


def simplified_reference(gdn: GDN, x: Tensor, kappa: Tensor | None = None) -> Tensor:
    """The mapped simplified layer computed directly (true division): what the rewrite approximates."""
    d = simplified_d(gdn, x, kappa)
    return x * d if gdn.inverse else x / d


@dataclass(frozen=True)
class SimplifiedCalibration:
    """What the pass needs for one GDN: the mapping's kappa and the range of the mapped ``d``."""

    mapping: str
    kappa: Tensor  #: [C]
    d: ChannelRange  #: range of d = beta' + gamma'|x| with this kappa
    rel_change: float  #: first-order relative RMS output change on the calibration data, this kappa
    rel_change_sqrt: float  #: the same for kappa = 1


def _moments(gdn: GDN, x: Tensor) -> Tensor:
    """[4, C]: sum w a b, sum w a^2, sum w b^2, sum y^2 (per channel, over batch and pixels)."""
    x = x.detach().double()
    beta, gamma = gdn.effective_params()
    beta, gamma = beta.double(), gamma.double()
    c = gamma.shape[0]
    s = F.conv2d(x * x, gamma.reshape(c, c, 1, 1), beta)
    a = F.conv2d(x.abs(), gamma.clamp_min(0).sqrt().reshape(c, c, 1, 1))
    b = s.sqrt() - beta.clamp_min(0).sqrt().reshape(1, c, 1, 1)
    if gdn.inverse:
        w, yy = x * x, x * x * s
    else:
        w, yy = (x / s) ** 2, x * x / s
    return torch.stack([(w * a * b).sum((0, 2, 3)), (w * a * a).sum((0, 2, 3)), (w * b * b).sum((0, 2, 3)),
                        yy.sum((0, 2, 3))])


@torch.no_grad()
def simplified_calibration(module: nn.Module, batches: Iterable[Tensor], *, mapping: str = "calibrated",
                           run: Callable | None = None, quantiles: Sequence[float] = (0.0, 1.0)
                           ) -> dict[str, SimplifiedCalibration]:
    """Per GDN path (relative to ``module``): kappa and the range of ``d`` on ``batches`` (run twice:
    moments for kappa, then the range of d with it). ``run`` as in
    :func:`quantize.passes.polyfit.observe_ranges`."""
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
    batches = list(batches)
    acc: dict[str, Tensor] = {}

    def hook(path: str):
        def record(layer: nn.Module, args: tuple, _out) -> None:
            m = _moments(layer, args[0])
            acc[path] = acc[path] + m if path in acc else m
        return record

    layers = {name: m for name, m in module.named_modules() if isinstance(m, GDN)}
    run_hooked(module, batches, layers, hook, run)
    kappas: dict[int, Tensor] = {}
    out_kappa: dict[str, tuple[Tensor, float, float]] = {}
    for path, (sab, saa, sbb, syy) in acc.items():
        fitted = torch.where(saa > 0, sab / saa.clamp_min(1e-300), torch.ones_like(saa))
        kappa = fitted if mapping == "calibrated" else torch.ones_like(saa)
        resid = (sbb - 2 * kappa * sab + kappa * kappa * saa).clamp_min(0)  # sum w (d - sqrt(s))^2
        resid1 = (sbb - 2 * sab + saa).clamp_min(0)
        total = float(syy.sum().clamp_min(1e-300))
        out_kappa[path] = (kappa, math.sqrt(float(resid.sum()) / total), math.sqrt(float(resid1.sum()) / total))
        kappas[id(layers[path])] = kappa
    ranges = observe_ranges(module, batches, lambda g, x: simplified_d(g, x, kappas[id(g)]), GDN, run=run,
                            quantiles=quantiles)
    return {path: SimplifiedCalibration(mapping=mapping, kappa=k, d=ranges[path], rel_change=r, rel_change_sqrt=r1)
            for path, (k, r, r1) in out_kappa.items()}


@register_pass
class GdnSimplified(Pass):
    """GDN / IGDN -> SimplifiedGDN x / (beta' + gamma'|x|), beta' = sqrt(beta), gamma' = kappa sqrt(gamma); fine-tune."""

    name = "gdn_simplified"
    exact = False
    types = (GDN,)

    def __init__(self, calibration: Mapping[str, SimplifiedCalibration] | None = None, mapping: str = "calibrated",
                 degree: int = 4, newton_steps: int = 3, margin: float = 1.5, clamp: bool = True,
                 max_rel_error: float | None = None):
        if mapping not in MAPPINGS:
            raise ValueError(f"mapping must be one of {MAPPINGS}, got {mapping!r}")
        if degree < 1 or newton_steps < 0:
            raise ValueError(f"need degree >= 1 and newton_steps >= 0, got {degree}, {newton_steps}")
        if margin < 1.0:
            raise ValueError(f"margin must be >= 1, got {margin}")
        self.calibration = None if calibration is None else dict(calibration)
        self.mapping = mapping
        self.degree, self.newton_steps, self.margin, self.clamp = int(degree), int(newton_steps), float(margin), clamp
        self.max_rel_error = max_rel_error
        self._fits: dict[str, PowerFit] = {}

    def fit(self, path: str) -> PowerFit:
        """The reciprocal's fit for the forward GDN at ``path`` (cached)."""
        if path not in self._fits:
            r = self.calibration[path].d
            lo = r.lo.double() / self.margin
            hi = torch.maximum(r.hi.double() * self.margin, lo * (1.0 + 1e-6))
            self._fits[path] = fit_power(lo, hi, -1.0, self.degree, self.newton_steps)
        return self._fits[path]

    def check(self, site: Site) -> str | None:
        m = site.module
        if type(m) is not GDN:
            return f"a {type(m).__name__} (subclass of GDN whose forward may differ)"
        if self.mapping == "sqrt" and m.inverse:
            return None  # kappa = 1, x * d: nothing from data is needed
        if self.calibration is None or site.path not in self.calibration:
            what = "kappa and the range of d" if self.mapping == "calibrated" else "the range of d"
            where = "no calibration given" if self.calibration is None else f"no calibration for {site.path!r}"
            return (f"{where}: the {self.mapping} mapping needs {what} from data; give calibration="
                    "simplified_calibration(model, tiles) (quantize/passes/gdn_simplified.py)")
        cal = self.calibration[site.path]
        if cal.mapping != self.mapping:
            return f"the calibration was made for mapping {cal.mapping!r}, the pass uses {self.mapping!r}"
        if cal.kappa.numel() != m.in_channels or cal.d.lo.numel() != m.in_channels:
            return f"the calibration has {cal.kappa.numel()} channels, the GDN {m.in_channels}"
        if m.inverse:
            return None
        if not bool((cal.d.lo > 0).all()):
            return "the range of d reaches 0 or below (d >= sqrt(beta) > 0): not a range of this layer"
        fit = self.fit(site.path)
        if not fit.converges:
            return (f"degree {self.degree} fits 1/d on its interval with relative error in "
                    f"[{fit.err_min:+.3g}, {fit.err_max:+.3g}], outside Newton's convergence region (-1, 1): "
                    "raise the degree")
        if self.max_rel_error is not None and fit.bound > self.max_rel_error:
            return (f"the bound on the relative error of 1/d on its interval, {fit.bound:.3g}, exceeds "
                    f"max_rel_error={self.max_rel_error:g} (raise the degree or the Newton steps)")
        return None

    def rewrite(self, site: Site) -> str:
        gdn = site.module
        cal = None if self.calibration is None else self.calibration.get(site.path)
        kappa = cal.kappa if cal is not None and self.mapping == "calibrated" else None
        beta, gamma = simplified_params(gdn, kappa)
        new = SimplifiedGDN(gdn.in_channels, inverse=gdn.inverse, degree=self.degree,
                            newton_steps=self.newton_steps, clamp=self.clamp).to(device=beta.device, dtype=beta.dtype)
        new.load_params(beta, gamma)
        parts = []
        if kappa is not None:
            parts.append(f"kappa in [{float(kappa.min()):.3g}, {float(kappa.max()):.3g}]")
        else:
            k = gdn.in_channels + 1
            parts.append(f"kappa = 1: between 1 and 1/sqrt({k}) = {1 / math.sqrt(k):.3g} of GDN's |y|"
                         if not gdn.inverse else f"kappa = 1: between 1 and sqrt({k}) = {math.sqrt(k):.3g} "
                         "times IGDN's |y|")
        if cal is not None:
            parts.append(f"est. relative RMS output change on the calibration data {cal.rel_change:.3g} "
                         f"(kappa = 1: {cal.rel_change_sqrt:.3g})")
        if not gdn.inverse:
            fit = self.fit(site.path)
            new.reciprocal.configure(fit.lo, fit.hi, fit.coeffs)
            parts.append(f"1/d by degree {self.degree} + {self.newton_steps} Newton steps on d in "
                         f"[{float(fit.lo.min()):.4g}, {float(fit.hi.max()):.4g}], rel. error <= {fit.bound:.2e}")
        new.train(gdn.training)
        for p in new.parameters():
            p.requires_grad_(gdn.beta.requires_grad)
        site.replace(new)
        kind = "IGDN" if gdn.inverse else "GDN"
        return (f"{kind} -> SimplifiedGDN ({self.mapping} mapping; the function changes, fine-tune): "
                + "; ".join(parts))
