"""Hardware descriptions as data. ``load_arch(name)`` reads and validates one."""

from __future__ import annotations

import json
from pathlib import Path

from codec.errors import MedcodecError

ARCH_DIR = Path(__file__).resolve().parent


class ArchError(MedcodecError):
    """An arch file that is missing or does not match the schema."""


# field path -> expected Python type(s). The schema test and load_arch both use it.
SCHEMA: dict[str, type | tuple[type, ...]] = {
    "schema_version": int,
    "name": str,
    "device_part": str,
    "cpu.cores": int,
    "dpu.ip": str,
    "dpu.arch": str,
    "dpu.target_name": str,
    "dpu.fingerprint": str,
    "dpu.cores": int,
    "dpu.core_clock_hz": int,
    "dpu.pixel_parallel": int,
    "dpu.input_channel_parallel": int,
    "dpu.output_channel_parallel": int,
    "dpu.peak_ops_per_cycle": int,
    "dpu.bank_depth": int,
    "runtime.vart_version": str,
    "runtime.single_dpu_subgraph_required": bool,
    "compiler.arch_json": dict,
    "operators.conv2d.kernel": list,
    "operators.conv2d.stride": list,
    "operators.conv2d.pad_lt_kernel": bool,
    "operators.conv2d.max_in_channels": int,
    "operators.conv2d.max_out_channels": int,
    "operators.transposed_conv2d.output_padding": int,
    "operators.transposed_conv2d.kernel_div_stride": list,
    "operators.leaky_relu.negative_slope": float,
    "operators.leaky_relu.negative_slope_fraction": list,
    "operators.eltwise.ops": list,
    "operators.pixel_shuffle.supported": bool,
    "operators.cpu_only": list,
    "quantization.range": list,
    "quantization.scale": str,
    "quantization.max_fix_pos": int,
    "quantization.activation_rounding": str,
    "quantization.weight_rounding": str,
    "quantization.bias_rounding": str,
    "quantization.shift_cut_range": list,
}


def _get(doc: dict, dotted: str):
    node = doc
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def validate(doc: dict, where: str = "arch") -> dict:
    """Check types and the relations between fields; raise ArchError with the first problem."""
    for dotted, typ in SCHEMA.items():
        try:
            value = _get(doc, dotted)
        except KeyError:
            raise ArchError(f"{where}: missing field {dotted}") from None
        if isinstance(value, bool) and typ is not bool:
            raise ArchError(f"{where}: {dotted} must be {typ.__name__}, got bool")
        if not isinstance(value, typ):
            raise ArchError(f"{where}: {dotted} must be {getattr(typ, '__name__', typ)}, got {type(value).__name__}")
    dpu = doc["dpu"]
    fp = dpu["fingerprint"]
    try:
        fp_int = int(fp, 16)
    except ValueError:
        raise ArchError(f"{where}: dpu.fingerprint {fp!r} is not a hex number") from None
    if not fp.startswith("0x"):
        raise ArchError(f"{where}: dpu.fingerprint must start with 0x")
    if doc["compiler"]["arch_json"].get("fingerprint") != fp:
        raise ArchError(f"{where}: compiler.arch_json.fingerprint differs from dpu.fingerprint")
    peak = dpu["pixel_parallel"] * dpu["input_channel_parallel"] * dpu["output_channel_parallel"] * 2
    if peak != dpu["peak_ops_per_cycle"]:
        raise ArchError(f"{where}: peak_ops_per_cycle {dpu['peak_ops_per_cycle']} != PP*ICP*OCP*2 = {peak}")
    if (fp_int >> 56) != 1:
        raise ArchError(f"{where}: fingerprint {fp} is not a DPUCZDX8G (top byte must be 1)")
    num, den = doc["operators"]["leaky_relu"]["negative_slope_fraction"]
    if num / den != doc["operators"]["leaky_relu"]["negative_slope"]:
        raise ArchError(f"{where}: leaky_relu slope != {num}/{den}")
    lo, hi = doc["quantization"]["range"]
    if (lo, hi) != (-128, 127):
        raise ArchError(f"{where}: quantization.range must be [-128, 127] for int8")
    for dotted in ("operators.conv2d.kernel", "operators.conv2d.stride", "quantization.shift_cut_range"):
        pair = _get(doc, dotted)
        if len(pair) != 2 or not all(isinstance(v, int) for v in pair) or pair[0] > pair[1]:
            raise ArchError(f"{where}: {dotted} must be an increasing [min, max] pair of ints")
    return doc


def load_arch(name: str = "ULTRA96") -> dict:
    """Load ``arch/<NAME>.json`` (or a path) and validate it."""
    path = Path(name)
    if not path.suffix:
        path = ARCH_DIR / f"{name.upper()}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in ARCH_DIR.glob("*.json")))
        raise ArchError(f"{path}: no such arch file (known: {known})")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArchError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return validate(doc, str(path))


def fingerprint_fields(fingerprint: str) -> dict:
    """Decode a DPUCZDX8G ISA1 fingerprint the way VAI's target factory does."""
    fp = int(fingerprint, 16)
    arch = fp & 0xF
    # Only the ARCH code of the boards we describe is confirmed from the source (4 = PP8/ICP10/OCP10).
    table = {4: "B1600"}
    return {
        "ip_type": fp >> 56,
        "isa": (fp >> 48) & 0xFF,
        "arch": table.get(arch, f"unknown({arch})"),
        "alu_parallel": (fp & 0xF00) >> 8,
    }
