"""``medcodec qat``: quantization-aware fine-tuning of an int8 codec package.

    medcodec qat --quality 2 [--steps 600] [--specs build/ultra96/dpu-hyperprior/calibrate/q2.specs.json]

Starts from the zoo's float weights and the calibrate stage's fix positions (held fixed), fine-tunes
with g_a and g_s in fake int8 (``quantize/qat.py``) on crops of the training images, and writes the
int8 package (default ``build/<board>/<model>/qat/q<Q>.int8.npz``), checked emulator == fake-quant.
The committed ``models/weights/dpu-hyperprior-q<Q>.int8.npz`` were made this way
(``models/weights/README.md``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from codec.errors import MedcodecError
from codec.fileio import atomic_write


def register(sub) -> None:
    p = sub.add_parser("qat", help="quantization-aware fine-tuning of the int8 codec (one quality)",
                       description="Fine-tune with g_a and g_s in fake int8 at the calibrated fix positions; "
                                   "write the int8 package.")
    p.add_argument("--model", default="dpu-hyperprior")
    p.add_argument("--quality", type=int, required=True, choices=(1, 2, 3, 4))
    p.add_argument("--board", default="ultra96")
    p.add_argument("--specs", default=None, help="fix positions (default: the calibrate stage's q<Q>.specs.json)")
    p.add_argument("--data", default=None, help="training images (default ../shared/data)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--seed", type=int, default=None, help="default 100 + quality")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="package path (default build/<board>/<model>/qat/q<Q>.int8.npz)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from models import zoo
    from models.data import CropSampler, default_data_dir, list_files, load_images, split_files
    from pipelines.export import calibration_tiles
    from quantize.builtin import QuantSpec
    from quantize.codec_int8 import build_int8_package
    from quantize.qat import finetune, fix_positions_sha256

    q = args.quality
    seed = 100 + q if args.seed is None else args.seed
    specs_path = Path(args.specs or Path("build") / args.board / args.model / "calibrate" / f"q{q}.specs.json")
    if not specs_path.is_file():
        raise MedcodecError(f"{specs_path} missing: run `make calibrate MODEL={args.model}` first (or give --specs)")
    out = Path(args.out or Path("build") / args.board / args.model / "qat" / f"q{q}.int8.npz")
    if out.exists() and not args.force:
        raise MedcodecError(f"{out} exists (use --force)")
    data = Path(args.data or default_data_dir())
    if not data.is_dir():
        raise MedcodecError(f"{data}: training data not found")
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(seed)
    specs = {n: QuantSpec.from_dict(d) for n, d in json.loads(specs_path.read_text()).items()}
    model = zoo.load_model(args.model, q)
    train, _ = split_files(list_files(data))
    sampler = CropSampler(load_images(data, train), 128, seed=200 + q)
    lmbda = zoo.entry(args.model, q)["lambda"]
    dep = finetune(model, specs, sampler, lmbda=lmbda, steps=args.steps, lr=args.lr, seed=seed,
                   log=lambda s: print(f"qat q{q}: {s}", flush=True))
    weights = zoo.checkpoint_path(args.model, q)
    pkg, rep = build_int8_package(
        dep, specs, calibration_tiles(data)[:2], name=args.model, quality=q, tile=256,
        weights_sha256=zoo.sha256_file(weights),
        extra_meta={"lambda": lmbda, "qat": {"steps": args.steps, "lr": args.lr, "batch": 8, "crop": 128,
                                             "seed": seed, "fix_positions_sha256": fix_positions_sha256(specs)}})
    bad = [n for n, r in rep["networks"].items() if not r["emulator_equals_fakequant"]]
    if bad:
        raise MedcodecError(f"the emulator and the fake-quant model disagree on {bad}")
    blob = pkg.to_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, blob, force=True)
    print(f"wrote {out} (sha256 {hashlib.sha256(blob).hexdigest()[:16]}..); scale index agreement with the float "
          f"h_s {rep['scale_index_agreement']:.3f}")
    return 0
