"""conv5x5_to_3x3 (APPROXIMATE, OPT-IN): a 5x5 Conv2d named in ``layers`` becomes two 3x3 convs
whose composed kernel is a least-squares fit of the 5x5 one.

Why (and why it is opt-in)
--------------------------
The B1600 of the Ultra96 runs 5x5 convs natively: the conv engine takes kernels 1-16 and
the only extra limit is the weight-bank depth ``k_h * k_w * ceil(ic / 10) <= 2048``, i.e.
``ic <= 810`` for 5x5 (arch/ULTRA96.json; research/vitis_ai.md section 0.8). Nothing in
this codec needs the split for the Ultra96. It is here for targets or compilers that
handle only 3x3 well, or for a conv too deep for a bank, and it rewrites ONLY the layers
named in ``layers`` (paths relative to the module the pass runs on, e.g. ``"conv1"`` for
``model.g_a``); every other 5x5 is refused with that reason.

Algebra
-------
Two stride-1 correlations compose into one with the full convolution of their kernels::

    second(first(x))[o] = sum_i K'[o, i] * x[i],   K'[o, i, w] = sum_m sum_(u + v = w) A[o, m, v] B[m, i, u]

(B = first [M, C_in, 3, 3], A = second [C_out, M, 3, 3], w in 0..4 per axis). To make the
borders match as well, the first conv pads by the 5x5's padding p and the second pads 0 and
takes the stride s: the intermediate map then holds ``B * x`` computed on the zero-padded
input at every position the second conv reads, so ``out = K' * x`` (stride s, pad p)
everywhere, with the same output size ``floor((H + 2p - 5) / s) + 1``. The 5x5's bias goes
to the second conv; the first has none. The only error is the kernel fit ``K' - K``.

Exact or not
------------
Not every 5x5 kernel is a composition: with ``M >= 9 C_in`` it always is (B = the nine
3x3 shifts of each input channel, then A solves a linear system exactly), and likewise with
``M >= 9 C_out``; below that it is a low-rank fit. The default ``M`` is
``min(max(C_in, C_out), 9 min(C_in, C_out))``, so g_a's first conv (1 -> N) is split
exactly and a square N -> N conv approximately. The fit is alternating least squares
(A given B and B given A are both linear), ``iters`` rounds from a seeded start, then each
middle channel is rescaled so that A and B carry equal norm (one int8 scale suits both).
The log line gives the relative kernel error ``||K' - K|| / ||K||`` and the MAC ratio; an
output moves by at most ``max|x| * sum |K' - K|`` over the kernel of that output channel.
A non-exact split NEEDS FINE-TUNING; note that it also costs more MACs than the 5x5 for
M = C (the first conv runs at the input's resolution).

Refused (with the reason in the log): a kernel that is not 5x5 (nothing to do), a layer not
named in ``layers``, groups != 1, dilation != 1, string padding or a padding mode other than
zeros, and subclasses of Conv2d.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from quantize.passes.base import Pass, Site, register_pass

__all__ = ["Conv5x5To3x3", "compose_3x3", "default_mid_channels", "factor_5x5", "kernel_error_bound"]


def compose_3x3(a: Tensor, b: Tensor) -> Tensor:
    """The 5x5 kernel [C_out, C_in, 5, 5] of ``second(first(x))``; ``a`` = second [C_out, M, 3, 3],
    ``b`` = first [M, C_in, 3, 3]."""
    k = a.new_zeros(a.shape[0], b.shape[1], 5, 5)
    for v0 in range(3):
        for v1 in range(3):
            k[:, :, v0:v0 + 3, v1:v1 + 3] += torch.einsum("om,miuv->oiuv", a[:, :, v0, v1], b)
    return k


def kernel_error_bound(kernel: Tensor, composed: Tensor) -> Tensor:
    """Per output channel, ``sum |K' - K|``: an output moves by at most this times ``max|x|``."""
    return (composed - kernel).abs().sum((1, 2, 3))


def default_mid_channels(cin: int, cout: int) -> int:
    return min(max(cin, cout), 9 * min(cin, cout))


def _shift_basis(m: int, c: int, dtype) -> Tensor:
    """[m, c, 3, 3]: channel ``9 i + d`` is the 3x3 delta at offset d of input channel i (m >= 9 c)."""
    t = torch.zeros(m, c, 3, 3, dtype=dtype)
    for i in range(c):
        for d in range(9):
            t[9 * i + d, i, d // 3, d % 3] = 1.0
    return t


def _lstsq(x: Tensor, y: Tensor) -> Tensor:
    """argmin ||x w - y|| by the normal equations with a tiny ridge (1e-12 of the mean diagonal), in
    float64: x is tall and the systems are at most 9M x 9M, so this is fast and accurate enough."""
    g = x.T @ x
    ridge = 1e-12 * float(g.diagonal().mean().clamp_min(1e-300))
    g.diagonal().add_(ridge)
    return torch.linalg.solve(g, x.T @ y)


def _solve_a(k: Tensor, b: Tensor) -> Tensor:
    """Least-squares A given B: K[o] (C_in*25) = sum_(m, v) A[o, m, v] Phi[(m, v)]."""
    m, cin = b.shape[:2]
    phi = b.new_zeros(m, 3, 3, cin, 5, 5)
    for v0 in range(3):
        for v1 in range(3):
            phi[:, v0, v1, :, v0:v0 + 3, v1:v1 + 3] = b
    phi = phi.reshape(m * 9, cin * 25)
    sol = _lstsq(phi.T, k.reshape(k.shape[0], -1).T)  # [M*9, C_out]
    return sol.T.reshape(k.shape[0], m, 3, 3)


def _solve_b(k: Tensor, a: Tensor) -> Tensor:
    """Least-squares B given A: K[:, i] (C_out*25) = sum_(m, u) B[m, i, u] Psi[(m, u)]."""
    cout, m = a.shape[:2]
    psi = a.new_zeros(cout, 5, 5, m, 3, 3)
    for u0 in range(3):
        for u1 in range(3):
            psi[:, u0:u0 + 3, u1:u1 + 3, :, u0, u1] = a.permute(0, 2, 3, 1)
    psi = psi.reshape(cout * 25, m * 9)
    rhs = k.permute(0, 2, 3, 1).reshape(cout * 25, -1)  # [(o, w), i]
    sol = _lstsq(psi, rhs)  # [(m, u), C_in]
    return sol.reshape(m, 3, 3, -1).permute(0, 3, 1, 2)


@torch.no_grad()
def factor_5x5(kernel: Tensor, mid: int, iters: int = 30, seed: int = 0) -> tuple[Tensor, Tensor, float]:
    """(A, B, relative error) with ``compose_3x3(A, B) ~ kernel`` in least squares (float64)."""
    k = kernel.detach().double().cpu()
    cout, cin = k.shape[:2]
    if mid >= 9 * cin:
        b = _shift_basis(mid, cin, k.dtype)
        a = _solve_a(k, b)
    elif mid >= 9 * cout:
        a = _shift_basis(mid, cout, k.dtype).permute(1, 0, 2, 3).contiguous()
        b = _solve_b(k, a)
    else:
        g = torch.Generator().manual_seed(seed)
        b = torch.randn(mid, cin, 3, 3, generator=g, dtype=k.dtype)
        b[:, :, 1, 1] += torch.eye(mid, cin, dtype=k.dtype) * 3.0  # start near "centre taps"
        a = _solve_a(k, b)
        for _ in range(iters):
            b = _solve_b(k, a)
            a = _solve_a(k, b)
    # balance: scale middle channel m by t_m in B and 1/t_m in A (the composition is unchanged)
    na = a.pow(2).sum((0, 2, 3)).sqrt()
    nb = b.pow(2).sum((1, 2, 3)).sqrt()
    t = torch.where((na > 0) & (nb > 0), (na / nb.clamp_min(1e-300)).sqrt(), torch.ones_like(na))
    a, b = a / t.view(1, -1, 1, 1), b * t.view(-1, 1, 1, 1)
    err = float((compose_3x3(a, b) - k).norm() / k.norm().clamp_min(1e-300))
    return a, b, err


@register_pass
class Conv5x5To3x3(Pass):
    """Conv2d 5x5 named in ``layers`` -> Sequential(first 3x3 pad p, second 3x3 stride s pad 0), least squares."""

    name = "conv5x5_to_3x3"
    exact = False
    types = (nn.Conv2d,)

    def __init__(self, layers: Sequence[str] = (), mid_channels: int | None = None, iters: int = 30, seed: int = 0):
        if isinstance(layers, str):
            raise ValueError("give a list of layer paths, not one string")
        self.layers = tuple(layers)
        self.mid_channels, self.iters, self.seed = mid_channels, int(iters), int(seed)

    def check(self, site: Site) -> str | None:
        m = site.module
        if type(m) is not nn.Conv2d:
            return f"a {type(m).__name__} (subclass of Conv2d whose forward may differ)"
        if tuple(m.kernel_size) != (5, 5):
            return f"kernel {tuple(m.kernel_size)} is not 5x5 (nothing to do)"
        if site.path not in self.layers:
            return ("not named in layers (opt-in: the B1600 runs 5x5 natively while "
                    "k_h*k_w*ceil(ic/10) <= 2048, i.e. ic <= 810)")
        if m.groups != 1:
            return f"groups={m.groups}: only groups=1 is split"
        if tuple(m.dilation) != (1, 1):
            return f"dilation {tuple(m.dilation)}: only dilation 1 is split"
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            return f"padding {m.padding!r} / padding_mode {m.padding_mode!r}: only numeric zero padding is split"
        return None

    def rewrite(self, site: Site) -> str:
        m = site.module
        cin, cout = m.in_channels, m.out_channels
        mid = self.mid_channels or default_mid_channels(cin, cout)
        a, b, err = factor_5x5(m.weight, mid, self.iters, self.seed)
        dev, dtype = m.weight.device, m.weight.dtype
        first = nn.Conv2d(cin, mid, 3, padding=m.padding, bias=False, device=dev, dtype=dtype)
        second = nn.Conv2d(mid, cout, 3, stride=m.stride, padding=0, bias=m.bias is not None, device=dev,
                           dtype=dtype)
        with torch.no_grad():
            first.weight.copy_(b)
            second.weight.copy_(a)
            if m.bias is not None:
                second.bias.copy_(m.bias)
        for p in (*first.parameters(), *second.parameters()):
            p.requires_grad_(m.weight.requires_grad)
        new = nn.Sequential(OrderedDict([("first", first), ("second", second)]))
        new.train(m.training)
        site.replace(new)
        sh, sw = m.stride
        macs = (9 * cin * mid + 9 * mid * cout / (sh * sw)) / (25 * cin * cout / (sh * sw))
        exact = "exact up to rounding" if mid >= 9 * min(cin, cout) else "approximate: fine-tune"
        return (f"5x5 {cin}->{cout} stride {tuple(m.stride)} -> 3x3 {cin}->{mid} pad {tuple(m.padding)} + 3x3 "
                f"{mid}->{cout} stride {tuple(m.stride)} pad 0; relative kernel error {err:.3g} ({exact}); "
                f"MACs x{macs:.2f}")
