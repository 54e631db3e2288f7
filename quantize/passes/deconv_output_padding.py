"""deconv_output_padding (EXACT): a transposed conv with output_padding q != 0 becomes one
with output_padding 0 and a kernel zero-padded by q at its end.

Why the DPU needs it
--------------------
"For the output_padding feature, DPU is not supported yet, so if the value is not all 0,
this operator will be assigned to CPU" (UG1414 v3.5, *Operators Supported by PyTorch*;
the Inspector's ``dpu_op_filter.py`` ``filter_transpose_conv2d`` says the same;
research/vitis_ai.md section 0.6). CompressAI's ``deconv`` (k5 s2 p2, output_padding 1;
``models/layers.py``) therefore runs on the CPU, and splits g_s and h_s.

Algebra (per spatial dimension; stride s, padding p, dilation 1, kernel w[0..k-1])
----------------------------------------------------------------------------------
A transposed conv scatters every input pixel through the kernel onto a "full" line::

    full[i*s + j] += x[i] * w[j]        i in [0, H), j in [0, k);   len(full) = (H-1)*s + k
    out[o] = full[o + p] + b            o in [0, O),  O = (H-1)*s - 2p + k + q

(output_padding q only lengthens the crop at the far end; a position past the end of
``full``, possible when q > p, holds 0). Take ``w'[j] = w[j]`` for j < k and
``w'[j] = 0`` for k <= j < k + q. Then ``full'`` is ``full`` followed by q zeros, and
with output_padding 0::

    O' = (H-1)*s - 2p + (k+q) + 0 = O,      out'[o] = full'[o + p] + b = out[o]

for every o: the same size and the same values. The added terms are products with an
exact 0, so the only difference in floating point is the order in which the kernels sum
(a few ulp: measured <= 2.3e-16 absolute in float64; in float32 0 for one deconv, and
<= 5.1e-7 of the output range through the four deconvs and three IGDNs of g_s). The zeros must go at the END of the kernel (last row and column of
the torch weight ``[C_in, C_out, kh, kw]``): putting them first gives
``full'[m] = full[m-1]`` and shifts the output by one pixel. (In the forward-conv view
of UG1414, zero-inserted input convolved with the *flipped* kernel, the appended zeros
become a leading zero row/column that absorbs the extra padding.)

For CompressAI's deconv: k5 s2 p2 q1 -> k6 s2 p2 q0, H -> 2H as before. The DPU accepts
it: kernel//stride = 3 in [1, 16] and kernel % stride == 0 (``dpu_op_filter.py``
``check_transposed_kernel``); the equivalent conv pads 6-1-2 = 3 < 6; the weight bank
needs 6*6*ceil(ic/10) (468 of 2048 for ic = 128).

The zero weights survive int8 quantisation exactly (round(0 * 2^fp) = 0, with the same
power-of-two scale, which max|w| sets), so the quantised model is the quantised
original, with 36/25 of the kernel MACs on paper. The other exact form, a sub-pixel
Conv2d(C_in, 4*C_out, 3, padding=1) + PixelShuffle(2) with kernels gathered from w, was
not needed: it renames and reshapes the state dict and adds a layer.

Refused (with the reason in the log): output_padding already 0 (nothing to do),
groups != 1, dilation != 1 (zero-padding by q would lengthen the dilated kernel by d*q),
and subclasses of ConvTranspose2d (their forward may differ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quantize.passes.base import Pass, Site, register_pass

__all__ = ["DeconvOutputPadding", "without_output_padding"]


@torch.no_grad()
def without_output_padding(deconv: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """A new ConvTranspose2d equal to ``deconv`` with output_padding 0 and the kernel zero-padded
    by (q_h, q_w) at the bottom and right; ``deconv`` is not modified."""
    qh, qw = deconv.output_padding
    kh, kw = deconv.kernel_size
    new = nn.ConvTranspose2d(deconv.in_channels, deconv.out_channels, (kh + qh, kw + qw), stride=deconv.stride,
                             padding=deconv.padding, output_padding=0, groups=deconv.groups,
                             bias=deconv.bias is not None, dilation=deconv.dilation,
                             padding_mode=deconv.padding_mode, device=deconv.weight.device,
                             dtype=deconv.weight.dtype)
    new.train(deconv.training)
    # F.pad pads the last dims first: (left, right, top, bottom) of [.., kh, kw]
    new.weight = nn.Parameter(F.pad(deconv.weight.detach(), (0, qw, 0, qh)),
                              requires_grad=deconv.weight.requires_grad)
    if deconv.bias is not None:
        new.bias = nn.Parameter(deconv.bias.detach().clone(), requires_grad=deconv.bias.requires_grad)
    return new


@register_pass
class DeconvOutputPadding(Pass):
    """ConvTranspose2d(k, s, p, output_padding=q) -> ConvTranspose2d(k+q, s, p, 0), kernel zero-padded at the end."""

    name = "deconv_output_padding"
    exact = True
    types = (nn.ConvTranspose2d,)

    def check(self, site: Site) -> str | None:
        m = site.module
        if type(m) is not nn.ConvTranspose2d:
            return f"a {type(m).__name__} (subclass of ConvTranspose2d whose forward may differ)"
        if all(q == 0 for q in m.output_padding):
            return "output_padding is 0 already (nothing to do)"
        if m.groups != 1:
            return f"groups={m.groups}: only groups=1 is rewritten"
        if any(d != 1 for d in m.dilation):
            return f"dilation {tuple(m.dilation)}: only dilation 1 is rewritten (the kernel would grow by d*q)"
        return None

    def rewrite(self, site: Site) -> str:
        m = site.module
        new = without_output_padding(m)
        site.replace(new)
        return (f"kernel {tuple(m.kernel_size)} output_padding {tuple(m.output_padding)} -> "
                f"kernel {tuple(new.kernel_size)} output_padding (0, 0)")
