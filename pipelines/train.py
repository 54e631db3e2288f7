"""``medcodec train``: rate-distortion training of a zoo model on CPU (see models/train.py)."""

from __future__ import annotations

import shlex
import sys

from codec.errors import MedcodecError


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a learned codec model (one zoo quality)",
        description="Train a codec model of the zoo (default gdn-hyperprior) on random crops of the shared DICOM set: "
                    "loss = lambda * MSE (on each image's own min..max [0,1] scale) + bpp. "
                    "Writes OUT/checkpoint.pt (resumable) and, at the end, OUT/<zoo name>.pt + .json.")
    p.add_argument("--model", default="gdn-hyperprior",
                   help="registry name: gdn-hyperprior (GDN) or dpu-hyperprior (LeakyReLU 26/256, DPU-native)")
    p.add_argument("--quality", type=int, required=True, choices=(1, 2, 3, 4), help="zoo quality (names the output)")
    p.add_argument("--lambda", dest="lmbda", type=float, default=None, help="rate-distortion weight (default: the zoo's)")
    p.add_argument("--steps", type=int, default=2000, help="total optimizer steps (default 2000)")
    p.add_argument("--batch", type=int, default=8, help="crops per step (default 8)")
    p.add_argument("--crop", type=int, default=128, help="crop side, a multiple of 64 (default 128)")
    p.add_argument("--data", default=None, help="data directory (default ../shared/data beside the repository)")
    p.add_argument("--out", default=None, help="run directory (default runs/MODEL-qQ)")
    p.add_argument("--seed", type=int, default=0, help="seed of torch, crops and noise (default 0)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt if it exists")
    p.add_argument("--init", default=None, metavar="PT", help="warm start from these weights (state_dict or checkpoint.pt)")
    p.add_argument("--init-partial", action="store_true",
                   help="load only the --init tensors whose names and shapes fit (GDN model -> dpu-hyperprior)")
    p.add_argument("--teacher", default=None, metavar="PT",
                   help="distillation: pull the latent y towards this teacher's (weights of --teacher-model)")
    p.add_argument("--teacher-model", default="gdn-hyperprior", help="registry name of the teacher")
    p.add_argument("--distill", type=float, default=0.0, help="weight of mean((y - y_teacher)^2) (default 0)")
    p.add_argument("--distill-until", type=float, default=0.5,
                   help="fraction of --steps where the distillation weight has decayed to 0 (default 0.5)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--lr-drop", type=float, default=0.8, help="divide lr by 10 after this fraction of --steps (default 0.8)")
    p.add_argument("--val-every", type=int, default=250, help="validate every N steps (default 250; 0 = end only)")
    p.add_argument("--ckpt-every", type=int, default=250, help="checkpoint every N steps (default 250)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        from models.train import TrainConfig
        from models.train import run as train_run
    except ImportError as exc:  # torch is a host-only dependency
        raise MedcodecError(f"training needs torch: {exc}") from None
    if args.steps < 1 or args.batch < 1 or args.threads < 1:
        raise MedcodecError("--steps, --batch and --threads must be positive")
    if args.val_every < 0 or args.ckpt_every < 1:
        raise MedcodecError("--val-every must be >= 0 and --ckpt-every >= 1")
    cfg = TrainConfig(
        quality=args.quality, out=args.out or f"runs/{args.model}-q{args.quality}", lmbda=args.lmbda,
        model=args.model, init_partial=args.init_partial, teacher=args.teacher, teacher_model=args.teacher_model,
        distill=args.distill, distill_until=args.distill_until,
        steps=args.steps, batch=args.batch, crop=args.crop, data=args.data, seed=args.seed,
        threads=args.threads, resume=args.resume, init=args.init, lr=args.lr, lr_drop=args.lr_drop,
        val_every=args.val_every, ckpt_every=args.ckpt_every, progress=not args.no_progress,
        command="medcodec " + shlex.join(sys.argv[1:]),
    )
    rec = train_run(cfg)
    v = rec["final_val"] or {}
    line = f"wrote {cfg.out}/{rec['weights']} (sha256 {rec['weights_sha256'][:16]}...)"
    if "all" in v:
        line += f"; val {v['all']['bpp']:.3f} bpp, {v['all']['psnr']:.2f} dB"
    print(line)
    return 0
