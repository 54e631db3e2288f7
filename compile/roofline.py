"""Roofline latency estimate of a network on the DPU, from the arch file.

::

    est = estimate(model.g_a, (1, 1, 256, 256))             # arch ULTRA96, default RooflineParams
    est["total"]["ms"], [(l["name"], l["ms"], l["bound"]) for l in est["layers"]]
    estimate_hyperprior(model, tile=256)                      # {"g_a": ..., "h_a": ..., "h_s": ..., "g_s": ...}

Per conv / transposed-conv layer (the ops the DPU's conv engine runs; found with
:func:`compile.partition.lower`, so any traceable module works)::

    ops         = 2 * MACs
                  MACs: conv  N*Ho*Wo * Cout * Cin/groups * Kh*Kw   (per output pixel)
                        deconv N*Hi*Wi * Cin * Cout/groups * Kh*Kw   (per input pixel, as models/hyperprior.complexity)
    peak        = dpu.peak_ops_per_cycle * dpu.core_clock_hz        (arch: 1600 * 200 MHz = 320 GOPS for B1600)
    utilization = fill(Cin/groups, ICP) * fill(Cout/groups, OCP) * fill(W, PP),  fill(n, p) = n / (p*ceil(n/p))
                  (the PP x ICP x OCP array computes whole blocks; W is Wo for conv, Wi for deconv)
    compute_s   = ops / (peak * utilization * efficiency)
    bytes       = (weights + bias + input feature map + output feature map) * bytes_per_element   (int8: 1)
    bandwidth   = data_ports * port_bytes_per_cycle * dpu.core_clock_hz * memory_efficiency
    memory_s    = bytes / bandwidth
    layer_s     = max(compute_s, memory_s)      bound = "compute" | "memory"

The network's time is the sum over its layers (layers do not overlap each other).

Parameters (:class:`RooflineParams`; every number not in the arch file is here, named):

- ``efficiency = 0.6``: the share of the (utilization-corrected) peak the conv engine
  sustains: instruction issue, pipeline fill and drain per tile, and loads / saves that do
  not fully overlap compute. A stated assumption, NOT a measurement (no stored source
  gives a DPUCZDX8G figure): replace it with ``measured / estimated`` from the board once
  latencies are measured there.
- ``data_ports = 2``: the DPU's two data AXI masters, wired to HP0 and HP1 in DPU-PYNQ's
  Ultra96 ``prj_config`` (research notes section 4.1). The instruction port is not counted.
- ``port_bytes_per_cycle = 16``: a 128-bit data port per ``aclk`` cycle (assumption: PG338's
  port width, not checked against a stored source). 2 * 16 B * 200 MHz = 6.4 GB/s ceiling.
- ``memory_efficiency = 0.6``: the share of that ceiling reached on the Ultra96's shared
  LPDDR4 (the A53s use the same DRAM): an assumption. -> 3.84 GB/s.
- ``bandwidth_bytes_per_s``: set it to override the product above (e.g. a measured value).

What it ignores: activations fused into the conv (free on the DPU), ops the DPU does not
run (CPU ops: see ``compile/partition.py``; their time is not estimated here), channel
augmentation for small ``Cin`` (so a first layer with ``Cin=1`` is pessimistic), re-reads
when a layer's working set exceeds the on-chip banks, and the per-call runtime overhead
(VART job submission, cache flushes). Depthwise / grouped convs use the same array model.

Everything returned is JSON-able (plain dicts, floats in ms).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch import nn

from arch import load_arch
from compile.partition import OpInfo, lower

__all__ = ["RooflineParams", "bandwidth_bytes_per_s", "estimate", "estimate_hyperprior", "layer_estimate",
           "peak_ops_per_s"]

#: op kinds (``compile.partition`` names) timed by the roofline
TIMED = ("conv2d", "conv_transpose2d")


@dataclass(frozen=True)
class RooflineParams:
    """The numbers the arch file does not give; see the module docstring for the reasons."""

    efficiency: float = 0.6  #: sustained share of the utilization-corrected peak (assumption)
    data_ports: int = 2  #: DPU data AXI masters (DPU-PYNQ Ultra96 prj_config: HP0, HP1)
    port_bytes_per_cycle: int = 16  #: 128-bit ports (assumption, PG338)
    memory_efficiency: float = 0.6  #: share of the port ceiling reached on shared LPDDR4 (assumption)
    bytes_per_element: int = 1  #: int8 weights and feature maps
    bandwidth_bytes_per_s: float | None = None  #: overrides the port product when set
    model_utilization: bool = True  #: False: assume the PP x ICP x OCP array is always full

    def __post_init__(self):
        for name in ("efficiency", "memory_efficiency"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {v}")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ValueError("bandwidth_bytes_per_s must be > 0")


def _arch(arch: dict | str | None) -> dict:
    if arch is None:
        return load_arch("ULTRA96")
    return load_arch(arch) if isinstance(arch, str) else arch


def peak_ops_per_s(arch: dict) -> float:
    """``dpu.peak_ops_per_cycle * dpu.core_clock_hz * dpu.cores`` (ops: 2 per MAC)."""
    dpu = arch["dpu"]
    return float(dpu["peak_ops_per_cycle"]) * float(dpu["core_clock_hz"]) * int(dpu.get("cores", 1))


def bandwidth_bytes_per_s(arch: dict, params: RooflineParams) -> float:
    if params.bandwidth_bytes_per_s is not None:
        return float(params.bandwidth_bytes_per_s)
    return params.data_ports * params.port_bytes_per_cycle * float(arch["dpu"]["core_clock_hz"]) * \
        params.memory_efficiency


def _fill(n: int, p: int) -> float:
    """Share of a p-wide block used by n items: n / (p * ceil(n / p))."""
    return n / (p * math.ceil(n / p)) if n > 0 else 0.0


def layer_estimate(op: OpInfo, arch: dict, params: RooflineParams) -> dict:
    """The roofline of one conv / transposed-conv op (``compile.partition.OpInfo``)."""
    if op.kind not in TIMED:
        raise ValueError(f"{op.name}: {op.kind} is not a conv or transposed conv")
    a = op.attrs
    n, cin, hi, wi = op.in_shapes[0]
    _, cout, ho, wo = op.out_shape
    g = a["groups"]
    kh, kw = a["kernel"]
    if op.kind == "conv2d":
        macs = n * ho * wo * cout * (cin // g) * kh * kw
        width = wo
    else:
        macs = n * hi * wi * cin * (cout // g) * kh * kw
        width = wi
    dpu = arch["dpu"]
    util = 1.0
    if params.model_utilization:
        util = _fill(cin // g, dpu["input_channel_parallel"]) * _fill(cout // g, dpu["output_channel_parallel"]) \
            * _fill(width, dpu["pixel_parallel"])
    ops = 2 * macs
    weight_elems = cout * (cin // g) * kh * kw + cout  # weights + bias (int8 on the DPU)
    feature_elems = n * cin * hi * wi + n * cout * ho * wo
    nbytes = (weight_elems + feature_elems) * params.bytes_per_element
    compute_s = ops / (peak_ops_per_s(arch) * util * params.efficiency) if ops else 0.0
    memory_s = nbytes / bandwidth_bytes_per_s(arch, params)
    return {
        "name": op.name, "op": op.kind, "in_shape": list(op.in_shapes[0]), "out_shape": list(op.out_shape),
        "macs": macs, "ops": ops, "utilization": util,
        "weight_bytes": weight_elems * params.bytes_per_element,
        "feature_bytes": feature_elems * params.bytes_per_element, "bytes": nbytes,
        "compute_ms": compute_s * 1e3, "memory_ms": memory_s * 1e3, "ms": max(compute_s, memory_s) * 1e3,
        "bound": "compute" if compute_s >= memory_s else "memory",
    }


def estimate(module: nn.Module, input_shape, arch: dict | str | None = None,
             params: RooflineParams | None = None, *, name: str = "") -> dict:
    """Per-layer and whole-network roofline latency of ``module`` on ``input_shape`` (JSON-able)."""
    arch = _arch(arch)
    params = params or RooflineParams()
    ops = lower(module, input_shape, name=name)
    layers = [layer_estimate(op, arch, params) for op in ops if op.kind in TIMED]
    other: dict[str, int] = {}
    for op in ops:
        if op.kind not in TIMED:
            other[op.kind] = other.get(op.kind, 0) + 1
    total = {k: sum(layer[k] for layer in layers) for k in ("macs", "ops", "bytes", "compute_ms", "memory_ms", "ms")}
    shapes = [list(input_shape)] if len(input_shape) and isinstance(input_shape[0], int) else \
        [list(s) for s in input_shape]
    return {
        "network": name, "arch": arch.get("name", ""), "input_shapes": shapes, "params": asdict(params),
        "peak_ops_per_s": peak_ops_per_s(arch), "bandwidth_bytes_per_s": bandwidth_bytes_per_s(arch, params),
        "layers": layers, "untimed_ops": dict(sorted(other.items())), "total": total,
    }


def estimate_hyperprior(model: nn.Module, tile: int = 256, arch: dict | str | None = None,
                        params: RooflineParams | None = None) -> dict[str, dict]:
    """The four deployed networks of a hyperprior codec on one ``tile`` x ``tile`` tile
    (shapes as ``compile.partition.partition_hyperprior``: g_a [1,1,T,T]; h_a, g_s
    [1,M,T/16,T/16]; h_s [1,N,T/64,T/64])."""
    from models.hyperprior import ALIGN

    if tile % ALIGN:
        raise ValueError(f"tile {tile} is not a multiple of {ALIGN}")
    arch = _arch(arch)
    n, m = model.N, model.M
    y, z = (1, m, tile // 16, tile // 16), (1, n, tile // 64, tile // 64)
    shapes = {"g_a": (1, 1, tile, tile), "h_a": y, "h_s": z, "g_s": y}
    return {net: estimate(getattr(model, net), shape, arch, params, name=net) for net, shape in shapes.items()}
