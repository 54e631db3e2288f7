"""fold_batchnorm (EXACT): a conv followed by an eval-mode BatchNorm2d becomes one conv.

Why the DPU needs it
--------------------
vai_q_pytorch folds BatchNorm into the conv before quantising (``conv_bn_merge=True``,
research/vitis_ai.md section 2), and a standalone BatchNorm exports as an XIR ``scale``
op that did not land on the DPU (Vitis-AI #494, section 3); our partition check has no
DPU rule for it and puts it on the CPU, splitting the graph. Folding it ourselves makes
the float model we verify the one that is quantised.

Algebra
-------
In eval mode BatchNorm is a per-channel affine map with its running statistics::

    bn(v)[c] = gamma[c] * (v[c] - mu[c]) / sqrt(var[c] + eps) + beta[c] = s[c] * v[c] + t[c]
    s = gamma / sqrt(var + eps),  t = beta - s * mu          (gamma = 1, beta = 0 if not affine)

and the conv is linear in its weight with the bias added per output channel, so::

    bn(conv(u; W, b)) = conv(u; s * W, s * b + t)

where ``s * W`` scales every weight of output channel c by s[c]. That is dim 0 of a
Conv2d weight ``[C_out, C_in/g, kh, kw]``; a ConvTranspose2d weight is
``[C_in, C_out/g, kh, kw]``, whose output channel ``o = group * (C_out/g) + j`` is
scaled through the view ``[g, C_in/g, C_out/g, kh, kw] * s.view(g, 1, C_out/g, 1, 1)``.
The folded tensors are computed in float64 and rounded once to the conv's dtype, so the
result differs from conv-then-BN by float rounding only.

Refused (with the reason in the log)
------------------------------------
- a BatchNorm in training mode, or without running statistics: it normalises with the
  statistics of each batch, which no fixed weight reproduces;
- a BatchNorm not directly after a conv in an ``nn.Sequential`` (first stage, after
  another op, or under a parent whose forward order is unknown without tracing);
- a conv of a subclass (its forward may not be ``conv(u; W, b)``), a conv used at more
  than one place in the tree (folding would change the others), or channel counts that
  do not match.

Rewrite: the conv is replaced (same name) by the folded conv, and the BatchNorm's entry
is deleted from the Sequential.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from quantize.passes.base import Pass, Site, register_pass

__all__ = ["FoldBatchNorm", "fold_into_conv"]

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(s, t) of ``bn(v) = s * v + t`` in float64."""
    var = bn.running_var.detach().double()
    mu = bn.running_mean.detach().double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    s = gamma / torch.sqrt(var + bn.eps)
    return s, beta - s * mu


@torch.no_grad()
def fold_into_conv(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> nn.Conv2d | nn.ConvTranspose2d:
    """A new conv equal to ``bn(conv(.))`` (eval-mode ``bn``); ``conv`` and ``bn`` are not modified."""
    s, t = _bn_affine(bn)
    w = conv.weight.detach().double()
    if isinstance(conv, nn.ConvTranspose2d):
        g = conv.groups
        cin, cout_g = w.shape[0], w.shape[1]
        w = (w.reshape(g, cin // g, cout_g, *w.shape[2:]) * s.reshape(g, 1, cout_g, 1, 1)).reshape(w.shape)
    else:
        w = w * s.reshape(-1, 1, 1, 1)
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(s)
    new = copy.deepcopy(conv)
    dtype = conv.weight.dtype
    new.weight = nn.Parameter(w.to(dtype), requires_grad=conv.weight.requires_grad)
    new.bias = nn.Parameter((s * b + t).to(dtype), requires_grad=conv.weight.requires_grad)
    return new


@register_pass
class FoldBatchNorm(Pass):
    """Conv2d / ConvTranspose2d -> BatchNorm2d (eval) in an nn.Sequential: fold the BN into the conv."""

    name = "fold_batchnorm"
    exact = True
    types = (nn.BatchNorm2d,)
    #: ids of modules met more than once in the tree (set by :meth:`match`, read by :meth:`check`)
    _shared: frozenset[int] = frozenset()

    def match(self, root: nn.Module) -> list[Site]:
        seen: dict[int, int] = {}
        for _, m in root.named_modules(remove_duplicate=False):
            seen[id(m)] = seen.get(id(m), 0) + 1
        self._shared = frozenset(k for k, n in seen.items() if n > 1)
        return super().match(root)

    def check(self, site: Site) -> str | None:
        bn = site.module
        if bn.training:
            return "BatchNorm in training mode: batch statistics, not foldable"
        if bn.running_mean is None or bn.running_var is None:
            return "BatchNorm without running statistics (track_running_stats=False): batch statistics, not foldable"
        if not isinstance(site.parent, nn.Sequential):
            return (f"not directly after a conv: its parent is a {type(site.parent).__name__}, not an "
                    "nn.Sequential, so its producer is unknown")
        prev = site.previous()
        if prev is None:
            return "not directly after a conv: first stage of its nn.Sequential"
        conv = prev.module
        if not isinstance(conv, _CONVS):
            return f"not directly after a conv: follows {prev.path} ({type(conv).__name__})"
        if type(conv) not in _CONVS:
            return f"follows {prev.path}, a {type(conv).__name__} (subclass of a conv whose forward may differ)"
        if id(conv) in self._shared:
            return f"{prev.path} is used at more than one place in the tree; folding would change the others"
        if conv.out_channels != bn.num_features:
            return f"{prev.path} has {conv.out_channels} output channels, the BatchNorm {bn.num_features}"
        return None

    def rewrite(self, site: Site) -> str:
        prev = site.previous()
        assert prev is not None  # check() passed
        s, _ = _bn_affine(site.module)
        prev.replace(fold_into_conv(prev.module, site.module))
        site.remove()
        return f"folded into {prev.path} (scale in [{float(s.min()):.4g}, {float(s.max()):.4g}])"
