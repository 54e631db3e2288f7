"""Rate-distortion training of the codec models on CPU.

loss = lambda * MSE(x_hat, x) + bpp, MSE on the [0, 1] scale of each image's own
min..max range (``models.data.input_map``), bpp = -(sum log2 p(y_hat) + sum log2 p(z_hat))
/ pixels. The EntropyBottleneck quantiles are trained by the aux loss with their
own Adam. Gradients of the main loss are clipped to norm ``clip``.

Run directory (``out``)::

    checkpoint.pt      resumable: model, both optimizers, step, sampler + torch RNG, history
    <zoo name>.pt      final fp32 state_dict (what goes to models/weights/)
    <zoo name>.json    the record: command, data files, seed, steps, lambda, final numbers

``run(cfg)`` is the one entry point; ``pipelines/train.py`` is its CLI.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codec.errors import MedcodecError
from models import registry, zoo
from models.data import (
    VALIDATION,
    CropSampler,
    default_data_dir,
    list_files,
    load_images,
    split_files,
    validation_crops,
)

__all__ = ["TrainConfig", "TrainError", "evaluate", "rd_terms", "run"]

CHECKPOINT = "checkpoint.pt"


class TrainError(MedcodecError):
    """A training run that cannot start or continue (bad data dir, clashing checkpoint ...)."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Lambda, N and M default to the zoo entry of ``quality``."""

    quality: int
    """Zoo quality 1..4: names the output file and gives the default lambda, N, M."""
    out: str
    """Run directory (resumable checkpoint, final weights and JSON record)."""
    lmbda: float | None = None
    """Rate-distortion weight on the [0, 1]-scale MSE; None = the zoo's."""
    steps: int = 2000
    """Total optimizer steps (a resumed run continues up to this count)."""
    batch: int = 8
    """Crops per step."""
    crop: int = 128
    """Training crop side, a multiple of 64."""
    data: str | None = None
    """Data directory; None = ``models.data.default_data_dir()``."""
    seed: int = 0
    """Seeds torch, the crop sampler and the noise."""
    threads: int = 1
    """``torch.set_num_threads``."""
    resume: bool = False
    """Continue from ``out/checkpoint.pt`` when it exists (else start fresh)."""
    init: str | None = None
    """Warm start: a state_dict (or checkpoint.pt) to load the model weights from."""
    init_partial: bool = False
    """Load only the ``init`` tensors whose names and shapes fit (e.g. a GDN model's convs into the
    LeakyReLU ``dpu-hyperprior``); the skipped names go into the record."""
    teacher: str | None = None
    """Distillation: weights of a ``teacher_model`` whose latent y the student is pulled towards."""
    teacher_model: str = "gdn-hyperprior"
    """Registry name of the teacher."""
    distill: float = 0.0
    """Weight of mean((y - y_teacher)^2) in the loss, decayed linearly to 0 at ``distill_until``."""
    distill_until: float = 0.5
    """Fraction of ``steps`` after which the distillation term is 0 (the RD loss alone)."""
    lr: float = 1e-4
    """Adam learning rate of the main loss."""
    aux_lr: float = 1e-3
    """Adam learning rate of the aux (quantile) loss."""
    lr_drop: float = 0.8
    """After this fraction of ``steps`` the learning rate is divided by 10 (1 = never)."""
    clip: float = 1.0
    """Gradient-norm clip of the main loss."""
    ckpt_every: int = 250
    """Write ``checkpoint.pt`` every this many steps (and at the end)."""
    val_every: int = 250
    """Validate every this many steps (and at the end); 0 = only at the end."""
    val_crop: int = 256
    """Side of the fixed validation crops."""
    val_per_image: int = 2
    """Fixed validation crops per held-out frame."""
    model: str = "gdn-hyperprior"
    """Registry / zoo name."""
    N: int | None = None
    """Override the zoo's N (tests use tiny models)."""
    M: int | None = None
    """Override the zoo's M."""
    validation: tuple[str, ...] = VALIDATION
    """Held-out path prefixes (see models/data.py)."""
    progress: bool = True
    """Show a tqdm bar."""
    command: str = ""
    """The command line, recorded in the JSON."""
    extra: dict = field(default_factory=dict)
    """Free-form notes copied into the JSON record."""

    def resolved(self) -> TrainConfig:
        e = zoo.entry(self.model, self.quality)
        return dataclasses.replace(
            self,
            lmbda=float(e["lambda"] if self.lmbda is None else self.lmbda),
            N=int(e["N"] if self.N is None else self.N),
            M=int(e["M"] if self.M is None else self.M),
            data=str(self.data or default_data_dir()),
        )


def rd_terms(out: dict, x: torch.Tensor) -> dict:
    """MSE, bpp_y, bpp_z, bpp of one forward pass (tensors, mean over the batch)."""
    n_px = x.shape[0] * x.shape[2] * x.shape[3]
    bpp_y = -torch.log2(out["likelihoods"]["y"]).sum() / n_px
    bpp_z = -torch.log2(out["likelihoods"]["z"]).sum() / n_px
    mse = F.mse_loss(out["x_hat"], x)
    return {"mse": mse, "bpp_y": bpp_y, "bpp_z": bpp_z, "bpp": bpp_y + bpp_z}


@torch.no_grad()
def evaluate(model, crops: torch.Tensor, groups: list[str], lmbda: float, chunk: int = 4) -> dict:
    """Eval-mode (rounded latents, table scales) metrics on fixed crops, overall and per group.

    bpp is the likelihood estimate; PSNR = 10 log10(1 / MSE) on the [0, 1] scale with
    x_hat clamped to [0, 1], MSE pooled over the crops of the group.
    """
    was_training = model.training
    model.eval()
    mse, bits = [], []
    for i in range(0, crops.shape[0], chunk):
        x = crops[i : i + chunk]
        out = model(x)
        x_hat = out["x_hat"].clamp(0, 1)
        mse.append(((x_hat - x) ** 2).mean(dim=(1, 2, 3)))
        b = sum(-torch.log2(lik).sum(dim=(1, 2, 3)) for lik in out["likelihoods"].values())
        bits.append(b / (x.shape[2] * x.shape[3]))
    model.train(was_training)
    mse_t, bpp_t = torch.cat(mse).double(), torch.cat(bits).double()

    def summary(mask) -> dict:
        m = float(mse_t[mask].mean())
        b = float(bpp_t[mask].mean())
        return {"bpp": b, "mse": m, "psnr": 10 * math.log10(1 / max(m, 1e-20)), "loss": lmbda * m + b,
                "crops": int(mask.sum())}

    g = np.array(groups)
    res = {"all": summary(torch.ones(len(groups), dtype=torch.bool))}
    for name in sorted(set(groups)):
        res[name] = summary(torch.from_numpy(g == name))
    return res


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load_init(model, path: str, partial: bool = False) -> list[str]:
    """Load ``path`` into ``model``; returns the names skipped (only when ``partial``)."""
    p = Path(path)
    if not p.is_file():
        raise TrainError(f"--init {p}: no such file")
    state = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if partial:
        own = model.state_dict()
        fit = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not fit:
            raise TrainError(f"--init {p}: no tensor fits this model")
        model.load_state_dict(fit, strict=False)
        return sorted(set(state) - set(fit)) + sorted(set(own) - set(fit))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise TrainError(f"--init {p}: does not fit this model ({str(exc).splitlines()[0]})") from None
    return []


def distill_weight(cfg: TrainConfig, step: int) -> float:
    """The distillation weight at ``step``: ``distill`` decaying linearly to 0 at ``distill_until``."""
    end = cfg.distill_until * cfg.steps
    if cfg.distill <= 0 or end <= 0 or step >= end:
        return 0.0
    return cfg.distill * (1.0 - step / end)


def _portable(path) -> str:
    """A path as the record should keep it: relative to the repository root (so ``../shared/data``),
    never an absolute path of this machine."""
    root = Path(__file__).resolve().parents[1]
    try:
        return os.path.relpath(Path(path).resolve(), root)
    except ValueError:  # another drive (Windows)
        return Path(path).name


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def run(cfg: TrainConfig) -> dict:
    """Train, checkpoint, validate; write the final weights + JSON. Returns the JSON record."""
    cfg = cfg.resolved()
    if cfg.crop % 64 or cfg.val_crop % 64:
        raise TrainError(f"--crop ({cfg.crop}) and the validation crop ({cfg.val_crop}) must be multiples of 64")
    if cfg.steps < 1 or cfg.batch < 1:
        raise TrainError("--steps and --batch must be positive")
    data_dir = Path(cfg.data)
    if not data_dir.is_dir():
        raise TrainError(f"data directory {data_dir} not found")
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.exists() and not cfg.resume:
        raise TrainError(f"{ckpt_path} exists (use --resume to continue it, or another --out)")

    torch.set_num_threads(max(1, int(cfg.threads)))
    _seed_all(cfg.seed)

    files = list_files(data_dir)
    train_files, val_files = split_files(files, cfg.validation)
    if not train_files:
        raise TrainError(f"no training DICOM files under {data_dir}")
    sampler = CropSampler(load_images(data_dir, train_files), cfg.crop, seed=cfg.seed)
    val_x, val_groups = validation_crops(load_images(data_dir, val_files), cfg.val_crop, cfg.val_per_image)

    model = registry.create(cfg.model, N=cfg.N, M=cfg.M)
    skipped = _load_init(model, cfg.init, cfg.init_partial) if cfg.init else []
    teacher = None
    if cfg.teacher:
        teacher = registry.create(cfg.teacher_model, N=cfg.N, M=cfg.M)
        _load_init(teacher, cfg.teacher)
        teacher.eval().requires_grad_(False)
    main_params = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    aux_params = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    opt = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_opt = torch.optim.Adam(aux_params, lr=cfg.aux_lr)

    step, history, elapsed = 0, [], 0.0
    if cfg.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if (ck["config"]["model"], ck["config"]["N"], ck["config"]["M"]) != (cfg.model, cfg.N, cfg.M):
            raise TrainError(f"{ckpt_path}: made for {ck['config']['model']} N={ck['config']['N']} "
                             f"M={ck['config']['M']}, not this run's model")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        aux_opt.load_state_dict(ck["aux_opt"])
        step, history, elapsed = int(ck["step"]), list(ck["history"]), float(ck.get("elapsed", 0.0))
        sampler.state = ck["sampler"]
        torch.set_rng_state(ck["torch_rng"])

    def lr_at(s: int) -> float:
        return cfg.lr * (0.1 if s >= cfg.lr_drop * cfg.steps else 1.0)

    def save_checkpoint() -> None:
        _atomic_save({
            "model": model.state_dict(), "opt": opt.state_dict(), "aux_opt": aux_opt.state_dict(),
            "step": step, "sampler": sampler.state, "torch_rng": torch.get_rng_state(),
            "history": history, "elapsed": elapsed, "config": dataclasses.asdict(cfg),
        }, ckpt_path)

    def validate() -> dict | None:
        if val_x.shape[0] == 0:
            return None
        res = evaluate(model, val_x, val_groups, cfg.lmbda)
        history.append({"step": step, "val": res})
        return res

    recent = deque(maxlen=100)
    model.train()
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train q{cfg.quality}", dynamic_ncols=True)
    t0 = t_session = time.perf_counter()
    start_step = step
    val = None
    try:
        while step < cfg.steps:
            for gr in opt.param_groups:
                gr["lr"] = lr_at(step)
            x = sampler.sample(cfg.batch)
            opt.zero_grad(set_to_none=True)
            aux_opt.zero_grad(set_to_none=True)
            out = model(x)
            terms = rd_terms(out, x)
            loss = cfg.lmbda * terms["mse"] + terms["bpp"]
            w = distill_weight(cfg, step)
            if teacher is not None and w > 0:
                with torch.no_grad():
                    y_t = teacher.g_a(x)
                loss = loss + w * F.mse_loss(out["y"], y_t)
            if not torch.isfinite(loss):
                raise TrainError(f"loss is not finite at step {step} (try a smaller --lr)")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(main_params, cfg.clip)
            opt.step()
            aux = model.aux_loss()
            aux.backward()
            aux_opt.step()
            step += 1
            recent.append((loss.item(), terms["mse"].item(), terms["bpp"].item(), aux.item()))
            if bar is not None:
                bar.update(1)
                if step % 10 == 0:
                    m = np.mean(recent, axis=0)
                    bar.set_postfix(loss=f"{m[0]:.4g}", bpp=f"{m[2]:.3f}",
                                    psnr=f"{10 * math.log10(1 / max(m[1], 1e-20)):.2f}", aux=f"{m[3]:.3g}")
            if cfg.val_every and step % cfg.val_every == 0 and step < cfg.steps:
                val = validate()
                if bar is not None and val is not None:
                    bar.write(_val_line(step, val))
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                elapsed_now = elapsed + time.perf_counter() - t0
                elapsed, t0 = elapsed_now, time.perf_counter()
                save_checkpoint()
    finally:
        if bar is not None:
            bar.close()
    elapsed += time.perf_counter() - t0
    steps_run = step - start_step
    session_s = time.perf_counter() - t_session

    val = validate()
    if val is not None and cfg.progress:
        print(_val_line(step, val))
    save_checkpoint()

    name = Path(zoo.entry(cfg.model, cfg.quality)["checkpoint"])
    weights = out_dir / name
    state = {k: v.detach().to(torch.float32).clone() if v.is_floating_point() else v.clone()
             for k, v in model.state_dict().items()}
    _atomic_save(state, weights)
    m = np.mean(recent, axis=0) if recent else [float("nan")] * 4
    record = {
        "model": cfg.model,
        "quality": cfg.quality,
        "N": cfg.N,
        "M": cfg.M,
        "model_config": {**registry.get(cfg.model).config, "N": cfg.N, "M": cfg.M},
        "lambda": cfg.lmbda,
        "command": cfg.command,
        "seed": cfg.seed,
        "steps": step,
        "batch": cfg.batch,
        "crop": cfg.crop,
        "lr": cfg.lr,
        "lr_drop": cfg.lr_drop,
        "aux_lr": cfg.aux_lr,
        "clip": cfg.clip,
        "threads": cfg.threads,
        "init": {"path": _portable(cfg.init), "sha256": zoo.sha256_file(cfg.init), "partial": cfg.init_partial,
                 "skipped": skipped} if cfg.init else None,
        "teacher": {"model": cfg.teacher_model, "path": _portable(cfg.teacher), "sha256": zoo.sha256_file(cfg.teacher),
                    "distill": cfg.distill, "distill_until": cfg.distill_until} if cfg.teacher else None,
        "data_dir": _portable(data_dir),
        "train_files": train_files,
        "val_files": val_files,
        "final_train": {"loss": float(m[0]), "mse": float(m[1]), "bpp": float(m[2]),
                        "psnr": 10 * math.log10(1 / max(float(m[1]), 1e-20)), "aux": float(m[3]),
                        "over_last_steps": len(recent)},
        "final_val": val,
        "history": history,
        "wall_s": elapsed,
        "steps_per_s_this_session": steps_run / max(session_s, 1e-9) if steps_run else None,
        "weights": name.name,
        "weights_sha256": zoo.sha256_file(weights),
        "weights_bytes": weights.stat().st_size,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "extra": cfg.extra,
    }
    tmp = weights.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, weights.with_suffix(".json"))
    return record


def _val_line(step: int, val: dict) -> str:
    parts = [f"{g} {v['bpp']:.3f} bpp {v['psnr']:.2f} dB" for g, v in val.items()]
    return f"step {step} val: " + " | ".join(parts)
