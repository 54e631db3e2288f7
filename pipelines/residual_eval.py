"""``medcodec residual-eval``: the residual layer against the classical codecs, per modality.

    medcodec residual-eval DATA_DIR --json build/residual/residual.json [--quality 2] [--jobs 2]

For every DICOM under DATA_DIR (stored values at native depth, coded per frame):

* **residual-only** (``x_hat = None``: the context coder of ``codec/residual.py`` alone): lossless and
  near-lossless at D = 1, 2, 4;
* **lossy + residual** (per ``--quality``: the float learned codec from the zoo, as
  ``medcodec compress`` runs it): the lossy layer's tile streams, then the residual against its
  reconstruction x_hat, lossless and at each D. Bytes = tile streams + residual streams (the
  payload a ``.mdc`` file carries; HEAD, META and chunk framing are not counted, as the classical
  figures count codestreams only);
* **classical** (``pipelines/classical.py``, single-threaded): JPEG-LS, JPEG 2000 (reversible) and
  JPEG-XL lossless; JPEG-LS NEAR = D.

Every decode is checked: bit-exact for lossless, ``|x - decoded| <= D`` for near-lossless (a failure
is recorded, printed, and makes the command exit 1 after writing the JSON). Timings are
``perf_counter`` seconds of the coding calls: the residual coder's encode / decode, the lossy
layer's encode (analysis + entropy coding) and x_hat rebuild (entropy decoding + synthesis), the
classical codecs' calls.

``--model`` / ``--backend`` choose the lossy layer (default the float gdn-hyperprior; ``--backend int8``
with ``--model dpu-hyperprior`` is the DPU's integers on the emulator). ``--include GLOB`` keeps the
files whose path relative to DATA_DIR matches. ``--curves`` measures PSNR-vs-bpp curves instead
(lossy only, lossy + residual over a ladder of D, residual only, JPEG 2000 at the same bpp; JSON, a
table and RD plots): ``pipelines/residual_curves.py``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from codec import gdncodec, lsq, residual
from codec.dicom import read_dicom
from codec.errors import MedcodecError
from codec.fileio import atomic_write, check_writable
from codec.parallel import serial_in_this_process
from pipelines import classical, residual_curves
from pipelines.baseline import GROUPS, _json_safe, _mean, by_group, modality_group
from pipelines.paths import dicom_inputs

LEVELS = (1, 2, 4)
CLASSICAL_LOSSLESS = ("jpegls", "j2k", "jxl")
MODEL = "gdn-hyperprior"
BACKENDS = ("float", "rewritten", "int8")  # pipelines.compress.BACKENDS (not imported here: it loads torch)


# --------------------------------------------------------------------------- one image


def _frames(px: np.ndarray) -> list[np.ndarray]:
    return [px] if px.ndim == 2 else list(px)


def code_frames(frames, x_hats, d: int, predictor: str = "ls"):
    """Encode + decode every frame at bound ``d`` with the residual ``predictor``:
    (encoded streams, decoded frames, encode s, decode s)."""
    encs, outs, enc_s, dec_s = [], [], 0.0, 0.0
    for f, x in enumerate(frames):
        xh = None if x_hats is None else x_hats[f]
        t0 = time.perf_counter()
        enc = residual.encode(x, xh, d, predictor=predictor)
        t1 = time.perf_counter()
        outs.append(residual.decode(enc.data, xh, shape=x.shape, dtype=x.dtype))
        dec_s += time.perf_counter() - t1
        enc_s += t1 - t0
        encs.append(enc)
    return encs, outs, enc_s, dec_s


def _residual_run(frames, x_hats, d: int, predictor: str = "ls") -> tuple[dict, str | None]:
    """Encode + decode every frame at bound ``d``; (record, failure or None)."""
    encs, outs, enc_s, dec_s = code_frames(frames, x_hats, d, predictor)
    err = 0
    for x, out in zip(frames, outs, strict=True):
        if out.dtype != x.dtype or out.shape != x.shape:
            return {}, f"decoded {out.shape} {out.dtype}, expected {x.shape} {x.dtype}"
        err = max(err, int(np.abs(out.astype(np.int64) - x).max()))
    rec = {"residual_bytes": sum(len(e.data) for e in encs), "encode_s": enc_s, "decode_s": dec_s,
           "max_error": err, "packed": any(e.header.packed for e in encs)}
    return rec, (f"max error {err} exceeds D={d}" if err > d else None)


def _classical(px: np.ndarray, bits: int, signed: bool, levels, fail) -> dict:
    out: dict = {"lossless": {}, "near": {}}
    n = px.size
    for name in CLASSICAL_LOSSLESS:
        if name not in classical.CODECS:
            continue
        try:
            enc = classical.encode_image(name, px, bits, signed)
            timing: dict = {}
            dec = classical.decode_image(name, enc, timing=timing)
            if not np.array_equal(dec, px):
                fail(name, "lossless", "decoded image is not bit-exact")
            out["lossless"][name] = {"bytes": enc.n_bytes, "bpp": 8 * enc.n_bytes / n,
                                     "encode_s": enc.encode_s, "decode_s": timing["decode_s"]}
        except Exception as exc:  # a codec failure is recorded, not fatal
            fail(name, "lossless", f"{type(exc).__name__}: {exc}".splitlines()[0])
    if "jpegls-near" in classical.CODECS:
        for d in levels:
            try:
                enc = classical.encode_image("jpegls-near", px, bits, signed, near=d)
                timing = {}
                dec = classical.decode_image("jpegls-near", enc, timing=timing)
                err = int(np.abs(dec.astype(np.int64) - px).max())
                if err > d:
                    fail("jpegls", f"near={d}", f"max error {err} exceeds NEAR={d}")
                out["near"][str(d)] = {"bytes": enc.n_bytes, "bpp": 8 * enc.n_bytes / n, "max_error": err,
                                       "encode_s": enc.encode_s, "decode_s": timing["decode_s"]}
            except Exception as exc:
                fail("jpegls", f"near={d}", f"{type(exc).__name__}: {exc}".splitlines()[0])
    return out


def evaluate_pixels(px: np.ndarray, bits: int, signed: bool, *, qualities=(2,), levels=LEVELS,
                    with_classical: bool = True, threads: int | None = 1, model: str = MODEL,
                    backend: str = "float", residual_predictor: str = "ls") -> tuple[dict, list[dict]]:
    """All the measurements on one image's stored values; (record sections, failures)."""
    failures: list[dict] = []

    def fail(method, setting, msg):
        failures.append({"method": method, "setting": setting, "error": msg})

    frames = _frames(px)
    n = px.size
    rec: dict = {"residual_only": {}, "lossy_residual": {}}
    for d in (0, *levels):
        r, bad = _residual_run(frames, None, d, residual_predictor)
        if bad:
            fail("residual-only", f"D={d}", bad)
        if r:
            r["bpp"] = 8 * r["residual_bytes"] / n
            rec["residual_only"][str(d)] = r
    for q in qualities:
        from pipelines.compress import load_codec  # torch: only when the lossy layer is measured

        nets, pkg = load_codec(model, q, threads, backend)
        src = gdncodec.Source(px, bits, signed)
        timing = gdncodec.Timing()
        t0 = time.perf_counter()
        head, streams = gdncodec.lossy_layer(src, nets, pkg, timing=timing)
        t1 = time.perf_counter()
        x_hats = gdncodec.lossy_reconstruction(head, streams, nets, pkg)
        t2 = time.perf_counter()
        lossy_bytes = sum(len(s) for tile in streams for s in tile)
        sec: dict = {"lossy_bytes": lossy_bytes, "lossy_bpp": 8 * lossy_bytes / n,
                     "lossy_encode_s": t1 - t0, "xhat_s": t2 - t1}
        for d in (0, *levels):
            r, bad = _residual_run(frames, x_hats, d, residual_predictor)
            if bad:
                fail(f"lossy-q{q}+residual", f"D={d}", bad)
            if r:
                r["bytes"] = lossy_bytes + r["residual_bytes"]
                r["bpp"] = 8 * r["bytes"] / n
                sec[str(d)] = r
        rec["lossy_residual"][f"q{q}"] = sec
    if with_classical:
        rec["classical"] = _classical(px, bits, signed, levels, fail)
    return rec, failures


def load_record(path: str, rel: str):
    """(image, pixels, the record's header) of one DICOM, or (None, None, skip reason)."""
    try:
        img = read_dicom(path)
    except MedcodecError as exc:
        return None, None, str(exc).splitlines()[0]
    px = np.asarray(img.pixels)
    if px.ndim not in (2, 3) or px.dtype.kind not in "iu" or px.dtype.itemsize > 2:
        return None, None, f"{path}: unsupported pixel data ({px.shape} {px.dtype})"
    rec = {"path": rel, "modality": img.modality or "", "group": modality_group(img.modality),
           "rows": int(img.rows), "cols": int(img.cols), "frames": int(img.frames),
           "bits_stored": int(img.bits_stored), "signed": bool(img.signed), "dtype": str(px.dtype)}
    return img, px, rec


def evaluate_file(path: str, rel: str, qualities, levels, with_classical: bool, model: str = MODEL,
                  backend: str = "float", residual_predictor: str = "ls") -> dict:
    """One DICOM -> {"record": ...} or {"skip": reason}."""
    img, px, rec = load_record(path, rel)
    if img is None:
        return {"skip": rec}
    t0 = time.perf_counter()
    try:
        sections, failures = evaluate_pixels(px, img.bits_stored, img.signed, qualities=qualities, levels=levels,
                                             with_classical=with_classical, model=model, backend=backend,
                                             residual_predictor=residual_predictor)
    except MedcodecError as exc:
        sections, failures = {}, [{"method": "*", "setting": "*", "error": str(exc).splitlines()[0]}]
    rec.update(sections)
    rec["failures"] = failures
    rec["seconds"] = time.perf_counter() - t0
    return {"record": rec}


# --------------------------------------------------------------------------- aggregation


def _get(rec, *keys):
    for k in keys:
        if not isinstance(rec, dict) or k not in rec:
            return None
        rec = rec[k]
    return rec


def methods(records: list[dict]) -> list[tuple[str, tuple]]:
    """(label, key path to a {D: {...}} or codec section) of every method measured."""
    out = [("residual-only", ("residual_only",))]
    qs = sorted({q for r in records for q in r.get("lossy_residual", {})})
    out += [(f"lossy {q}+residual", ("lossy_residual", q)) for q in qs]
    return out


def aggregate(records: list[dict], levels=LEVELS) -> dict:
    """Per group (and ALL): mean bpp and seconds per image of every method and bound."""
    out = {}
    for g, recs in by_group(records):
        mpix = [r["rows"] * r["cols"] * r["frames"] / 1e6 for r in recs]
        agg: dict = {"images": len(recs), "megapixels": float(sum(mpix)), "methods": {}, "classical": {}}
        for label, path in methods(records):
            per = {}
            for d in (0, *levels):
                rs = [_get(r, *path, str(d)) for r in recs]
                per[str(d)] = {
                    "n": sum(x is not None for x in rs),
                    "mean_bpp": _mean(x and x["bpp"] for x in rs),
                    "mean_encode_s": _mean(x and x["encode_s"] for x in rs),
                    "mean_decode_s": _mean(x and x["decode_s"] for x in rs),
                    "encode_s_per_mpix": _mean(x and x["encode_s"] / m for x, m in zip(rs, mpix, strict=True)),
                    "decode_s_per_mpix": _mean(x and x["decode_s"] / m for x, m in zip(rs, mpix, strict=True)),
                    "max_error": max((x["max_error"] for x in rs if x), default=None),
                }
            if path[0] == "lossy_residual":
                per["lossy_bpp"] = _mean(_get(r, *path, "lossy_bpp") for r in recs)
                per["lossy_encode_s"] = _mean(_get(r, *path, "lossy_encode_s") for r in recs)
                per["xhat_s"] = _mean(_get(r, *path, "xhat_s") for r in recs)
            agg["methods"][label] = per
        sections = [(name, ("lossless", name)) for name in CLASSICAL_LOSSLESS]
        sections += [(f"jpegls-near{d}", ("near", str(d))) for d in levels]
        for key, path in sections:
            rs = [_get(r, "classical", *path) for r in recs]
            if any(rs):
                agg["classical"][key] = {
                    "n": sum(x is not None for x in rs),
                    "mean_bpp": _mean(x and x["bpp"] for x in rs),
                    "mean_encode_s": _mean(x and x["encode_s"] for x in rs),
                    "mean_decode_s": _mean(x and x["decode_s"] for x in rs),
                    "encode_s_per_mpix": _mean(x and x["encode_s"] / m for x, m in zip(rs, mpix, strict=True)),
                    "decode_s_per_mpix": _mean(x and x["decode_s"] / m for x, m in zip(rs, mpix, strict=True)),
                }
        best = [v["mean_bpp"] for k, v in agg["classical"].items() if k in CLASSICAL_LOSSLESS and v["mean_bpp"]]
        agg["best_classical_lossless_bpp"] = min(best) if best else None
        out[g] = agg
    return out


def _fmt(v, spec=".3f"):
    return "-" if v is None else format(v, spec)


def _rel(a, b):
    return "-" if a is None or not b else f"{100 * (a / b - 1):+.1f}%"


def _table(title, header, rows) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    return [title, line(header), *[line(r) for r in rows], ""]


def format_table(aggregates: dict, levels=LEVELS) -> str:
    groups = [g for g in [*GROUPS, "ALL"] if g in aggregates]
    if not groups:
        return "no images\n"
    labels = list(aggregates[groups[-1]]["methods"])
    cl = [c for c in CLASSICAL_LOSSLESS if c in aggregates[groups[-1]]["classical"]]
    names = {"jpegls": "JPEG-LS", "j2k": "J2K", "jxl": "JPEG-XL"}
    lines: list[str] = []
    rows = []
    for g in groups:
        a = aggregates[g]
        best = a["best_classical_lossless_bpp"]
        row = [g, a["images"]]
        for lab in labels:
            v = a["methods"][lab]["0"]["mean_bpp"]
            row += [_fmt(v), _rel(v, best)]
        row += [_fmt(a["classical"].get(c, {}).get("mean_bpp")) for c in cl]
        rows.append(row)
    head = ["group", "n"]
    for lab in labels:
        head += [lab, "vs best"]
    lines += _table("Lossless: mean bpp per image (vs best = against the best classical codec's mean)",
                    head + [names[c] for c in cl], rows)
    for d in levels:
        rows = []
        for g in groups:
            a = aggregates[g]
            jls = a["classical"].get(f"jpegls-near{d}", {}).get("mean_bpp")
            row = [g]
            for lab in labels:
                v = a["methods"][lab][str(d)]["mean_bpp"]
                row += [_fmt(v), _rel(v, jls)]
            rows.append(row + [_fmt(jls)])
        head = ["group"]
        for lab in labels:
            head += [lab, "vs JLS"]
        lines += _table(f"Near-lossless D={d}: mean bpp (max error over all images: "
                        + ", ".join(f"{lab} {aggregates[groups[-1]]['methods'][lab][str(d)]['max_error']}"
                                    for lab in labels) + ")", head + [f"JPEG-LS NEAR={d}"], rows)
    rows = []
    for g in groups:
        a = aggregates[g]
        for lab in labels:
            m = a["methods"][lab]
            extra = ""
            if "lossy_encode_s" in m:
                extra = f"lossy layer enc {_fmt(m['lossy_encode_s'], '.2f')} s, x_hat {_fmt(m['xhat_s'], '.2f')} s"
            rows.append([g, lab, _fmt(m["0"]["encode_s_per_mpix"], ".2f"), _fmt(m["0"]["decode_s_per_mpix"], ".2f"),
                         _fmt(m[str(levels[-1])]["encode_s_per_mpix"], ".2f") if levels else "-", extra])
        for c in cl:
            cc = a["classical"][c]
            near = a["classical"].get(f"jpegls-near{levels[-1]}", {}) if c == "jpegls" and levels else {}
            rows.append([g, names[c], _fmt(cc["encode_s_per_mpix"], ".3f"), _fmt(cc["decode_s_per_mpix"], ".3f"),
                         _fmt(near.get("encode_s_per_mpix"), ".3f"), ""])
    lines += _table("Speed: mean seconds per megapixel of the coding calls (lossless encode, decode; near-lossless "
                    "encode at the largest D); the lossy layer's own mean seconds per image beside",
                    ["group", "method", "enc s/Mpx", "dec s/Mpx", "near enc", "lossy layer (mean s/img)"], rows)
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command


def _ints(text: str, lo: int, hi: int, what: str, *, distinct: bool = False, nonempty: bool = False) -> tuple[int, ...]:
    """A comma-separated list of integers in lo..hi for argparse (a usage error otherwise)."""
    try:
        vals = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if (nonempty and not vals) or any(not lo <= v <= hi for v in vals) or (distinct and len(set(vals)) != len(vals)):
        raise argparse.ArgumentTypeError(what)
    return vals


def _levels(text: str) -> tuple[int, ...]:
    return _ints(text, 1, residual.MAX_ERROR_LIMIT, f"bounds must be in 1..{residual.MAX_ERROR_LIMIT}")


def _ladder(text: str) -> tuple[int, ...]:
    return _ints(text, 0, residual.MAX_ERROR_LIMIT, f"distinct bounds in 0..{residual.MAX_ERROR_LIMIT} (0 = lossless)",
                 distinct=True, nonempty=True)


def _qualities(text: str) -> tuple[int, ...]:
    return _ints(text, 1, 1 << 30, "distinct qualities >= 1", distinct=True)


def register(sub) -> None:
    p = sub.add_parser(
        "residual-eval",
        help="lossless / near-lossless bpp of the residual layer vs JPEG-LS, J2K, JPEG-XL (--curves: PSNR vs bpp)",
        description=("Code every DICOM under DATA_DIR losslessly and near-losslessly with the residual layer "
                     "alone and on top of the learned lossy layer, and with the classical codecs; verify every "
                     "decode; write per-image records and per-modality means to a JSON file and print a table. "
                     "With --curves: PSNR (over the image's range and at native depth) against bpp of the lossy "
                     "layer alone, of the lossy layer plus the residual and of the residual alone over a ladder "
                     "of D, beside JPEG 2000 rate-targeted to every point; JSON, table and RD plots."),
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder searched recursively for DICOM files")
    p.add_argument("--json", dest="json_path", metavar="OUT.json", required=True, help="where to write the results")
    p.add_argument("--quality", type=int, action="append", default=None, metavar="Q",
                   help="lossy layer quality (repeatable; default 2)")
    p.add_argument("--no-lossy-layer", action="store_true", help="residual-only and classical (no torch)")
    p.add_argument("--no-classical", action="store_true", help="skip the classical codecs")
    p.add_argument("--levels", type=_levels, default=LEVELS, metavar="D,D,..",
                   help="near-lossless bounds (default 1,2,4)")
    p.add_argument("--model", default=MODEL, help=f"learned codec of the lossy layer (default {MODEL})")
    p.add_argument("--backend", choices=BACKENDS, default="float",
                   help="its networks: float (torch), rewritten, or int8 (the DPU's integers on the emulator; "
                        "dpu-hyperprior only) (default float)")
    p.add_argument("--include", action="append", default=None, metavar="GLOB",
                   help="only the files whose path relative to DATA_DIR matches GLOB (fnmatch; repeatable)")
    p.add_argument("--curves", action="store_true",
                   help="PSNR-vs-bpp curves: lossy only at --curve-qualities, lossy (--quality, one) + residual and "
                        "residual only at every D of --ladder, JPEG 2000 at the same bpp (pipelines/residual_curves.py)")
    p.add_argument("--curve-qualities", type=_qualities, default=residual_curves.CURVE_QUALITIES, metavar="Q,Q,..",
                   help="--curves: qualities of the lossy-only curve (default 1,2,3,4)")
    p.add_argument("--ladder", type=_ladder, default=residual_curves.LADDER, metavar="D,D,..",
                   help="--curves: bounds of the residual curves, 0 = lossless (default 64,32,16,8,4,2,1,0)")
    p.add_argument("--plots", default=None, metavar="DIR",
                   help="--curves: folder for the RD plots (default: plots/ beside OUT.json)")
    p.add_argument("--residual-predictor", choices=residual.PREDICTORS, default="ls",
                   help="the residual layer's predictor (default ls; blend: the fixed blend alone, as measured "
                        "before the least-squares predictor)")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="images in parallel (default 1)")
    p.add_argument("--force", action="store_true", help="overwrite an existing OUT.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        raise MedcodecError(f"{data_dir}: no such directory")
    out_path = check_writable(args.json_path, args.force)
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if not parent.is_dir():
        raise MedcodecError(f"{out_path}: directory {parent} does not exist")
    files = dicom_inputs([data_dir])
    if args.include:
        files = [f for f in files
                 if any(fnmatch.fnmatchcase(f.relative_to(data_dir).as_posix(), g) for g in args.include)]
    if not files:
        raise MedcodecError(f"{data_dir}: no DICOM files found" + (" matching --include" if args.include else ""))
    if args.curves:
        return _run_curves(args, data_dir, out_path, files)
    qualities = () if args.no_lossy_layer else tuple(args.quality or (2,))
    levels = tuple(args.levels)
    t_start = time.perf_counter()
    rels = [f.relative_to(data_dir).as_posix() for f in files]
    records, skipped, failures = _evaluate_all(
        files, rels, evaluate_file,
        (qualities, levels, not args.no_classical, args.model, args.backend, args.residual_predictor),
        args.jobs, args.no_progress)
    aggregates = aggregate(records, levels)
    report = {
        "tool": "medcodec residual-eval",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": data_dir.name,
        "settings": {"qualities": list(qualities), "model": args.model, "backend": args.backend,
                     "levels": list(levels), "include": args.include,
                     "residual": {"num_contexts": residual.NUM_CONTEXTS, "count_step": residual.COUNT_STEP,
                                  "count_limit": residual.COUNT_LIMIT, "stream_version": residual.STREAM_VERSION,
                                  "predictor": args.residual_predictor, "kernels": lsq.backend(),
                                  "stripe_workers": 1 if min(args.jobs, len(files)) > 1 else residual.default_workers()},
                     "bpp": "8 * bytes / pixels; lossy+residual bytes = tile streams + residual streams",
                     "jobs": max(1, min(args.jobs, len(files))), "cpu_count": os.cpu_count()},
        "versions": {**classical.codec_versions(), "python": platform.python_version()},
        "n_files": len(files), "wall_s": time.perf_counter() - t_start,
        "images": records, "skipped": skipped, "failures": failures, "aggregates": aggregates,
    }
    atomic_write(out_path, json.dumps(_json_safe(report), indent=1, allow_nan=False).encode() + b"\n",
                 force=args.force)
    if records:
        print(format_table(aggregates, levels), flush=True)
    return _finish(report, out_path, data_dir, len(files), records, skipped, failures)


def _finish(report, out_path, data_dir, n_files, records, skipped, failures) -> int:
    print(f"medcodec residual-eval: {len(records)} image(s), {len(skipped)} skipped, {len(failures)} failure(s) "
          f"in {report['wall_s']:.1f} s; wrote {out_path}", file=sys.stderr)
    if not records:
        raise MedcodecError(f"none of the {n_files} DICOM file(s) under {data_dir} could be read")
    if failures:
        raise MedcodecError(f"{len(failures)} verification failure(s); see 'failures' in {out_path}")
    return 0


def _run_curves(args, data_dir: Path, out_path: Path, files: list[Path]) -> int:
    quality = args.quality or [2]
    if len(quality) > 1:
        raise MedcodecError("--curves takes one --quality: the lossy layer under the residual")
    base = None if args.no_lossy_layer else quality[0]
    settings = {"model": args.model, "backend": args.backend, "residual_predictor": args.residual_predictor,
                "qualities": () if args.no_lossy_layer else tuple(args.curve_qualities),
                "base_quality": base, "ladder": tuple(args.ladder), "with_j2k": not args.no_classical}
    t_start = time.perf_counter()
    rels = [f.relative_to(data_dir).as_posix() for f in files]
    records, skipped, failures = _evaluate_all(files, rels, residual_curves.evaluate_file, (settings,), args.jobs,
                                               args.no_progress)
    aggregates = residual_curves.aggregate(records)
    plots = residual_curves.plot(aggregates, Path(args.plots) if args.plots else out_path.parent / "plots",
                                 f"{args.model} {args.backend}", base) if records else []
    report = {
        "tool": "medcodec residual-eval --curves",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": data_dir.name,
        "settings": {**settings, "include": args.include,
                     "bpp": "8 * bytes / pixels; lossy bytes = tile streams, lossy+residual = tile + residual "
                            "streams, residual only = residual streams; J2K = codestream (+ offset side bytes)",
                     "psnr_range": "peak = max - min of the original image",
                     "psnr_bits": "peak = 2^BitsStored - 1",
                     "j2k": "irreversible 9/7 rate-targeted to each point's bpp (encode_at_bpp, 3 % tolerance); "
                            "reversible J2K for the lossless points",
                     "jobs": max(1, min(args.jobs, len(files))), "cpu_count": os.cpu_count()},
        "versions": {**classical.codec_versions(), "python": platform.python_version()},
        "n_files": len(files), "wall_s": time.perf_counter() - t_start,
        "images": records, "skipped": skipped, "failures": failures, "aggregates": aggregates,
        "plots": [str(p) for p in plots],
    }
    atomic_write(out_path, json.dumps(_json_safe(report), indent=1, allow_nan=False).encode() + b"\n",
                 force=args.force)
    if records:
        print(residual_curves.format_table(aggregates, base), flush=True)
        print(f"plots: {', '.join(str(p) for p in plots)}", flush=True)
    return _finish(report, out_path, data_dir, len(files), records, skipped, failures)


def _evaluate_all(files, rels, fn, fn_args, jobs: int, no_progress: bool):
    """``fn(path, rel, *fn_args)`` for every file (``jobs`` processes): (records, skipped, failures)."""
    from tqdm import tqdm

    records, skipped, failures = [], [], []
    bar = tqdm(total=len(files), desc="residual-eval", unit="img", file=sys.stderr, disable=no_progress)

    def collect(rel, res):
        if "skip" in res:
            skipped.append({"path": rel, "reason": res["skip"]})
            bar.write(f"medcodec residual-eval: warning: skipped {res['skip']}", file=sys.stderr)
        else:
            records.append(res["record"])
            for f in res["record"]["failures"]:
                failures.append({"path": rel, **f})
                bar.write(f"medcodec residual-eval: FAILURE: {rel}: {f['method']} {f['setting']}: {f['error']}",
                          file=sys.stderr)
        bar.update(1)

    jobs = max(1, min(jobs, len(files)))
    try:
        if jobs == 1:
            for f, rel in zip(files, rels, strict=True):
                collect(rel, fn(str(f), rel, *fn_args))
        else:
            import multiprocessing as mp

            # one process per file: a large frame's stripes are then coded one after the other
            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                     initializer=serial_in_this_process) as pool:
                pending = {pool.submit(fn, str(f), rel, *fn_args): rel for f, rel in zip(files, rels, strict=True)}
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        collect(pending.pop(fut), fut.result())
    finally:
        bar.close()
    order = {rel: i for i, rel in enumerate(rels)}
    records.sort(key=lambda r: order[r["path"]])
    return records, skipped, failures
