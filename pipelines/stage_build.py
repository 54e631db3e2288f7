"""The host-side stages: rewrite, calibrate, quantize (registered in ``pipelines.stages``).

rewrite    the zoo model's four networks in their deployable float form (exact passes; the
           ``abs`` in front of h_a absorbed), checked against the original, exported to ONNX,
           with the DPU partition before and after.
calibrate  fix positions of every tensor (``builtin``: ``quantize/builtin.py``; the ``nndct``
           backend when ``pytorch_nndct`` is importable), on seeded tiles of the training images.
quantize   the int8 codec package (``codec/package.py``) per quality, with the per-layer report
           (JSON + an HTML page) and the check that the emulator equals the fake-quant model.
"""

from __future__ import annotations

import json

import torch

from codec.fileio import atomic_write
from pipelines.stages import Context, StageError, board_arch, data_dir, stage, stage_dir, write_json


def _model(cfg, q):
    from models import zoo

    return zoo.load_model(cfg.model, q)


def _tiles(cfg, n: int) -> torch.Tensor:
    from pipelines.export import calibration_tiles

    return calibration_tiles(data_dir(cfg))[:n]


class _Nets(torch.nn.Module):
    """The four deployable networks as one module (what partition / ONNX export take)."""

    def __init__(self, nets: dict, n: int, m: int):
        super().__init__()
        for k, v in nets.items():
            setattr(self, k, v)
        self.N, self.M = n, m


@stage("rewrite")
def run_rewrite(ctx: Context) -> dict:
    from compile.partition import partition, partition_hyperprior
    from models import zoo
    from quantize.codec_int8 import DPU_ORDER, calibration_batches, dpu_networks
    from quantize.onnx_export import export_onnx

    cfg, out = ctx.cfg, {}
    tiles = _tiles(cfg, 4)
    for q in cfg.qualities:
        ctx.input(zoo.checkpoint_path(cfg.model, q), f"weights q{q}")
        model = _model(cfg, q)
        nets, log = dpu_networks(model)
        t = cfg.tile
        shapes = {"g_a": (1, 1, t, t), "h_a": (1, model.M, t // 16, t // 16), "g_s": (1, model.M, t // 16, t // 16),
                  "h_s": (1, model.N, t // 64, t // 64)}
        before = partition_hyperprior(model, tile=t)
        after = {n: partition(nets[n], shapes[n], name=n) for n in DPU_ORDER}
        # the rewrites are exact: measure it on real tiles (float64, each network on its own inputs)
        batches = calibration_batches(model, tiles)
        change = {}
        with torch.no_grad():
            ref = {"g_a": model.g_a, "h_a": lambda y, m=model: m.h_a(torch.abs(y)), "g_s": model.g_s, "h_s": model.h_s}
            for n in DPU_ORDER:
                x = batches[n][0].float()
                change[n] = float((nets[n](x) - ref[n](x)).abs().max())
        onnx = export_onnx(_Nets(nets, model.N, model.M), ctx.dir / f"q{q}" / "onnx", tile=t)

        def summ(r):
            return {"dpu_subgraphs": r.n_dpu_subgraphs, "cpu_ops": r.n_cpu_ops, "deployable": bool(r.deployable),
                    "cpu": sorted({f"{op.op}: {op.reason}" for op in r.layers if op.device == "CPU"})}

        out[f"q{q}"] = {
            "rewrites": log, "max_abs_change": change,
            "partition": {"as_trained": {n: summ(r) for n, r in before.items()},
                          "rewritten": {n: summ(r) for n, r in after.items()}},
            "onnx": {n: {k: v for k, v in r.items() if k != "path"} for n, r in onnx.items()},
        }
        write_json(ctx.dir / f"q{q}" / "partition.json",
                   {"as_trained": {n: r.to_dict() for n, r in before.items()},
                    "rewritten": {n: r.to_dict() for n, r in after.items()}})
        if any(type(m).__name__ == "GDN" for m in model.modules()):
            out[f"q{q}"]["gdn_variants"] = _gdn_variants(model, cfg)
        deploy = all(out[f"q{q}"]["partition"]["rewritten"][n]["deployable"] for n in DPU_ORDER)
        print(f"rewrite q{q}: " + ", ".join(
            f"{n} {out[f'q{q}']['partition']['as_trained'][n]['dpu_subgraphs']}/"
            f"{out[f'q{q}']['partition']['as_trained'][n]['cpu_ops']} -> "
            f"{out[f'q{q}']['partition']['rewritten'][n]['dpu_subgraphs']}/"
            f"{out[f'q{q}']['partition']['rewritten'][n]['cpu_ops']}" for n in DPU_ORDER)
            + f" (DPU subgraphs/CPU ops); {'every network deploys' if deploy else 'NOT deployable'}; "
            f"max |change| {max(change.values()):.2e}")
    return {"model": cfg.model, "qualities": out}


def _gdn_variants(model, cfg) -> dict:
    """GDN's DPU replacements measured (``quantize/gdn_variants.py``): partition and error of each."""
    from functools import partial

    from compile.partition import partition_hyperprior
    from pipelines.paths import dicom_inputs
    from quantize.gdn_variants import format_report, measure_gdn_variants, sample_tiles

    files = dicom_inputs([data_dir(cfg)])[:8]
    tiles, calib = sample_tiles(files, seed=1234, per_image=1), sample_tiles(files, seed=99, per_image=1)
    rep = measure_gdn_variants(model, tiles, calib, partition_fn=partial(partition_hyperprior, tile=cfg.tile))
    print(format_report(rep))
    return rep


def _quantizer(cfg) -> str:
    from quantize import nndct

    if cfg.quantizer == "builtin":
        return "builtin"
    if nndct.available():
        return "nndct"
    if cfg.quantizer == "nndct":
        raise StageError("--quantizer nndct: pytorch_nndct is not importable here (it lives in the Vitis AI docker); "
                         "use the docker job the calibrate stage writes, or --quantizer builtin")
    return "builtin"


@stage("calibrate")
def run_calibrate(ctx: Context) -> dict:
    from arch import load_arch
    from quantize.codec_int8 import calibrate_codec

    cfg, out = ctx.cfg, {}
    backend = _quantizer(cfg)
    arch = load_arch(str(board_arch(cfg.board)))
    tiles = _tiles(cfg, cfg.calib_tiles)
    if backend == "nndct":  # pragma: no cover - needs the Vitis AI docker
        print(f"calibrate: Vitis AI's nndct quantizer (xmodels for vai_c_xir) and the builtin one (the emulator "
              f"package); {tiles.shape[0]} tiles from {data_dir(cfg)}")
    else:
        print(f"calibrate: builtin DPU quantizer (pytorch_nndct is not importable here); {tiles.shape[0]} tiles "
              f"from {data_dir(cfg)}")
    for q in cfg.qualities:
        ctx.need("rewrite", "report.json")
        model = _model(cfg, q)
        specs, rep = calibrate_codec(model, tiles, arch, name=cfg.model,
                                     progress=lambda n, q=q: print(f"  q{q}: {n}", flush=True))
        write_json(ctx.dir / f"q{q}.specs.json", {n: s.to_dict() for n, s in specs.items()})
        # the same job for the real quantizer, to run inside the Vitis AI 2.5 docker
        job = _docker_job(ctx, q, model, tiles, arch)
        out[f"q{q}"] = {"networks": rep["networks"], "wall_s": rep["wall_s"], "nndct_job": job}
        if backend == "nndct":  # pragma: no cover - needs the Vitis AI docker
            out[f"q{q}"]["nndct"] = _nndct_in_process(ctx, q, model, tiles, arch)
        worst = min((ls["sqnr_db"], n, ls["name"]) for n, s in rep["networks"].items() for ls in s["layers"])
        print(f"  q{q}: worst layer SQNR {worst[0]:.1f} dB ({worst[1]}.{worst[2]}), {rep['wall_s']:.0f} s")
    return {"model": cfg.model, "quantizer": backend, "calibration_tiles": int(tiles.shape[0]),
            "data": str(data_dir(cfg)), "qualities": out}


def _docker_job(ctx, q, model, tiles, arch) -> dict:
    """The same calibration for the real quantizer: one vai_q_pytorch job per network for the Vitis AI
    docker (``quantize/nndct.py``); its xmodels are what ``make compile`` hands to vai_c_xir."""
    from quantize.codec_int8 import calibration_batches, dpu_networks
    from quantize.nndct import render_docker_job

    nets, _ = dpu_networks(model)
    batches = calibration_batches(model, tiles[:8])
    jobs = {}
    for n, net in nets.items():
        job = render_docker_job(n, net, [b.float() for b in batches[n]], ctx.dir / "nndct" / f"q{q}" / n, arch)
        jobs[n] = {"run": str(job.run_sh), "xmodel": str(job.xmodel)}
    return jobs


def _qat(cfg, q, model, specs):
    """Quantization-aware fine-tuning (``quantize/qat.py``) on the training split of the data."""
    from models import zoo
    from models.data import CropSampler, list_files, load_images, split_files
    from quantize.qat import finetune, fix_positions_sha256

    root = data_dir(cfg)
    train, _ = split_files(list_files(root))
    if not train:
        raise StageError(f"{root}: no training images for quantization-aware fine-tuning")
    torch.set_num_threads(1)
    sampler = CropSampler(load_images(root, train), 128, seed=200 + q)
    dep = finetune(model, specs, sampler, lmbda=zoo.entry(cfg.model, q)["lambda"], steps=cfg.qat_steps,
                   seed=100 + q, log=lambda s: print(f"  qat q{q}: {s}", flush=True))
    return dep, {"steps": cfg.qat_steps, "lr": 3e-5, "batch": 8, "crop": 128, "seed": 100 + q,
                 "fix_positions_sha256": fix_positions_sha256(specs)}


def _nndct_in_process(ctx, q, model, tiles, arch) -> dict:  # pragma: no cover - needs the Vitis AI docker
    """Run vai_q_pytorch here (inside the Vitis AI docker): each network's xmodel lands where the docker job
    would write it, ``nndct/q<Q>/<net>/quantize_result/<net>_int.xmodel``, which ``make compile`` reads. The
    emulator package keeps the builtin fix positions; the runtime's VART runner checks the xmodel's tensor
    fix points against them at load and refuses a mismatch."""
    from quantize.codec_int8 import calibration_batches, dpu_networks
    from quantize.nndct import RESULT_DIR, quantize_nndct

    nets, _ = dpu_networks(model)
    batches = calibration_batches(model, tiles)
    res = {}
    for n, net in nets.items():
        r = quantize_nndct(net, [b.float() for b in batches[n]], ctx.dir / "nndct" / f"q{q}" / n / RESULT_DIR,
                           arch["dpu"]["fingerprint"], net_name=n)
        res[n] = r.to_dict()
    return res


@stage("quantize")
def run_quantize(ctx: Context) -> dict:
    from models import zoo
    from quantize.builtin import QuantSpec
    from quantize.codec_int8 import build_int8_package
    from quantize.report import write_layer_report

    cfg, out = ctx.cfg, {}
    check = _tiles(cfg, 2)
    for q in cfg.qualities:
        specs_path = ctx.need("calibrate", f"q{q}.specs.json")
        specs = {n: QuantSpec.from_dict(d) for n, d in json.loads(specs_path.read_text()).items()}
        model = _model(cfg, q)
        weights = zoo.checkpoint_path(cfg.model, q)
        extra = {"lambda": zoo.entry(cfg.model, q)["lambda"]}
        if cfg.qat_steps:
            model, extra["qat"] = _qat(cfg, q, model, specs)
        pkg, rep = build_int8_package(model, specs, check, name=cfg.model, quality=q, tile=cfg.tile,
                                      weights_sha256=zoo.sha256_file(weights), extra_meta=extra)
        data = pkg.to_bytes()
        path = ctx.dir / f"q{q}.int8.npz"
        atomic_write(path, data, force=True)
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        committed = zoo.int8_package_path(cfg.model, q)
        rep["package"] = {"path": path.name, "sha256": sha, "bytes": len(data),
                          "committed": committed.name if committed.is_file() else None,
                          "equals_committed": committed.is_file() and zoo.sha256_file(committed) == sha}
        out[f"q{q}"] = rep
        bad = [n for n, r in rep["networks"].items() if not r["emulator_equals_fakequant"]]
        if bad:
            raise StageError(f"q{q}: the integer emulator and the fake-quant model disagree on {bad}")
        print(f"quantize q{q}: {path} ({len(data) / 1e6:.2f} MB, sha256 {sha[:16]}..), emulator == fake-quant "
              f"on every network; scale index agreement with float h_s {rep['scale_index_agreement']:.3f}")
    write_layer_report(out, ctx.dir / "layers.json", ctx.dir / "report.html", model=cfg.model)
    return {"model": cfg.model, "qualities": out}


@stage("compile")
def run_compile(ctx: Context) -> dict:
    from arch import load_arch
    from compile import roofline, vaic
    from quantize.codec_int8 import DPU_ORDER, dpu_networks
    from quantize.nndct import RESULT_DIR

    cfg, out = ctx.cfg, {}
    arch = load_arch(str(board_arch(cfg.board)))
    tool = vaic.find_toolchain()
    if tool is None:
        print("compile: vai_c_xir is not available here (it lives in the Vitis AI docker): no .xmodel is "
              "produced; the int8 packages are packaged for the integer emulator, with the partition report "
              "and a roofline latency estimate")
    for q in cfg.qualities:
        pkg = ctx.need("quantize", f"q{q}.int8.npz")
        atomic_write(ctx.dir / f"q{q}.int8.npz", pkg.read_bytes(), force=True)
        model = _model(cfg, q)
        nets, _ = dpu_networks(model)
        t = cfg.tile
        shapes = {"g_a": (1, 1, t, t), "h_a": (1, model.M, t // 16, t // 16), "g_s": (1, model.M, t // 16, t // 16),
                  "h_s": (1, model.N, t // 64, t // 64)}
        est = {n: roofline.estimate(nets[n], shapes[n], arch, name=n) for n in DPU_ORDER}
        compiled = None
        if tool is not None:  # pragma: no cover - needs the Vitis AI toolchain
            arch_json = vaic.write_arch_json(arch, ctx.dir / "arch.json")
            compiled = {}
            for n in DPU_ORDER:
                xq = stage_dir(cfg, "calibrate") / "nndct" / f"q{q}" / n / RESULT_DIR / f"{n}_int.xmodel"
                if not xq.is_file():
                    raise StageError(f"{xq} missing: run the calibrate stage's nndct job (its run.sh) in the "
                                     "Vitis AI docker first")
                res = vaic.compile_network(ctx.input(xq), arch_json, ctx.dir / f"q{q}" / n, n, toolchain=tool)
                compiled[n] = str(res.xmodel)
        out[f"q{q}"] = {"package": f"q{q}.int8.npz", "xmodels": compiled,
                        "roofline_ms": {n: est[n]["total"]["ms"] for n in DPU_ORDER}, "roofline": est}
        print(f"compile q{q}: roofline estimate per 256x256 tile on the {arch.get('name', 'DPU')}: " + ", ".join(
            f"{n} {est[n]['total']['ms']:.2f} ms" for n in DPU_ORDER))
    write_json(ctx.dir / "roofline.json", {k: v["roofline"] for k, v in out.items()})
    return {"model": cfg.model, "toolchain": None if tool is None else tool.kind, "xmodel": tool is not None,
            "qualities": out, "tile": cfg.tile,
            "note": "vai_c_xir not available: emulator package, no xmodel" if tool is None else None}
