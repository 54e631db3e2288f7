"""compile/partition.py: the per-op DPU checks, subgraph counting, and the partition of
the real GDNHyperprior networks. Every limit comes from arch/ULTRA96.json (B1600:
bank_depth 2048, input_channel_parallel 10, kernel [1, 16], stride [1, 8])."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from arch import load_arch
from compile.partition import (
    CHECKS,
    CPU,
    DPU,
    OpInfo,
    PartitionError,
    check_op,
    partition,
    partition_hyperprior,
    register_check,
)
from models.hyperprior import GDNHyperprior
from models.layers import GDN


@pytest.fixture(scope="module")
def arch():
    return load_arch("ULTRA96")


def _layer(module: nn.Module, shape, arch, index: int):
    return partition(module, shape, arch).layers[index]


# -- per-op predicates -------------------------------------------------------------------------

PREDICATE_CASES = [
    # (id, module, input shape, layer index, device, reason fragment); a bare layer is traced as one node
    ("conv5x5", nn.Conv2d(8, 8, 5, 2, 2), (1, 8, 16, 16), 0, DPU, "conv engine: 5x5/s2"),
    ("kernel16", nn.Conv2d(1, 1, 16, 1, 7), (1, 1, 32, 32), 0, DPU, "conv engine"),
    ("kernel17", nn.Conv2d(1, 1, 17, 1, 8), (1, 1, 32, 32), 0, CPU, "kernel 17x17 outside [1, 16]"),
    ("stride8", nn.Conv2d(1, 1, 9, 8, 4), (1, 1, 32, 32), 0, DPU, "conv engine"),
    ("stride9", nn.Conv2d(1, 1, 9, 9, 4), (1, 1, 36, 36), 0, CPU, "stride (9, 9) outside [1, 8]"),
    ("pad_eq_kernel", nn.Conv2d(1, 1, 3, 1, 3), (1, 1, 8, 8), 0, CPU, "pad 3 >= kernel 3"),
    ("pad_k_minus_1", nn.Conv2d(1, 1, 3, 1, 2), (1, 1, 8, 8), 0, DPU, "conv engine"),
    ("dilated_pad", nn.Conv2d(1, 1, 3, 1, 4, dilation=2), (1, 1, 8, 8), 0, DPU, "conv engine"),
    ("reflect_pad", nn.Conv2d(1, 1, 3, 1, 1, padding_mode="reflect"), (1, 1, 8, 8), 0, CPU, "padding_mode"),
    # 5*5*ceil(811/10) = 25*82 = 2050 > 2048; 25*ceil(810/10) = 2025 fits
    ("bank_811", nn.Conv2d(811, 8, 5, 1, 2), (1, 811, 4, 4), 0, CPU, "= 2050 > bank_depth 2048"),
    ("bank_810", nn.Conv2d(810, 8, 5, 1, 2), (1, 810, 4, 4), 0, DPU, "bank depth 2025/2048"),
    ("in_2561", nn.Conv2d(2561, 8, 1), (1, 2561, 2, 2), 0, CPU, "in_channels 2561 > 2560"),
    ("out_2561", nn.Conv2d(8, 2561, 1), (1, 8, 2, 2), 0, CPU, "out_channels 2561 > 2560"),
    ("groups2", nn.Conv2d(8, 8, 3, 1, 1, groups=2), (1, 8, 8, 8), 0, CPU, "groups=2 is neither 1 nor"),
    ("depthwise", nn.Conv2d(8, 8, 3, 1, 1, groups=8), (1, 8, 8, 8), 0, DPU, "depthwise conv 3x3 (ALU"),
    ("deconv_op1", nn.ConvTranspose2d(8, 8, 5, 2, 2, output_padding=1), (1, 8, 8, 8), 0, CPU,
     "output_padding (1, 1) != 0"),
    ("deconv_op0", nn.ConvTranspose2d(8, 8, 5, 2, 2), (1, 8, 8, 8), 0, DPU, "transposed 5x5/s2"),
    ("deconv_4s2", nn.ConvTranspose2d(8, 8, 4, 2, 1), (1, 8, 8, 8), 0, DPU, "transposed 4x4/s2"),
    # kernel//stride = 0: outside [1, 16]
    ("deconv_1s2", nn.ConvTranspose2d(8, 8, 1, 2), (1, 8, 8, 8), 0, CPU, "kernel 1 / stride 2"),
    ("deconv_groups2", nn.ConvTranspose2d(8, 8, 4, 2, 1, groups=2), (1, 8, 8, 8), 0, CPU, "groups=2"),
    ("leaky_0.1", nn.Sequential(nn.Conv2d(4, 4, 3, 1, 1), nn.LeakyReLU(0.1)), (1, 4, 8, 8), 1, CPU,
     "slope 0.1 != 26/256"),
    ("leaky_26_256", nn.Sequential(nn.Conv2d(4, 4, 3, 1, 1), nn.LeakyReLU(26 / 256)), (1, 4, 8, 8), 1, DPU,
     "fused into 0 (conv2d)"),
    # DW_LKRL = 0: the depthwise (ALU) engine fuses relu/relu6 only
    ("leaky_after_dw", nn.Sequential(nn.Conv2d(4, 4, 3, 1, 1, groups=4), nn.LeakyReLU(26 / 256)),
     (1, 4, 8, 8), 1, CPU, "does not fuse leaky_relu"),
    ("relu_after_conv", nn.Sequential(nn.Conv2d(4, 4, 3, 1, 1), nn.ReLU()), (1, 4, 8, 8), 1, DPU, "fused"),
    ("relu_standalone", nn.ReLU(), (1, 4, 8, 8), 0, CPU, "standalone relu after the graph input"),
    ("pixel_shuffle", nn.PixelShuffle(2), (1, 8, 4, 4), 0, DPU, "pixel_shuffle"),
    ("sigmoid", nn.Sigmoid(), (1, 4, 4, 4), 0, CPU, "not a DPU operator (arch cpu_only)"),
    ("instance_norm", nn.InstanceNorm2d(4), (1, 4, 4, 4), 0, CPU, "not a DPU operator (arch cpu_only)"),
    ("tanh", nn.Tanh(), (1, 4, 4, 4), 0, CPU, "not a DPU operator (arch cpu_only)"),
    ("unknown", nn.BatchNorm2d(4), (1, 4, 4, 4), 0, CPU, "unknown op"),
]


@pytest.mark.parametrize("module, shape, layer, device, reason", [c[1:] for c in PREDICATE_CASES],
                         ids=[c[0] for c in PREDICATE_CASES])
def test_per_op_predicates(arch, module, shape, layer, device, reason):
    got = _layer(module, shape, arch, layer)
    assert got.device == device, got.reason
    assert reason in got.reason


class _Functional(nn.Module):
    """Function-call and method forms of the same ops."""

    def forward(self, x):
        a = torch.abs(x)
        b = x.sqrt()
        c = a / (b + 1.0)
        d = a * a
        e = torch.cat([a, x], dim=1)
        return c, d, e, a + x, x * 2.0, x + 1.0


def test_function_and_method_forms_are_classified(arch):
    report = partition(_Functional(), (1, 4, 4, 4), arch)
    kinds = {layer.name: (layer.op, layer.device) for layer in report.layers}
    assert kinds["abs"] == ("abs", CPU) and kinds["sqrt"] == ("sqrt", CPU)
    assert kinds["div"] == ("div", CPU)
    assert kinds["square"] == ("square", CPU)  # a * a
    assert kinds["concat"] == ("concat", DPU)  # channel concat
    assert report.layer("add_1").device == DPU  # a + x: two tensors, eltwise engine
    assert "depthwise conv" in report.layer("mul").reason  # x * 2.0
    assert report.layer("add_2").device == CPU and "#320" in report.layer("add_2").reason  # x + 1.0
    assert report.layer("add").reason.startswith("add of a constant")  # b + 1.0


def test_check_op_on_a_bare_opinfo(arch):
    """The table can be queried without tracing (what a rewrite pass needs)."""
    op = OpInfo(name="x", kind="rsqrt", source="test")
    assert check_op(op, arch) == (CPU, "not a DPU operator (arch cpu_only)")
    assert check_op(OpInfo(name="y", kind="gelu", source="test"), arch).reason.startswith("unknown op 'gelu'")
    device, reason = check_op(OpInfo(name="z", kind="add", source="test", in_shapes=((1, 4, 2, 2),) * 2), arch)
    assert (device, reason) == (DPU, "eltwise engine (add)")


def test_registry_rejects_a_second_check_for_a_kind():
    assert "conv2d" in CHECKS and "conv_transpose2d" in CHECKS
    with pytest.raises(ValueError, match="already registered"):
        register_check("conv2d")(lambda op, arch: (DPU, ""))


# -- subgraph counting -------------------------------------------------------------------------


def test_conv_relu_conv_is_one_subgraph(arch):
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1))
    r = partition(net, (1, 1, 16, 16), arch)
    assert (r.n_dpu_subgraphs, r.n_cpu_ops, len(r.crossings)) == (1, 0, 0)
    assert r.subgraphs == (("0", "1", "2"),)
    assert r.deployable and r.verdict.startswith("deployable on DPU-PYNQ")


def test_conv_sigmoid_conv_splits_in_two(arch):
    net = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.Sigmoid(), nn.Conv2d(8, 8, 3, 1, 1))
    r = partition(net, (1, 1, 16, 16), arch)
    assert (r.n_dpu_subgraphs, r.n_cpu_ops) == (2, 1)
    assert [c.name for c in r.cpu_ops] == ["1"]
    assert [(c.tensor, c.src, c.dst) for c in r.crossings] == [("0", "dpu0", ("cpu",)), ("1", "cpu", ("dpu1",))]
    assert not r.deployable and "2 DPU subgraph(s), 1 CPU op(s)" in r.verdict


def test_gdn_block_puts_square_and_rsqrt_on_the_cpu(arch):
    # conv | square (CPU) | 1x1 conv | rsqrt (CPU) | mul: the mul reads conv's output directly
    # but also waits on rsqrt(conv(conv_out^2)), so conv and mul cannot share a subgraph.
    r = partition(nn.Sequential(nn.Conv2d(1, 8, 5, 2, 2), GDN(8)), (1, 1, 16, 16), arch)
    assert [(layer.name, layer.op, layer.device) for layer in r.layers] == [
        ("0", "conv2d", DPU), ("1.square", "square", CPU), ("1.conv2d", "conv2d", DPU),
        ("1.rsqrt", "rsqrt", CPU), ("1.mul", "mul", DPU)]
    assert r.subgraphs == (("0",), ("1.conv2d",), ("1.mul",))
    assert r.n_cpu_ops == 2
    # IGDN uses sqrt instead of rsqrt
    r = partition(GDN(8, inverse=True), (1, 8, 4, 4), arch)
    assert [layer.op for layer in r.cpu_ops] == ["square", "sqrt"]


class _SkipOverCpu(nn.Module):
    """a = conv1(x); return a + conv2(sigmoid(a)): conv1 and the add are adjacent DPU ops,
    but merging them would need the CPU sigmoid in the middle of one subgraph."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, 1, 1)
        self.conv2 = nn.Conv2d(4, 4, 3, 1, 1)

    def forward(self, x):
        a = self.conv1(x)
        return a + self.conv2(torch.sigmoid(a))


class _TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right, self.head = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 3, 1, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([self.left(x), self.right(x)], 1))


def test_dag_subgraphs_stay_acyclic(arch):
    r = partition(_SkipOverCpu(), (1, 4, 8, 8), arch)
    # plain connected components would give one subgraph {conv1, conv2, add}
    assert r.subgraphs == (("conv1",), ("conv2", "add"))
    assert r.n_cpu_ops == 1
    r = partition(_TwoBranches(), (1, 4, 8, 8), arch)
    assert r.subgraphs == (("left", "right", "concat", "head"),) and r.deployable


def test_pre_and_post_ops_are_judged_with_the_module(arch):
    net = nn.Conv2d(4, 4, 3, 1, 1)
    r = partition(net, (1, 4, 8, 8), arch, pre_ops=("abs",), post_ops=("clamp",))
    assert [layer.name for layer in r.layers] == ["pre.abs", "conv2d", "post.clamp"]
    assert [layer.device for layer in r.layers] == [CPU, DPU, CPU]
    assert r.layer("conv2d").in_shapes == ((1, 4, 8, 8),)
    assert len(r.crossings) == 2 and not r.deployable


# -- the real codec ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hyperprior():
    torch.manual_seed(0)
    return GDNHyperprior(N=64, M=128)


@pytest.fixture(scope="module")
def reports(hyperprior, arch):
    return partition_hyperprior(hyperprior, tile=256, arch=arch)


def test_g_a_does_not_deploy(reports):
    r = reports["g_a"]
    assert r.input_shapes == ((1, 1, 256, 256),)
    assert r.layer("conv3").out_shape == (1, 128, 16, 16)
    # 4 convs + 3 GDNs x (square, 1x1 conv, rsqrt, mul); GDN's parameter re-parametrisation
    # (lower bound, square, minus pedestal) is folded, not reported.
    assert len(r.layers) == 16
    # each GDN: square and rsqrt on the CPU (arch cpu_only)
    assert sorted(c.op for c in r.cpu_ops) == ["rsqrt"] * 3 + ["square"] * 3
    # {conv0}, then per GDN: {1x1 conv} and {mul, next conv}: 1 + 2*3 = 7
    assert r.n_dpu_subgraphs == 7
    assert r.subgraphs[2] == ("gdn0.mul", "conv1")
    # per GDN: conv out, square, 1x1 conv out, rsqrt cross the boundary
    assert len(r.crossings) == 12
    assert not r.deployable


def test_g_s_does_not_deploy(reports):
    r = reports["g_s"]
    assert r.layer("deconv3").out_shape == (1, 1, 256, 256)
    cpu = [c.name for c in r.cpu_ops]
    # 4 deconvs with output_padding=1, and square + sqrt of each of the 3 IGDNs
    assert [n for n in cpu if n.startswith("deconv")] == ["deconv0", "deconv1", "deconv2", "deconv3"]
    assert sorted(r.layer(n).op for n in cpu if n.startswith("igdn")) == ["sqrt"] * 3 + ["square"] * 3
    assert r.n_cpu_ops == 10
    assert all("output_padding (1, 1) != 0" in r.layer(f"deconv{i}").reason for i in range(4))
    # per IGDN, the 1x1 conv and the mul are DPU islands between CPU ops: 2 * 3
    assert r.n_dpu_subgraphs == 6
    assert not r.deployable


def test_h_a_needs_abs_on_the_cpu(reports, hyperprior, arch):
    r = reports["h_a"]
    assert r.pre_ops == ("abs",)
    assert [c.name for c in r.cpu_ops] == ["pre.abs"]
    # conv-relu fused: conv0, relu0, conv1, relu1, conv2 form one subgraph
    assert r.n_dpu_subgraphs == 1 and len(r.subgraphs[0]) == 5
    assert not r.deployable  # the abs is a CPU op in the deployed graph
    bare = partition(hyperprior.h_a, (1, 128, 16, 16), arch, name="h_a")
    assert bare.deployable and bare.n_cpu_ops == 0 and bare.layer("conv2").out_shape == (1, 64, 4, 4)


def test_h_s_does_not_deploy(reports):
    r = reports["h_s"]
    # deconv0/1 have output_padding=1; the ReLUs after them have no DPU op to fuse into
    assert [c.name for c in r.cpu_ops] == ["deconv0", "relu0", "deconv1", "relu1"]
    assert r.subgraphs == (("conv2",),)
    assert r.layer("conv2").out_shape == (1, 128, 16, 16)
    assert not r.deployable


def test_without_output_padding_the_decoders_split_only_at_gdn(hyperprior, arch):
    """What the planned deconv rewrite (output_padding=0 form) buys."""
    fixed = copy.deepcopy(hyperprior)
    for m in fixed.modules():
        if isinstance(m, nn.ConvTranspose2d):
            m.output_padding = (0, 0)
    h_s = partition(fixed.h_s, (1, 64, 4, 4), arch)
    assert h_s.deployable and h_s.n_dpu_subgraphs == 1
    g_s = partition(fixed.g_s, (1, 128, 16, 16), arch)
    assert (g_s.n_dpu_subgraphs, g_s.n_cpu_ops) == (7, 6)  # the same shape as g_a


# -- limits come from the arch file ----------------------------------------------------------------


def test_mutating_the_arch_changes_the_verdict(hyperprior, arch):
    base = partition(hyperprior.h_a, (1, 128, 16, 16), arch)
    assert base.deployable
    small = copy.deepcopy(arch)
    small["dpu"]["bank_depth"] = 150  # conv0 needs 3*3*ceil(128/10) = 117, conv1/conv2 5*5*ceil(64/10) = 175
    r = partition(hyperprior.h_a, (1, 128, 16, 16), small)
    assert r.layer("conv0").device == DPU and r.layer("relu0").device == DPU
    assert r.layer("conv1").device == CPU and "175 > bank_depth 150" in r.layer("conv1").reason
    assert r.layer("relu1").device == CPU  # nothing left to fuse into
    assert [c.name for c in r.cpu_ops] == ["conv1", "relu1", "conv2"]
    assert r.subgraphs == (("conv0", "relu0"),) and not r.deployable
    wide = copy.deepcopy(arch)
    wide["operators"]["cpu_only"].append("relu")
    assert not partition(hyperprior.h_a, (1, 128, 16, 16), wide).deployable
    op1 = copy.deepcopy(arch)
    op1["operators"]["transposed_conv2d"]["output_padding"] = 1
    assert partition(hyperprior.h_s, (1, 64, 4, 4), op1).deployable


def test_multi_subgraph_runtime_accepts_split_graphs(hyperprior, arch):
    multi = copy.deepcopy(arch)
    multi["runtime"]["single_dpu_subgraph_required"] = False
    r = partition(hyperprior.g_a, (1, 1, 64, 64), multi)
    assert r.deployable and "multi-subgraph runtime" in r.verdict


# -- the report ------------------------------------------------------------------------------------


def test_report_json_and_table(reports):
    r = reports["g_a"]
    doc = json.loads(r.to_json())
    assert doc["n_dpu_subgraphs"] == 7 and doc["n_cpu_ops"] == 6 and doc["deployable"] is False
    assert doc["layers"][0] == {"name": "conv0", "op": "conv2d", "source": "Conv2d",
                                "in_shapes": [[1, 1, 256, 256]], "out_shape": [1, 64, 128, 128],
                                "device": "DPU", "reason": "conv engine: 5x5/s2, bank depth 25/2048",
                                "subgraph": "dpu0"}
    assert {"name": "gdn0.rsqrt", "op": "rsqrt", "reason": "not a DPU operator (arch cpu_only)"} in doc["cpu_ops"]
    assert doc["crossings"][0]["tensor"] == "conv0" and doc["crossings"][0]["dst"] == ["cpu", "dpu2"]
    table = r.format()
    assert "gdn1.rsqrt" in table and "DPU subgraphs: 7; CPU ops: 6; boundary tensors: 12" in table
    assert table.splitlines()[-1].startswith("verdict: not deployable on DPU-PYNQ")


def test_module_is_not_modified(arch):
    net = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), GDN(4)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    partition(net, (1, 1, 8, 8), arch)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert next(net.parameters()).device.type == "cpu"


class _DataDependent(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x


def test_untraceable_and_misfit_modules_raise(arch):
    with pytest.raises(PartitionError, match="cannot trace"):
        partition(_DataDependent(), (1, 1, 4, 4), arch)
    with pytest.raises(PartitionError, match="does not run on inputs"):
        partition(nn.Conv2d(3, 4, 3), (1, 1, 8, 8), arch)
    with pytest.raises(PartitionError, match="multiple of 64"):
        partition_hyperprior(GDNHyperprior(8, 8), tile=100, arch=arch)
