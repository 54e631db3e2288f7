"""Data split / input map, and a 3-step training smoke test that checkpoints and resumes."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from codec.errors import MedcodecError
from models import data
from models.train import TrainConfig, TrainError, run
from tests.conftest import SAMPLES


def test_input_map():
    assert data.input_map(np.array([[-2000, 5], [100, 2278]], dtype=np.int16)) == (-2000, 4278)
    assert data.input_map(np.full((3, 3), 7, dtype=np.uint16)) == (7, 1)
    off, sc = data.input_map(np.array([0, 4095], dtype=np.uint16))
    assert isinstance(off, int) and isinstance(sc, int)


def test_split_is_by_prefix():
    files = ["ct/nema_wg04/CT1_UNC.dcm", "ct/tcia_covid19-ny-sbu/A056642_axial_1.dcm",
             "ct/tcia_covid19-ny-sbu/A002304_axial_1.dcm", "xray/gdcm/CR-MONO1-10-chest.dcm",
             "xray/gdcm/KODAK_CR_hand_uncompressed.dcm"]
    train, val = data.split_files(files)
    assert train == ["ct/tcia_covid19-ny-sbu/A002304_axial_1.dcm", "xray/gdcm/KODAK_CR_hand_uncompressed.dcm"]
    assert len(val) == 3


@pytest.fixture
def tiny_data(tmp_path):
    root = tmp_path / "data"
    (root / "ct").mkdir(parents=True)
    (root / "mr").mkdir()
    shutil.copy(SAMPLES / "ct" / "ct_unsigned12_tcia_lungdx.dcm", root / "ct" / "a.dcm")
    shutil.copy(SAMPLES / "mr" / "mr_t1w_studyforrest.dcm", root / "mr" / "b.dcm")
    return root


def test_sampler_is_seeded_and_balanced(tiny_data):
    images = data.load_images(tiny_data, data.list_files(tiny_data))
    assert {im.group for im in images} == {"ct", "mr"}
    a = data.CropSampler(images, 64, seed=3)
    b = data.CropSampler(images, 64, seed=3)
    xa = a.sample(4)
    assert xa.shape == (4, 1, 64, 64) and xa.dtype == torch.float32
    assert torch.equal(xa, b.sample(4))
    assert float(xa.min()) >= 0 and float(xa.max()) <= 1
    state = a.state
    x1 = a.sample(2)
    a.state = state
    assert torch.equal(a.sample(2), x1)


def _cfg(tiny_data, out, **kw):
    base = dict(quality=1, out=str(out), lmbda=100.0, steps=3, batch=2, crop=64, data=str(tiny_data), seed=0,
                threads=1, N=8, M=8, val_crop=64, val_per_image=1, ckpt_every=2, val_every=2,
                validation=("mr/",), progress=False, command="test")
    base.update(kw)
    return TrainConfig(**base)


def test_training_smoke_checkpoint_and_resume(tiny_data, tmp_path):
    out = tmp_path / "run"
    rec = run(_cfg(tiny_data, out))
    assert rec["steps"] == 3 and rec["train_files"] == ["ct/a.dcm"] and rec["val_files"] == ["mr/b.dcm"]
    weights = out / "gdn-hyperprior-q1.pt"
    assert weights.is_file() and (out / "checkpoint.pt").is_file()
    meta = json.loads((out / "gdn-hyperprior-q1.json").read_text())
    for key in ("command", "seed", "steps", "lambda", "final_train", "final_val", "train_files", "weights_sha256"):
        assert key in meta
    assert meta["final_val"]["all"]["bpp"] > 0 and np.isfinite(meta["final_val"]["all"]["psnr"])
    state = torch.load(weights, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())

    # refusing to clobber a run without --resume
    with pytest.raises(TrainError):
        run(_cfg(tiny_data, out))
    assert isinstance(TrainError("x"), MedcodecError)

    # resume to 5 steps
    rec2 = run(_cfg(tiny_data, out, steps=5, resume=True))
    assert rec2["steps"] == 5
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 5

    # warm start from the final weights into a fresh run
    rec3 = run(_cfg(tiny_data, tmp_path / "ft", steps=1, init=str(weights), lmbda=10.0))
    assert rec3["init"]["sha256"] == rec2["weights_sha256"] != meta["weights_sha256"]


def test_resume_is_exact(tiny_data, tmp_path):
    """3 steps straight == 2 steps, checkpoint, resume 1 step (same weights)."""
    a = run(_cfg(tiny_data, tmp_path / "a", val_every=0, ckpt_every=100, lr_drop=1.0))
    run(_cfg(tiny_data, tmp_path / "b", steps=2, val_every=0, lr_drop=1.0))
    b = run(_cfg(tiny_data, tmp_path / "b", steps=3, val_every=0, resume=True, lr_drop=1.0))
    sa = torch.load(tmp_path / "a" / "gdn-hyperprior-q1.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "gdn-hyperprior-q1.pt", weights_only=True)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert a["steps"] == b["steps"] == 3


def test_cli_parser_registers(tiny_data, tmp_path, capsys):
    from pipelines import train as cli_train

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cli_train.register(sub)
    args = parser.parse_args(["train", "--quality", "2", "--steps", "1", "--batch", "1", "--crop", "64",
                              "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"), "--no-progress"])
    assert args.func is cli_train.run and args.lmbda is None
    with pytest.raises(MedcodecError, match="not found"):
        args.func(args)
