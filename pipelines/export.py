"""``medcodec export``: a trained checkpoint -> the codec package the coder uses.

    medcodec export --quality 3 [--weights models/weights/gdn-hyperprior-q3.pt] [--data ../shared/data]

Writes ``models/weights/<model>-q<Q>.npz`` (see ``codec/package.py``): integer
entropy tables and the 16-bit integer h_s, calibrated on fixed, seeded tiles of
the training images, then prints the sha256 values that ``models/weights/zoo.json``
must list. Deterministic: the same checkpoint and data give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from codec.errors import MedcodecError
from codec.fileio import atomic_write
from models import registry, zoo
from models.data import CropSampler, default_data_dir, list_files, load_images, split_files
from models.export import export_package

TILE = 256
CALIB_TILES = 64
CALIB_SEED = 20261121


def register(sub) -> None:
    p = sub.add_parser("export", help="build the codec package (.npz) of a trained checkpoint",
                       description="Quantize h_s to integers and build the entropy tables of a checkpoint.")
    p.add_argument("--model", default="gdn-hyperprior")
    p.add_argument("--quality", type=int, required=True)
    p.add_argument("--weights", default=None, help="checkpoint (default: the zoo's file)")
    p.add_argument("--data", default=None, help="training data (default ../shared/data)")
    p.add_argument("--out", default=None, help="package path (default models/weights/<model>-q<Q>.npz)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run)


def calibration_tiles(data_dir) -> torch.Tensor:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise MedcodecError(f"{data_dir}: calibration data not found (export needs the training data set)")
    train, _ = split_files(list_files(data_dir))
    if not train:
        raise MedcodecError(f"{data_dir}: no training images")
    sampler = CropSampler(load_images(data_dir, train), TILE, seed=CALIB_SEED)
    return sampler.sample(CALIB_TILES)


def run(args) -> int:
    e = zoo.entry(args.model, args.quality)
    weights = Path(args.weights) if args.weights else zoo.checkpoint_path(args.model, args.quality)
    if not weights.is_file():
        raise MedcodecError(f"{weights}: no such checkpoint")
    model = registry.create(args.model, N=e["N"], M=e["M"])
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    tiles = calibration_tiles(args.data or default_data_dir())
    pkg, report = export_package(model, tiles, name=args.model, quality=args.quality, tile=TILE,
                                 weights_sha256=zoo.sha256_file(weights),
                                 extra_meta={"lambda": e["lambda"], "calibration_seed": CALIB_SEED})
    data = pkg.to_bytes()
    out = Path(args.out) if args.out else zoo.package_path(args.model, args.quality)
    atomic_write(out, data, force=args.force)
    print(json.dumps({"package": str(out), "package_sha256": hashlib.sha256(data).hexdigest(),
                      "weights": str(weights), "weights_sha256": zoo.sha256_file(weights), **report}, indent=1))
    return 0
