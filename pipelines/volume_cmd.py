"""Volumes (seed 001): ``medcodec compress SERIES_DIR OUT.mdc``, ``decompress OUT.mdc DIR``,
``medcodec train-mlp3d`` and ``medcodec volume-eval``.

A series folder compressed into one ``.mdc`` file goes through ``codec/volume.py``: the int8 MLP
predicts each slice from the three before it, the residual layer codes the slice against that
prediction (lossless, or near-lossless with ``--max-error D``). Decompressing writes the folder back:
every slice under its original name with every original element; lossless slices keep their SOP
Instance UID and are not marked lossy.
"""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from codec import lsq, residual, sources
from codec import volume as V
from codec.dicom import merge_dicom
from codec.errors import MedcodecError, OutputExistsError
from codec.fileio import atomic_write, check_writable
from codec.parallel import default_workers
from codec.series import read_series
from models import zoo

#: what ``compress SERIES_DIR OUT.mdc`` uses without --model: measured on the shared CT and MR series, the
#: previous decoded slice as x_hat codes 0.2-0.8 % smaller than seed 001's MLP and is 15-20x faster on a
#: CPU (docs/volume.md); the MLP models stay one option away
DEFAULT_MODEL = "prev-slice"
#: seed 001's predictor: what train-mlp3d trains, volume-eval measures and the demo shows
MLP_MODEL = "mlp3d-pyramid"


def is_volume_request(inp: Path, out: Path) -> bool:
    """A folder in and a ``.mdc`` file out: code the folder as one volume."""
    return inp.is_dir() and out.suffix.lower() == ".mdc"


def _bar(total, desc, disable):
    bar = tqdm(total=total, desc=desc, unit="slice", disable=disable, file=sys.stderr)
    return bar, (lambda n: bar.update(n))


def compress_series(inp: Path, out: Path, *, model: str = DEFAULT_MODEL, max_error: int = 0,
                    force: bool = False, progress: bool = True, residual_predictor: str = "ls",
                    group: int = V.GROUP) -> dict:
    if model not in zoo.VOLUME_ZOO:
        raise MedcodecError(f"{model} is not a volume model; a series folder -> one .mdc needs one of "
                            f"{', '.join(sorted(zoo.VOLUME_ZOO))} (or give an output folder to code slice by slice)")
    out = check_writable(out, force)
    predictor, sha = zoo.load_volume_predictor(model)
    ser = read_series(inp)
    t0 = time.perf_counter()
    bar, step = _bar(ser.volume.shape[0], "compress", not progress)
    try:
        data = V.compress_volume(ser.volume, predictor, model=model, package_sha256=sha,
                                 bits_stored=ser.bits_stored, signed=ser.signed, metas=ser.metas, names=ser.names,
                                 max_error=max_error, progress=step, residual_predictor=residual_predictor,
                                 group=group)
    finally:
        bar.close()
    enc_s = time.perf_counter() - t0
    atomic_write(out, data, force=force)
    return {"bytes": len(data), "bpp": 8 * len(data) / ser.volume.size, "encode_s": enc_s,
            "slices": ser.volume.shape[0], "shape": ser.volume.shape}


def _write_folder(out: Path, files: dict[str, bytes], force: bool) -> None:
    """Write every file into a new folder beside ``out``, then rename it into place (the old one, with
    --force, goes only after the new one is complete)."""
    if out.exists() and not force:
        raise OutputExistsError(out)
    if out.exists() and not out.is_dir():
        raise MedcodecError(f"{out}: exists and is not a folder")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise MedcodecError(f"{out}: directory {parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            old.rmdir()
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def parse_slices(text: str) -> list[int]:
    """``"0,5-9"`` -> [0, 5, 6, 7, 8, 9] (positions from 0; a bad list is a one-line error)."""
    out: set[int] = set()
    for part in text.split(","):
        a, sep, b = part.strip().partition("-")
        try:
            lo, hi = int(a), int(b) if sep else int(a)
        except ValueError:
            raise MedcodecError(f"--slices: {part.strip()!r} is not N or N-M (positions from 0)") from None
        if lo < 0 or hi < lo:
            raise MedcodecError(f"--slices: {part.strip()!r} is not N or N-M with 0 <= N <= M")
        out.update(range(lo, hi + 1))
    return sorted(out)


def decompress_series(inp: Path, out: Path, *, force: bool = False, progress: bool = True,
                      slices: list[int] | None = None) -> dict:
    data = inp.read_bytes()
    try:
        head, _, _ = V.read_volume(data)
    except MedcodecError as exc:
        raise MedcodecError(f"{inp}: {exc}") from None
    if out.suffix.lower() in (".dcm", ".dicom", ".npy", ".png", ".mdc"):
        raise MedcodecError(f"{inp}: holds a volume of {head['frames']} slices; name an output folder, not {out.name}")
    if out.exists() and not force:
        raise OutputExistsError(out)
    if head["model"] not in zoo.VOLUME_ZOO:
        raise MedcodecError(f"{inp}: written by unknown volume model {head['model']!r}")
    predictor, sha = zoo.load_volume_predictor(head["model"])
    if sha != head["checkpoint_sha256"]:
        raise MedcodecError(f"{inp}: model mismatch: written with {head['model']} package "
                            f"{head['checkpoint_sha256'][:12]}, this installation has {sha[:12]}")
    if slices is not None and slices and slices[-1] >= head["frames"]:
        raise MedcodecError(f"{inp}: --slices asks for slice {slices[-1]}; the file has slices 0..{head['frames'] - 1}")
    t0 = time.perf_counter()
    # with --slices only some groups are decoded, up to their last slice asked for: no fixed total
    bar, step = _bar(head["frames"] if slices is None else None, "decompress", not progress)
    try:
        head, vol, metas = V.decompress_volume(data, predictor, progress=step, slices=slices)
    except MedcodecError as exc:
        raise MedcodecError(f"{inp}: {exc}") from None
    finally:
        bar.close()
    dec_s = time.perf_counter() - t0
    files = {}
    per_slice = max(1, len(data) // head["frames"])
    which = list(range(head["frames"])) if slices is None else slices
    for k, i in enumerate(which):
        name = head["names"][i]
        if head["source"] == "dicom":
            files[name] = merge_dicom(metas[i], vol[k], sources.lossy_info(head, vol[k], per_slice))
        else:
            files[name] = sources.encode_output({"source": "npy"}, vol[k], None, per_slice)
    _write_folder(out, files, force)
    return {"decode_s": dec_s, "slices": int(vol.shape[0]), "shape": vol.shape, "head": head, "volume": vol}


# -- train-mlp3d ------------------------------------------------------------------------------------
def _run_train(args) -> int:
    try:
        from models.mlp3d import TrainConfig, train
        from quantize.mlp3d_int8 import export_int8
    except ImportError as exc:
        raise MedcodecError(f"training needs torch: {exc}") from None
    trainable = sorted(k for k, v in zoo.VOLUME_ZOO.items() if v["package"])
    if args.model not in trainable:
        raise MedcodecError(f"{args.model}: not a trainable volume model ({', '.join(trainable)})")
    if args.steps < 1 or args.batch < 1 or not 2 <= args.train_slices <= 19:
        raise MedcodecError("--steps and --batch must be positive, --train-slices in 2..19")
    cfg = TrainConfig(out=args.out or f"runs/{args.model}", model=args.model, data=args.data,
                      train_slices=args.train_slices, samples_per_slice=args.samples_per_slice, steps=args.steps,
                      batch=args.batch, lr=args.lr, lmbda=args.lmbda, seed=args.seed, threads=args.threads,
                      progress=not args.no_progress,
                      hidden=tuple(int(h) for h in args.hidden.split(",")) if args.hidden else None,
                      command="medcodec " + shlex.join(sys.argv[1:]))
    try:
        rec = train(cfg, export_int8)
    except FileNotFoundError as exc:
        raise MedcodecError(str(exc)) from None
    v = rec["val"]
    print(f"wrote {cfg.out}/{args.model}.npz (sha256 {rec['package_sha256'][:16]}...); held-out MAE "
          f"{v['mae_units']:.2f} (float) / {v['mae_units_int8']:.2f} (int8) vs {v['mae_units_previous_slice']:.2f} "
          f"for the previous slice (units of 2**shift)")
    return 0


# -- volume-eval ------------------------------------------------------------------------------------
LEVELS = (1, 2, 4)


def _series_dirs(data: Path, given: list[str]) -> dict[str, Path]:
    from models.mlp3d import SERIES

    if given:
        return {Path(g).name: Path(g) for g in given}
    return {k: data / v for k, v in SERIES.items()}


def dpu_estimate(model: str, rows: int, cols: int) -> dict:
    """Where the MLP would run: the partition check and the roofline latency of one slice's call
    (a chain of 1x1 convolutions over the (features, rows, cols) map) on the arch's DPU."""
    from compile.partition import partition
    from compile.roofline import estimate
    from models import registry

    net = registry.create(model).net
    shape = (1, net[0].in_channels, rows, cols)
    rep = partition(net, shape, name=model)
    est = estimate(net, shape, name=model)
    return {"deployable": rep.deployable, "verdict": rep.verdict, "slice_shape": [rows, cols],
            "macs_per_slice": est["total"]["macs"], "slice_ms": est["total"]["ms"],
            "compute_ms": est["total"]["compute_ms"], "memory_ms": est["total"]["memory_ms"]}


def evaluate_series(folder: Path, models: list[str], levels=LEVELS, with_classical: bool = True,
                    holdout_from: int = 12, progress: bool = False) -> dict:
    """Lossless and near-lossless bpp of the volume models, the residual layer alone, the previous slice as
    x_hat and the classical codecs on one series, every decode verified; through real files for the volume
    models. ``bpp`` counts coded pixel data only for every method (the volume models' slice streams; bare
    codestreams for the classical codecs); ``file_bpp`` is the whole .mdc with its HEAD and the deflated
    DICOM metadata of every slice."""
    from pipelines import classical
    from pipelines.residual_eval import _classical

    ser = read_series(folder)
    vol = ser.volume
    n = vol.size
    rec: dict = {"series": folder.name, "shape": list(vol.shape), "bits_stored": ser.bits_stored,
                 "modality": ser.modality, "methods": {}, "errors": []}

    def fail(method, setting, msg):
        rec["errors"].append(f"{method} {setting}: {msg}")

    def slice_bpp(streams):
        per = [8 * len(s) / vol[0].size for s in streams]
        return per, float(np.mean(per[holdout_from:])) if len(per) > holdout_from else None

    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for d in (0,) + tuple(levels):
                mdc, back = Path(tmp) / f"{model}-{d}.mdc", Path(tmp) / f"{model}-{d}"
                r = compress_series(folder, mdc, model=model, max_error=d, progress=progress)
                dr = decompress_series(mdc, back, progress=progress)
                err = int(np.abs(dr["volume"].astype(np.int64) - vol).max())
                if err > d:
                    fail(model, f"D={d}", f"max error {err} > {d}")
                _, _, streams = V.read_volume(mdc.read_bytes())
                per, held = slice_bpp(streams)
                coded = sum(len(st) for st in streams)  # the slices' streams, as for the other methods
                rec["methods"].setdefault(model, {})[str(d)] = {
                    "bytes": coded, "bpp": 8 * coded / n, "file_bytes": r["bytes"], "file_bpp": 8 * r["bytes"] / n,
                    "max_error": err, "encode_s": r["encode_s"],
                    "decode_s": dr["decode_s"], "slice_bpp": per, "holdout_bpp": held}
    # references through the same residual layer: no x_hat (the residual layer alone, what `compress --mode
    # lossless` codes per image), and the previous slice as decoded as x_hat (the prev-slice model, no file)
    for name, chained in (("residual-only", False), ("previous-slice", True)):
        for d in (0,) + tuple(levels):
            t0 = time.perf_counter()
            streams, prev = [], None
            for s in range(vol.shape[0]):
                enc = residual.encode(vol[s], x_hat=prev, max_error=d)
                streams.append(enc.data)
                prev = np.asarray(enc.recon, dtype=vol.dtype) if chained else None
            enc_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            dec, prev = [], None
            for st in streams:
                x = residual.decode(st, x_hat=prev, shape=vol.shape[1:], dtype=vol.dtype)
                dec.append(x)
                prev = x if chained else None
            dec_s = time.perf_counter() - t0
            err = int(np.abs(np.stack(dec).astype(np.int64) - vol).max())
            if err > d:
                fail(name, f"D={d}", f"max error {err} > {d}")
            per, held = slice_bpp(streams)
            coded = sum(len(st) for st in streams)
            rec["methods"].setdefault(name, {})[str(d)] = {
                "bytes": coded, "bpp": 8 * coded / n, "max_error": err, "encode_s": enc_s, "decode_s": dec_s,
                "slice_bpp": per, "holdout_bpp": held}
    rec["dpu"] = {m: dpu_estimate(m, vol.shape[1], vol.shape[2]) for m in models if zoo.VOLUME_ZOO[m]["package"]}
    if with_classical:
        c = _classical(vol, ser.bits_stored, ser.signed, levels, fail)
        for name, v in c["lossless"].items():
            rec["methods"].setdefault(name, {})["0"] = v
        for d, v in c["near"].items():
            rec["methods"].setdefault("jpegls", {})[d] = v
        if "htj2k" in classical.CODECS:  # HTJ2K lossless too (residual-eval's table leaves it to `baseline`)
            enc = classical.encode_image("htj2k", vol, ser.bits_stored, ser.signed)
            timing: dict = {}
            dec = classical.decode_image("htj2k", enc, timing=timing)
            if not np.array_equal(dec, vol):
                fail("htj2k", "lossless", "decoded volume is not bit-exact")
            rec["methods"]["htj2k"] = {"0": {"bytes": enc.n_bytes, "bpp": 8 * enc.n_bytes / n,
                                             "encode_s": enc.encode_s, "decode_s": timing["decode_s"]}}
    return rec


def format_volume_table(records: list[dict], levels=LEVELS) -> str:
    lines = []
    for rec in records:
        m = rec["methods"]
        classical_ = [(v["0"]["bpp"], k) for k, v in m.items()
                      if "0" in v and k not in zoo.VOLUME_ZOO and k not in ("residual-only", "previous-slice")]
        best = min(classical_) if classical_ else None
        lines.append(f"\n{rec['series']} ({rec['modality']}, {'x'.join(map(str, rec['shape']))}, "
                     f"{rec['bits_stored']}-bit): lossless bpp"
                     + (f" (vs best classical {best[1]} {best[0]:.3f})" if best else ""))
        lines.append("| method | bpp | vs best | held-out slices bpp | encode s | decode s | "
                     + " | ".join(f"D={d} bpp" for d in levels) + " |")
        lines.append("|---" * (6 + len(levels)) + "|")
        nan = float("nan")
        for k, v in m.items():
            v0 = v.get("0", {"bpp": nan, "encode_s": nan, "decode_s": nan})
            held = v0.get("holdout_bpp")
            near = " | ".join(f"{v[str(d)]['bpp']:.3f}" if str(d) in v else "" for d in levels)
            vs = f"{100 * (v0['bpp'] / best[0] - 1):+.1f} %" if best else ""
            lines.append(f"| {k} | {v0['bpp']:.3f} | {vs} | {'' if held is None else f'{held:.3f}'} | "
                         f"{v0['encode_s']:.2f} | {v0['decode_s']:.2f} | {near} |")
            if "file_bpp" in v0:
                lines.append(f"| {k}: the whole .mdc file | {v0['file_bpp']:.3f} | | | | | |")
        for k, d in rec.get("dpu", {}).items():
            lines.append(f"{k} on the DPU (roofline): {d['slice_ms']:.0f} ms per {d['slice_shape'][0]}x"
                         f"{d['slice_shape'][1]} slice ({d['macs_per_slice'] / 1e9:.0f} GMAC; {d['verdict']})")
        if rec["errors"]:
            lines.append("errors: " + "; ".join(rec["errors"]))
    return "\n".join(lines)


def _run_eval(args) -> int:
    from pipelines.classical import codec_versions

    data = Path(args.data) if args.data else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    dirs = _series_dirs(data, args.series)
    models = [m.strip() for m in args.model.split(",") if m.strip() and m.strip() != "none"]
    for m in models:
        if m not in zoo.VOLUME_ZOO:
            raise MedcodecError(f"{m}: not a volume model")
    records = []
    for name, folder in dirs.items():
        if not folder.is_dir():
            raise MedcodecError(f"{folder}: no such series folder")
        records.append(evaluate_series(folder, models, with_classical=not args.no_classical,
                                       progress=not args.no_progress))
        print(f"{name}: done", file=sys.stderr)
    table = format_volume_table(records)
    print(table)
    if args.json:
        out = {"records": records, "table": table, "versions": {**codec_versions(), "python": platform.python_version()},
               "command": "medcodec " + shlex.join(sys.argv[1:]), "group": V.GROUP,
               "workers": default_workers(), "kernels": lsq.backend()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(args.json), (json.dumps(out, indent=1) + "\n").encode(), force=True)
    return 1 if any(r["errors"] for r in records) else 0


def register(sub) -> None:
    t = sub.add_parser("train-mlp3d", help="train seed 001's volume predictor (MLP over a 3-D neighbourhood)",
                       description="Train the voxel predictor of a volume model on the 20-slice CT and MR series of "
                                   "../shared/data (loss MAE + lambda (1 - |PCC|)), then export it to int8 with the "
                                   "builtin DPU quantizer. Writes OUT/<model>.{pt,npz,json}.")
    t.add_argument("--model", default=MLP_MODEL, help=f"mlp3d-pyramid or mlp3d-cube (default {MLP_MODEL})")
    t.add_argument("--steps", type=int, default=8000, help="optimizer steps (default 8000)")
    t.add_argument("--batch", type=int, default=256, help="voxels per step (default 256, the seed's)")
    t.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4, the seed's)")
    t.add_argument("--lambda", dest="lmbda", type=float, default=0.0,
                   help="weight of the seed's (1 - |PCC|) term (default 0: 0.5 was measured to train an anti-correlated, "
                        "worse-than-the-previous-slice predictor, since |PCC| rewards PCC = -1 as much as +1)")
    t.add_argument("--train-slices", type=int, default=12,
                   help="slices 1..N-1 of each series are training targets, N..19 are held back (default 12)")
    t.add_argument("--samples-per-slice", type=int, default=6000, help="random voxels per training slice (default 6000)")
    t.add_argument("--hidden", default=None, help="hidden widths, e.g. 256,128 (default the seed's 1024,512,256,128)")
    t.add_argument("--data", default=None, help="data directory (default ../shared/data beside the repository)")
    t.add_argument("--out", default=None, help="output folder (default runs/MODEL)")
    t.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    t.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_run_train)

    e = sub.add_parser("volume-eval", help="lossless / near-lossless volumes: seed 001's predictor vs the residual "
                                           "layer and JPEG-LS, JPEG 2000, HTJ2K, JPEG-XL",
                       description="Code each series with the volume models (through real .mdc files, every decode "
                                   "verified), with the residual layer alone and with the classical codecs, "
                                   "lossless and near-lossless (D = 1, 2, 4); bpp, held-out-slice bpp, speed.")
    e.add_argument("series", nargs="*", help="series folders (default: the CT and MR series of ../shared/data)")
    e.add_argument("--data", default=None, help="data directory for the default series")
    e.add_argument("--model", default=MLP_MODEL, help="volume models, comma-separated, or none (only the references and the classical "
                                         "codecs) (default mlp3d-pyramid; prev-slice is always measured as the previous-slice reference)")
    e.add_argument("--json", default=None, help="write the records here")
    e.add_argument("--no-classical", action="store_true", help="skip the classical codecs")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(func=_run_eval)
