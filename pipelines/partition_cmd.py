"""``medcodec partition``: what of each network runs on the DPU, and why not.

    medcodec partition [--quality 3] [--rewrite] [--arch ULTRA96] [--json OUT.json] [--verbose]

Reads the limits from ``arch/<ARCH>.json`` (compile/partition.py) and reports, for the
four networks of the zoo model, the DPU subgraphs, the CPU ops with their reasons and
the verdict for DPU-PYNQ (exactly one DPU subgraph, no CPU op). ``--rewrite`` first
applies the exact DPU rewrite passes (quantize/passes) and shows both.
"""

from __future__ import annotations

import json

from codec.fileio import atomic_write
from compile.partition import partition_hyperprior
from models import zoo
from quantize.rewrite import rewrite_for_dpu


def register(sub) -> None:
    p = sub.add_parser("partition", help="DPU/CPU partition report of the codec's networks",
                       description="Per network: DPU subgraphs, CPU ops and why, from the arch description.")
    p.add_argument("--model", default="gdn-hyperprior")
    p.add_argument("--quality", type=int, default=3)
    p.add_argument("--arch", default="ULTRA96", help="arch name or file (default ULTRA96)")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--rewrite", action="store_true", help="also show the model after the exact DPU rewrites")
    p.add_argument("--json", default=None, metavar="OUT.json")
    p.add_argument("--verbose", action="store_true", help="print every layer")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run)


def _summary(reports) -> dict:
    return {net: {"dpu_subgraphs": r.n_dpu_subgraphs, "cpu_ops": r.n_cpu_ops, "deployable": bool(r.deployable),
                  "cpu": sorted({f"{op.op}: {op.reason}" for op in r.layers if op.device == "CPU"})}
            for net, r in reports.items()}


def run(args) -> int:
    model = zoo.load_model(args.model, args.quality)
    stages = {"as trained": model}
    if args.rewrite:
        stages["after exact rewrites"], _ = rewrite_for_dpu(model)
    result = {}
    for label, m in stages.items():
        reports = partition_hyperprior(m, tile=args.tile, arch=args.arch)
        result[label] = {"summary": _summary(reports), "reports": {n: r.to_dict() for n, r in reports.items()}}
        print(f"== {args.model} q{args.quality} {label} (tile {args.tile}, arch {args.arch})")
        for net, r in reports.items():
            if args.verbose:
                print(r.format())
            s = result[label]["summary"][net]
            print(f"  {net}: {s['dpu_subgraphs']} DPU subgraph(s), {s['cpu_ops']} CPU op(s) -> "
                  f"{'deploys' if s['deployable'] else 'does not deploy'}")
            for reason in s["cpu"]:
                print(f"      CPU {reason}")
    if args.json:
        atomic_write(args.json, (json.dumps(result, indent=1, default=str) + "\n").encode(), force=args.force)
    return 0
