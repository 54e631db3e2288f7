"""The board-side stages: runtime, deploy, validate (registered in ``pipelines.stages``).

runtime   renders the board application (``board/runtime.py``: templates for the data, the
          hand-written numpy-only code copied) from the compile stage's packages (and xmodels,
          when the Vitis AI compiler made them) into ``runtime/app/``.
deploy    uploads ``runtime/app/`` to BOARD (``board/deploy.py``: releases/<hash>, sha256 of every
          file checked on the board, the app's selftest as smoke test, then ``current`` switched);
          ``BOARD=sim`` starts the virtual board first (``board/sim.py``: sshd on 127.0.0.1).
validate  uploads the validation images, runs ``app.py validate`` on the board (the DPU through
          VART on a real board, the integer emulator on the virtual one), fetches metrics.json, runs
          the same app here on the emulator, and compares (``board/validate.py``): identical
          bitstreams (sha256) and decoded pixels, and the quality thresholds of board/thresholds.json.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from pipelines.stages import Context, StageError, board_arch, data_dir, stage, write_json

APP = "app"  # the runtime's folder inside the stage directory (what is deployed)


def _board_names(cfg) -> list[str]:
    from board.inventory import board_names

    return board_names(cfg.board)


def _ensure_sim(name: str) -> None:
    """Start the virtual board when ``name`` is one (idempotent)."""
    from board import inventory, sim

    if name != "sim":
        return
    if not sim.is_available():
        raise StageError("BOARD=sim needs OpenSSH's sshd (apt-get install openssh-server)")
    d = inventory.sim_dir(name)
    fresh = not (d / sim.BOARD_PYTHON / ".installed").exists()
    sim.ensure_board_python(d)
    if fresh:  # restart so that sshd's PATH has the board python
        sim.down(d)
    info = sim.up(d)
    print(f"virtual board: sshd on {info.host}:{info.port} ({inventory.sim_dir(name)})")


@stage("runtime")
def run_runtime(ctx: Context) -> dict:
    from arch import load_arch
    from board.runtime import render_runtime

    cfg = ctx.cfg
    arch = load_arch(str(board_arch(cfg.board)))
    compiled = json.loads(ctx.need("compile", "report.json").read_text())
    pkgs = {q: ctx.need("compile", f"q{q}.int8.npz") for q in cfg.qualities}
    xmodels = None
    if compiled.get("xmodel"):  # pragma: no cover - only after a real vai_c_xir run
        xmodels = {q: {n: Path(p) for n, p in compiled["qualities"][f"q{q}"]["xmodels"].items() if n != "h_s"}
                   for q in cfg.qualities}
    rendered = render_runtime(pkgs, ctx.dir / APP, arch, cfg.model, xmodels)
    print(f"runtime: {len(rendered.files)} files in {ctx.dir / APP} (runner preferred: "
          f"{rendered.manifest['runner']['prefer'] if 'runner' in rendered.manifest else '?'}); "
          f"smoke test: {rendered.smoke_test}")
    return {"model": cfg.model, "dir": str(ctx.dir / APP), "files": list(rendered.files),
            "smoke_test": rendered.smoke_test, "manifest": rendered.manifest}


@stage("deploy")
def run_deploy(ctx: Context) -> dict:
    from board.deploy import deploy

    cfg = ctx.cfg
    rt = json.loads(ctx.need("runtime", "report.json").read_text())
    app_dir = Path(rt["dir"])
    results = {}
    for name in _board_names(cfg):
        _ensure_sim(name)
        try:
            r = deploy(name, app_dir, rt["smoke_test"])
        except Exception as exc:  # noqa: BLE001 - one board's failure is that board's result
            if len(_board_names(cfg)) == 1:
                raise
            results[name] = {"ok": False, "error": str(exc)}
            continue
        print(f"deploy {name}: {r.summary()}")
        results[name] = {"ok": True, "release": r.release, "path": r.path, "files": r.files, "bytes": r.bytes,
                         "uploaded": r.uploaded, "previous": r.previous, "switched": r.switched,
                         "smoke_output": r.smoke_output.strip().splitlines()[-3:]}
    if not all(v["ok"] for v in results.values()):
        bad = [k for k, v in results.items() if not v["ok"]]
        raise StageError(f"deploy failed on {', '.join(bad)}: " + "; ".join(results[b]["error"] for b in bad))
    return {"model": cfg.model, "boards": results}


def validation_images(cfg, dest: Path) -> list[Path]:
    """The held-out images of the data set (models/data.VALIDATION) or, for the bundled samples, all of
    them; at most ``cfg.validate_limit``. Copied (as links when possible) into ``dest``."""
    import os
    import shutil

    from models.data import VALIDATION
    from pipelines.paths import dicom_inputs

    root = data_dir(cfg)
    files = dicom_inputs([root])
    held = [f for f in files if any(v in f.as_posix() for v in VALIDATION)]
    chosen = held or files
    if cfg.validate_limit:
        chosen = chosen[: cfg.validate_limit]
    if not chosen:
        raise StageError(f"{root}: no validation images")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    out = []
    for i, f in enumerate(chosen):
        target = dest / f"{i:03d}_{f.name}"
        try:
            os.link(f, target)
        except OSError:
            shutil.copyfile(f, target)
        out.append(target)
    return out


def _upload_images(board: str, images: list[Path], remote_rel: str) -> None:
    from board.deploy import connect

    with connect(board) as s:
        remote = s.path(remote_rel)
        s.sh(f"rm -rf {shlex.quote(remote)} && mkdir -p {shlex.quote(remote)}", "preparing the image folder")
        for f in images:
            with s.errors(f"uploading {f.name}"):
                s.sftp.put(str(f), f"{remote}/{f.name}")


@stage("validate")
def run_validate(ctx: Context) -> dict:
    from board import validate
    from board.deploy import fetch, run

    cfg = ctx.cfg
    rt = json.loads(ctx.need("runtime", "report.json").read_text())
    ctx.need("deploy", "report.json")
    app_dir = Path(rt["dir"])
    images = validation_images(cfg, ctx.dir / "images")
    quals = " ".join(f"--quality {q}" for q in cfg.qualities)
    # the host's emulator: the same app, here
    host_json = ctx.dir / "host_metrics.json"
    cmd = [sys.executable, "-B", str(app_dir / "app.py"), "validate", str(ctx.dir / "images"), "--out", str(host_json),
           "--force", "--runner", "emulator", *quals.split()]
    print(f"validate: {len(images)} images x {len(cfg.qualities)} qualities on the host emulator ...", flush=True)
    host = subprocess.run(cmd, capture_output=True, text=True)
    if host.returncode != 0:
        raise StageError(f"host emulator run failed: {(host.stderr or host.stdout).strip().splitlines()[-1:]}")
    reports = {}
    for name in _board_names(cfg):
        _ensure_sim(name)
        _upload_images(name, images, "validate/images")
        print(f"validate: the same on board {name} ...", flush=True)
        # paths from the board's remote directory (`current` is a symlink: no `..` through it)
        res = run(name, f"{{python}} -B current/app.py validate validate/images --out validate/metrics.json "
                        f"--force {quals}", check=False, timeout=3600)
        if res.exited != 0:
            raise StageError(f"board {name}: app.py validate failed: {res.last_line()}")
        board_json = ctx.dir / f"board_metrics.{name}.json"
        fetch(name, "validate/metrics.json", board_json, force=True)
        out_dir = ctx.dir / name
        rep = validate.run(host_json, board_json, out_dir)
        reports[name] = rep
        ok = rep["ok"]
        print(f"validate {name}: {'PASS' if ok else 'FAIL'}; report {out_dir}")
    latency = _latency_table(ctx, reports)
    failed = [n for n, r in reports.items() if not r["ok"]]
    if failed:
        raise StageError(f"validation failed on {', '.join(failed)} (see {ctx.dir})")
    return {"model": cfg.model, "images": [p.name for p in images], "boards": reports, "latency": latency}


TILES_PER_SLICE = 4  # a 512 x 512 slice is 2 x 2 tiles of 256


def _latency_table(ctx: Context, reports: dict) -> dict:
    """Per quality and network, per 512 x 512 slice: the compile stage's roofline estimate for the DPU and
    the times measured here (the host emulator) and on each board (its runner), from the metrics."""
    compiled = json.loads(ctx.need("compile", "report.json").read_text())
    table: dict = {}
    lines = [f"  {'net':4s} {'DPU estimate (roofline)':>24s} " + " ".join(f"{'measured ' + k:>22s}"
                                                                      for k in ["host emulator", *reports])]
    for qk, comp in compiled["qualities"].items():
        q = qk[1:]
        table[qk] = {}
        for net, ms in comp["roofline_ms"].items():
            row = {"dpu_estimate_ms": ms * TILES_PER_SLICE}
            for board, rep in reports.items():
                lat = rep.get("latency", {}).get(q, {})
                host = lat.get("host", {}).get("network_ms_per_tile", {}).get(net)
                on_board = lat.get("board", {}).get("network_ms_per_tile", {}).get(net)
                row["host_emulator_ms"] = None if host is None else host * TILES_PER_SLICE
                row[f"{board}_ms"] = None if on_board is None else on_board * TILES_PER_SLICE
            table[qk][net] = row

            def f(v):
                return f"{v:22.1f}" if v is not None else f"{'(runs on the CPU side)':>22s}"

            lines.append(f"  {net:4s} {row['dpu_estimate_ms']:24.2f} " + " ".join(
                f(row.get(k)) for k in ["host_emulator_ms", *[f"{b}_ms" for b in reports]]))
        print(f"latency per 512x512 slice, {qk} (ms):")
        print("\n".join(lines))
        lines = lines[:1]
    write_json(ctx.dir / "latency.json", table)
    return table
