"""DPU partition check: which ops of a network the DPUCZDX8G runs, and how the graph splits.

One deployed network (an ``nn.Module``) and an example input shape go in; a
:class:`PartitionReport` comes out: per op its device (``DPU``/``CPU``) and the reason,
the DPU subgraphs, the CPU ops, the tensors that cross the DPU/CPU boundary, and the
verdict for DPU-PYNQ, whose ``DpuOverlay.load_model`` asserts exactly one DPU subgraph
(``runtime.single_dpu_subgraph_required`` in the arch file)::

    report = partition(model.h_a, (1, 128, 16, 16), pre_ops=("abs",))
    print(report.format()); report.to_json(); report.deployable

How it works
------------
1. **Trace.** ``torch.fx.symbolic_trace`` on a deep copy of the module, then
   ``ShapeProp`` for the shapes (on the ``meta`` device, so no arithmetic is done; a
   module that cannot run on ``meta`` falls back to zeros on the CPU).
   GDN (``models/layers.py``) traces as it is: its forward is square (``x * x``) ->
   1x1 ``conv2d`` (gamma, beta) -> ``rsqrt`` (``sqrt`` for IGDN) -> ``mul``. The
   re-parametrisation of beta and gamma (lower bound, square, minus pedestal) touches
   only parameters: every node without a runtime tensor input is a *constant*, folded
   at export (``GDN.effective_params``), and is not an op here. Shape bookkeeping
   (``x.shape[1]``) is dropped the same way. No leaf-module policy is needed.
   The DPU-only GDN forms of ``models/layers.py`` (``PolyGDN``, ``SimplifiedGDN``, built by
   the ``gdn_polynomial`` / ``gdn_simplified`` passes) trace the same way into nothing but
   1x1 ``conv2d`` (dense and depthwise), ``relu`` after a conv and ``mul`` of two distinct
   tensors (their square is ``x * square_operand(x)``, never ``x * x``), so the existing
   checks judge them DPU and a g_a / g_s built from them is one DPU subgraph
   (``tests/quantize/test_gdn_polynomial.py``).
2. **Lower.** Each remaining fx node becomes one :class:`OpInfo` with a normalised
   op *kind* (``conv2d``, ``conv_transpose2d``, ``relu``, ``mul``, ``square`` ...)
   and its attributes. ``mul(x, x)`` is the kind ``square``. ``pre_ops``/``post_ops``
   add elementwise ops the codec applies outside the module (``h_a`` is fed ``|y|``:
   ``pre_ops=("abs",)``), so the deployed graph is judged, not just the module.
3. **Check.** ``CHECKS`` maps a kind to ``check(op, arch) -> Decision(device, reason)``.
   Every limit is read from the arch dict (``arch/ULTRA96.json``, ``operators`` and
   ``dpu``); no hardware number lives in this file. Kinds in ``operators.cpu_only``
   go to the CPU first; a kind with no check is an "unknown op" on the CPU.
4. **Group.** DPU ops are merged into DPU subgraphs along DPU->DPU edges, greedily in
   topological order, and only while the merge keeps the graph of subgraphs acyclic
   (no path from one to the other through a CPU op or another subgraph). For a chain
   that is "maximal runs of consecutive DPU ops"; for a DAG it is the connected
   components of the DPU ops, split where a component would have to wait on its own
   output through the CPU. GDN shows why the split matters: in ``x * rsqrt(conv(x*x))``
   the producer of ``x`` and the ``mul`` are joined by a DPU edge, yet the ``mul``
   also waits on the CPU's ``rsqrt`` of that same ``x``, so they are two subgraphs.

Where the rules come from (source names as in ``research/vitis_ai.md`` section 3)
-------------------------------------------------------------------------------
- conv2d: kernel and stride ranges, channel limits ``256*cp``, ``dilation*ic`` limit:
  UG1414 *Currently Supported Operators* and the B1600 target_factory prototxt;
  ``pad < dilated kernel`` (arch ``pad_lt_kernel``): UG1414 (pad <= (k-1)*dilation);
  weight bank depth ``k_h*k_w*ceil(ic/icp) <= bank_depth``:
  ``dpu_op_filter.py`` ``check_conv_weights_bank_depth``; groups 1 (conv engine),
  ``in_channels`` (depthwise, ALU engine), anything else CPU: UG1414 *Operators
  Supported by PyTorch*. Depthwise kernel/stride/pad ranges: the ALU engine of the
  B1600 prototxt.
- conv_transpose2d: ``output_padding`` must be 0 (UG1414; ``dpu_op_filter.py``
  ``filter_transpose_conv2d``), ``kernel//stride`` in range and ``k % s == 0 or
  k//s + 1`` in range (``dpu_op_filter.py`` ``check_transposed_kernel``), then the
  channel and bank-depth rules of conv2d.
- ReLU / ReLU6 / LeakyReLU: fused into the single-consumer DPU op before them when
  that engine lists them (``fused_activations``; ``dpu_op_filter.py``
  ``check_nonlinear``, CV_LKRL=1 / DW_LKRL=0 in the fingerprint); LeakyReLU only with
  slope exactly 26/256 (``dpu_op_filter.py`` ``filter_leaky_relu``).
- add / mul of two tensors: eltwise engine (prototxt ``add``/``mult``;
  ``dpu_op_filter.py`` ``filter_eltwise``); mul by a constant: rewritten to a
  depthwise conv (same function); add of a constant: CPU (Vitis-AI #320).
- pixel shuffle/unshuffle, channel concat, max/avg pool, nearest upsample, zero pad:
  ``xop_creator.py`` mapping, old ``dpu_partition.py``, ``dpu_op_filter.py``.
- ``operators.cpu_only`` (square, pow, sqrt, rsqrt, div, abs, instance_norm ...): ops
  that ``xop_creator.py`` leaves as custom ops or that ``dpu_partition.py`` lists as
  CPU-only.

What is approximated
--------------------
- This is a pre-check, not the compiler: ``vai_c_xir`` decides. Where unsure it says
  CPU, so a "deployable" verdict is the claim that needs the compiler's confirmation.
- A standalone activation (its producer is on the CPU, or has other consumers) is
  reported on the CPU; the real compiler may place some on the ALU engine.
- ``x * x`` is ``square`` (arch ``cpu_only``). nndct would export an eltwise ``mult``
  of a tensor with itself, which crashed xcompiler 3.0 (Vitis-AI #1228).
- The bank-depth formula omits the factor ``ceil(ocp / weight_bank_num)`` of
  ``dpu_op_filter.py``; it is 1 on B1600 (10 banks, OCP 10).
- The stride range is checked although the Inspector's ``check_stride`` (VAI 3.5)
  compares the limit with itself and never refuses; UG1414 states the range.
- ``dpu_op_filter.py`` ``check_pad`` (VAI 3.5) refuses only pad > kernel; the arch's
  ``pad_lt_kernel`` follows UG1414's stricter pad <= (k-1)*dilation.
- Transposed-conv padding is checked as the equivalent conv's ``d*(k-1) - p``.
- Eltwise ops with broadcasting, reshapes, slices and anything unlisted go to the CPU,
  and so does bilinear upsampling, which nndct can rewrite (x2/x4) into a transposed
  depthwise conv.
- Graph inputs and outputs are not counted as boundary crossings (the host always
  writes the first input and reads the last output).
"""

from __future__ import annotations

import copy
import json
import math
import operator
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from arch import load_arch
from codec.errors import MedcodecError

__all__ = [
    "CHECKS",
    "CPU",
    "DPU",
    "Crossing",
    "Decision",
    "LayerReport",
    "OpInfo",
    "PartitionError",
    "PartitionReport",
    "check_op",
    "lower",
    "partition",
    "partition_hyperprior",
    "register_check",
]

DPU = "DPU"
CPU = "CPU"
#: Name of the graph's input in ``OpInfo.inputs`` (``input:<name>`` when there are several).
GRAPH_INPUT = "input"


class PartitionError(MedcodecError):
    """The module cannot be traced or the input shape does not fit it."""


class Decision(NamedTuple):
    """What a check says about one op."""

    device: str  #: ``DPU`` or ``CPU``
    reason: str


@dataclass
class OpInfo:
    """One runtime op of the traced graph, as the checks see it."""

    name: str  #: module path (``conv0``, ``gdn0.rsqrt``) or ``pre.abs`` / ``post.*``
    kind: str  #: normalised op kind, the key into :data:`CHECKS`
    source: str  #: what fx saw (``Conv2d``, ``torch.rsqrt``, ``.abs()``)
    attrs: dict = field(default_factory=dict)
    inputs: tuple[str, ...] = ()  #: producing op names (or ``input``), runtime tensors only
    in_shapes: tuple[tuple[int, ...], ...] = ()
    out_shape: tuple[int, ...] = ()
    users: int = 0  #: consumers of the output (a graph output counts as one)
    producer: OpInfo | None = field(default=None, repr=False)  #: op of ``inputs[0]``, if any
    device: str = ""  #: filled by :func:`partition`
    reason: str = ""


Check = Callable[[OpInfo, dict], Decision]

#: op kind -> check. Kinds listed in the arch's ``operators.cpu_only`` never reach it.
CHECKS: dict[str, Check] = {}


def register_check(*kinds: str) -> Callable[[Check], Check]:
    """Register ``fn`` as the check of ``kinds``; a kind registered twice raises."""

    def deco(fn: Check) -> Check:
        for kind in kinds:
            if kind in CHECKS:
                raise ValueError(f"a check for op kind {kind!r} is already registered")
            CHECKS[kind] = fn
        return fn

    return deco


def check_op(op: OpInfo, arch: dict) -> Decision:
    """Device and reason for one op: ``cpu_only`` first, then the registered check."""
    if op.kind in arch["operators"]["cpu_only"]:
        return Decision(CPU, "not a DPU operator (arch cpu_only)")
    fn = CHECKS.get(op.kind)
    if fn is None:
        return Decision(CPU, f"unknown op {op.kind!r}: no DPU rule for it")
    return fn(op, arch)


# -- the checks ---------------------------------------------------------------------------------


def _in(value: int, bounds: Sequence[int]) -> bool:
    lo, hi = bounds
    return lo <= value <= hi


def _range(bounds: Sequence[int]) -> str:
    return f"[{bounds[0]}, {bounds[1]}]"


def _channel_and_bank(op: OpInfo, arch: dict) -> Decision | None:
    """The conv engine's channel and weight-bank limits (conv2d and its transposed form)."""
    lim, dpu = arch["operators"]["conv2d"], arch["dpu"]
    a = op.attrs
    ic, oc = a["in_channels"], a["out_channels"]
    kh, kw = a["kernel"]
    dil = max(a["dilation"])
    if ic > lim["max_in_channels"]:
        return Decision(CPU, f"in_channels {ic} > {lim['max_in_channels']} (arch operators.conv2d.max_in_channels)")
    if dil * ic > lim["max_in_channels"]:
        return Decision(CPU, f"dilation*in_channels {dil * ic} > {lim['max_in_channels']} "
                             "(UG1414; arch operators.conv2d.max_in_channels)")
    if oc > lim["max_out_channels"]:
        return Decision(CPU, f"out_channels {oc} > {lim['max_out_channels']} (arch operators.conv2d.max_out_channels)")
    icp, depth = dpu["input_channel_parallel"], dpu["bank_depth"]
    need = kh * kw * math.ceil(ic / icp)
    if need > depth:
        return Decision(CPU, f"weights too deep for a bank: k_h*k_w*ceil(ic/icp) = {kh}*{kw}*ceil({ic}/{icp}) "
                             f"= {need} > bank_depth {depth} (arch dpu.bank_depth; dpu_op_filter.py)")
    return None


def _check_pads(pads, kernel, dilation, lim: dict, section: str) -> Decision | None:
    for (lo_pad, hi_pad), k, d in zip(pads, kernel, dilation, strict=True):
        dk = (k - 1) * d + 1
        for p in (lo_pad, hi_pad):
            if p < 0:
                return Decision(CPU, f"negative pad {p}")
            if lim.get("pad_lt_kernel", True) and p >= dk:
                return Decision(CPU, f"pad {p} >= kernel {dk} (arch operators.{section}.pad_lt_kernel; "
                                     "UG1414 pad <= (k-1)*dilation)")
    return None


def _check_padding_mode(op: OpInfo, arch: dict) -> Decision | None:
    mode = {"zeros": "constant"}.get(op.attrs.get("padding_mode", "zeros"), op.attrs.get("padding_mode"))
    if mode not in arch["operators"]["pad"]["modes"]:
        return Decision(CPU, f"padding_mode {op.attrs['padding_mode']!r} not in arch operators.pad.modes")
    return None


def _check_depthwise(op: OpInfo, arch: dict) -> Decision:
    lim = arch["operators"]["depthwise_conv2d"]
    a = op.attrs
    kh, kw = a["kernel"]
    if not (_in(kh, lim["kernel"]) and _in(kw, lim["kernel"])):
        return Decision(CPU, f"depthwise kernel {kh}x{kw} outside {_range(lim['kernel'])} "
                             "(arch operators.depthwise_conv2d.kernel)")
    if not all(_in(s, lim["stride"]) for s in a["stride"]):
        return Decision(CPU, f"depthwise stride {a['stride']} outside {_range(lim['stride'])} "
                             "(arch operators.depthwise_conv2d.stride)")
    for lo_pad, hi_pad in a["pad"]:
        if not (_in(lo_pad, lim["pad_left_top"]) and _in(hi_pad, lim["pad_right_bottom"])):
            return Decision(CPU, f"depthwise pad {a['pad']} outside left/top {_range(lim['pad_left_top'])}, "
                                 f"right/bottom {_range(lim['pad_right_bottom'])} (arch operators.depthwise_conv2d)")
    bad = _check_padding_mode(op, arch)
    if bad:
        return bad
    return Decision(DPU, f"depthwise conv {kh}x{kw} (ALU engine)")


def _groups_rule(op: OpInfo) -> str:
    g, ic = op.attrs["groups"], op.attrs["in_channels"]
    if g == 1:
        return "conv"
    if g == ic:
        return "depthwise"
    return "grouped"


@register_check("conv2d")
def check_conv2d(op: OpInfo, arch: dict) -> Decision:
    """Conv engine (groups 1), depthwise on the ALU (groups == in_channels), else CPU."""
    rule = _groups_rule(op)
    if rule == "grouped":
        return Decision(CPU, f"groups={op.attrs['groups']} is neither 1 nor in_channels={op.attrs['in_channels']} "
                             "(UG1414: grouped conv runs on the CPU)")
    if rule == "depthwise":
        return _check_depthwise(op, arch)
    lim = arch["operators"]["conv2d"]
    a = op.attrs
    kh, kw = a["kernel"]
    if not (_in(kh, lim["kernel"]) and _in(kw, lim["kernel"])):
        return Decision(CPU, f"kernel {kh}x{kw} outside {_range(lim['kernel'])} (arch operators.conv2d.kernel)")
    if not all(_in(s, lim["stride"]) for s in a["stride"]):
        return Decision(CPU, f"stride {a['stride']} outside {_range(lim['stride'])} (arch operators.conv2d.stride)")
    bad = (_check_pads(a["pad"], a["kernel"], a["dilation"], lim, "conv2d")
           or _check_padding_mode(op, arch) or _channel_and_bank(op, arch))
    if bad:
        return bad
    need = kh * kw * math.ceil(a["in_channels"] / arch["dpu"]["input_channel_parallel"])
    return Decision(DPU, f"conv engine: {kh}x{kw}/s{a['stride'][0]}, bank depth {need}/{arch['dpu']['bank_depth']}")


@register_check("conv_transpose2d")
def check_conv_transpose2d(op: OpInfo, arch: dict) -> Decision:
    """output_padding, the kernel/stride rule, then conv2d's channel and bank limits."""
    lim = arch["operators"]["transposed_conv2d"]
    a = op.attrs
    if any(p != lim["output_padding"] for p in a["output_padding"]):
        return Decision(CPU, f"output_padding {a['output_padding']} != {lim['output_padding']} "
                             "(arch operators.transposed_conv2d.output_padding; UG1414, dpu_op_filter.py)")
    rule = _groups_rule(op)
    if rule == "grouped":
        return Decision(CPU, f"groups={a['groups']} is neither 1 nor in_channels={a['in_channels']} "
                             "(UG1414: grouped transposed conv runs on the CPU)")
    bounds = (lim["kernel_div_stride"] if rule == "conv"
              else arch["operators"]["depthwise_conv2d"]["kernel"])
    for k, s in zip(a["kernel"], a["stride"], strict=True):
        q = k // s
        if not (_in(q, bounds) and (k % s == 0 or _in(q + 1, bounds))):
            return Decision(CPU, f"kernel {k} / stride {s} breaks the rule kernel//stride in {_range(bounds)} "
                                 "and (kernel % stride == 0 or kernel//stride + 1 in range) "
                                 "(arch operators.transposed_conv2d.kernel_rule; dpu_op_filter.py)")
    # the equivalent forward conv pads each side with d*(k-1) - p
    eq = tuple((d * (k - 1) - p, d * (k - 1) - p)
               for k, p, d in zip(a["kernel"], a["padding"], a["dilation"], strict=True))
    bad = _check_pads(eq, a["kernel"], a["dilation"], arch["operators"]["conv2d"], "conv2d")
    if bad:
        return Decision(CPU, f"equivalent conv {bad.reason}")
    if rule == "depthwise":
        return Decision(DPU, "transposed depthwise conv (ALU engine)")
    bad = _channel_and_bank(op, arch)
    if bad:
        return bad
    kh, kw = a["kernel"]
    return Decision(DPU, f"conv engine: transposed {kh}x{kw}/s{a['stride'][0]}")


def fusion_section(op: OpInfo) -> str | None:
    """The arch ``operators`` section whose ``fused_activations`` apply after ``op``."""
    if op.kind == "conv2d":
        return {"conv": "conv2d", "depthwise": "depthwise_conv2d"}.get(_groups_rule(op))
    if op.kind == "conv_transpose2d":
        return "transposed_conv2d" if _groups_rule(op) == "conv" else None  # dpu_op_filter: dw-transposed fuses none
    if op.kind == "mul" and op.attrs.get("constants"):
        return "depthwise_conv2d"  # mul by a constant becomes a depthwise conv
    if op.kind in ("add", "mul"):
        return "eltwise"
    return None


@register_check("relu", "relu6", "leaky_relu")
def check_activation(op: OpInfo, arch: dict) -> Decision:
    """Fused into the DPU op before it, when that engine fuses it; LeakyReLU needs 26/256."""
    ops = arch["operators"]
    if op.kind == "leaky_relu":
        num, den = ops["leaky_relu"]["negative_slope_fraction"]
        slope = op.attrs["negative_slope"]
        if slope != num / den:
            return Decision(CPU, f"LeakyReLU slope {slope} != {num}/{den} "
                                 "(arch operators.leaky_relu; dpu_op_filter.py)")
    p = op.producer
    if p is None or p.device != DPU:
        where = "the graph input" if p is None else f"{p.name} on the CPU"
        return Decision(CPU, f"standalone {op.kind} after {where}: no DPU op to fuse into")
    if p.users != 1:
        return Decision(CPU, f"{p.name} has {p.users} consumers; only a single consumer fuses (dpu_op_filter.py)")
    section = fusion_section(p)
    if section is None:
        return Decision(CPU, f"{p.name} ({p.kind}) fuses no activation")
    if op.kind not in ops.get(section, {}).get("fused_activations", []):
        return Decision(CPU, f"{p.name} ({section}) does not fuse {op.kind} "
                             f"(arch operators.{section}.fused_activations)")
    return Decision(DPU, f"fused into {p.name} ({section})")


@register_check("add", "mul")
def check_eltwise(op: OpInfo, arch: dict) -> Decision:
    """Two same-shape tensors: eltwise engine. mul by a constant: depthwise conv. add of one: CPU."""
    lim = arch["operators"]["eltwise"]
    if op.kind not in lim["ops"]:
        return Decision(CPU, f"{op.kind} not in arch operators.eltwise.ops")
    if op.attrs.get("constants", 0):
        if op.kind == "mul":
            return Decision(DPU, "mul by a constant: rewritten to a depthwise conv (dpu_op_filter.py)")
        return Decision(CPU, "add of a constant: fix2float/add/float2fix on the CPU (Vitis-AI #320)")
    if len(set(op.in_shapes)) != 1:
        return Decision(CPU, f"broadcasting {op.kind} {list(op.in_shapes)} is not modelled")
    return Decision(DPU, f"eltwise engine ({op.kind})")


@register_check("pixel_shuffle", "pixel_unshuffle")
def check_pixel_shuffle(op: OpInfo, arch: dict) -> Decision:
    if arch["operators"]["pixel_shuffle"]["supported"]:
        return Decision(DPU, f"{op.kind} (arch operators.pixel_shuffle)")
    return Decision(CPU, "arch operators.pixel_shuffle.supported is false")


@register_check("concat")
def check_concat(op: OpInfo, arch: dict) -> Decision:
    if not arch["operators"]["concat"]["supported"]:
        return Decision(CPU, "arch operators.concat.supported is false")
    if len(op.out_shape) != 4 or op.attrs["dim"] % 4 != 1:
        return Decision(CPU, f"concat along dim {op.attrs['dim']}: only channel concat (dpu_op_filter.py)")
    return Decision(DPU, "channel concat")


@register_check("max_pool2d", "avg_pool2d")
def check_pool(op: OpInfo, arch: dict) -> Decision:
    lim = arch["operators"]["pooling"]
    name = op.kind.removesuffix("2d")
    if name not in lim["ops"]:
        return Decision(CPU, f"{name} not in arch operators.pooling.ops")
    if not all(_in(k, lim["kernel"]) for k in op.attrs["kernel"]):
        return Decision(CPU, f"pool kernel {op.attrs['kernel']} outside {_range(lim['kernel'])} "
                             "(arch operators.pooling.kernel)")
    if not all(_in(s, lim["stride"]) for s in op.attrs["stride"]):
        return Decision(CPU, f"pool stride {op.attrs['stride']} outside {_range(lim['stride'])} "
                             "(arch operators.pooling.stride)")
    return Decision(DPU, f"{name} (ALU engine)")


@register_check("upsample")
def check_upsample(op: OpInfo, arch: dict) -> Decision:
    lim = arch["operators"]["upsample"]
    if op.attrs["mode"] not in lim["modes"] or bool(op.attrs["align_corners"]) != lim["align_corners"]:
        return Decision(CPU, f"upsample mode {op.attrs['mode']!r}, align_corners={op.attrs['align_corners']}: "
                             f"only {lim['modes']} with align_corners={lim['align_corners']} (arch operators.upsample)")
    return Decision(DPU, f"{op.attrs['mode']} upsample")


@register_check("pad")
def check_pad(op: OpInfo, arch: dict) -> Decision:
    lim = arch["operators"]["pad"]
    if op.attrs["mode"] not in lim["modes"] or (op.attrs["mode"] == "constant"
                                                and op.attrs["value"] != lim["constant_value"]):
        return Decision(CPU, f"pad mode {op.attrs['mode']!r} value {op.attrs['value']}: not in arch operators.pad")
    return Decision(DPU, "pad (fused into the next op)")


# -- tracing and lowering ---------------------------------------------------------------------

_NOOP = "noop"

_MODULE_KINDS: dict[type, str] = {
    nn.Conv2d: "conv2d", nn.ConvTranspose2d: "conv_transpose2d",
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu",
    nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardtanh: "hardtanh", nn.Mish: "mish",
    nn.InstanceNorm2d: "instance_norm", nn.GroupNorm: "group_norm", nn.LayerNorm: "layer_norm",
    nn.PixelShuffle: "pixel_shuffle", nn.PixelUnshuffle: "pixel_unshuffle",
    nn.MaxPool2d: "max_pool2d", nn.AvgPool2d: "avg_pool2d", nn.Upsample: "upsample",
    nn.Flatten: "reshape", nn.Identity: _NOOP, nn.Dropout: _NOOP,
}

_FUNCTION_KINDS: dict[object, str] = {
    torch.conv2d: "conv2d", torch.conv_transpose2d: "conv_transpose2d",
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu",
    torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
    F.hardtanh: "hardtanh", F.mish: "mish",
    torch.abs: "abs", torch.sqrt: "sqrt", torch.rsqrt: "rsqrt", torch.reciprocal: "reciprocal",
    torch.exp: "exp", torch.neg: "neg", operator.neg: "neg", torch.square: "square",
    torch.pow: "pow", operator.pow: "pow",
    torch.add: "add", operator.add: "add", torch.mul: "mul", operator.mul: "mul",
    torch.sub: "sub", operator.sub: "sub", torch.div: "div", operator.truediv: "div",
    torch.clamp: "clamp", torch.clip: "clamp", torch.sum: "sum", torch.permute: "permute",
    torch.cat: "concat", torch.concat: "concat",
    F.pixel_shuffle: "pixel_shuffle", F.pixel_unshuffle: "pixel_unshuffle",
    F.instance_norm: "instance_norm", F.group_norm: "group_norm", F.layer_norm: "layer_norm",
    F.max_pool2d: "max_pool2d", F.avg_pool2d: "avg_pool2d", F.interpolate: "upsample", F.pad: "pad",
    operator.getitem: "strided_slice", torch.flatten: "reshape", torch.reshape: "reshape",
    F.dropout: _NOOP,
}

_METHOD_KINDS: dict[str, str] = {
    **{m: m for m in ("abs", "sqrt", "rsqrt", "reciprocal", "exp", "neg", "pow", "square", "add", "mul",
                      "sub", "div", "clamp", "sum", "permute", "sigmoid", "tanh", "relu")},
    "clip": "clamp", "view": "reshape", "reshape": "reshape", "flatten": "reshape",
    "squeeze": "reshape", "unsqueeze": "reshape",
    "contiguous": _NOOP, "clone": _NOOP, "detach": _NOOP, "float": _NOOP, "to": _NOOP,
}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int | float) else (int(v[0]), int(v[1]))


def _conv_pads(padding, kernel, dilation) -> tuple[tuple[int, int], ...]:
    """((top, bottom), (left, right)) from torch's ``padding`` (ints or 'same'/'valid')."""
    if padding == "valid":
        return ((0, 0), (0, 0))
    if padding == "same":
        out = []
        for k, d in zip(kernel, dilation, strict=True):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    ph, pw = _pair(padding)
    return ((ph, ph), (pw, pw))


def _conv_attrs(kernel, stride, padding, dilation, groups, ic, oc, padding_mode="zeros") -> dict:
    kernel, dilation = _pair(kernel), _pair(dilation)
    return {"kernel": kernel, "stride": _pair(stride), "pad": _conv_pads(padding, kernel, dilation),
            "dilation": dilation, "groups": int(groups), "in_channels": int(ic), "out_channels": int(oc),
            "padding_mode": padding_mode}


def _deconv_attrs(kernel, stride, padding, output_padding, dilation, groups, ic, oc) -> dict:
    return {"kernel": _pair(kernel), "stride": _pair(stride), "padding": _pair(padding),
            "output_padding": _pair(output_padding), "dilation": _pair(dilation), "groups": int(groups),
            "in_channels": int(ic), "out_channels": int(oc)}


def _module_attrs(kind: str, m: nn.Module) -> dict:
    if kind == "conv2d":
        return _conv_attrs(m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.in_channels,
                           m.out_channels, m.padding_mode)
    if kind == "conv_transpose2d":
        return _deconv_attrs(m.kernel_size, m.stride, m.padding, m.output_padding, m.dilation, m.groups,
                             m.in_channels, m.out_channels)
    if kind == "leaky_relu":
        return {"negative_slope": float(m.negative_slope)}
    if kind in ("max_pool2d", "avg_pool2d"):
        return {"kernel": _pair(m.kernel_size), "stride": _pair(m.stride or m.kernel_size)}
    if kind == "upsample":
        return {"mode": m.mode, "align_corners": bool(m.align_corners)}
    return {}


def _bind(node: fx.Node, names: Sequence[str], defaults: dict) -> dict:
    """The call's arguments by name (positional ``names`` in order, then kwargs, then defaults)."""
    out = dict(defaults)
    out.update(zip(names, node.args, strict=False))
    out.update(node.kwargs)
    return out


def _shape(node) -> tuple[int, ...]:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(int(s) for s in meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def _function_attrs(kind: str, node: fx.Node) -> dict:
    if kind == "conv2d":
        b = _bind(node, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
                  {"stride": 1, "padding": 0, "dilation": 1, "groups": 1})
        w = _shape(b["weight"])  # [oc, ic/groups, kh, kw]
        return _conv_attrs(w[2:], b["stride"], b["padding"], b["dilation"], b["groups"],
                           _shape(b["input"])[1], w[0])
    if kind == "conv_transpose2d":
        b = _bind(node, ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
                  {"stride": 1, "padding": 0, "output_padding": 0, "groups": 1, "dilation": 1})
        w = _shape(b["weight"])  # [ic, oc/groups, kh, kw]
        return _deconv_attrs(w[2:], b["stride"], b["padding"], b["output_padding"], b["dilation"], b["groups"],
                             w[0], w[1] * int(b["groups"]))
    if kind == "leaky_relu":
        return {"negative_slope": float(_bind(node, ("input", "negative_slope"), {"negative_slope": 0.01})
                                        ["negative_slope"])}
    if kind == "concat":
        return {"dim": int(_bind(node, ("tensors", "dim"), {"dim": 0})["dim"])}
    if kind in ("max_pool2d", "avg_pool2d"):
        b = _bind(node, ("input", "kernel_size", "stride"), {"stride": None})
        return {"kernel": _pair(b["kernel_size"]), "stride": _pair(b["stride"] or b["kernel_size"])}
    if kind == "upsample":
        b = _bind(node, ("input", "size", "scale_factor", "mode", "align_corners"),
                  {"mode": "nearest", "align_corners": None})
        return {"mode": b["mode"], "align_corners": bool(b["align_corners"])}
    if kind == "pad":
        b = _bind(node, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
        return {"mode": b["mode"], "value": b["value"] or 0}
    return {}


def _source(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    if node.op == "call_method":
        return f".{node.target}()"
    mod = getattr(node.target, "__module__", None) or ""
    return f"{'torch' if mod.startswith('torch') else mod}.{getattr(node.target, '__name__', node.target)}"


def _kind_and_attrs(node: fx.Node, gm: fx.GraphModule) -> tuple[str, dict]:
    if node.op == "call_module":
        m = gm.get_submodule(node.target)
        kind = next((_MODULE_KINDS[c] for c in type(m).__mro__ if c in _MODULE_KINDS),
                    type(m).__name__.lower())
        return kind, _module_attrs(kind, m)
    if node.op == "call_method":
        name = str(node.target)
        name = name[:-1] if name.endswith("_") and not name.startswith("_") else name  # in-place forms
        return _METHOD_KINDS.get(name, name), {}
    kind = _FUNCTION_KINDS.get(node.target, getattr(node.target, "__name__", str(node.target)))
    return kind, _function_attrs(kind, node)


def _flat_args(node: fx.Node) -> list:
    out: list = []
    fx.node.map_aggregate((node.args, node.kwargs), out.append)
    return out


def _shapes(input_shape) -> list[tuple[int, ...]]:
    """One shape or a list of shapes -> a list of int tuples."""
    if len(input_shape) and isinstance(input_shape[0], int):
        return [tuple(int(v) for v in input_shape)]
    return [tuple(int(v) for v in s) for s in input_shape]


def _copy_for_tracing(module: nn.Module) -> nn.Module:
    """A deep copy in eval mode; a bare torch.nn layer is wrapped so that it stays one
    ``call_module`` node named after its class (``conv2d``, ``leakyrelu`` ...)."""
    net = copy.deepcopy(module).eval()
    if fx.Tracer().is_leaf_module(net, ""):
        net = nn.Sequential(OrderedDict([(type(net).__name__.lower(), net)]))
    return net


def _trace(module: nn.Module, shapes: list[tuple[int, ...]], name: str) -> fx.GraphModule:
    net = _copy_for_tracing(module)
    try:
        gm = fx.symbolic_trace(net)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError ... on untraceable code
        raise PartitionError(f"{name}: torch.fx cannot trace the module: {exc}") from exc
    n_inputs = sum(1 for n in gm.graph.nodes if n.op == "placeholder")
    if n_inputs != len(shapes):
        raise PartitionError(f"{name}: the module takes {n_inputs} inputs, {len(shapes)} shapes given")
    with torch.no_grad():
        try:  # shapes only: the meta device does no arithmetic
            ShapeProp(gm.to("meta")).propagate(*(torch.empty(s, device="meta") for s in shapes))
        except Exception:  # a forward that makes CPU tensors: run it on zeros instead
            gm = fx.symbolic_trace(_copy_for_tracing(module))
            try:
                ShapeProp(gm).propagate(*(torch.zeros(s) for s in shapes))
            except Exception as exc:
                raise PartitionError(f"{name}: the module does not run on inputs {shapes}: {exc}") from exc
    return gm


def lower(module: nn.Module, input_shape, *, pre_ops: Sequence[str] = (), post_ops: Sequence[str] = (),
          name: str = "") -> list[OpInfo]:
    """Trace ``module`` and return its runtime ops in topological order (not yet checked).

    ``input_shape`` is one shape or a list of shapes (one per forward argument).
    ``pre_ops`` / ``post_ops`` are op kinds applied elementwise to every input / output
    outside the module (e.g. ``("abs",)`` for the codec's ``h_a(|y|)``).
    """
    shapes = _shapes(input_shape)
    gm = _trace(module, shapes, name or type(module).__name__)
    ops: list[OpInfo] = []
    taken: dict[str, int] = {}

    def add(op: OpInfo) -> str:
        base = op.name
        n = taken.get(base, 0)
        taken[base] = n + 1
        op.name = base if n == 0 else f"{base}_{n}"
        ops.append(op)
        return op.name

    RUNTIME, CONST, META = "runtime", "const", "meta"
    state: dict[fx.Node, str] = {}
    value: dict[fx.Node, str] = {}  # runtime node -> name of the op (or graph input) producing it
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, shape in zip(placeholders, shapes, strict=True):
        src = GRAPH_INPUT if len(placeholders) == 1 else f"{GRAPH_INPUT}:{node.name}"
        for kind in pre_ops:
            src = add(OpInfo(name=f"pre.{kind}", kind=kind, source="pre_ops", inputs=(src,),
                             in_shapes=(shape,), out_shape=shape))
        state[node], value[node] = RUNTIME, src
    outputs: list[str] = []
    tuples: set[fx.Node] = set()  # runtime ops with several outputs (their getitem is not a slice)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            fx.node.map_arg(node.args, lambda n: outputs.append(value[n]) if state.get(n) == RUNTIME else None)
            continue
        if node.op == "get_attr":
            state[node] = CONST
            continue
        args = _flat_args(node)
        runtime = [a for a in args if isinstance(a, fx.Node) and state.get(a) == RUNTIME]
        meta = node.meta.get("tensor_meta")
        multi = isinstance(meta, tuple | list) and len(meta) > 0 and all(hasattr(m, "shape") for m in meta)
        if not runtime or not (hasattr(meta, "shape") or multi):
            # parameters only (folded at export), or shapes/sizes (static bookkeeping)
            state[node] = CONST if runtime == [] and hasattr(meta, "shape") else META
            continue
        kind, attrs = _kind_and_attrs(node, gm)
        state[node] = RUNTIME
        if kind == _NOOP or (kind == "strided_slice" and node.args[0] in tuples):
            value[node] = value[runtime[0]]  # no computation, or picking one output of a multi-output op
            continue
        if multi:
            tuples.add(node)
        if kind == "mul" and len(runtime) == 2 and runtime[0] is runtime[1]:
            kind = "square"
        if kind in ("add", "mul", "sub", "div"):
            attrs["constants"] = sum(1 for a in node.args if not (isinstance(a, fx.Node) and a in runtime))
        inputs = tuple(dict.fromkeys(value[a] for a in runtime))
        if node.op == "call_module":
            op_name = str(node.target)
        else:
            stack = node.meta.get("nn_module_stack") or {}
            prefix = list(stack.values())[-1][0] if stack else ""
            op_name = f"{prefix}.{kind}" if prefix else kind
        value[node] = add(OpInfo(name=op_name, kind=kind, source=_source(node, gm), attrs=attrs, inputs=inputs,
                                 in_shapes=tuple(_shape(a) for a in dict.fromkeys(runtime)),
                                 out_shape=tuple(int(v) for v in (meta[0] if multi else meta).shape)))
    by_name = {op.name: op for op in ops}
    for i, out in enumerate(list(outputs)):
        shape = by_name[out].out_shape if out in by_name else ()
        for kind in post_ops:
            outputs[i] = add(OpInfo(name=f"post.{kind}", kind=kind, source="post_ops", inputs=(outputs[i],),
                                    in_shapes=(shape,), out_shape=shape))
    by_name = {op.name: op for op in ops}
    for op in ops:
        for src in op.inputs:
            if src in by_name:
                by_name[src].users += 1
        op.producer = by_name.get(op.inputs[0]) if op.inputs else None
    for out in outputs:
        if out in by_name:
            by_name[out].users += 1
    return ops


# -- grouping -------------------------------------------------------------------------------------


def _dpu_subgraphs(ops: list[OpInfo]) -> list[list[str]]:
    """Merge DPU ops along DPU->DPU edges while the graph of groups stays acyclic.

    Invariant: the graph whose nodes are the current groups (CPU ops are singletons) is
    a DAG. Contracting an edge A->B keeps it a DAG iff there is no other path A ~> B,
    i.e. no path that leaves A, passes any op outside A and B, and reaches B.
    """
    names = [op.name for op in ops]
    succ: dict[str, list[str]] = {n: [] for n in names}
    for op in ops:
        for src in op.inputs:
            if src in succ:
                succ[src].append(op.name)
    group = {op.name: op.name for op in ops if op.device == DPU}
    members = {n: {n} for n in group}

    def find(n: str) -> str:
        while group[n] != n:
            group[n] = group[group[n]]
            n = group[n]
        return n

    def other_path(a: set[str], b: set[str]) -> bool:
        frontier = [s for n in a for s in succ[n] if s not in a and s not in b]
        seen = set(frontier)
        while frontier:
            n = frontier.pop()
            if n in b:
                return True
            for s in succ[n]:
                if s not in seen and s not in a:
                    seen.add(s)
                    frontier.append(s)
        return False

    for op in ops:
        if op.device != DPU:
            continue
        for src in op.inputs:
            if src not in group:
                continue
            ga, gb = find(src), find(op.name)
            if ga == gb or other_path(members[ga], members[gb]):
                continue
            group[gb] = ga
            members[ga] |= members.pop(gb)
    order = {n: i for i, n in enumerate(names)}
    return sorted((sorted(m, key=order.__getitem__) for m in members.values()), key=lambda m: order[m[0]])


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerReport:
    name: str
    op: str
    source: str
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    device: str
    reason: str
    subgraph: str  #: ``dpu0``, ``dpu1`` ... or ``cpu``


@dataclass(frozen=True)
class Crossing:
    """A tensor that crosses the boundary: made in one part, read in another."""

    tensor: str  #: the producing op
    shape: tuple[int, ...]
    src: str  #: ``dpuK`` or ``cpu``
    dst: tuple[str, ...]  #: the other parts that read it
    consumers: tuple[str, ...]

    @property
    def elements(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class PartitionReport:
    """Result of :func:`partition`; ``to_json()`` for the stage report, ``format()`` to read."""

    network: str
    arch: str
    input_shapes: tuple[tuple[int, ...], ...]
    pre_ops: tuple[str, ...]
    post_ops: tuple[str, ...]
    layers: tuple[LayerReport, ...]
    subgraphs: tuple[tuple[str, ...], ...]  #: member layer names of each DPU subgraph
    crossings: tuple[Crossing, ...]
    deployable: bool
    verdict: str

    @property
    def n_dpu_subgraphs(self) -> int:
        return len(self.subgraphs)

    @property
    def cpu_ops(self) -> tuple[LayerReport, ...]:
        return tuple(layer for layer in self.layers if layer.device == CPU)

    @property
    def n_cpu_ops(self) -> int:
        return len(self.cpu_ops)

    def layer(self, name: str) -> LayerReport:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["n_dpu_subgraphs"] = self.n_dpu_subgraphs
        d["n_cpu_ops"] = self.n_cpu_ops
        d["cpu_ops"] = [{"name": c.name, "op": c.op, "reason": c.reason} for c in self.cpu_ops]
        for entry, crossing in zip(d["crossings"], self.crossings, strict=True):
            entry["elements"] = crossing.elements  # int8 bytes per inference on the DPU side
        return d

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def format(self) -> str:
        def shp(s) -> str:
            return "x".join(map(str, s)) if s else "-"

        rows = [("layer", "op", "in -> out", "device", "part", "reason")]
        for layer in self.layers:
            ins = ",".join(shp(s) for s in layer.in_shapes)
            rows.append((layer.name, layer.op, f"{ins} -> {shp(layer.out_shape)}", layer.device, layer.subgraph,
                         layer.reason))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = [f"partition of {self.network or 'network'} for {self.arch}, input "
                 f"{', '.join(shp(s) for s in self.input_shapes)}"
                 + (f", pre_ops {list(self.pre_ops)}" if self.pre_ops else "")
                 + (f", post_ops {list(self.post_ops)}" if self.post_ops else "")]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5])
        lines.append(f"DPU subgraphs: {self.n_dpu_subgraphs}; CPU ops: {self.n_cpu_ops}; "
                     f"boundary tensors: {len(self.crossings)}")
        for c in self.crossings:
            lines.append(f"  {c.tensor} [{shp(c.shape)}] {c.src} -> {', '.join(c.dst)}")
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


def _resolve_arch(arch: dict | str | None) -> dict:
    if arch is None:
        return load_arch("ULTRA96")
    if isinstance(arch, str):
        return load_arch(arch)
    return arch


def partition(module: nn.Module, input_shape, arch: dict | str | None = None, *, name: str = "",
              pre_ops: Sequence[str] = (), post_ops: Sequence[str] = ()) -> PartitionReport:
    """Check every op of ``module`` against ``arch`` and group the DPU ops into subgraphs.

    Args:
        module: one deployed network (not modified: a deep copy is traced).
        input_shape: e.g. ``(1, 1, 256, 256)``, or a list of shapes for several inputs.
        arch: an arch dict (``arch.load_arch``), an arch name, or None for ULTRA96.
        name: the network's name in the report.
        pre_ops / post_ops: elementwise op kinds the deployed graph applies before / after
            the module (the codec feeds ``h_a`` with ``|y|``: ``pre_ops=("abs",)``).
    """
    arch = _resolve_arch(arch)
    ops = lower(module, input_shape, pre_ops=pre_ops, post_ops=post_ops, name=name)
    for op in ops:  # topological order: a producer is decided before its activation
        op.device, op.reason = check_op(op, arch)
    groups = _dpu_subgraphs(ops)
    part = {op.name: CPU.lower() for op in ops}
    for i, members in enumerate(groups):
        for n in members:
            part[n] = f"dpu{i}"
    consumers: dict[str, list[str]] = {op.name: [] for op in ops}
    for op in ops:
        for src in op.inputs:
            if src in consumers:
                consumers[src].append(op.name)
    crossings = []
    for op in ops:
        dst = tuple(sorted({part[c] for c in consumers[op.name]} - {part[op.name]}))
        if dst and (part[op.name] != "cpu" or any(d != "cpu" for d in dst)):
            crossings.append(Crossing(tensor=op.name, shape=op.out_shape, src=part[op.name], dst=dst,
                                      consumers=tuple(c for c in consumers[op.name] if part[c] != part[op.name])))
    layers = tuple(LayerReport(name=op.name, op=op.kind, source=op.source, in_shapes=op.in_shapes,
                               out_shape=op.out_shape, device=op.device, reason=op.reason, subgraph=part[op.name])
                   for op in ops)
    n_sub, n_cpu = len(groups), sum(1 for op in ops if op.device == CPU)
    single = arch["runtime"]["single_dpu_subgraph_required"]
    if n_sub == 0:
        deployable, verdict = False, "no DPU subgraph: every op runs on the CPU"
    elif not single:
        deployable = True
        verdict = f"{n_sub} DPU subgraph(s) and {n_cpu} CPU op(s): needs a multi-subgraph runtime" if (
            n_sub > 1 or n_cpu) else "deployable: one DPU subgraph, no CPU ops"
    elif n_sub == 1 and n_cpu == 0:
        deployable, verdict = True, "deployable on DPU-PYNQ: one DPU subgraph, no CPU ops"
    else:
        deployable = False
        verdict = (f"not deployable on DPU-PYNQ (arch runtime.single_dpu_subgraph_required): {n_sub} DPU "
                   f"subgraph(s), {n_cpu} CPU op(s); needs one vart.Runner per DPU subgraph with the CPU ops "
                   "on the A53")
    shapes = _shapes(input_shape)
    return PartitionReport(network=name, arch=str(arch.get("name", "")), input_shapes=tuple(shapes),
                           pre_ops=tuple(pre_ops), post_ops=tuple(post_ops), layers=layers,
                           subgraphs=tuple(tuple(g) for g in groups), crossings=tuple(crossings),
                           deployable=deployable, verdict=verdict)


def partition_hyperprior(model: nn.Module, tile: int = 256, arch: dict | str | None = None
                         ) -> dict[str, PartitionReport]:
    """The four deployed networks of a ``GDNHyperprior`` on a ``tile`` x ``tile`` input.

    Shapes follow ``models/hyperprior.py``: g_a ``[1,1,T,T]``; g_s and h_a ``[1,M,T/16,T/16]``
    (h_a with ``pre_ops=("abs",)``, as the codec computes ``h_a(|y|)``); h_s ``[1,N,T/64,T/64]``.
    """
    from models.hyperprior import ALIGN

    if tile % ALIGN:
        raise PartitionError(f"tile {tile} is not a multiple of {ALIGN}")
    arch = _resolve_arch(arch)
    n, m = model.N, model.M
    y, z = (1, m, tile // 16, tile // 16), (1, n, tile // 64, tile // 64)
    jobs = {"g_a": ((1, 1, tile, tile), ()), "h_a": (y, ("abs",)), "h_s": (z, ()), "g_s": (y, ())}
    return {net: partition(getattr(model, net), shape, arch, name=net, pre_ops=pre)
            for net, (shape, pre) in jobs.items()}
