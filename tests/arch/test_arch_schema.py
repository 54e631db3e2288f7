"""The arch description is the single source of hardware facts: check its schema
and the relations between its numbers."""

import copy
import json

import pytest

from arch import ARCH_DIR, ArchError, fingerprint_fields, load_arch, validate


@pytest.fixture
def doc():
    return json.loads((ARCH_DIR / "ULTRA96.json").read_text())


def test_ultra96_loads_and_has_the_documented_facts():
    arch = load_arch("ULTRA96")
    dpu = arch["dpu"]
    assert dpu["fingerprint"] == "0x101000016010404"
    assert dpu["arch"] == "B1600" and dpu["target_name"] == "DPUCZDX8G_ISA1_B1600"
    assert (dpu["pixel_parallel"], dpu["input_channel_parallel"], dpu["output_channel_parallel"]) == (8, 10, 10)
    assert dpu["peak_ops_per_cycle"] == 1600 and dpu["core_clock_hz"] == 200_000_000
    assert dpu["bank_depth"] == 2048 and dpu["cores"] == 1
    assert arch["runtime"]["vart_version"] == "2.5.0"
    q = arch["quantization"]
    assert q["range"] == [-128, 127] and q["max_fix_pos"] == 12
    assert q["activation_rounding"] == "half_up" and q["weight_rounding"] == "half_away_from_zero"
    ops = arch["operators"]
    assert ops["transposed_conv2d"]["output_padding"] == 0
    assert ops["leaky_relu"]["negative_slope"] == 26 / 256
    for op in ("square", "sqrt", "rsqrt", "div", "abs", "pow", "instance_norm", "sigmoid", "tanh"):
        assert op in ops["cpu_only"]


def test_lowercase_name_and_path_both_load():
    assert load_arch("ultra96")["name"] == "ultra96"
    assert load_arch(str(ARCH_DIR / "ULTRA96.json"))["name"] == "ultra96"


def test_fingerprint_decodes_to_b1600_isa1():
    f = fingerprint_fields(load_arch()["dpu"]["fingerprint"])
    assert f == {"ip_type": 1, "isa": 1, "arch": "B1600", "alu_parallel": 4}


def test_compiler_arch_json_is_what_vai_c_xir_reads(doc):
    assert doc["compiler"]["arch_json"] == {"fingerprint": doc["dpu"]["fingerprint"]}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["dpu"].pop("fingerprint"), "missing field dpu.fingerprint"),
        (lambda d: d["dpu"].__setitem__("peak_ops_per_cycle", 2048), "peak_ops_per_cycle"),
        (lambda d: d["dpu"].__setitem__("fingerprint", "0x201000016010404"), "differs"),
        (lambda d: d["dpu"].__setitem__("bank_depth", "2048"), "dpu.bank_depth must be int"),
        (lambda d: d["operators"]["leaky_relu"].__setitem__("negative_slope", 0.1), "slope"),
        (lambda d: d["quantization"].__setitem__("range", [-127, 127]), "range"),
        (lambda d: d["operators"]["conv2d"].__setitem__("kernel", [16, 1]), "increasing"),
        (lambda d: d["runtime"].__setitem__("single_dpu_subgraph_required", 1), "must be bool"),
        (lambda d: d["operators"]["conv2d"].__setitem__("pad_lt_kernel", 1), "must be bool"),
    ],
)
def test_schema_rejects_broken_descriptions(doc, mutate, message):
    bad = copy.deepcopy(doc)
    mutate(bad)
    with pytest.raises(ArchError, match=message):
        validate(bad)


def test_unknown_arch_names_the_known_ones(tmp_path):
    with pytest.raises(ArchError, match="known: ULTRA96"):
        load_arch("ZCU999")
    broken = tmp_path / "X.json"
    broken.write_text("{not json")
    with pytest.raises(ArchError, match="not valid JSON"):
        load_arch(str(broken))
