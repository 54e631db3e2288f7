"""Fixtures of the pipeline tests: a throwaway zoo (a seeded, randomly initialised gdn-hyperprior q1 and
its package), so compress / decompress run through real files without the committed weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.dicom import read_dicom
from models import registry, zoo
from models.export import export_package
from pipelines import compress as compress_cmd
from tests.conftest import sample_files

CT = next(p for p in sample_files() if "ct_signed" in p.name)


def _build_zoo(folder: Path) -> Path:
    torch.manual_seed(0)
    e = zoo.entry("gdn-hyperprior", 1)
    model = registry.create("gdn-hyperprior", N=e["N"], M=e["M"]).eval()
    weights = folder / e["checkpoint"]
    torch.save(model.state_dict(), weights)
    img = read_dicom(CT).pixels.astype(np.float32)
    x01 = (img - img.min()) / (img.max() - img.min())
    tiles = torch.from_numpy(np.stack([x01[:256, :256], x01[256:, 256:]]))[:, None]
    pkg, _ = export_package(model, tiles, name="gdn-hyperprior", quality=1, tile=256,
                            weights_sha256=zoo.sha256_file(weights))
    data = pkg.to_bytes()
    (folder / "gdn-hyperprior-q1.npz").write_bytes(data)
    (folder / "zoo.json").write_text(json.dumps({"gdn-hyperprior": {"1": {
        "sha256": zoo.sha256_file(weights), "package_sha256": hashlib.sha256(data).hexdigest()}}}))
    return folder


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    return _build_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture
def tiny_zoo(weights_dir, monkeypatch):
    monkeypatch.setattr(zoo, "WEIGHTS_DIR", weights_dir)
    monkeypatch.setattr(compress_cmd, "_CACHE", {})
    return weights_dir
