"""``medcodec stage NAME``: run one build stage (what ``make rewrite`` ... ``make validate`` call).

    medcodec stage rewrite --board ultra96 --model dpu-hyperprior [--quality 2 ...]

Outputs go to ``build/<board>/<model>/<stage>/`` with ``manifest.json`` and ``report.json``
(``pipelines/stages.py``).
"""

from __future__ import annotations

from pipelines.stages import STAGES, StageConfig, run_stage


def register(sub) -> None:
    p = sub.add_parser("stage", help="run one build stage (rewrite, calibrate, quantize, compile, runtime, "
                                     "deploy, validate)",
                       description="Run one stage of the DPU build; writes build/<board>/<model>/<stage>/.")
    p.add_argument("name", choices=list(STAGES), help="the stage")
    p.add_argument("--board", default="ultra96", help="board name from boards/boards.toml (default ultra96)")
    p.add_argument("--model", default="dpu-hyperprior", help="zoo model (default dpu-hyperprior)")
    p.add_argument("--quality", type=int, action="append", choices=(1, 2, 3, 4), default=None,
                   help="quality to build (repeatable; default all four)")
    p.add_argument("--data", default=None, help="calibration / validation images (default ../shared/data, "
                                                "else the bundled samples/)")
    p.add_argument("--out", default="build", help="build root (default build)")
    p.add_argument("--calib-tiles", type=int, default=32, help="calibration tiles (default 32)")
    p.add_argument("--quantizer", choices=("auto", "builtin", "nndct"), default="auto")
    p.add_argument("--qat-steps", type=int, default=0,
                   help="quantize: quantization-aware fine-tuning steps per quality (default 0; the zoo used 600)")
    p.add_argument("--validate-limit", type=int, default=0, help="validate at most N images (default all)")
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = StageConfig(board=args.board, model=args.model,
                      qualities=tuple(sorted(set(args.quality))) if args.quality else (1, 2, 3, 4),
                      data=args.data, out=args.out, calib_tiles=args.calib_tiles, quantizer=args.quantizer,
                      validate_limit=args.validate_limit, qat_steps=args.qat_steps)
    run_stage(args.name, cfg)
    return 0
