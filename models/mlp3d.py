"""Seed 001's voxel predictor (an MLP over a local 3-D neighbourhood), its training and its int8 export.

The network is the founding document's: fully connected 1024-512-256-128-1 with LeakyReLU, written as
1x1 convolutions so that the DPU (and our builtin quantizer) take it as it is; the slope is the
DPU's 26/256. Inputs and targets are ``codec/volume.py``'s: the int8 neighbourhood relative to the
co-located voxel of the previous slice, in units of ``2**shift`` stored values, over 128.

Training (``medcodec train-mlp3d``): random voxels of the training slices of the 20-slice CT and MR
series of ``../shared/data``; loss ``MAE + lambda (1 - |PCC|)`` (the seed's joint loss); Adam; a
fixed seed. The slices after ``--train-slices`` are held back for validation. Export: the builtin
power-of-two int8 quantizer (``quantize/builtin.py``) with the input at fix position 7 (the
features are integers / 128) and the output pinned at 7, then ``codec.fixednet.FixedNet`` in a
``.npz`` with the sampling.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from codec import volume as V
from codec.fileio import atomic_write, sha256_file
from codec.fixednet import LEAKY_DEN, LEAKY_NUM, FixedNet

__all__ = ["MLP3D", "SERIES", "TrainConfig", "save_package", "train"]

#: the volumes of ../shared/data (relative to it) the predictor trains and is measured on
SERIES = {"ct": "ct/tcia_lung-pet-ct-dx_A0001_series", "mr": "mr/studyforrest_t1w_series"}


class MLP3D(nn.Module):
    """(N, F) integer features / 128 -> (N,) the correction over 128 (units of 2**shift)."""

    def __init__(self, sampling: str = "pyramid", hidden: tuple[int, ...] = (1024, 512, 256, 128)):
        super().__init__()
        self.sampling = sampling
        self.hidden = tuple(hidden)
        layers: list[nn.Module] = []
        width = V.num_features(sampling)
        for h in self.hidden:
            layers += [nn.Conv2d(width, h, 1), nn.LeakyReLU(LEAKY_NUM / LEAKY_DEN)]
            width = h
        layers.append(nn.Conv2d(width, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, :, None, None])[:, 0, 0, 0]

    def macs_per_voxel(self) -> int:
        return sum(m.weight.numel() for m in self.net if isinstance(m, nn.Conv2d))


def joint_loss(pred: torch.Tensor, target: torch.Tensor, lmbda: float) -> tuple[torch.Tensor, float, float]:
    """The seed's ``MAE + lambda (1 - |PCC|)``; returns (loss, mae, pcc)."""
    mae = torch.mean(torch.abs(pred - target))
    pc, tc = pred - pred.mean(), target - target.mean()
    pcc = torch.sum(pc * tc) / (torch.sqrt(torch.sum(pc**2) * torch.sum(tc**2)) + 1e-12)
    return mae + lmbda * (1 - torch.abs(pcc)), float(mae.detach()), float(pcc.detach())


# -- data -----------------------------------------------------------------------------------------------
def slice_samples(vol: np.ndarray, s: int, sampling: str, shift: int, lo: int, hi: int,
                  idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, F) and targets (n,) in integer units (clipped to +-127) of slice ``s``."""
    prev = np.full((V.DEPTH,) + vol.shape[1:], lo, dtype=np.int64)
    for i in range(V.DEPTH):
        if s - 1 - i >= 0:
            prev[i] = vol[s - 1 - i]
    x, ref = V.features(prev, sampling, shift, lo, hi)
    y = np.asarray(vol[s], dtype=np.int64).reshape(-1)
    t = np.clip((y - ref) / float(1 << shift), -V.QMAX, V.QMAX)
    if idx is not None:
        x, t = x[idx], t[idx]
    return x, t


@dataclass
class TrainConfig:
    out: str = "runs/mlp3d-pyramid"
    model: str = "mlp3d-pyramid"
    data: str | None = None
    train_slices: int = 12  # slices 0..train_slices-1 of each series are training targets (0 has no x_hat)
    samples_per_slice: int = 6000
    steps: int = 6000
    batch: int = 256
    lr: float = 2e-4
    lmbda: float = 0.0
    seed: int = 0
    threads: int = 2
    progress: bool = True
    command: str = ""
    hidden: tuple[int, ...] | None = None
    extra: dict = field(default_factory=dict)


def _volumes(data: Path) -> dict[str, np.ndarray]:
    from codec.series import read_series

    out = {}
    for name, rel in SERIES.items():
        folder = data / rel
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: missing (the 20-slice series of ../shared/data)")
        out[name] = read_series(folder).volume.astype(np.int64)
    return out


def _dataset(vols, sampling, slices, per_slice, rng):
    xs, ts = [], []
    for vol in vols.values():
        lo, hi, shift = int(vol.min()), int(vol.max()), V.choose_shift(vol)
        for s in slices:
            if s >= vol.shape[0]:
                continue
            idx = rng.choice(vol.shape[1] * vol.shape[2], size=min(per_slice, vol.shape[1] * vol.shape[2]),
                             replace=False)
            x, t = slice_samples(vol, s, sampling, shift, lo, hi, idx)
            xs.append(x)
            ts.append(t)
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32) / V.FEATURE_ONE)
    t = torch.from_numpy(np.concatenate(ts).astype(np.float32) / V.FEATURE_ONE)
    return x, t


def train(cfg: TrainConfig, quantize_int8) -> dict:
    """Train, validate on the held-back slices, export int8; writes OUT/<model>.{pt,npz,json}.

    ``quantize_int8(model, calib_x) -> (FixedNet, QuantSpec)``: the int8 export
    (``quantize.mlp3d_int8.export_int8``; passed in, since models/ sits below quantize/).
    """
    from tqdm import tqdm

    from models import registry

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    data = Path(cfg.data) if cfg.data else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    vols = _volumes(data)
    overrides = {"hidden": tuple(cfg.hidden)} if cfg.hidden else {}
    model = registry.create(cfg.model, **overrides)
    sampling = model.sampling
    train_x, train_t = _dataset(vols, sampling, range(1, cfg.train_slices), cfg.samples_per_slice, rng)
    val_x, val_t = _dataset(vols, sampling, range(cfg.train_slices, 20), 4000, rng)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    t0 = time.time()
    n = train_x.shape[0]
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.model}", disable=not cfg.progress, unit="step")
    for step in bar:
        if step == int(cfg.steps * 0.8):
            for g in opt.param_groups:
                g["lr"] = cfg.lr / 10
        idx = torch.randint(0, n, (cfg.batch,))
        loss, mae, pcc = joint_loss(model(train_x[idx]), train_t[idx], cfg.lmbda)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            bar.set_postfix(mae=f"{mae * V.FEATURE_ONE:.2f}", pcc=f"{pcc:.3f}")
    train_s = time.time() - t0
    model.eval()
    with torch.no_grad():
        _, vmae, vpcc = joint_loss(model(val_x), val_t, cfg.lmbda)
        base = float(torch.mean(torch.abs(val_t)))  # "previous slice" predictor's MAE
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fixed, spec = quantize_int8(model, train_x[:8192])
    q_pred = V._mlp_int(fixed, (val_x.numpy() * V.FEATURE_ONE).round().astype(np.int64))
    qmae = float(np.mean(np.abs(q_pred - val_t.numpy() * V.FEATURE_ONE)))
    pt = out / f"{cfg.model}.pt"
    torch.save(model.state_dict(), pt)
    npz = out / f"{cfg.model}.npz"
    save_package(npz, fixed, sampling)
    rec = {
        "model": cfg.model, "sampling": sampling, "hidden": list(model.hidden), "command": cfg.command,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress", "extra")},
        "data": {k: v for k, v in SERIES.items()}, "train_slices": [1, cfg.train_slices - 1],
        "val_slices": [cfg.train_slices, 19], "train_samples": int(n), "train_s": round(train_s, 1),
        "macs_per_voxel": model.macs_per_voxel(), "parameters": sum(p.numel() for p in model.parameters()),
        "val": {"mae_units": float(vmae) * V.FEATURE_ONE, "pcc": float(vpcc),
                "mae_units_int8": qmae, "mae_units_previous_slice": base * V.FEATURE_ONE},
        "quant": {"fp_in": spec.fp_in, "layers": [{"name": ls.name, "fp_w": ls.fp_w, "fp_b": ls.fp_b,
                                                   "fp_out": ls.fp_out, "sqnr_db": ls.sqnr_db} for ls in spec.layers]},
        "sha256": sha256_file(pt), "package_sha256": sha256_file(npz),
    }
    atomic_write(out / f"{cfg.model}.json", (json.dumps(rec, indent=1, default=float) + "\n").encode(), force=True)
    return rec


def save_package(path: Path, fixed: FixedNet, sampling: str) -> None:
    import io

    arrays = fixed.to_arrays("mlp")
    arrays["sampling"] = np.array(sampling)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(path, buf.getvalue(), force=True)
