"""compile.vaic: the vai_c_xir adapter.

- the log parser on REAL public logs (``tests/compile/data``, each file names its source):
  the Vitis AI 2.5 tutorial compile (9 device / 4 DPU subgraphs), its ``xir subgraph`` tree
  (kernel names, devices, tensor names, NHWC shapes, fix positions), a glog-prefixed 3.x
  compile with one DPU subgraph, and a log with ops assigned to the CPU;
- the arch file is byte-for-byte DPU-PYNQ's ``host/arch_ultra96.json``;
- tool discovery and command lines (local and docker) as pure functions;
- ``compile_network`` against a FAKE compiler (a ``run`` callable that writes what
  vai_c_xir writes and prints a real log): outputs, md5 check, report, the one-DPU-subgraph
  rule; the real compile is marked ``toolchain`` and skips without the tool.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from arch import load_arch
from codec.errors import MedcodecError
from compile.vaic import (
    DOCKER_ENV,
    CompileError,
    SubgraphCountError,
    Toolchain,
    ToolchainMissing,
    compile_argv,
    compile_network,
    find_toolchain,
    parse_compile_log,
    parse_subgraph_tree,
    read_arch_json,
    subgraph_argv,
    write_arch_json,
)

DATA = Path(__file__).resolve().parent / "data"
ARCH = load_arch()
VAI25_LOG = (DATA / "vai25_pytorch_subgraphs_compile.log").read_text()
TREE = (DATA / "vai_subgraph_tree_cnn.txt").read_text()
GLOG_1358 = (DATA / "issue1358_glog_compile.log").read_text()
CPU_602 = (DATA / "issue602_cpu_assigned.log").read_text()


# -- parser ---------------------------------------------------------------------------------------


def test_parse_vai25_tutorial_log():
    s = parse_compile_log(VAI25_LOG)
    assert s["target"] == "DPUCZDX8G_ISA1_B4096"
    assert s["compile_mode"] == "dpu"
    assert (s["graph"], s["op_num"]) == ("CNN", 41)
    assert s["counts"] == {"DPU": 4}
    assert (s["device_subgraphs"], s["dpu_subgraphs"], s["cpu_subgraphs"]) == (9, 4, None)
    assert s["compile_done"] is True
    assert s["meta_json"].endswith("/build/compiled_model/meta.json")
    assert s["compiled_xmodel"].endswith("/build/compiled_model/CNN_int_zcu102.xmodel")
    assert s["md5sum"] == "6b528babcc773728db0e718b39efe452"
    assert s["md5sum_file"].endswith("/build/compiled_model/md5sum.txt")
    assert s["cpu_ops"] == [] and s["subgraphs"] == [] and s["kernels"] == []


def test_parse_subgraph_tree_of_the_tutorial():
    subs = parse_subgraph_tree(TREE)
    assert [sg["device"] for sg in subs] == ["USER", "DPU", "CPU", "DPU", "CPU", "DPU", "CPU", "DPU", "CPU"]
    first = subs[1]
    assert first["name"] == "subgraph_CNN__CNN_Conv2d_conv1__213"
    assert first["fingerprint"] == "0x1000020f6014407" and first["dpu"] == "DPUCZDX8G_ISA0_B4096_MAX_BG2"
    assert first["inputs"] == [{"name": "CNN__input_0_fix", "shape": [1, 32, 32, 3], "fixpos": 6, "elements": 3072}]
    assert first["outputs"] == [{"name": "CNN__CNN_Conv2d_conv1__213_fix", "shape": [1, 32, 32, 16], "fixpos": 5,
                                 "elements": 16384}]
    assert first["children"] == ["subgraph_CNN__input_0_upload_0", "subgraph_CNN__CNN_Conv2d_conv1__213",
                                 "subgraph_CNN__CNN_Conv2d_conv1__213_download_0"]
    fc2 = subs[7]
    assert fc2["name"] == "subgraph_CNN__CNN_Linear_fc2__275(TransferMatMulToConv2d)"
    assert fc2["outputs"][0]["shape"] == [1, 2] and fc2["outputs"][0]["fixpos"] == 5
    assert subs[0]["inputs"] == [] and subs[0]["fingerprint"] is None


def test_log_plus_tree_gives_kernels_and_tensors():
    s = parse_compile_log(VAI25_LOG + "\n" + TREE)
    assert s["tree_counts"] == {"USER": 1, "DPU": 4, "CPU": 4}
    assert s["dpu_subgraphs"] == 4  # the log's count; the tree agrees
    assert s["cpu_subgraphs"] == 4  # only the tree has it
    assert s["kernels"][0] == "subgraph_CNN__CNN_Conv2d_conv1__213" and len(s["kernels"]) == 4
    assert s["inputs"][0] == {"name": "CNN__input_0_fix", "shape": [1, 32, 32, 3], "fixpos": 6, "elements": 3072,
                              "kernel": "subgraph_CNN__CNN_Conv2d_conv1__213"}
    assert [t["shape"] for t in s["outputs"]] == [[1, 32, 32, 16], [1, 16, 16, 8], [1, 32], [1, 2]]
    json.dumps(s)  # JSON-able


def test_parse_glog_prefixed_single_dpu_log():
    s = parse_compile_log(GLOG_1358)
    assert (s["target"], s["graph"], s["op_num"]) == ("DPUCZDX8G_ISA1_B4096",
                                                      "nndct_conv2d_nndct_relu_L1rV78RjnisKzw5U", 9)
    assert (s["device_subgraphs"], s["dpu_subgraphs"]) == (3, 1)
    assert s["compile_done"] and s["md5sum"] is None


def test_parse_cpu_assigned_ops():
    s = parse_compile_log(CPU_602)
    assert (s["target"], s["graph"], s["op_num"]) == ("DPUCADF8H_ISA0", "unet", 170)
    assert [(op["name"], op["type"]) for op in s["cpu_ops"]] == [
        ("unet__unet_unetConv2_conv1__Sequential_conv1__Conv2d_0__input_2", "conv2d-fix"),
        ("unet__unet_unetConv2_conv1__Sequential_conv2__Conv2d_0__input_5", "conv2d-fix"),
        ("unet__unet_MaxPool2d_maxpool1__input_7", "pool-fix"),
    ]
    assert s["dpu_subgraphs"] is None and s["compile_done"] is False  # the quoted log stops early


def test_parse_newer_count_lines_and_empty_text():
    text = ("[UNILOG][INFO] Total device subgraph number 3, CPU subgraph number 1\n"
            "[UNILOG][INFO] Total device subgraph number 3, DPU subgraph number 1\n")
    s = parse_compile_log(text)
    assert s["counts"] == {"CPU": 1, "DPU": 1} and s["cpu_subgraphs"] == 1
    empty = parse_compile_log("")
    assert empty["dpu_subgraphs"] is None and empty["graph"] is None and empty["subgraphs"] == []


# -- arch file, discovery, command lines -----------------------------------------------------------


def test_arch_json_is_dpu_pynq_form(tmp_path):
    path = write_arch_json(ARCH, tmp_path / "sub" / "arch_ultra96.json")
    # DPU-PYNQ host/arch_ultra96.json, byte for byte
    assert path.read_bytes() == b'{"fingerprint":"0x101000016010404"}\n'
    assert read_arch_json(path) == {"fingerprint": "0x101000016010404"}


def test_arch_json_refusals(tmp_path):
    bad = json.loads(json.dumps(ARCH))
    bad["compiler"]["arch_json"] = {"fingerprint": "0x1"}
    with pytest.raises(CompileError, match="dpu.fingerprint"):
        write_arch_json(bad, tmp_path / "a.json")
    bad["compiler"]["arch_json"] = {"fingerprint": ARCH["dpu"]["fingerprint"], "target": "x"}
    with pytest.raises(CompileError, match="exactly one key"):
        write_arch_json(bad, tmp_path / "a.json")
    target = json.loads(json.dumps(ARCH))
    target["compiler"]["arch_json"] = {"target": "DPUCZDX8G_ISA1_B1600"}
    assert json.loads(write_arch_json(target, tmp_path / "t.json").read_text()) == {"target": "DPUCZDX8G_ISA1_B1600"}
    (tmp_path / "junk.json").write_text("not json")
    with pytest.raises(CompileError, match="not a readable JSON"):
        read_arch_json(tmp_path / "junk.json")


def test_find_toolchain():
    paths = {"vai_c_xir": "/x/bin/vai_c_xir", "xir": "/x/bin/xir", "docker": "/usr/bin/docker"}
    assert find_toolchain({}, lambda n: paths.get(n)) == Toolchain("local", "/x/bin/vai_c_xir", xir="/x/bin/xir")
    no_vai = {"docker": "/usr/bin/docker"}
    assert find_toolchain({}, lambda n: no_vai.get(n)) is None  # docker alone is not enough
    tc = find_toolchain({DOCKER_ENV: "xilinx/vitis-ai-cpu:2.5"}, lambda n: no_vai.get(n))
    assert tc == Toolchain("docker", docker="/usr/bin/docker", image="xilinx/vitis-ai-cpu:2.5")
    assert find_toolchain({DOCKER_ENV: "img"}, lambda n: None) is None  # an image but no docker
    assert find_toolchain({}, lambda n: None) is None


def test_command_lines(tmp_path):
    local = Toolchain("local", "vai_c_xir", xir="xir")
    assert compile_argv(local, "q/g_a_int.xmodel", "a/arch.json", "out", "g_a") == [
        "vai_c_xir", "-x", "q/g_a_int.xmodel", "-a", "a/arch.json", "-o", "out", "-n", "g_a"]
    assert subgraph_argv(local, "out/g_a.xmodel") == ["xir", "subgraph", "out/g_a.xmodel"]
    assert subgraph_argv(Toolchain("local"), "out/g_a.xmodel") is None
    dock = Toolchain("docker", docker="docker", image="xilinx/vitis-ai-cpu:2.5")
    argv = compile_argv(dock, tmp_path / "q" / "g_a_int.xmodel", tmp_path / "a" / "arch.json", tmp_path / "out",
                        "g_a", ids=("u", 1000, 1000))
    assert argv[:10] == ["docker", "run", "--rm", "--network=none", "-e", "USER=u", "-e", "UID=1000", "-e", "GID=1000"]
    assert f"{tmp_path / 'q'}:/medcodec/in:ro" in argv and f"{tmp_path / 'a'}:/medcodec/arch:ro" in argv
    assert f"{tmp_path / 'out'}:/medcodec/out" in argv
    assert argv[-4:-1] == ["xilinx/vitis-ai-cpu:2.5", "bash", "-c"]
    assert argv[-1] == ("source /opt/vitis_ai/conda/etc/profile.d/conda.sh && conda activate vitis-ai-pytorch && "
                        "vai_c_xir -x /medcodec/in/g_a_int.xmodel -a /medcodec/arch/arch.json -o /medcodec/out -n g_a")
    sub = subgraph_argv(dock, tmp_path / "out" / "g_a.xmodel", ids=("u", 1, 1))
    assert sub[-1].endswith("&& xir subgraph /medcodec/out/g_a.xmodel")


# -- compile_network against a fake compiler -------------------------------------------------------


class FakeCompiler:
    """A FAKE vai_c_xir + xir for compile_network: writes the three outputs vai_c_xir writes
    and prints ``log``; ``xir subgraph`` prints ``tree``. Records every argv."""

    def __init__(self, log: str, tree: str | None = None, rc: int = 0, bad_md5: bool = False):
        self.log, self.tree, self.rc, self.bad_md5 = log, tree, rc, bad_md5
        self.calls: list[list[str]] = []

    def __call__(self, argv, **kwargs):
        assert kwargs["stdout"] == subprocess.PIPE and kwargs["stderr"] == subprocess.STDOUT and kwargs["text"]
        self.calls.append(list(argv))
        if argv[1] == "subgraph":
            return subprocess.CompletedProcess(argv, 0 if self.tree is not None else 1, self.tree or "no xir\n")
        out, net = Path(argv[argv.index("-o") + 1]), argv[argv.index("-n") + 1]
        if self.rc == 0:
            data = b"FAKE compiled xmodel " + net.encode()
            (out / f"{net}.xmodel").write_bytes(data)
            md5 = "0" * 32 if self.bad_md5 else hashlib.md5(data).hexdigest()
            (out / "md5sum.txt").write_text(md5 + "\n")
            (out / "meta.json").write_text(json.dumps({"fake": True}))
        return subprocess.CompletedProcess(argv, self.rc, self.log)


@pytest.fixture
def inputs(tmp_path):
    q = tmp_path / "quantize_result" / "g_a_int.xmodel"
    q.parent.mkdir()
    q.write_bytes(b"FAKE quantized xmodel")
    return q, write_arch_json(ARCH, tmp_path / "arch_ultra96.json")


LOCAL = Toolchain("local", "vai_c_xir", xir="xir")


def test_compile_network_single_dpu(tmp_path, inputs):
    q, arch_json = inputs
    fake = FakeCompiler(GLOG_1358)
    res = compile_network(q, arch_json, tmp_path / "compiled", "g_a", toolchain=LOCAL, run=fake)
    assert fake.calls[0] == ["vai_c_xir", "-x", str(q), "-a", str(arch_json), "-o", str(tmp_path / "compiled"),
                             "-n", "g_a"]
    assert fake.calls[1] == ["xir", "subgraph", str(tmp_path / "compiled" / "g_a.xmodel")]
    assert res.xmodel == tmp_path / "compiled" / "g_a.xmodel" and res.dpu_subgraphs == 1
    assert res.log.read_text() == GLOG_1358
    report = json.loads(res.report.read_text())
    assert report["outputs"]["xmodel"]["md5"] == res.md5 == hashlib.md5(res.xmodel.read_bytes()).hexdigest()
    assert report["outputs"]["md5sum_txt"]["matches"] is True
    assert report["outputs"]["meta_json"]["content"] == {"fake": True}
    assert report["arch_json"]["content"] == {"fingerprint": "0x101000016010404"}
    assert report["summary"]["dpu_subgraphs"] == 1 and report["toolchain"]["kind"] == "local"
    assert report["tree_note"] == "'xir subgraph' exited with status 1" and res.tree is None


def test_compile_network_refuses_several_dpu_subgraphs(tmp_path, inputs):
    q, arch_json = inputs
    fake = FakeCompiler(VAI25_LOG, tree=TREE)
    with pytest.raises(SubgraphCountError) as exc:
        compile_network(q, arch_json, tmp_path / "compiled", "g_a", toolchain=LOCAL, run=fake)
    msg = str(exc.value)
    assert "\n" not in msg and "4 DPU subgraph(s) and 4 CPU subgraph(s)" in msg and "exactly one" in msg
    assert isinstance(exc.value, MedcodecError)
    report = json.loads((tmp_path / "compiled" / "compile.json").read_text())  # written before the refusal
    assert report["summary"]["kernels"][0] == "subgraph_CNN__CNN_Conv2d_conv1__213"
    assert (tmp_path / "compiled" / "xir_subgraph.txt").read_text() == TREE
    # allowed when the caller runs several subgraphs itself
    res = compile_network(q, arch_json, tmp_path / "c2", "g_a", toolchain=LOCAL, run=FakeCompiler(VAI25_LOG, TREE),
                          require_single_dpu=False)
    assert res.dpu_subgraphs == 4


def test_compile_network_failures(tmp_path, inputs):
    q, arch_json = inputs
    with pytest.raises(CompileError, match="exited with status 2"):
        compile_network(q, arch_json, tmp_path / "c1", "g_a", toolchain=LOCAL, run=FakeCompiler("boom\n", rc=2))
    assert (tmp_path / "c1" / "vai_c_xir.log").read_text() == "boom\n"
    with pytest.raises(CompileError, match="md5sum.txt"):
        compile_network(q, arch_json, tmp_path / "c2", "g_a", toolchain=LOCAL,
                        run=FakeCompiler(GLOG_1358, bad_md5=True))
    with pytest.raises(CompileError, match="no 'DPU subgraph number'"):
        compile_network(q, arch_json, tmp_path / "c3", "g_a", toolchain=LOCAL, run=FakeCompiler(CPU_602))
    with pytest.raises(CompileError, match="the xir tree"):  # log and tree disagree
        compile_network(q, arch_json, tmp_path / "c4", "g_a", toolchain=LOCAL, run=FakeCompiler(GLOG_1358, TREE))
    with pytest.raises(CompileError, match="no such quantized xmodel"):
        compile_network(tmp_path / "nope.xmodel", arch_json, tmp_path / "c5", "g_a", toolchain=LOCAL,
                        run=FakeCompiler(GLOG_1358))
    with pytest.raises(CompileError, match="net name"):
        compile_network(q, arch_json, tmp_path / "c6", "g a", toolchain=LOCAL, run=FakeCompiler(GLOG_1358))


def test_missing_toolchain_is_a_one_line_error(tmp_path, inputs, monkeypatch):
    q, arch_json = inputs
    monkeypatch.setattr("compile.vaic.find_toolchain", lambda: None)
    with pytest.raises(ToolchainMissing, match="MEDCODEC_VITIS_DOCKER") as exc:
        compile_network(q, arch_json, tmp_path / "c", "g_a")
    assert "\n" not in str(exc.value)

    def not_found(argv, **kwargs):
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(ToolchainMissing, match="cannot run vai_c_xir"):
        compile_network(q, arch_json, tmp_path / "c", "g_a", toolchain=LOCAL, run=not_found)


# -- the real compiler ------------------------------------------------------------------------------


@pytest.mark.toolchain
def test_real_compile_of_a_small_network(tmp_path):
    from quantize import nndct

    tc = find_toolchain()
    if tc is None:
        pytest.skip(f"no vai_c_xir on PATH and no {DOCKER_ENV} image")
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(conv0=nn.Conv2d(1, 8, 5, 2, 2), act0=nn.ReLU(), conv1=nn.Conv2d(8, 8, 3, 1, 1)))
    batches = [torch.rand(4, 1, 32, 32)]
    if nndct.available():
        xmodel = nndct.quantize_nndct(net, batches, tmp_path / "q", ARCH["dpu"]["fingerprint"], net_name="g_a").xmodel
    elif tc.kind == "docker":
        job = nndct.render_docker_job("g_a", net, batches, tmp_path / "job", ARCH)
        subprocess.run(["bash", str(job.run_sh)], check=True, env={**os.environ, DOCKER_ENV: tc.image})
        xmodel = job.xmodel
    else:
        pytest.skip("vai_c_xir found but no pytorch_nndct to make a quantized xmodel")
    arch_json = write_arch_json(ARCH, tmp_path / "arch_ultra96.json")
    res = compile_network(xmodel, arch_json, tmp_path / "compiled", "g_a", toolchain=tc)
    assert res.dpu_subgraphs == 1 and res.xmodel.is_file()
    assert res.summary["target"].startswith("DPUCZDX8G_ISA1_B1600")
