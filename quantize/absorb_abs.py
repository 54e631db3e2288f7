"""absorb_abs (EXACT): the ``abs`` in front of h_a becomes DPU operators inside h_a.

The codec computes ``z = h_a(|y|)``; ``abs`` is a CPU-only operator on the DPU
(``arch/ULTRA96.json`` ``cpu_only``), so h_a would start with a CPU op and the encoder
would need a CPU hop between g_a and h_a. With ``|y| = relu(y) + relu(-y)`` and h_a's
first layer a convolution ``W``::

    W * |y| = W * relu(y) + W * relu(-y) = [W, W] * relu(E y),   E = [I; -I]   (1x1, no bias)

so the new h_a is ``conv1x1(M -> 2M, weight E) + ReLU`` followed by the first conv with
its weight concatenated twice along the input channels (bias unchanged), then the rest
of h_a as it was. Every value of ``E`` is 0 or +-1, exact in any fixed-point format
(``fp_w = 6`` keeps +-1 exactly in int8), so quantisation changes nothing either. The
first conv sees 2M input channels: its weight bank needs ``k*k*ceil(2M/10)`` (234 of
2048 for k = 3, M = 128).

Refused (ValueError): a first layer that is not a groups=1 ``Conv2d``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

__all__ = ["absorb_abs"]


@torch.no_grad()
def absorb_abs(h_a: nn.Sequential) -> nn.Sequential:
    """A new Sequential equal to ``lambda y: h_a(abs(y))`` built from DPU operators; ``h_a`` is not modified."""
    items = list(h_a.named_children())
    if not items or not isinstance(items[0][1], nn.Conv2d) or items[0][1].groups != 1:
        raise ValueError("absorb_abs: h_a must start with a groups=1 Conv2d")
    name0, conv0 = items[0]
    m = conv0.in_channels
    split = nn.Conv2d(m, 2 * m, kernel_size=1, bias=False)
    eye = torch.eye(m, dtype=split.weight.dtype)
    split.weight.copy_(torch.cat([eye, -eye])[:, :, None, None])
    first = nn.Conv2d(2 * m, conv0.out_channels, conv0.kernel_size, conv0.stride, conv0.padding,
                      bias=conv0.bias is not None, padding_mode=conv0.padding_mode)
    first.weight.copy_(torch.cat([conv0.weight, conv0.weight], dim=1))
    if conv0.bias is not None:
        first.bias.copy_(conv0.bias)
    new = [("abs_split", split), ("abs_relu", nn.ReLU()), (name0, first)]
    new += [(n, _copy(mod)) for n, mod in items[1:]]
    return nn.Sequential(OrderedDict(new))


def _copy(m: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(m)
