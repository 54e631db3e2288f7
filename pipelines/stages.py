"""The build stages after training, as data: rewrite -> calibrate -> quantize -> compile -> runtime
-> deploy -> validate.

Each stage is one function ``run_<stage>(cfg, ctx) -> report`` that reads only its declared
inputs and writes only into ``build/<board>/<model>/<stage>/``, where :func:`run_stage` also
writes ``manifest.json`` (input hashes, the config, tool versions, the arch fingerprint, wall
time) and ``report.json`` (what the stage measured)::

    medcodec stage rewrite   --board ultra96 --model dpu-hyperprior     (make rewrite)
    medcodec stage calibrate ...                                        (make calibrate)
    medcodec stage quantize  ...                                        (make quantize)

A stage whose inputs are missing says which stage makes them (one line, exit 1).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from codec.errors import MedcodecError
from codec.fileio import atomic_write, sha256_file

__all__ = ["STAGES", "StageConfig", "StageError", "run_stage", "stage_dir"]

ROOT = Path(__file__).resolve().parents[1]


class StageError(MedcodecError):
    """A stage that cannot run (missing input, bad config)."""


@dataclass(frozen=True)
class StageConfig:
    """One build of the pipeline (``make <stage> BOARD=.. MODEL=..``)."""

    board: str = "ultra96"
    """Board name in ``boards/boards.toml`` (its arch file decides the DPU)."""
    model: str = "dpu-hyperprior"
    """Registry / zoo name of the trained codec."""
    qualities: tuple[int, ...] = (1, 2, 3, 4)
    """Zoo qualities to build."""
    data: str | None = None
    """Calibration / validation images; None = ``../shared/data`` when present, else ``samples/``."""
    out: str = "build"
    """Build root: stages write ``<out>/<board>/<model>/<stage>/``."""
    calib_tiles: int = 32
    """Calibration tiles (256 x 256, seeded crops of the training split)."""
    quantizer: str = "auto"
    """``nndct`` (Vitis AI, when importable), ``builtin`` (ours), or ``auto`` (nndct if importable)."""
    qat_steps: int = 0
    """Quantize: quantization-aware fine-tuning steps per quality (0 = post-training int8 only; the committed
    packages used 600, on the training images of ``../shared/data``)."""
    tile: int = 256
    """The fixed tile side every network is compiled for."""
    validate_limit: int = 0
    """Validate at most this many images (0 = all of the validation images)."""
    smoke_only: bool = False
    """Deploy: upload and smoke-test only."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def stage_dir(cfg: StageConfig, stage: str) -> Path:
    return Path(cfg.out) / cfg.board / cfg.model / stage


def data_dir(cfg: StageConfig) -> Path:
    if cfg.data:
        p = Path(cfg.data)
        if not p.is_dir():
            raise StageError(f"{p}: data directory not found")
        return p
    shared = ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else ROOT / "samples"


def board_arch(board: str) -> Path:
    """The arch file of an inventory board (first of a fleet); needs no host or key."""
    from board.inventory import arch_of

    return arch_of(board)




def _tool_versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "torch", "constriction", "onnx", "onnxruntime", "fabric"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional tool is recorded as such
            out[mod] = None
    try:
        import pytorch_nndct  # noqa: F401

        out["pytorch_nndct"] = getattr(pytorch_nndct, "__version__", "present")
    except ImportError:
        out["pytorch_nndct"] = None
    import shutil

    out["vai_c_xir"] = shutil.which("vai_c_xir")
    return out


@dataclass
class Context:
    """What a stage function gets besides the config: its directory and a record of its inputs."""

    cfg: StageConfig
    dir: Path
    inputs: dict[str, str] = dataclasses.field(default_factory=dict)

    def input(self, path: Path, label: str | None = None) -> Path:
        path = Path(path)
        if not path.is_file():
            raise StageError(f"{path}: missing")
        self.inputs[label or str(path)] = sha256_file(path)
        return path

    def need(self, stage: str, name: str) -> Path:
        """A file of an earlier stage, recorded as an input; a clear error if that stage has not run."""
        p = stage_dir(self.cfg, stage) / name
        if not p.is_file():
            raise StageError(f"{p} missing: run `make {stage} BOARD={self.cfg.board} MODEL={self.cfg.model}` first")
        return self.input(p, f"{stage}/{name}")


StageFn = Callable[[Context], dict]
STAGES: dict[str, StageFn] = {}


def stage(name: str):
    def deco(fn: StageFn) -> StageFn:
        if name in STAGES:
            raise KeyError(f"stage {name!r} registered twice")
        STAGES[name] = fn
        return fn

    return deco


def write_json(path: Path, obj) -> Path:
    return atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode(), force=True)


def run_stage(name: str, cfg: StageConfig) -> dict:
    """Run one stage; write its manifest.json and report.json; return the report."""
    if name not in STAGES:
        raise StageError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    from arch import load_arch

    arch = load_arch(str(board_arch(cfg.board)))
    d = stage_dir(cfg, name)
    d.mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg=cfg, dir=d)
    t0 = time.perf_counter()
    report = STAGES[name](ctx)
    wall = time.perf_counter() - t0
    write_json(d / "report.json", report)
    write_json(d / "manifest.json", {
        "stage": name, "config": cfg.to_dict(), "inputs": ctx.inputs, "tools": _tool_versions(),
        "arch": {"name": arch.get("name"), "fingerprint": arch["dpu"]["fingerprint"],
                 "target": arch["dpu"].get("target_name")},
        "wall_s": round(wall, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    return report


# the stage functions live in pipelines/stage_*.py; importing them registers them
from pipelines import stage_board, stage_build  # noqa: E402,F401,I001
