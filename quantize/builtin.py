"""The ``builtin`` DPU quantizer: power-of-two int8 for chains of convolutions.

It quantizes an ``nn.Sequential`` of ``Conv2d`` / ``ConvTranspose2d`` (groups 1, square
kernels, dilation 1), each optionally followed by a fused ``ReLU`` or ``LeakyReLU(26/256)``
(the codec's ``h_a`` and, after :func:`quantize.rewrite.rewrite_for_dpu`, ``h_s``) the way
Vitis AI's nndct quantizes for a DPUCZDX8G (the research notes ``../shared/research/vitis_ai.md``, section 2)::

    spec = calibrate(net, batches, load_arch())   # fix positions + per-layer SQNR
    fixed = to_fixednet(net, spec)                # codec.fixednet.FixedNet, the integer emulator
    fq = FakeQuant(net, spec)                     # the same arithmetic in torch float64

Rules (the limits come from the arch file's ``quantization`` section, never hard-coded):

* every tensor is per-tensor symmetric int8 in ``range``, value = ``q * 2**-fp``;
* calibration "diffs": start at the non-overflow position, the largest ``f`` with
  ``max|x| * 2**f <= 127`` (capped at ``max_fix_pos``), scan ``candidates`` positions
  ``f, f+1, ...`` (each capped at ``max_fix_pos``) and keep the one with the least squared
  error of the round-then-clip reconstruction (ties: the smaller position). Weights and
  biases round half away from zero (std::round); the input and activations round half up
  ``floor(x + 0.5)`` and take the MODE of the per-batch positions (ties: the smaller one);
* activation positions are calibrated on the float network's outputs (after the fused
  activation). nndct scans only 1 candidate for an INPUT node; here the input gets the same
  ``candidates`` scan as every activation;
* legalisation, layer by layer in order (a moved ``fp_out`` is the next layer's ``fp_in``):
  ``shift_cut = fp_w + fp_in - fp_out`` must lie in ``shift_cut_range`` ([0, 16]); it is
  fixed by moving ``fp_out``. Then ``shift_bias = fp_w + fp_in - fp_b`` must lie in
  ``[min(0, -(24 - (8 + shift_cut))), 16]``; it is fixed by moving ``fp_b``. Legalised
  positions may exceed ``max_fix_pos`` (the datapath constraint wins);
* the bias is int8 on the DPU too: it is rounded half away from zero at ``fp_b`` and
  SATURATED to int8 (a bias pushed to a finer ``fp_b`` by legalisation can clip);
* SQNR per layer: ``10 log10(sum ref**2 / sum (ref - deq)**2)`` of the dequantized
  fixed-point output of that layer against the float network's output of the same layer,
  both run end to end from the calibration batches (so the errors accumulate).

Layering: imports ``codec``, ``arch`` only (``models`` in callers), never ``compile/``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from codec.fixednet import LEAKY_DEN, LEAKY_NUM, FixedLayer, FixedNet

__all__ = ["FakeQuant", "LayerSpec", "QuantSpec", "calibrate", "diffs_fix_pos", "legalize",
           "non_overflow_fix_pos", "parse_chain", "quantize_tensor", "round_half_away", "round_half_up",
           "to_fixednet"]

LEAKY_SLOPE = LEAKY_NUM / LEAKY_DEN


# -- rounding and quantisation ----------------------------------------------------------------------
def round_half_up(x: Tensor) -> Tensor:
    """Activation rounding (DPU_ROUND): floor(x + 0.5)."""
    return torch.floor(x + 0.5)


def round_half_away(x: Tensor) -> Tensor:
    """Weight / bias rounding (std::round): ties away from zero."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def _qrange(arch: dict) -> tuple[int, int]:
    lo, hi = arch["quantization"]["range"]
    return int(lo), int(hi)


def quantize_tensor(x: Tensor, fp: int, rounding: str, lo: int = -128, hi: int = 127) -> Tensor:
    """Integers at ``fp``: round (``"half_up"`` or ``"half_away"``) then saturate to [lo, hi]."""
    x = torch.as_tensor(x, dtype=torch.float64) * (2.0**fp)
    q = round_half_up(x) if rounding == "half_up" else round_half_away(x)
    return torch.clamp(q, lo, hi)


def non_overflow_fix_pos(x: Tensor, hi: int, max_fix_pos: int) -> int:
    """The largest f with max|x| * 2**f <= hi, capped at ``max_fix_pos`` (all-zero: the cap)."""
    m = float(torch.max(torch.abs(torch.as_tensor(x, dtype=torch.float64)))) if x.numel() else 0.0
    if m == 0.0:
        return max_fix_pos
    f = math.floor(math.log2(hi / m))
    while m * 2.0 ** (f + 1) <= hi:  # guard log2 rounding
        f += 1
    while m * 2.0**f > hi:
        f -= 1
    return min(f, max_fix_pos)


def diffs_fix_pos(x: Tensor, rounding: str, arch: dict) -> int:
    """nndct "diffs": scan ``candidates`` positions from the non-overflow one, least squared error."""
    q = arch["quantization"]
    lo, hi = _qrange(arch)
    cap = int(q["max_fix_pos"])
    x = torch.as_tensor(x, dtype=torch.float64)
    f0 = non_overflow_fix_pos(x, hi, cap)
    best, best_err = f0, math.inf
    for f in sorted({min(f0 + k, cap) for k in range(int(q["calibration"]["candidates"]))}):
        err = float(torch.sum((quantize_tensor(x, f, rounding, lo, hi) * 2.0**-f - x) ** 2))
        if err < best_err:
            best, best_err = f, err
    return best


def _mode(values: list[int]) -> int:
    counts = Counter(values)
    top = max(counts.values())
    return min(v for v, c in counts.items() if c == top)


# -- the network ------------------------------------------------------------------------------------
@dataclass
class LayerSpec:
    name: str
    op: str  # "conv" | "deconv"
    act: str  # "none" | "relu" | "leaky_relu"
    stride: int
    padding: int
    output_padding: int
    fp_w: int
    fp_b: int
    fp_out: int
    has_bias: bool = True
    sqnr_db: float | None = None


@dataclass
class QuantSpec:
    fp_in: int
    layers: list[LayerSpec]
    bits: int = 8
    log: list[dict] = field(default_factory=list)  # legalisation moves

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> QuantSpec:
        """Inverse of :meth:`to_dict` (a JSON round trip gives the same spec)."""
        return cls(fp_in=int(d["fp_in"]), layers=[LayerSpec(**ls) for ls in d["layers"]], bits=int(d.get("bits", 8)),
                   log=list(d.get("log", [])))


def _single(v, what: str) -> int:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(set(v)) != 1:
        raise ValueError(f"non-square {what} {v} not supported")
    return int(v[0])


def parse_chain(net: nn.Sequential) -> list[tuple[str, nn.Module, str]]:
    """``[(name, conv_module, act)]``; raises ValueError for anything the builtin quantizer cannot do."""
    out: list[tuple[str, nn.Module, str]] = []
    for name, m in net.named_children():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            if m.groups != 1 or _single(m.dilation, "dilation") != 1 or m.padding_mode != "zeros":
                raise ValueError(f"{name}: only groups=1, dilation=1, zero padding")
            if isinstance(m.padding, str):
                raise ValueError(f"{name}: string padding {m.padding!r} not supported")
            out.append((name, m, "none"))
        elif isinstance(m, (nn.ReLU, nn.LeakyReLU)):
            if not out or out[-1][2] != "none":
                raise ValueError(f"{name}: an activation must follow a convolution directly")
            if isinstance(m, nn.LeakyReLU) and m.negative_slope != LEAKY_SLOPE:
                raise ValueError(f"{name}: the DPU supports only LeakyReLU({LEAKY_NUM}/{LEAKY_DEN})")
            out[-1] = (out[-1][0], out[-1][1], "relu" if isinstance(m, nn.ReLU) else "leaky_relu")
        elif isinstance(m, nn.Identity):
            continue
        else:
            raise ValueError(f"{name}: {type(m).__name__} not supported by the builtin quantizer")
    if not out:
        raise ValueError("no convolution in the network")
    return out


def _float_outputs(chain, x: Tensor) -> list[Tensor]:
    outs = []
    x = x.double()
    for _, m, act in chain:
        x = F.conv2d(x, m.weight.double(), None if m.bias is None else m.bias.double(), m.stride, m.padding) \
            if isinstance(m, nn.Conv2d) else \
            F.conv_transpose2d(x, m.weight.double(), None if m.bias is None else m.bias.double(), m.stride,
                               m.padding, m.output_padding)
        if act == "relu":
            x = F.relu(x)
        elif act == "leaky_relu":
            x = F.leaky_relu(x, LEAKY_SLOPE)
        outs.append(x)
    return outs


def legalize(fp_in: int, layers: list[LayerSpec], arch: dict) -> list[dict]:
    """Move fp_out / fp_b in place so every shift lies in its range; returns the moves made."""
    lo_cut, hi_cut = (int(v) for v in arch["quantization"]["shift_cut_range"])
    log = []
    fp = fp_in
    for ls in layers:
        cut = ls.fp_w + fp - ls.fp_out
        if cut > hi_cut or cut < lo_cut:
            new = ls.fp_w + fp - (hi_cut if cut > hi_cut else lo_cut)
            log.append({"layer": ls.name, "what": "fp_out", "shift_cut": cut, "from": ls.fp_out, "to": new})
            ls.fp_out = new
            cut = ls.fp_w + fp - ls.fp_out
        lo_b, hi_b = min(0, -(24 - (8 + cut))), 16
        sb = ls.fp_w + fp - ls.fp_b
        if ls.has_bias and (sb > hi_b or sb < lo_b):
            new = ls.fp_w + fp - (hi_b if sb > hi_b else lo_b)
            log.append({"layer": ls.name, "what": "fp_b", "shift_bias": sb, "from": ls.fp_b, "to": new})
            ls.fp_b = new
        fp = ls.fp_out
    return log


def check_legal(spec: QuantSpec, arch: dict) -> None:
    lo_cut, hi_cut = (int(v) for v in arch["quantization"]["shift_cut_range"])
    fp = spec.fp_in
    for ls in spec.layers:
        cut = ls.fp_w + fp - ls.fp_out
        if not lo_cut <= cut <= hi_cut:
            raise AssertionError(f"{ls.name}: shift_cut {cut}")
        sb = ls.fp_w + fp - ls.fp_b
        if ls.has_bias and not min(0, -(24 - (8 + cut))) <= sb <= 16:
            raise AssertionError(f"{ls.name}: shift_bias {sb} (shift_cut {cut})")
        fp = ls.fp_out


@torch.no_grad()
def calibrate(net: nn.Sequential, batches: list[Tensor], arch: dict,
              pin_fp_out: dict[str, int] | None = None) -> QuantSpec:
    """Fix positions of the input and of every layer's weight, bias and output, legalised,
    with each layer's SQNR (dB) on ``batches`` (each (N, C, H, W) or (C, H, W)).

    ``pin_fp_out`` sets the output fix position of the named layers instead of calibrating it
    (before legalisation), for outputs whose range is known, e.g. an index that must reach 63.
    """
    q = arch["quantization"]
    if q["scale"] != "power_of_two" or not q["symmetric"] or not q["per_tensor"]:
        raise ValueError("builtin quantizer: power-of-two symmetric per-tensor only")
    bits = int(math.log2(q["range"][1] - q["range"][0] + 1))
    chain = parse_chain(net)
    batches = [b.double() if b.dim() == 4 else b.double()[None] for b in batches]
    if not batches:
        raise ValueError("no calibration batches")
    fp_in = _mode([diffs_fix_pos(b, "half_up", arch) for b in batches])
    per_batch = [_float_outputs(chain, b) for b in batches]
    layers = []
    for i, (name, m, act) in enumerate(chain):
        fp_w = diffs_fix_pos(m.weight.detach(), "half_away", arch)
        fp_b = diffs_fix_pos(m.bias.detach(), "half_away", arch) if m.bias is not None else 0
        if pin_fp_out and name in pin_fp_out:
            fp_out = int(pin_fp_out[name])
        else:
            fp_out = _mode([diffs_fix_pos(outs[i], "half_up", arch) for outs in per_batch])
        layers.append(LayerSpec(
            name=name, op="conv" if isinstance(m, nn.Conv2d) else "deconv", act=act,
            stride=_single(m.stride, "stride"), padding=_single(m.padding, "padding"),
            output_padding=_single(m.output_padding, "output_padding") if isinstance(m, nn.ConvTranspose2d) else 0,
            fp_w=fp_w, fp_b=fp_b, fp_out=fp_out, has_bias=m.bias is not None))
    spec = QuantSpec(fp_in=fp_in, layers=layers, bits=bits)
    spec.log = legalize(fp_in, layers, arch)
    check_legal(spec, arch)
    fq = FakeQuant(net, spec)
    sig = [0.0] * len(layers)
    noise = [0.0] * len(layers)
    for b, ref in zip(batches, per_batch, strict=True):
        for i, y in enumerate(fq.layer_outputs(b)):
            deq = y * 2.0 ** -layers[i].fp_out
            sig[i] += float(torch.sum(ref[i] ** 2))
            noise[i] += float(torch.sum((ref[i] - deq) ** 2))
    for ls, s, n in zip(layers, sig, noise, strict=True):
        ls.sqnr_db = math.inf if n == 0 else (-math.inf if s == 0 else 10 * math.log10(s / n))
    return spec


# -- integer weights --------------------------------------------------------------------------------
def _int_params(m: nn.Module, ls: LayerSpec, bits: int) -> tuple[Tensor, Tensor | None]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w = quantize_tensor(m.weight.detach(), ls.fp_w, "half_away", lo, hi)
    b = None if m.bias is None else quantize_tensor(m.bias.detach(), ls.fp_b, "half_away", lo, hi)
    return w, b


def to_fixednet(net: nn.Sequential, spec: QuantSpec) -> FixedNet:
    """The integer network (int8 weights and biases, saturated) for ``codec.fixednet``."""
    chain = parse_chain(net)
    if [c[0] for c in chain] != [ls.name for ls in spec.layers]:
        raise ValueError("spec does not match the network")
    layers = []
    for (_, m, _), ls in zip(chain, spec.layers, strict=True):
        w, b = _int_params(m, ls, spec.bits)
        layers.append(FixedLayer(
            op=ls.op, weight=w.numpy().astype(np.float64), bias=None if b is None else b.numpy().astype(np.float64),
            fp_w=ls.fp_w, fp_b=ls.fp_b, fp_out=ls.fp_out, stride=ls.stride, padding=ls.padding,
            output_padding=ls.output_padding, act=ls.act))
    return FixedNet(layers=layers, fp_in=spec.fp_in, bits=spec.bits, meta={"quantizer": "builtin"})


class FakeQuant(nn.Module):
    """Torch float64 twin of :class:`codec.fixednet.FixedNet`: the same integer arithmetic.

    ``forward(x)`` takes REAL values (N, C, H, W) or (C, H, W), quantizes them at ``fp_in``
    (half up, saturate) and returns the integer-valued output at ``fp_out``;
    ``forward_int(x_q)`` starts from integers; ``dequantize(y)`` gives real values.
    """

    def __init__(self, net: nn.Sequential, spec: QuantSpec):
        super().__init__()
        chain = parse_chain(net)
        if [c[0] for c in chain] != [ls.name for ls in spec.layers]:
            raise ValueError("spec does not match the network")
        self.spec = spec
        self.lo, self.hi = -(2 ** (spec.bits - 1)), 2 ** (spec.bits - 1) - 1
        for i, ((_, m, _), ls) in enumerate(zip(chain, spec.layers, strict=True)):
            w, b = _int_params(m, ls, spec.bits)
            self.register_buffer(f"w{i}", w)
            self.register_buffer(f"b{i}", b)

    @property
    def fp_out(self) -> int:
        return self.spec.layers[-1].fp_out

    def quantize_input(self, x: Tensor) -> Tensor:
        return quantize_tensor(x, self.spec.fp_in, "half_up", self.lo, self.hi)

    def dequantize(self, y: Tensor) -> Tensor:
        return y * 2.0**-self.fp_out

    def layer_outputs(self, x: Tensor) -> list[Tensor]:
        """Integer outputs of every layer, from real input ``x``."""
        return self._run(self.quantize_input(x))

    def _run(self, x: Tensor) -> list[Tensor]:
        squeeze = x.dim() == 3
        x = x.double()[None] if squeeze else x.double()
        fp = self.spec.fp_in
        outs = []
        for i, ls in enumerate(self.spec.layers):
            w, b = getattr(self, f"w{i}"), getattr(self, f"b{i}")
            if ls.op == "conv":
                acc = F.conv2d(x, w, None, ls.stride, ls.padding)
            else:
                acc = F.conv_transpose2d(x, w, None, ls.stride, ls.padding, ls.output_padding)
            if b is not None:
                acc = acc + (b * (2.0 ** (fp + ls.fp_w - ls.fp_b)))[None, :, None, None]
            if ls.act == "relu":
                acc = torch.clamp_min(acc, 0.0)
            y = round_half_up(acc * (2.0 ** -(fp + ls.fp_w - ls.fp_out)))
            if ls.act == "leaky_relu":
                y = torch.where(y < 0, round_half_up(y * LEAKY_NUM / LEAKY_DEN), y)
            x = torch.clamp(y, self.lo, self.hi)
            fp = ls.fp_out
            outs.append(x[0] if squeeze else x)
        return outs

    @torch.no_grad()
    def forward_int(self, x_q: Tensor) -> Tensor:
        return self._run(x_q)[-1]

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        return self.layer_outputs(x)[-1]
