"""Render a self-contained board runtime: generated data beside hand-written, copied logic.

::

    render_runtime({1: "q1.int8.npz", 2: ...}, "build/ultra96/dpu-hyperprior/runtime", arch,
                   "dpu-hyperprior", xmodels={1: {"g_a": ..., "h_a": ..., "g_s": ...}, ...})

Only the DATA is generated, from ``templates/*.j2`` (jinja2, ``StrictUndefined``: an unfilled
placeholder is an error), and it is deterministic (sorted keys, no times, no host paths), so
it is golden-tested:

- ``runtime_manifest.json``: per quality the package (path, sha256, N, M) and per network the
  input and output tensor (NCHW ``shape``, NHWC ``dims`` as the xmodel must have them, the
  package's ``fix_point``, the tensor ``name`` when known), the xmodel (path, sha256) when
  there is one; the tile, the model hash, the arch (name, fingerprint, target, VART version,
  sha256 of the arch file), the runner to prefer, the DPU overlay, the smoke-test command, and
  the self-test image with the hashes the host emulator produced for it;
- ``README.md``: what the folder is and how to run it.

The LOGIC is copied unchanged: ``codec/*.py``, ``board/app.py``, ``board/vart_runner.py``, and
``board/launcher.py`` as ``app.py``; the packages go to ``packages/``, the xmodels (when given)
to ``xmodels/q<Q>/<net>.xmodel``. ``build_manifest.json`` holds what is not deterministic (the
time, the renderer's Python) and every file's sha256; golden tests leave it out.

The folder is rendered beside ``out_dir`` and swapped in at the end; an existing ``out_dir``
is replaced only when it is empty or an earlier runtime (it has a ``runtime_manifest.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import jinja2

from board import app
from codec.dpunets import DPU_NETWORKS, EmulatorRunner, RunnerNetworks
from codec.errors import MedcodecError
from codec.fileio import sha256_file
from codec.fixednet import FixedNet
from codec.package import CodecPackage, load_package

__all__ = ["RENDERED", "RenderedRuntime", "RuntimeRenderError", "net_shapes", "render_runtime"]

BOARD_DIR = Path(__file__).resolve().parent
REPO = BOARD_DIR.parent
TEMPLATE_DIR = BOARD_DIR / "templates"
#: rendered file -> template; these are the golden-tested files
RENDERED = {app.MANIFEST_NAME: "runtime_manifest.json.j2", "README.md": "README.md.j2"}
BUILD_MANIFEST = "build_manifest.json"
#: DPU-PYNQ's overlay name: ``DpuOverlay("dpu.bit")`` finds the board's bitstream in its package
OVERLAY = "dpu.bit"
#: board/deploy.py puts the board's python for {python}; -B: no __pycache__ inside the verified release
SMOKE_TEST = "{python} -B app.py selftest"
#: the self-test image (rows, cols, bits): not a multiple of the tile, so padding is exercised
SELFTEST_IMAGE = (96, 112, 12)
_BOARD_INIT = '"""medcodec board runtime code, copied from the medcodec repository by board/runtime.py."""\n'


class RuntimeRenderError(MedcodecError):
    """Inputs a runtime cannot be rendered from (package, xmodel, output folder)."""


@dataclass(frozen=True)
class RenderedRuntime:
    out_dir: Path
    manifest: dict
    smoke_test: str
    files: tuple[str, ...]


# ------------------------------------------------------------------------------------------ data


def net_shapes(net: FixedNet, in_chw: tuple[int, int, int]) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(input, output) (C, H, W) of a FixedNet, from its layers' geometry (no computation)."""
    c, h, w = in_chw
    for i, layer in enumerate(net.layers):
        k_i, k_o = (1, 0) if layer.op == "conv" else (0, 1)
        if layer.weight.shape[k_i] != c:
            raise RuntimeRenderError(f"layer {i} takes {layer.weight.shape[k_i]} channels, gets {c}")
        kh, kw = layer.weight.shape[2:]
        s, p = layer.stride, layer.padding
        if layer.op == "conv":
            h, w = (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1
        else:
            h = (h - 1) * s - 2 * p + kh + layer.output_padding
            w = (w - 1) * s - 2 * p + kw + layer.output_padding
        c = int(layer.weight.shape[k_o])
    return tuple(int(v) for v in in_chw), (int(c), int(h), int(w))


def _tensor(chw, fix_point: int, name: str | None) -> dict:
    c, h, w = chw
    return {"dims": [1, h, w, c], "fix_point": int(fix_point), "name": name, "shape": [1, c, h, w]}


def network_entries(pkg: CodecPackage, names: dict | None = None) -> dict[str, dict]:
    """Per network its input and output tensor as the xmodel must have them (batch 1)."""
    t, m = pkg.tile, int(pkg.meta["M"])
    names = names or {}
    where = f"{pkg.name} q{pkg.quality}"
    want_in = {"g_a": (1, t, t), "g_s": (m, t // 16, t // 16)}
    out, shapes = {}, {}
    for net in DPU_NETWORKS:
        fn = pkg.nets[net]
        in_chw = shapes["g_a"][1] if net == "h_a" else want_in[net]
        try:
            shapes[net] = net_shapes(fn, in_chw)
        except RuntimeRenderError as exc:
            raise RuntimeRenderError(f"{where} {net}: {exc}") from None
        fix = pkg.meta.get("fix", {}).get(net)
        if fix is not None and (fix["in"], fix["out"]) != (fn.fp_in, fn.fp_out):
            raise RuntimeRenderError(f"{where} {net}: meta fix {fix} differs from the network's "
                                     f"({fn.fp_in}, {fn.fp_out})")
        n = names.get(net, {})
        out[net] = {"input": _tensor(shapes[net][0], fn.fp_in, n.get("input")),
                    "output": _tensor(shapes[net][1], fn.fp_out, n.get("output"))}
    if shapes["g_a"][1] != (m, t // 16, t // 16) or shapes["g_s"][1] != (1, t, t):
        raise RuntimeRenderError(f"{where}: g_a gives {shapes['g_a'][1]} and g_s {shapes['g_s'][1]}; "
                                 f"the codec needs ({m}, {t // 16}, {t // 16}) and (1, {t}, {t})")
    return out




def _canonical_sha256(doc) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _json_default(o):
    if isinstance(o, jinja2.Undefined):
        str(o)  # a StrictUndefined raises UndefinedError, naming the missing variable
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _json(value) -> str:
    """The ``json`` filter: sorted keys; an undefined value anywhere inside is an UndefinedError."""
    return json.dumps(value, sort_keys=True, default=_json_default)


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    env.filters["json"] = _json
    return env


def render_file(name: str, context: dict) -> str:
    """One rendered file's text (``RENDERED[name]``'s template with ``context``)."""
    template = RENDERED[name]
    return _env().get_template(template).render(template=f"board/templates/{template}", **context)


def _selftest_expect(pkg: CodecPackage) -> dict:
    rows, cols, bits = SELFTEST_IMAGE
    rt = app.synthetic_round_trip(RunnerNetworks(EmulatorRunner(pkg.nets)), pkg, rows, cols, bits)
    return {"bitstream_sha256": hashlib.sha256(rt.data).hexdigest(), "bytes": len(rt.data),
            "decoded_sha256": app.pixels_sha256(rt.pixels)}


# ------------------------------------------------------------------------------------------ checks


def _qualities(pkg_paths: dict) -> list[int]:
    if not pkg_paths:
        raise RuntimeRenderError("no int8 packages to render a runtime from")
    try:
        return sorted(int(q) for q in pkg_paths)
    except (TypeError, ValueError):
        raise RuntimeRenderError(f"package qualities must be integers, got {sorted(map(str, pkg_paths))}") from None


def _check_package(pkg: CodecPackage, path: Path, model_name: str, quality: int) -> None:
    if pkg.backend != "int8":
        raise RuntimeRenderError(f"{path}: a {pkg.backend} package; the board runtime needs int8 packages")
    if pkg.name != model_name or pkg.quality != quality:
        raise RuntimeRenderError(f"{path}: holds {pkg.name} q{pkg.quality}, expected {model_name} q{quality}")
    missing = [n for n in DPU_NETWORKS if n not in pkg.nets]
    if missing:
        raise RuntimeRenderError(f"{path}: int8 package lacks network(s) {missing}")


def _xmodel_table(xmodels: dict | None, qualities: list[int]) -> dict[int, dict[str, Path]]:
    out: dict[int, dict[str, Path]] = {}
    for q, nets in (xmodels or {}).items():
        q = int(q)
        if q not in qualities:
            raise RuntimeRenderError(f"xmodels given for quality {q}, which has no package")
        if not isinstance(nets, dict) or sorted(nets) != sorted(DPU_NETWORKS):
            got = sorted(nets) if isinstance(nets, dict) else nets
            raise RuntimeRenderError(f"q{q}: xmodels for {got}; need exactly {list(DPU_NETWORKS)}")
        for net, path in nets.items():
            if not Path(path).is_file():
                raise RuntimeRenderError(f"{path}: q{q} {net} xmodel missing")
        out[q] = {n: Path(p) for n, p in nets.items()}
    return out


def _prepare_out(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise RuntimeRenderError(f"{out_dir}: exists and is not a folder")
        if any(out_dir.iterdir()) and not (out_dir / app.MANIFEST_NAME).is_file():
            raise RuntimeRenderError(f"{out_dir}: not empty and not a rendered runtime; refusing to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)


# ------------------------------------------------------------------------------------------ render


def _copy_code(tmp: Path) -> None:
    (tmp / "codec").mkdir()
    for src in sorted((REPO / "codec").glob("*.py")):
        shutil.copy2(src, tmp / "codec" / src.name)
    (tmp / "board").mkdir()
    (tmp / "board" / "__init__.py").write_text(_BOARD_INIT)
    for name in ("app.py", "vart_runner.py"):
        shutil.copy2(BOARD_DIR / name, tmp / "board" / name)
    shutil.copy2(BOARD_DIR / "launcher.py", tmp / "app.py")


def render_runtime(pkg_paths: dict, out_dir, arch: dict, model_name: str, xmodels: dict | None = None, *,
                   tensor_names: dict | None = None) -> RenderedRuntime:
    """Render the board runtime for ``model_name``'s int8 packages (quality -> path) into ``out_dir``.

    ``xmodels``: quality -> {"g_a", "h_a", "g_s"} -> compiled .xmodel (all three, or the quality
    is left out); ``tensor_names``: quality -> network -> {"input", "output"} names, when the
    compile stage knows them (the VART runner then checks them too).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    qualities = _qualities(pkg_paths)
    xm = _xmodel_table(xmodels, qualities)
    _prepare_out(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _copy_code(tmp)
        (tmp / "packages").mkdir()
        entries, tiles, expect = [], set(), {}
        package_hashes, xmodel_hashes = {}, {}
        for q in qualities:
            src = Path(pkg_paths[q] if q in pkg_paths else pkg_paths[str(q)])
            rel = f"packages/{model_name}-q{q}.int8.npz"
            if not src.is_file():
                raise RuntimeRenderError(f"{src}: q{q} package missing")
            shutil.copy2(src, tmp / rel)
            pkg = load_package(tmp / rel)
            _check_package(pkg, src, model_name, q)
            tiles.add(pkg.tile)
            nets = network_entries(pkg, (tensor_names or {}).get(q) or (tensor_names or {}).get(str(q)))
            networks = []
            for net in DPU_NETWORKS:
                xrel, xsha = None, None
                if q in xm:
                    xrel = f"xmodels/q{q}/{net}.xmodel"
                    (tmp / xrel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(xm[q][net], tmp / xrel)
                    xsha = sha256_file(tmp / xrel)
                    xmodel_hashes.setdefault(str(q), {})[net] = xsha
                networks.append({"name": net, **nets[net], "xmodel": xrel, "xmodel_sha256": xsha})
            package_hashes[str(q)] = pkg.sha256
            entries.append({"quality": q, "N": int(pkg.meta["N"]), "M": int(pkg.meta["M"]), "networks": networks,
                            "package": rel, "package_sha256": pkg.sha256, "has_xmodels": q in xm})
            expect[str(q)] = _selftest_expect(pkg)
        if len(tiles) != 1:
            raise RuntimeRenderError(f"the packages have different tile sizes {sorted(tiles)}")
        rows, cols, bits = SELFTEST_IMAGE
        dpu = arch["dpu"]
        context = {
            "schema": app.MANIFEST_SCHEMA, "model": model_name, "tile": tiles.pop(), "qualities": entries,
            "model_hash": _canonical_sha256({"model": model_name, "packages": package_hashes,
                                             "xmodels": xmodel_hashes}),
            "arch": {"name": arch["name"], "fingerprint": dpu["fingerprint"], "target_name": dpu["target_name"],
                     "vart_version": arch["runtime"]["vart_version"], "sha256": _canonical_sha256(arch)},
            "prefer": "vart" if len(xm) == len(qualities) else "emulator", "overlay": OVERLAY,
            "smoke_test": SMOKE_TEST,
            "selftest": {"quality": qualities[0], "rows": rows, "cols": cols, "bits": bits, "expect": expect},
        }
        manifest = None
        for name in RENDERED:
            text = render_file(name, context)
            (tmp / name).write_text(text)
            if name == app.MANIFEST_NAME:
                try:
                    manifest = json.loads(text)
                except json.JSONDecodeError as exc:  # a template bug, not a user error
                    raise AssertionError(f"{name} renders to invalid JSON: {exc}") from None
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        build = {"rendered_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "render_s": round(time.perf_counter() - t0, 3), "python": platform.python_version(),
                 "files": {f: sha256_file(tmp / f) for f in files}}
        (tmp / BUILD_MANIFEST).write_text(json.dumps(build, indent=1, sort_keys=True) + "\n")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return RenderedRuntime(out_dir=out_dir, manifest=manifest, smoke_test=SMOKE_TEST,
                           files=tuple(sorted([*files, BUILD_MANIFEST])))
