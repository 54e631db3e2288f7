"""Numerical-equivalence helpers for the rewrite tests (house habit 9).

Float rewrites are compared on seeded inputs with a tolerance scaled to the tensor's
range: ``max|new - ref| <= RTOL * max|ref| + ATOL``. RTOL = 1e-5 is about 100 float32
ulps of the largest output, room for a different summation order in the conv kernels
(the rewritten convs add exact zeros or fold a per-channel scale, rounded once); ATOL =
1e-6 covers outputs whose range is near 0.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

RTOL = 1e-5
ATOL = 1e-6


def relative_error(new: Tensor, ref: Tensor) -> float:
    """max|new - ref| / max|ref| (the error relative to the output range)."""
    assert new.shape == ref.shape, (new.shape, ref.shape)
    return float((new - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def assert_equivalent(new: Tensor, ref: Tensor, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert new.shape == ref.shape, (new.shape, ref.shape)
    err = float((new - ref).abs().max())
    bound = rtol * float(ref.abs().max()) + atol
    assert err <= bound, f"max abs diff {err:.3g} > {bound:.3g} (rtol {rtol:g} of range {float(ref.abs().max()):.3g})"


def state(module: nn.Module) -> dict[str, Tensor]:
    """A detached copy of the state dict, to compare a module before and after."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


@torch.no_grad()
def outputs(module: nn.Module, x: Tensor) -> Tensor:
    """module(x) on a copy (a BatchNorm in training mode must not update the original)."""
    return copy.deepcopy(module)(x)
