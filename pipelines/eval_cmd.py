"""``medcodec eval``: the learned codec against JPEG 2000 and JPEG-XL on real files.

For every DICOM under DATA_DIR and every quality of the model, the image is
compressed to a real ``.mdc`` file and decompressed from it; bpp comes from the
file's size on disk. JPEG 2000 and JPEG-XL run in the same process on the same
image at the same bpp (rate-targeted to each learned point), so every learned
point has a classical twin. Per modality the report gives the mean curves, PSNR
interpolated at 0.5 and 1 bpp, and the Bjøntegaard BD-rate against each
classical codec (on the mean curves, and the mean of per-image BD-rates), plus
encode/decode speed; an RD plot per modality is written as PNG.

PSNR here is at the image's own bit depth (peak 2^BitsStored - 1) unless a key
says ``range`` (peak = the image's own max - min); "8-bit-equivalent" PSNR, the
seed's convention (images normalised to 0-255), equals ``psnr_range``.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from codec import metrics
from codec.dicom import read_dicom
from codec.errors import MedcodecError
from codec.fileio import atomic_write, check_writable
from models import zoo
from models.data import VALIDATION
from pipelines import classical
from pipelines.baseline import modality_group
from pipelines.compress import compress_file, decompress_file
from pipelines.paths import dicom_inputs

CLASSICAL = ("j2k-lossy", "jxl-lossy")


def register(sub) -> None:
    p = sub.add_parser("eval", help="rate-distortion of a learned codec vs JPEG 2000 / JPEG-XL on a DICOM folder",
                       description="Compress and decompress every image at every quality through real files; "
                                   "compare with JPEG 2000 and JPEG-XL at the same bpp; write JSON and RD plots.")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--json", dest="json_path", required=True, metavar="OUT.json")
    p.add_argument("--model", default="gdn-hyperprior")
    p.add_argument("--backend", default="float",
                   help="comma-separated: float, rewritten, int8 (emulated DPU integers); every one is run on "
                        "the same images, the first one sets the classical codecs' target bpp (default float)")
    p.add_argument("--qualities", default=None, help="comma-separated qualities (default: all in the zoo)")
    p.add_argument("--plots", default=None, help="folder for RD plots (default: beside OUT.json)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N images (for quick looks)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=run)


def _finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def is_held_out(path: Path) -> bool:
    text = path.as_posix()
    return any(v in text for v in VALIDATION)


def eval_image(path: Path, name: str, qualities: list[int], tmp: Path, threads=None,
               backends: tuple[str, ...] = ("float",)) -> dict:
    img = read_dicom(path)
    px = img.pixels
    rec = {"path": str(path), "modality": img.modality, "group": modality_group(img.modality),
           "rows": img.rows, "cols": img.cols, "frames": img.frames, "bits_stored": img.bits_stored,
           "held_out": is_held_out(path), "learned": [], "classical": {c: [] for c in CLASSICAL},
           "backends": {b: [] for b in backends}}
    for q in qualities:
        for b in backends:
            mdc = tmp / f"q{q}-{b}.mdc"
            r = compress_file(path, mdc, name, q, force=True, threads=threads, backend=b)
            d = decompress_file(mdc, None, force=True, threads=threads, backend=b)
            size = mdc.stat().st_size
            m = metrics.image_metrics(px, d["pixels"], img.bits_stored)
            rec["backends"][b].append({
                "quality": q, "bytes": size, "bpp": metrics.file_bpp(mdc, img.rows, img.cols, img.frames),
                "encode_s": r["encode_s"], "decode_s": d["decode_s"],
                **{k: _finite(v) for k, v in m.items()},
            })
        rec["learned"].append(rec["backends"][backends[0]][-1])
        for cname in CLASSICAL:
            codec = classical.get_codec(cname)
            res = classical.encode_at_bpp(codec, px, rec["learned"][-1]["bpp"], bits_stored=img.bits_stored,
                                          signed=img.signed)
            timing: dict = {}
            dec = classical.decode_image(codec, res.encoded, timing=timing)
            mc = metrics.image_metrics(px, dec, img.bits_stored)
            rec["classical"][cname].append({
                "target_bpp": rec["learned"][-1]["bpp"], "bpp": res.bpp, "within_tol": res.within_tol,
                "encode_s": res.encoded.encode_s, "decode_s": timing["decode_s"],
                **{k: _finite(v) for k, v in mc.items()},
            })
    return rec


def _curve(points, key="psnr_bits"):
    pts = sorted((p["bpp"], p[key]) for p in points if p.get(key) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


#: BD-rate integrates over the PSNR interval both curves cover; over less than this (dB) the cubic fits
#: extrapolate wildly (flat curves gave +1e64 %), so the BD-rate is reported as undefined
MIN_BD_OVERLAP_DB = 1.0


def _bd(anchor, test, key="psnr_bits"):
    ra, da = _curve(anchor, key)
    rt, dt = _curve(test, key)
    if len(da) < 2 or len(dt) < 2 or min(max(da), max(dt)) - max(min(da), min(dt)) < MIN_BD_OVERLAP_DB:
        return None
    try:
        return metrics.bd_rate(ra, da, rt, dt)
    except ValueError:
        return None


def _interp(points, at: float, key="psnr_bits"):
    r, d = _curve(points, key)
    if len(r) < 2 or not (r[0] <= at <= r[-1]):
        return None
    return float(np.interp(math.log(at), np.log(r), d))


def _mean_curve(recs, section, name=None):
    """Mean bpp and metrics per rate point index across images."""
    series = [r[section] if name is None else r[section][name] for r in recs]
    n = min(len(s) for s in series)
    out = []
    for i in range(n):
        pts = [s[i] for s in series]
        out.append({k: float(np.mean([p[k] for p in pts if p.get(k) is not None]))
                    for k in ("bpp", "psnr_bits", "psnr_range", "ms_ssim", "encode_s", "decode_s")
                    if any(p.get(k) is not None for p in pts)})
    return out


def aggregate(records: list[dict]) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
        if r["held_out"]:
            groups.setdefault(r["group"] + "/held-out", []).append(r)
    out = {}
    for g, recs in sorted(groups.items()):
        learned = _mean_curve(recs, "learned")
        agg = {"images": len(recs), "learned": learned, "classical": {}}
        for c in CLASSICAL:
            cc = _mean_curve(recs, "classical", c)
            per_image = [b for b in (_bd(r["classical"][c], r["learned"]) for r in recs) if b is not None]
            agg["classical"][c] = {
                "curve": cc,
                "bd_rate_mean_curve": _bd(cc, learned),
                "bd_rate_mean_curve_range": _bd(cc, learned, "psnr_range"),
                "bd_rate_per_image_mean": float(np.mean(per_image)) if per_image else None,
                "psnr_at_0.5": _interp(cc, 0.5), "psnr_at_1": _interp(cc, 1.0),
                # the classical twin of every learned point was rate-targeted to the same bpp, so this
                # difference is defined even when the PSNR ranges do not overlap (and BD-rate is not)
                "delta_psnr_same_bpp": float(np.mean([a["psnr_bits"] - b["psnr_bits"] for a, b in zip(learned, cc, strict=False)
                                                      if a.get("psnr_bits") is not None and b.get("psnr_bits") is not None]))
                if learned and cc else None,
            }
        backends = list(recs[0].get("backends", {}))
        agg["backends"] = {}
        for b in backends:
            curve = _mean_curve(recs, "backends", b)
            agg["backends"][b] = {
                "curve": curve,
                "bd_rate_vs_j2k": _bd(agg["classical"]["j2k-lossy"]["curve"], curve),
                "bd_rate_vs_j2k_range": _bd(agg["classical"]["j2k-lossy"]["curve"], curve, "psnr_range"),
                "bd_rate_vs_jxl": _bd(agg["classical"]["jxl-lossy"]["curve"], curve),
                # the cost of this backend against the first one (e.g. int8 vs float), on the same images
                f"bd_rate_vs_{backends[0]}": _bd(learned, curve),
                f"bd_rate_vs_{backends[0]}_range": _bd(learned, curve, "psnr_range"),
                # the same rate points side by side (defined even where BD-rate is not)
                f"delta_psnr_range_vs_{backends[0]}": [
                    None if a.get("psnr_range") is None or b.get("psnr_range") is None
                    else b["psnr_range"] - a["psnr_range"] for a, b in zip(learned, curve, strict=False)],
                f"bpp_ratio_vs_{backends[0]}": [b["bpp"] / a["bpp"] for a, b in zip(learned, curve, strict=False)],
                "delta_psnr_vs_j2k_same_bpp": float(np.mean(
                    [a["psnr_bits"] - c["psnr_bits"] for a, c in zip(curve, agg["classical"]["j2k-lossy"]["curve"],
                                                                        strict=False)
                     if a.get("psnr_bits") is not None and c.get("psnr_bits") is not None])) if curve else None,
                "psnr_at_0.5": _interp(curve, 0.5), "psnr_at_1": _interp(curve, 1.0),
            }
        agg["psnr_at_0.5"] = _interp(learned, 0.5)
        agg["psnr_at_1"] = _interp(learned, 1.0)
        agg["psnr_range_at_0.5"] = _interp(learned, 0.5, "psnr_range")
        agg["psnr_range_at_1"] = _interp(learned, 1.0, "psnr_range")
        out[g] = agg
    return out


def plot(aggregates: dict, folder: Path, model: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for g, agg in aggregates.items():
        fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
        r, d = _curve(agg["learned"])
        ax.plot(r, d, "o-", label=model)
        for c, lab in (("j2k-lossy", "JPEG 2000"), ("jxl-lossy", "JPEG-XL")):
            r, d = _curve(agg["classical"][c]["curve"])
            ax.plot(r, d, "s--", label=lab)
        ax.set_xlabel("bpp (from file sizes)")
        ax.set_ylabel("PSNR (dB, peak 2^BitsStored-1)")
        ax.set_title(f"{g}: {agg['images']} images")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        p = folder / f"rd_{g.replace('/', '_')}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths


def format_table(aggregates: dict) -> str:
    lines = ["group              n  PSNR@0.5  PSNR@1  (J2K@0.5  J2K@1)  BD-rate vs J2K  vs JXL  "
             "dPSNR vs J2K  vs JXL  enc s  dec s  (J2K enc/dec s)"]
    for g, a in aggregates.items():
        j, x = a["classical"]["j2k-lossy"], a["classical"]["jxl-lossy"]

        def f(v, spec=".2f"):
            return "-" if v is None else format(v, spec)

        def bd(c):
            v = c["bd_rate_mean_curve"]
            return "no overlap" if v is None else f"{v:+.1f}%"

        enc = np.mean([p.get("encode_s", 0) for p in a["learned"]]) if a["learned"] else None
        dec = np.mean([p.get("decode_s", 0) for p in a["learned"]]) if a["learned"] else None
        jenc = np.mean([p.get("encode_s", 0) for p in j["curve"]]) if j["curve"] else None
        jdec = np.mean([p.get("decode_s", 0) for p in j["curve"]]) if j["curve"] else None
        lines.append(f"{g:17s} {a['images']:3d}  {f(a['psnr_at_0.5']):>8}  {f(a['psnr_at_1']):>6}  "
                     f"({f(j['psnr_at_0.5']):>7}  {f(j['psnr_at_1']):>5})  "
                     f"{bd(j):>14}  {bd(x):>6}  "
                     f"{f(j['delta_psnr_same_bpp'], '+.2f'):>12}  {f(x['delta_psnr_same_bpp'], '+.2f'):>5}  "
                     f"{f(enc)}  {f(dec)}  ({f(jenc, '.3f')}/{f(jdec, '.3f')})")
    lines.append("PSNR in dB at native depth (peak 2^BitsStored-1), interpolated on the mean curve ('-': outside "
                 "it); dPSNR = learned minus classical at the same bpp; BD-rate needs >= 1 dB of overlapping PSNR.")
    return "\n".join(lines)


def format_backends(aggregates: dict, backends) -> str:
    first = backends[0]
    lines = [f"group              backend     BD-rate vs J2K   vs JXL   vs {first}   dPSNR vs J2K  PSNR@0.5  PSNR@1"]
    for g, a in aggregates.items():
        for b in backends:
            x = a["backends"][b]

            def pct(v):
                return "no overlap" if v is None else f"{v:+.1f}%"

            def f(v, spec=".2f"):
                return "-" if v is None else format(v, spec)

            lines.append(f"{g:17s}  {b:10s}  {pct(x['bd_rate_vs_j2k']):>14}  {pct(x['bd_rate_vs_jxl']):>7}  "
                         f"{pct(x[f'bd_rate_vs_{first}']):>9}  {f(x['delta_psnr_vs_j2k_same_bpp'], '+.2f'):>12}  "
                         f"{f(x['psnr_at_0.5']):>8}  {f(x['psnr_at_1']):>6}")
    return "\n".join(lines)


def run(args) -> int:
    out = check_writable(args.json_path, args.force)
    qualities = sorted(zoo.ZOO[args.model]) if args.qualities is None else \
        [int(q) for q in str(args.qualities).split(",")]
    from pipelines.compress import BACKENDS

    backends = tuple(b.strip() for b in str(args.backend).split(",") if b.strip())
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends or len(set(backends)) != len(backends):
        raise MedcodecError(f"--backend {args.backend!r}: give distinct names from {', '.join(BACKENDS)}")
    files = dicom_inputs([args.data_dir])
    if args.limit:
        files = files[: args.limit]
    if not files:
        raise MedcodecError(f"{args.data_dir}: no DICOM files")
    t0 = time.perf_counter()
    records, skipped = [], []
    with tempfile.TemporaryDirectory(prefix="medcodec-eval-") as tmp:
        for f in tqdm(files, desc="eval", unit="img", disable=args.no_progress, file=sys.stderr):
            try:
                records.append(eval_image(f, args.model, qualities, Path(tmp), args.threads, backends))
            except MedcodecError as exc:
                skipped.append({"path": str(f), "reason": str(exc)})
                tqdm.write(f"medcodec eval: skipped: {exc}", file=sys.stderr)
    if not records:
        raise MedcodecError("no image could be evaluated")
    agg = aggregate(records)
    plots = plot(agg, Path(args.plots) if args.plots else out.parent / "plots", args.model)
    result = {"model": args.model, "qualities": qualities, "backends": list(backends), "data_dir": str(args.data_dir),
              "aggregates": agg, "images": records, "skipped": skipped,
              "plots": [str(p) for p in plots], "wall_s": time.perf_counter() - t0}
    atomic_write(out, (json.dumps(result, indent=1) + "\n").encode(), force=args.force)
    print(format_table(agg))
    if len(backends) > 1:
        print(format_backends(agg, backends))
    print(f"wrote {out} and {len(plots)} RD plots; {time.perf_counter() - t0:.0f} s")
    return 0
