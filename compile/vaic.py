"""The vai_c_xir adapter: compile a quantized xmodel for the DPU, check it, record it.

::

    tc = find_toolchain()                               # vai_c_xir on PATH, or $MEDCODEC_VITIS_DOCKER, or None
    arch_json = write_arch_json(load_arch(), "build/arch_ultra96.json")   # {"fingerprint":"0x101000016010404"}
    res = compile_network("build/nndct/g_a/quantize_result/g_a_int.xmodel", arch_json, "build/compiled/g_a", "g_a")
    res.xmodel, res.summary["dpu_subgraphs"], res.report      # build/compiled/g_a/{g_a.xmodel, compile.json}

What runs (research notes ``../shared/research/vitis_ai.md`` section 4.2; DPU-PYNQ
``host/compile.py``; Vitis-AI-Tutorials 2.5 ``pytorch-subgraphs/files/compile.sh``)::

    vai_c_xir -x <quantized>_int.xmodel -a <arch>.json -o <out_dir> -n <net_name>
    xir subgraph <out_dir>/<net_name>.xmodel            # the subgraph tree (analyze_subgraphs.sh)

The compiler writes ``<net_name>.xmodel``, ``md5sum.txt`` and ``meta.json`` into
``out_dir``. We capture its output into ``vai_c_xir.log`` and the tree into
``xir_subgraph.txt``, parse both (:func:`parse_compile_log`), check that ``md5sum.txt``
holds the md5 of the compiled xmodel and that ``meta.json`` is JSON, and write
``compile.json`` (inputs, command, toolchain, parsed summary, output records).

The board's runtime (DPU-PYNQ ``DpuOverlay.load_model``) accepts exactly one DPU subgraph
(``runtime.single_dpu_subgraph_required`` in the arch file): any other count raises
:class:`SubgraphCountError` after the report is written.

The arch file given to ``-a`` is DPU-PYNQ's ``host/arch_ultra96.json`` form,
``{"fingerprint":"0x101000016010404"}``, taken from ``compiler.arch_json`` of
``arch/ULTRA96.json`` (:func:`write_arch_json`). With the Vitis AI 2.5 compiler the target
name ``DPUCZDX8G_ISA1_B1600`` would mean the same; from 3.0 on it does not (research notes
section 0.2), and the board runs VART 2.5: compile with the 2.5 toolchain.

Where the tool is: ``vai_c_xir`` (and ``xir``) on ``PATH`` (inside the Vitis AI docker),
else ``docker`` on ``PATH`` and ``$MEDCODEC_VITIS_DOCKER`` naming a Vitis AI image
(``xilinx/vitis-ai-cpu:2.5``): each command then runs in ``docker run --rm`` with the
input, arch and output folders mounted and the ``vitis-ai-pytorch`` conda env active.

What the compiler's log holds (the fixtures in ``tests/compile/data`` are real logs):
``[UNILOG][INFO] Target architecture: ...``, ``Graph name: <g>, with op num: <n>``,
``Total device subgraph number <n>, DPU subgraph number <m>`` (newer compilers add
``CPU``/``USER`` variants of that line), ``The meta json is saved to "..."``, ``The
compiled xmodel is saved to "..."``, ``The compiled xmodel's md5sum is <md5>, and has been
saved to "..."``, and ``xir::Op{name = ..., type = ...} has been assigned to CPU`` warnings.
It does NOT list tensor names or shapes: those come from ``xir subgraph``, whose tree
gives every device subgraph's name (the kernel), device, fingerprint, DPU name, and input /
output tensors with shape (NHWC) and fix position.

Layering: ``compile/`` imports ``arch`` and ``codec`` only here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from codec.errors import MedcodecError
from codec.fileio import file_digest
from quantize.nndct import DOCKER_ENV  # one Vitis AI image variable for the quantizer job and the compiler

__all__ = ["DOCKER_ENV", "CompileError", "CompileResult", "SubgraphCountError", "Toolchain", "ToolchainMissing",
           "compile_argv", "compile_network", "find_toolchain", "parse_compile_log", "parse_subgraph_tree",
           "read_arch_json", "subgraph_argv", "write_arch_json"]

VAI_C_XIR = "vai_c_xir"
XIR = "xir"
DOCKER = "docker"
#: An environment variable naming a Vitis AI docker image that has vai_c_xir.
#: The shell prefix that makes the compiler reachable inside the Vitis AI docker.
CONDA_SETUP = "source /opt/vitis_ai/conda/etc/profile.d/conda.sh && conda activate vitis-ai-pytorch"
#: Mount points inside the container.
MOUNT_IN, MOUNT_ARCH, MOUNT_OUT = "/medcodec/in", "/medcodec/arch", "/medcodec/out"

LOG_NAME = "vai_c_xir.log"
TREE_NAME = "xir_subgraph.txt"
REPORT_NAME = "compile.json"
MD5_NAME = "md5sum.txt"
META_NAME = "meta.json"

_NET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

Runner = Callable[..., subprocess.CompletedProcess]


class CompileError(MedcodecError):
    """vai_c_xir failed, or its outputs are missing or inconsistent."""


class ToolchainMissing(CompileError):
    """Neither vai_c_xir nor a Vitis AI docker image is available."""


class SubgraphCountError(CompileError):
    """The compiled network is not exactly one DPU subgraph (DPU-PYNQ cannot load it)."""


# -- the tool ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """Where vai_c_xir runs: ``local`` (executables on PATH) or ``docker`` (an image)."""

    kind: str  #: ``local`` or ``docker``
    vai_c_xir: str = VAI_C_XIR  #: executable (local)
    xir: str | None = None  #: the ``xir`` CLI, if found (local); the docker image always has it
    docker: str | None = None  #: the docker executable (docker)
    image: str | None = None  #: the image (docker)

    def to_dict(self) -> dict:
        return asdict(self)


def find_toolchain(env: Mapping[str, str] | None = None,
                   which: Callable[[str], str | None] = shutil.which) -> Toolchain | None:
    """``vai_c_xir`` on PATH, else docker + ``$MEDCODEC_VITIS_DOCKER``, else None."""
    env = os.environ if env is None else env
    exe = which(VAI_C_XIR)
    if exe:
        return Toolchain(kind="local", vai_c_xir=exe, xir=which(XIR))
    image = (env.get(DOCKER_ENV) or "").strip()
    docker = which(DOCKER) if image else None
    if image and docker:
        return Toolchain(kind="docker", docker=docker, image=image)
    return None


def _in_docker(tc: Toolchain, inner: Sequence[str], mounts: Sequence[tuple[Path, str, bool]],
               ids: tuple[str, int, int]) -> list[str]:
    user, uid, gid = ids
    # USER/UID/GID as the Vitis AI docker_run.sh passes them (its entrypoint maps the host user)
    argv = [tc.docker or DOCKER, "run", "--rm", "--network=none", "-e", f"USER={user}", "-e", f"UID={uid}",
            "-e", f"GID={gid}"]
    for host, inside, read_only in mounts:
        argv += ["-v", f"{Path(host).resolve()}:{inside}" + (":ro" if read_only else "")]
    argv += ["-w", MOUNT_OUT, str(tc.image), "bash", "-c", f"{CONDA_SETUP} && {shlex.join(inner)}"]
    return argv


def _ids(ids: tuple[str, int, int] | None) -> tuple[str, int, int]:
    if ids is not None:
        return ids
    return os.environ.get("USER") or "vitis-ai-user", os.getuid(), os.getgid()


def compile_argv(tc: Toolchain, xmodel, arch_json, out_dir, net_name: str, *,
                 ids: tuple[str, int, int] | None = None) -> list[str]:
    """The vai_c_xir command line (wrapped in ``docker run`` for a docker toolchain; ``ids``
    is (user, uid, gid) for the container, by default the caller's)."""
    xmodel, arch_json, out_dir = Path(xmodel), Path(arch_json), Path(out_dir)
    if tc.kind == "local":
        return [tc.vai_c_xir, "-x", str(xmodel), "-a", str(arch_json), "-o", str(out_dir), "-n", net_name]
    if tc.kind != "docker":
        raise ValueError(f"unknown toolchain kind {tc.kind!r}")
    inner = [VAI_C_XIR, "-x", f"{MOUNT_IN}/{xmodel.name}", "-a", f"{MOUNT_ARCH}/{arch_json.name}",
             "-o", MOUNT_OUT, "-n", net_name]
    mounts = [(xmodel.parent, MOUNT_IN, True), (arch_json.parent, MOUNT_ARCH, True), (out_dir, MOUNT_OUT, False)]
    return _in_docker(tc, inner, mounts, _ids(ids))


def subgraph_argv(tc: Toolchain, compiled, *, ids: tuple[str, int, int] | None = None) -> list[str] | None:
    """``xir subgraph <compiled>``, or None when a local toolchain has no ``xir``."""
    compiled = Path(compiled)
    if tc.kind == "local":
        return [tc.xir, "subgraph", str(compiled)] if tc.xir else None
    return _in_docker(tc, [XIR, "subgraph", f"{MOUNT_OUT}/{compiled.name}"], [(compiled.parent, MOUNT_OUT, True)],
                      _ids(ids))


# -- the arch file ----------------------------------------------------------------------------------


def write_arch_json(arch: dict, path) -> Path:
    """Write the compiler's ``--arch`` file from ``arch["compiler"]["arch_json"]``.

    The form is DPU-PYNQ's ``host/arch_ultra96.json``: one key, compact, newline-terminated
    (``{"fingerprint":"0x101000016010404"}``). A ``fingerprint`` must equal
    ``dpu.fingerprint``; a ``target`` must equal ``dpu.target_name``.
    """
    doc = dict(arch["compiler"]["arch_json"])
    _check_arch_json(doc, arch)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    return path


def _check_arch_json(doc: dict, arch: dict | None = None) -> None:
    if set(doc) not in ({"fingerprint"}, {"target"}):
        raise CompileError(f"arch json must have exactly one key, 'fingerprint' or 'target'; got {sorted(doc)}")
    if "fingerprint" in doc:
        fp = doc["fingerprint"]
        if not (isinstance(fp, str) and re.fullmatch(r"0x[0-9a-fA-F]+", fp)):
            raise CompileError(f"arch json fingerprint {fp!r} is not a hex string")
        if arch is not None and fp != arch["dpu"]["fingerprint"]:
            raise CompileError(f"arch json fingerprint {fp} != dpu.fingerprint {arch['dpu']['fingerprint']}")
    elif arch is not None and doc["target"] != arch["dpu"]["target_name"]:
        raise CompileError(f"arch json target {doc['target']} != dpu.target_name {arch['dpu']['target_name']}")


def read_arch_json(path) -> dict:
    """Load and check a compiler arch file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CompileError(f"{path}: not a readable JSON arch file ({exc})") from None
    if not isinstance(doc, dict):
        raise CompileError(f"{path}: arch json must be an object")
    _check_arch_json(doc)
    return doc


# -- the log ----------------------------------------------------------------------------------------

_RE_TARGET = re.compile(r"Target architecture: (\S+)")
_RE_MODE = re.compile(r"Compile mode: (\S+)")
_RE_GRAPH = re.compile(r"Graph name: (.+?), with op num: (\d+)")
_RE_COUNT = re.compile(r"Total device subgraph number (\d+), (\w+) subgraph number (\d+)")
_RE_META = re.compile(r'The meta json is saved to "([^"]+)"')
_RE_XMODEL = re.compile(r'The compiled xmodel is saved to "([^"]+)"')
_RE_MD5 = re.compile(r"The compiled xmodel's md5sum is ([0-9a-fA-F]{32}), and (?:has )?been saved to \"([^\"]+)\"")
_RE_LOGDIR = re.compile(r'The compiler log will be dumped at "([^"]+)"')
_RE_CPU_OP = re.compile(r"xir::Op\{name = ([^,]+), type = ([^}]+)\} has been assigned to CPU(?:: \[(.*)\])?")
_RE_TREE = re.compile(r"^( *)(root|subgraph_\S+)(?: \[(.*)\])?\s*$")
_RE_TENSOR = re.compile(r"xir_tensor\{([^:{}]+):\(([0-9,\s]*)\), fixpos=(-?\d+) # of elements= (\d+)\}")


def _last(regex: re.Pattern, text: str):
    found = regex.findall(text)
    return found[-1] if found else None


def _tensors(text: str | None) -> list[dict]:
    if not text:
        return []
    return [{"name": name.strip(), "shape": [int(v) for v in shape.split(",") if v.strip()],
             "fixpos": int(fixpos), "elements": int(n)} for name, shape, fixpos, n in _RE_TENSOR.findall(text)]


def parse_subgraph_tree(text: str) -> list[dict]:
    """The device subgraphs (the root's children) of an ``xir subgraph`` tree, in order.

    Each: ``name``, ``device`` (DPU/CPU/USER or None), ``fingerprint``, ``dpu`` (the DPU
    name), ``inputs`` / ``outputs`` (``name``, ``shape`` NHWC, ``fixpos``, ``elements``),
    ``children`` (the names of its own sub-subgraphs).
    """
    rows = [(len(m.group(1)), m.group(2), m.group(3)) for m in map(_RE_TREE.match, text.splitlines()) if m]
    roots = [i for i, (_, name, _) in enumerate(rows) if name == "root"]
    if not roots:
        return []
    root_indent = rows[roots[-1]][0]
    rows = rows[roots[-1] + 1:]  # the last tree in the text
    deeper = [indent for indent, _, _ in rows if indent > root_indent]
    if not deeper:
        return []
    child_indent = min(deeper)
    out: list[dict] = []
    for indent, name, attrs in rows:
        if indent <= root_indent:
            break
        if indent > child_indent:
            if out:
                out[-1]["children"].append(name)
            continue
        attrs = attrs or ""

        def attr(key: str, attrs: str = attrs) -> str | None:
            m = re.search(rf"(?:^|,){key}=([^,\[\]]+)", attrs)
            return m.group(1).strip() if m else None

        ins = re.search(r"(?:^|,)I=\[([^\]]*)\]", attrs)
        outs = re.search(r"(?:^|,)O=\[([^\]]*)\]", attrs)
        out.append({"name": name, "device": attr("device"), "fingerprint": attr("fingerprint"), "dpu": attr("DPU"),
                    "inputs": _tensors(ins.group(1) if ins else None),
                    "outputs": _tensors(outs.group(1) if outs else None), "children": []})
    return out


def parse_compile_log(text: str) -> dict:
    """The summary of a vai_c_xir log (optionally followed by an ``xir subgraph`` tree), JSON-able.

    Keys: ``target``, ``compile_mode``, ``graph``, ``op_num``, ``counts`` (``{"DPU": m, ...}``
    from the ``Total device subgraph number`` lines; the last one of each kind wins, as a log
    may hold several compiles), ``device_subgraphs``, ``dpu_subgraphs``, ``cpu_subgraphs``
    (from the counts, else from the tree, else None), ``compile_done``, ``meta_json``,
    ``compiled_xmodel``, ``md5sum``, ``md5sum_file``, ``log_dir``, ``cpu_ops`` (ops the
    compiler assigned to the CPU: ``name``, ``type``, ``reason``), ``subgraphs`` (the tree,
    :func:`parse_subgraph_tree`), ``kernels`` (names of the DPU subgraphs), ``inputs`` /
    ``outputs`` (tensors of the DPU subgraphs, each with its ``kernel``).
    """
    graph = _last(_RE_GRAPH, text)
    counts: dict[str, int] = {}
    total = None
    for n_total, kind, n in _RE_COUNT.findall(text):
        counts[kind.upper()] = int(n)
        total = int(n_total)
    md5 = _last(_RE_MD5, text)
    cpu_ops: list[dict] = []
    seen = set()
    for name, typ, reason in _RE_CPU_OP.findall(text):
        if name.strip() not in seen:
            seen.add(name.strip())
            cpu_ops.append({"name": name.strip(), "type": typ.strip(), "reason": reason.strip() or None})
    subgraphs = parse_subgraph_tree(text)
    tree_counts: dict[str, int] = {}
    for sg in subgraphs:
        key = (sg["device"] or "UNKNOWN").upper()
        tree_counts[key] = tree_counts.get(key, 0) + 1
    dpu = [sg for sg in subgraphs if (sg["device"] or "").upper() == "DPU"]

    def count(kind: str) -> int | None:
        if kind in counts:
            return counts[kind]
        return tree_counts.get(kind, 0) if subgraphs else None

    return {
        "target": _last(_RE_TARGET, text),
        "compile_mode": _last(_RE_MODE, text),
        "graph": graph[0] if graph else None,
        "op_num": int(graph[1]) if graph else None,
        "counts": counts,
        "device_subgraphs": total if total is not None else (len(subgraphs) if subgraphs else None),
        "dpu_subgraphs": count("DPU"),
        "cpu_subgraphs": count("CPU"),
        "compile_done": "Compile done." in text,
        "meta_json": _last(_RE_META, text),
        "compiled_xmodel": _last(_RE_XMODEL, text),
        "md5sum": md5[0].lower() if md5 else None,
        "md5sum_file": md5[1] if md5 else None,
        "log_dir": _last(_RE_LOGDIR, text),
        "cpu_ops": cpu_ops,
        "subgraphs": subgraphs,
        "tree_counts": tree_counts,
        "kernels": [sg["name"] for sg in dpu],
        "inputs": [dict(t, kernel=sg["name"]) for sg in dpu for t in sg["inputs"]],
        "outputs": [dict(t, kernel=sg["name"]) for sg in dpu for t in sg["outputs"]],
    }


# -- the compile ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompileResult:
    out_dir: Path
    xmodel: Path  #: the compiled ``<net_name>.xmodel``
    log: Path
    tree: Path | None  #: ``xir subgraph`` output, when the toolchain has ``xir``
    report: Path  #: ``compile.json``
    md5: str
    summary: dict

    @property
    def dpu_subgraphs(self) -> int | None:
        return self.summary["dpu_subgraphs"]




def _run(run: Runner, argv: list[str], timeout: float | None) -> subprocess.CompletedProcess:
    try:
        return run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False, timeout=timeout)
    except FileNotFoundError as exc:
        raise ToolchainMissing(f"cannot run {argv[0]}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise CompileError(f"{argv[0]} timed out after {timeout} s") from None


def compile_network(xmodel, arch_json, out_dir, net_name: str, *, toolchain: Toolchain | None = None,
                    run: Runner = subprocess.run, require_single_dpu: bool = True,
                    timeout: float | None = 1800) -> CompileResult:
    """Compile ``xmodel`` (vai_q_pytorch's ``*_int.xmodel``) into ``out_dir/<net_name>.xmodel``.

    Raises :class:`ToolchainMissing` (no tool), :class:`CompileError` (the compiler failed,
    an output is missing, ``md5sum.txt`` disagrees with the xmodel, the log has no subgraph
    count) and, when ``require_single_dpu``, :class:`SubgraphCountError` for any DPU
    subgraph count other than one. ``compile.json`` is written before the last two checks.
    """
    xmodel, arch_json, out = Path(xmodel), Path(arch_json), Path(out_dir)
    if not _NET_NAME.match(net_name):
        raise CompileError(f"net name {net_name!r}: letters, digits, '_', '.', '-' only")
    if not xmodel.is_file():
        raise CompileError(f"{xmodel}: no such quantized xmodel")
    arch_doc = read_arch_json(arch_json)
    tc = toolchain or find_toolchain()
    if tc is None:
        raise ToolchainMissing(f"{VAI_C_XIR} not found: run inside the Vitis AI docker, or set {DOCKER_ENV} to a "
                               "Vitis AI 2.5 image (xilinx/vitis-ai-cpu:2.5) with docker on PATH")
    out.mkdir(parents=True, exist_ok=True)

    argv = compile_argv(tc, xmodel, arch_json, out, net_name)
    proc = _run(run, argv, timeout)
    log = out / LOG_NAME
    log.write_text(proc.stdout or "")
    if proc.returncode != 0:
        raise CompileError(f"{net_name}: {VAI_C_XIR} exited with status {proc.returncode}; see {log}")
    compiled = out / f"{net_name}.xmodel"
    for needed in (compiled, out / MD5_NAME, out / META_NAME):
        if not needed.is_file():
            raise CompileError(f"{net_name}: {VAI_C_XIR} wrote no {needed.name} in {out}; see {log}")

    tree_path, tree_text, tree_note = None, "", None
    sub_argv = subgraph_argv(tc, compiled)
    if sub_argv is None:
        tree_note = f"no '{XIR}' on PATH: subgraph tree not recorded"
    else:
        sub = _run(run, sub_argv, timeout)
        if sub.returncode == 0:
            tree_path, tree_text = out / TREE_NAME, sub.stdout or ""
            tree_path.write_text(tree_text)
        else:
            tree_note = f"'{XIR} subgraph' exited with status {sub.returncode}"

    summary = parse_compile_log((proc.stdout or "") + "\n" + tree_text)
    md5 = file_digest(compiled, "md5")
    recorded = re.findall(r"[0-9a-fA-F]{32}", (out / MD5_NAME).read_text())
    try:
        meta = json.loads((out / META_NAME).read_text())
    except json.JSONDecodeError as exc:
        raise CompileError(f"{net_name}: {out / META_NAME} is not JSON ({exc.msg})") from None
    report = {
        "net_name": net_name,
        "input_xmodel": {"path": str(xmodel), "md5": file_digest(xmodel, "md5"), "bytes": xmodel.stat().st_size},
        "arch_json": {"path": str(arch_json), "content": arch_doc},
        "toolchain": tc.to_dict(),
        "command": argv,
        "summary": summary,
        "tree_note": tree_note,
        "outputs": {
            "xmodel": {"path": str(compiled), "md5": md5, "bytes": compiled.stat().st_size},
            "md5sum_txt": {"path": str(out / MD5_NAME), "md5": recorded[0].lower() if recorded else None,
                           "matches": bool(recorded) and recorded[0].lower() == md5},
            "meta_json": {"path": str(out / META_NAME), "content": meta},
            "log": str(log),
            "tree": str(tree_path) if tree_path else None,
        },
    }
    report_path = out / REPORT_NAME
    report_path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    if not report["outputs"]["md5sum_txt"]["matches"]:
        raise CompileError(f"{net_name}: {MD5_NAME} ({report['outputs']['md5sum_txt']['md5']}) is not the md5 of "
                           f"{compiled.name} ({md5})")
    if summary["dpu_subgraphs"] is None:
        raise CompileError(f"{net_name}: no 'DPU subgraph number' in the compiler log {log}")
    if summary["subgraphs"] and "DPU" in summary["counts"] and \
            summary["tree_counts"].get("DPU", 0) != summary["counts"]["DPU"]:
        raise CompileError(f"{net_name}: the log says {summary['counts']['DPU']} DPU subgraph(s), the xir tree "
                           f"{summary['tree_counts'].get('DPU', 0)}")
    if require_single_dpu and summary["dpu_subgraphs"] != 1:
        cpu = summary["cpu_subgraphs"]
        raise SubgraphCountError(
            f"{net_name}: {summary['dpu_subgraphs']} DPU subgraph(s)"
            + (f" and {cpu} CPU subgraph(s)" if cpu is not None else "")
            + f", but DPU-PYNQ loads exactly one; CPU ops: {len(summary['cpu_ops'])}; see {report_path}")
    return CompileResult(out_dir=out, xmodel=compiled, log=log, tree=tree_path, report=report_path, md5=md5,
                         summary=summary)
