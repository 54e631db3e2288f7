"""The int8 export of seed 001's volume predictor (``models/mlp3d.py``) with the builtin DPU quantizer.

The MLP is a chain of 1x1 convolutions with LeakyReLU(26/256), which ``quantize/builtin.py`` takes as it is.
Its input is integers / 128 (``codec/volume.py``'s features), so fix position 7 is exact and kept; its
output, the correction in units of ``2**shift`` over 128, is pinned at 7.
"""

from __future__ import annotations

import torch
from torch import nn

from arch import load_arch
from codec import volume as V
from models.mlp3d import MLP3D
from quantize.builtin import calibrate, check_legal, legalize, to_fixednet

__all__ = ["export_int8"]


def export_int8(model: MLP3D, calib_x: torch.Tensor):
    """The builtin DPU quantizer on the 1x1-conv chain: input at fix position 7, output pinned at 7."""
    arch = load_arch()
    last = [name for name, m in model.net.named_children() if isinstance(m, nn.Conv2d)][-1]
    chunks = [calib_x[i: i + 2048] for i in range(0, calib_x.shape[0], 2048)]
    batches = [c.T.reshape(1, c.shape[1], c.shape[0], 1) for c in chunks]
    spec = calibrate(model.net, batches, arch, pin_fp_out={last: V.FP_OUT})
    if spec.fp_in != V.FP_IN:  # the features are integers / 128: position 7 is exact
        spec.fp_in = V.FP_IN
        spec.log = legalize(spec.fp_in, spec.layers, arch)
        check_legal(spec, arch)
    if spec.layers[-1].fp_out != V.FP_OUT:
        raise ValueError(f"output fix position moved to {spec.layers[-1].fp_out} by legalisation")
    return to_fixednet(model.net, spec), spec
