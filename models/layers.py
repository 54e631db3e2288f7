"""Layers of the learned codecs: GDN / inverse GDN and the conv / deconv helpers.

GDN follows CompressAI (``compressai/layers/gdn.py``) exactly::

    GDN:   y[c] = x[c] * rsqrt(beta[c] + sum_j gamma[c, j] * x[j]^2)
    IGDN:  y[c] = x[c] *  sqrt(beta[c] + sum_j gamma[c, j] * x[j]^2)

i.e. elementwise square -> 1x1 conv (weight gamma, bias beta) -> (r)sqrt -> multiply.
beta and gamma are stored re-parametrised (``NonNegativeParametrizer``): the stored
parameter p gives the value ``LowerBound(p, bound)^2 - pedestal`` with
``pedestal = (2^-18)^2``, which keeps them non-negative (beta >= beta_min) while
leaving gradients useful near zero. Exporters (ONNX, the int8 quantiser, the DPU
emulator) must never read ``gdn.beta`` / ``gdn.gamma`` directly: they read the
effective tensors from :meth:`GDN.effective_params` (or the ``effective_beta`` /
``effective_gamma`` properties).

The deconvolution is CompressAI's ``ConvTranspose2d(k=5, s=2, p=2, output_padding=1)``,
which maps H -> 2H exactly. The DPU wants another padding form; a later rewrite pass
in ``quantize/`` converts it, so this file keeps the standard definition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GDN",
    "LowerBound",
    "NonNegativeParametrizer",
    "conv",
    "deconv",
    "lower_bound",
]


class _LowerBoundFunction(torch.autograd.Function):
    """``max(x, bound)`` whose gradient still flows where it would raise x.

    Backward passes the gradient where ``x >= bound`` or where the gradient is
    negative (gradient descent would then increase x, moving it back into range).
    Same as CompressAI's ``LowerBoundFunction``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bound: Tensor) -> Tensor:
        ctx.save_for_backward(x, bound)
        return torch.max(x, bound)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        x, bound = ctx.saved_tensors
        pass_through = (x >= bound) | (grad_output < 0)
        return pass_through.type(grad_output.dtype) * grad_output, None


def lower_bound(x: Tensor, bound: float | Tensor) -> Tensor:
    """Functional form of :class:`LowerBound` (gradient-friendly ``max(x, bound)``)."""
    b = torch.as_tensor(bound, dtype=x.dtype, device=x.device)
    return _LowerBoundFunction.apply(x, b)


class LowerBound(nn.Module):
    """``max(x, bound)`` with the pass-through gradient of :func:`lower_bound`."""

    bound: Tensor

    def __init__(self, bound: float):
        super().__init__()
        self.register_buffer("bound", torch.tensor([float(bound)]), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.onnx.is_in_onnx_export():
            return torch.max(x, self.bound)
        return _LowerBoundFunction.apply(x, self.bound.to(x.dtype))


class NonNegativeParametrizer(nn.Module):
    """value = LowerBound(p, sqrt(minimum + pedestal))^2 - pedestal (CompressAI).

    ``init(value)`` gives the stored parameter for a wanted value; ``forward(p)``
    gives the effective (non-negative, >= ``minimum``) value.
    """

    pedestal: Tensor

    def __init__(self, minimum: float = 0.0, reparam_offset: float = 2.0**-18):
        super().__init__()
        self.minimum = float(minimum)
        self.reparam_offset = float(reparam_offset)
        pedestal = self.reparam_offset**2
        self.register_buffer("pedestal", torch.tensor([pedestal]), persistent=False)
        self.lower_bound = LowerBound((self.minimum + pedestal) ** 0.5)

    def init(self, x: Tensor) -> Tensor:
        return torch.sqrt(torch.max(x + self.pedestal, self.pedestal))

    def forward(self, x: Tensor) -> Tensor:
        out = self.lower_bound(x)
        return out * out - self.pedestal


class GDN(nn.Module):
    """Generalized divisive normalization (Balle et al. 2016); ``inverse=True`` is IGDN.

    Parameters (state-dict keys ``beta`` [C] and ``gamma`` [C, C]) are the
    re-parametrised values; use :meth:`effective_params` for the real ones.
    """

    def __init__(self, in_channels: int, inverse: bool = False, beta_min: float = 1e-6,
                 gamma_init: float = 0.1):
        super().__init__()
        self.in_channels = int(in_channels)
        self.inverse = bool(inverse)
        self.beta_reparam = NonNegativeParametrizer(minimum=beta_min)
        self.gamma_reparam = NonNegativeParametrizer()
        beta = torch.ones(in_channels)
        gamma = gamma_init * torch.eye(in_channels)
        self.beta = nn.Parameter(self.beta_reparam.init(beta))
        self.gamma = nn.Parameter(self.gamma_reparam.init(gamma))

    @property
    def effective_beta(self) -> Tensor:
        """The beta the layer computes with, shape [C] (bias of the 1x1 conv)."""
        return self.beta_reparam(self.beta)

    @property
    def effective_gamma(self) -> Tensor:
        """The gamma the layer computes with, shape [C, C] (weight of the 1x1 conv)."""
        return self.gamma_reparam(self.gamma)

    def effective_params(self) -> tuple[Tensor, Tensor]:
        """(beta [C], gamma [C, C]) as detached tensors, for export."""
        with torch.no_grad():
            return self.effective_beta.detach().clone(), self.effective_gamma.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        beta = self.effective_beta
        gamma = self.effective_gamma.reshape(c, c, 1, 1)
        norm = F.conv2d(x * x, gamma, beta)
        norm = torch.sqrt(norm) if self.inverse else torch.rsqrt(norm)
        return x * norm

    def extra_repr(self) -> str:
        return f"{self.in_channels}, inverse={self.inverse}"


def conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.Conv2d:
    """'Same'-padded convolution: H -> H / stride (CompressAI ``conv``)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                     padding=kernel_size // 2)


def deconv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 2) -> nn.ConvTranspose2d:
    """Transposed convolution H -> H * stride (CompressAI ``deconv``: k5 s2 p2 output_padding=1)."""
    return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                              output_padding=stride - 1, padding=kernel_size // 2)
