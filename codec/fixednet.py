"""Fixed-point networks run exactly in integers: the DPU's datapath, in numpy.

A ``FixedNet`` is a chain of conv / transposed-conv layers with power-of-two
scales, the way the DPU computes them:

    acc  = sum(x_q * w_q) + b_q * 2**(fp_in + fp_w - fp_b)      (exact integer accumulation)
    out  = saturate(act(round_half_up(acc * 2**-(fp_in + fp_w - fp_out))), bits)

where a tensor's real value is ``q * 2**-fp``. ``bits`` is 8 for the DPU; the float
codec runs its hyper-synthesis h_s through the same engine at 16 bits so that the
encoder and the decoder choose identical entropy-coding tables on any machine
(``codec/intconv.py`` explains why float64 BLAS is exact here).

The layer list is plain data (numpy arrays and ints), saved in a ``.npz``; nothing
here imports torch. ``models/export.py`` builds it from a trained torch module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from codec.intconv import conv2d, conv_transpose2d, round_half_up, saturate

LEAKY_NUM, LEAKY_DEN = 26, 256  # the DPU's only LeakyReLU slope


@dataclass
class FixedLayer:
    op: str  # "conv" | "deconv"
    weight: np.ndarray  # integer-valued; conv (O, I, kh, kw), deconv (I, O, kh, kw)
    bias: np.ndarray | None  # integer-valued (O,)
    fp_w: int
    fp_b: int
    fp_out: int
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    act: str = "none"  # "none" | "relu" | "leaky_relu"

    def forward(self, x: np.ndarray, fp_in: int, bits: int) -> np.ndarray:
        shift_bias = fp_in + self.fp_w - self.fp_b
        bias = None
        if self.bias is not None:
            bias = np.asarray(self.bias, dtype=np.float64) * (2.0**shift_bias)
        if self.op == "conv":
            acc = conv2d(x, self.weight, bias, stride=self.stride, padding=self.padding)
        elif self.op == "deconv":
            acc = conv_transpose2d(x, self.weight, bias, stride=self.stride, padding=self.padding,
                                   output_padding=self.output_padding)
        else:
            raise ValueError(f"unknown op {self.op!r}")
        shift_cut = fp_in + self.fp_w - self.fp_out
        if self.act == "relu":
            acc = np.maximum(acc, 0.0)
        y = round_half_up(acc * (2.0**-shift_cut))
        if self.act == "leaky_relu":
            # the DPU applies the slope on the requantized value: y < 0 -> round(y * 26/256)
            y = np.where(y < 0, round_half_up(y * LEAKY_NUM / LEAKY_DEN), y)
        return saturate(y, bits)


@dataclass
class FixedNet:
    layers: list[FixedLayer]
    fp_in: int
    bits: int = 8
    meta: dict = field(default_factory=dict)

    @property
    def fp_out(self) -> int:
        return self.layers[-1].fp_out

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Real values -> integers at fp_in, round half up and saturate (never wrap)."""
        return saturate(round_half_up(np.asarray(x, dtype=np.float64) * 2.0**self.fp_in), self.bits)

    def forward_int(self, x_q: np.ndarray) -> np.ndarray:
        """Integer tensor (C, H, W) at fp_in -> integer tensor at fp_out."""
        x = np.asarray(x_q, dtype=np.float64)
        lo, hi = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        if x.size and (x.min() < lo or x.max() > hi or not np.array_equal(x, np.round(x))):
            raise ValueError(f"input is not {self.bits}-bit integer data")
        fp = self.fp_in
        for layer in self.layers:
            x = layer.forward(x, fp, self.bits)
            fp = layer.fp_out
        return x

    # -- storage -------------------------------------------------------------------------------------
    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        out = {f"{prefix}.fp_in": np.int64(self.fp_in), f"{prefix}.bits": np.int64(self.bits),
               f"{prefix}.n": np.int64(len(self.layers))}
        for i, layer in enumerate(self.layers):
            p = f"{prefix}.{i}"
            out[f"{p}.op"] = np.array(layer.op)
            out[f"{p}.act"] = np.array(layer.act)
            # int8 networks keep int8 weights on disk (a quarter of the size); 16-bit ones int32
            out[f"{p}.weight"] = np.asarray(layer.weight, dtype=np.int8 if self.bits <= 8 else np.int32)
            if layer.bias is not None:
                out[f"{p}.bias"] = np.asarray(layer.bias, dtype=np.int64)
            out[f"{p}.ints"] = np.array([layer.fp_w, layer.fp_b, layer.fp_out, layer.stride, layer.padding,
                                         layer.output_padding], dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> FixedNet:
        n = int(arrays[f"{prefix}.n"])
        layers = []
        for i in range(n):
            p = f"{prefix}.{i}"
            fp_w, fp_b, fp_out, stride, padding, opad = (int(v) for v in arrays[f"{p}.ints"])
            layers.append(FixedLayer(
                op=str(arrays[f"{p}.op"]), act=str(arrays[f"{p}.act"]),
                weight=np.asarray(arrays[f"{p}.weight"], dtype=np.float64),
                bias=np.asarray(arrays[f"{p}.bias"], dtype=np.float64) if f"{p}.bias" in arrays else None,
                fp_w=fp_w, fp_b=fp_b, fp_out=fp_out, stride=stride, padding=padding, output_padding=opad,
            ))
        return cls(layers=layers, fp_in=int(arrays[f"{prefix}.fp_in"]), bits=int(arrays[f"{prefix}.bits"]))
