"""instance_norm (APPROXIMATE): InstanceNorm2d becomes an eval-mode BatchNorm2d whose running
statistics are measured on calibration data; ``fold_batchnorm`` then folds it into the conv
before it.

Why the DPU needs it
--------------------
InstanceNorm needs each image's own per-channel mean and variance and an rsqrt of it: a
reduction and a root at run time. ``xop_creator.py`` leaves ``instancenorm`` as a custom op
(research/vitis_ai.md sections 0.7 and 3), the arch file lists ``instance_norm`` as
``cpu_only``, and Quark only "simulates" it. A BatchNorm with fixed statistics is a
per-channel affine map, which folds into the preceding conv exactly.

Algebra and what it costs
-------------------------
For image n and channel c, with ``m_nc``, ``v_nc`` the image's own mean and (biased) variance::

    IN(x)[n, c] = w_c (x - m_nc) / sqrt(v_nc + eps) + b_c          (w = 1, b = 0 if not affine)
    BN(x)[n, c] = w_c (x - M_c)  / sqrt(V_c  + eps) + b_c          M, V: fixed, from calibration

with ``M_c``, ``V_c`` the mean and variance of channel c pooled over every pixel of every
calibration image (:func:`instance_norm_stats`). The two agree exactly for an image whose
``(m_nc, v_nc) = (M_c, V_c)``; otherwise::

    BN(x) - IN(x) = w_c [ (x - M_c) / sqrt(V_c + eps) - (x - m_nc) / sqrt(v_nc + eps) ]

an error that grows with the image's distance from the calibration statistics (contrast
ratio ``sqrt((v_nc + eps) / (V_c + eps))`` and shift ``m_nc - M_c``). It is a CHANGE OF
FUNCTION for data whose per-image statistics vary (exactly what IN normalises away), so the
model should be fine-tuned with the BatchNorm in place. ``tests/quantize/test_instance_norm.py``
measures it on a small model (conv - IN - ReLU - conv, 16x16 images ``a z + b``), as the
relative RMS error of the output: exact when calibrated on the image itself; 9 % with
gain 1 and offset 0 (only the images' sampling noise); 15 % for gain 0.9-1.1 and offset
+-0.1; 54 % for gain 0.5-2 and offset +-1 (48 % on the calibration images themselves);
137 % for a 4x contrast change. That is the price of a fixed normalisation, not of the pass.

An InstanceNorm2d that tracks running statistics and is in eval mode already computes
``BN`` with its running statistics; without ``stats`` for it the pass uses those (the
rewrite is then exact, said in its log line).

Refused (with the reason in the log): no calibration statistics for the layer (and no
running statistics of its own), statistics with the wrong channel count, and subclasses of
InstanceNorm2d. The new BatchNorm is always in eval mode: in training mode it would
normalise with batch statistics, which is neither the InstanceNorm nor the calibrated map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from quantize.passes.base import Pass, Site, register_pass
from quantize.passes.polyfit import run_hooked

__all__ = ["InstanceNormToBatchNorm", "NormStats", "instance_norm_stats", "to_batchnorm"]


@dataclass(frozen=True)
class NormStats:
    """Per-channel mean and (biased) variance pooled over all pixels of the calibration data."""

    mean: Tensor  #: [C]
    var: Tensor  #: [C]
    count: int  #: pixels per channel
    images: int


@torch.no_grad()
def instance_norm_stats(module: nn.Module, batches: Iterable[Tensor], *, run: Callable | None = None
                        ) -> dict[str, NormStats]:
    """Per InstanceNorm2d path (relative to ``module``), the pooled input statistics on ``batches``
    (``run(module, batch)`` drives the module; default ``module(batch)``)."""
    acc: dict[str, list] = {}

    def hook(path: str):
        def record(_m, args: tuple, _out) -> None:
            x = args[0].detach().double()
            v = x.transpose(0, 1).reshape(x.shape[1], -1)
            a = acc.setdefault(path, [0.0, 0.0, 0, 0])
            a[0] = a[0] + v.sum(1)
            a[1] = a[1] + (v * v).sum(1)
            a[2] += v.shape[1]
            a[3] += x.shape[0]
        return record

    run_hooked(module, batches, {n: m for n, m in module.named_modules() if isinstance(m, nn.InstanceNorm2d)},
               hook, run)
    out = {}
    for path, (s1, s2, n, images) in acc.items():
        mean = s1 / n
        out[path] = NormStats(mean=mean, var=(s2 / n - mean * mean).clamp_min(0.0), count=n, images=images)
    return out


@torch.no_grad()
def to_batchnorm(norm: nn.InstanceNorm2d, mean: Tensor, var: Tensor) -> nn.BatchNorm2d:
    """An eval-mode BatchNorm2d with ``norm``'s eps and affine parameters and the given statistics."""
    dtype = norm.weight.dtype if norm.affine else torch.get_default_dtype()
    bn = nn.BatchNorm2d(norm.num_features, eps=norm.eps, affine=norm.affine, track_running_stats=True,
                        device=mean.device, dtype=dtype)
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    if norm.affine:
        bn.weight.copy_(norm.weight)
        bn.bias.copy_(norm.bias)
        bn.weight.requires_grad_(norm.weight.requires_grad)
        bn.bias.requires_grad_(norm.bias.requires_grad)
    return bn.eval()


@register_pass
class InstanceNormToBatchNorm(Pass):
    """InstanceNorm2d -> eval BatchNorm2d with calibrated statistics (then fold_batchnorm folds it)."""

    name = "instance_norm"
    exact = False
    types = (nn.InstanceNorm2d,)

    def __init__(self, stats: Mapping[str, NormStats] | None = None):
        self.stats = None if stats is None else dict(stats)

    def _own_stats(self, m: nn.InstanceNorm2d) -> bool:
        return m.track_running_stats and m.running_mean is not None and m.running_var is not None

    def check(self, site: Site) -> str | None:
        m = site.module
        if type(m) is not nn.InstanceNorm2d:
            return f"a {type(m).__name__} (subclass of InstanceNorm2d whose forward may differ)"
        if self.stats is not None and site.path in self.stats:
            st = self.stats[site.path]
            if st.mean.numel() != m.num_features or st.var.numel() != m.num_features:
                return f"the statistics have {st.mean.numel()} channels, the InstanceNorm {m.num_features}"
            return None
        if self._own_stats(m):
            return None
        where = "no stats given" if self.stats is None else f"no stats for {site.path!r}"
        return (f"no calibration statistics ({where}) and no running statistics of its own: give "
                "stats=instance_norm_stats(model, tiles) (quantize/passes/instance_norm.py)")

    def rewrite(self, site: Site) -> str:
        m = site.module
        if self.stats is not None and site.path in self.stats:
            st = self.stats[site.path]
            mean, var = st.mean, st.var
            source = f"calibration statistics of {st.images} images ({st.count} pixels per channel)"
            exact = ""
        else:
            mean, var = m.running_mean, m.running_var
            source = "its own running statistics"
            exact = " (exact: an eval InstanceNorm with running statistics computes this)" if not m.training else ""
        site.replace(to_batchnorm(m, mean, var))
        return (f"InstanceNorm2d -> BatchNorm2d (eval) with {source}{exact}: mean in [{float(mean.min()):.4g}, "
                f"{float(mean.max()):.4g}], var in [{float(var.min()):.4g}, {float(var.max()):.4g}]; "
                "per-image normalisation becomes a fixed per-channel affine map")
