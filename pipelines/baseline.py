"""``medcodec baseline``: classical codecs on every DICOM under a folder.

For each image (stored values, native bit depth; the codec wrappers, the
signed-offset handling and the rate search live in :mod:`pipelines.classical`):

* lossless: JPEG-LS, JPEG 2000 (reversible), JPEG-XL, HTJ2K and deflate of the
  raw stored bytes; every decode is checked bit-exact against the stored values;
* near-lossless: JPEG-LS with NEAR = 1, 2, 4; the measured max error is checked
  against NEAR;
* lossy: JPEG 2000 (irreversible) and JPEG-XL at 0.25, 0.5, 1 and 2 bpp (within
  3 %, else the closest setting is kept and flagged), with PSNR (peak
  2^BitsStored - 1 and the image's own range), SSIM, MS-SSIM (data range
  2^BitsStored - 1; null under 161 px) and max error.

Rates are ``8 * bytes / (rows * cols * frames)`` from the real codestream bytes
plus side information. A bit-exact mismatch, a broken near-lossless bound or a
codec error is a *failure*: recorded in the JSON ("failures" and in the image's
record), printed on stderr, and the command exits 1 after writing the JSON. An
unreadable DICOM is skipped with a warning and listed under "skipped".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from codec import metrics
from codec.dicom import read_dicom
from codec.errors import MedcodecError
from codec.fileio import atomic_write, check_writable
from pipelines import classical
from pipelines.paths import dicom_inputs

NEAR_LEVELS = (1, 2, 4)
TARGETS_BPP = (0.25, 0.5, 1.0, 2.0)
RATE_TOL = 0.03
MAX_RATE_EVALS = 10

GROUPS = ("CT", "MR", "XR", "OTHER")
_XR_MODALITIES = {"CR", "DX", "RG", "MG", "IO", "PX", "XA", "RF", "DR", "DF", "XR"}

CODED_DOMAIN_NOTE = (
    "Each frame is coded as non-negative integers. Signed images: x - min(frame), precision "
    "P = bit_length(max - min); the offset is side information stored in the image's dtype "
    "(2 bytes per int16 frame) and counted in 'bytes'. Unsigned images: no offset, "
    "P = max(BitsStored, bit_length(max)). P >= 2; P <= 8 is coded as uint8. JPEG 2000 and "
    "JPEG-XL get bitspersample=P; JPEG-LS is encoded by pyjpegls/CharLS with bits_stored=P "
    "(imagecodecs' JPEG-LS encoder has no precision option) and decoded by imagecodecs; "
    "HTJ2K (imagecodecs/OpenJPH) only takes the container depth (8/16); deflate codes the raw "
    "stored bytes. Decoding adds the offset back; the bit-exact check compares with the "
    "original stored values."
)


def modality_group(modality: str | None) -> str:
    """CT, MR, XR (CR, DX, RG, MG and other projection radiography) or OTHER."""
    m = (modality or "").strip().upper()
    if m in ("CT", "MR"):
        return m
    if m in _XR_MODALITIES:
        return "XR"
    return "OTHER"


# --------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------


def _lossy_key(codec: classical.ClassicalCodec) -> str:
    return codec.name.split("-")[0]


def _target_key(t: float) -> str:
    return f"{t:g}"


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _err_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def benchmark_pixels(pixels: np.ndarray, bits_stored: int, signed: bool, *, lossless=None,
                     near=None, lossy=None, near_levels=None, targets=None,
                     tol: float | None = None) -> tuple[dict, list[dict]]:
    """Run every codec setting on one image's stored values.

    ``lossless``/``near``/``lossy`` are lists of codecs (default: every
    registered one of that kind); ``near_levels``, ``targets`` and ``tol``
    default to the module's settings. Returns ``(results, failures)``:
    ``results`` has the ``lossless``, ``near_lossless`` and ``lossy`` sections of
    an image record; ``failures`` lists ``{"codec", "setting", "error"}`` for
    mismatches, broken bounds and codec errors.
    """
    lossless = classical.available_codecs("lossless") if lossless is None else lossless
    near = classical.available_codecs("near") if near is None else near
    lossy = classical.available_codecs("lossy") if lossy is None else lossy
    near_levels = NEAR_LEVELS if near_levels is None else near_levels
    targets = TARGETS_BPP if targets is None else targets
    tol = RATE_TOL if tol is None else tol
    failures: list[dict] = []
    out: dict = {"lossless": {}, "near_lossless": {}, "lossy": {}}
    rows, cols = pixels.shape[-2:]
    frames = pixels.shape[0] if pixels.ndim == 3 else 1

    def fail(codec_key, setting, msg, where):
        failures.append({"codec": codec_key, "setting": setting, "error": msg})
        where["error"] = msg

    for codec in lossless:
        rec: dict = {}
        out["lossless"][codec.name] = rec
        try:
            enc = classical.encode_image(codec, pixels, bits_stored, signed)
            timing: dict = {}
            dec = classical.decode_image(codec, enc, timing=timing)
            rec.update(bytes=enc.n_bytes, side_bytes=enc.side_bytes,
                       bpp=metrics.bpp(enc.n_bytes, rows, cols, frames),
                       encode_s=enc.encode_s, decode_s=timing["decode_s"])
            exact = dec.dtype == pixels.dtype and np.array_equal(dec, pixels)
            rec["exact"] = bool(exact)
            if not exact:
                n_bad = int(np.count_nonzero(dec != pixels)) if dec.shape == pixels.shape else -1
                err = metrics.max_abs_error(pixels, dec) if dec.shape == pixels.shape else None
                fail(codec.name, "lossless",
                     f"decoded image is not bit-exact ({n_bad} pixels differ, max error {err}, "
                     f"dtype {dec.dtype} vs {pixels.dtype})", rec)
        except Exception as exc:  # a codec failure is recorded, not fatal
            rec["exact"] = False
            fail(codec.name, "lossless", _err_text(exc), rec)

    for codec in near:
        per: dict = {}
        out["near_lossless"][codec.name.split("-")[0]] = per
        for n in near_levels:
            rec = {}
            per[str(n)] = rec
            try:
                enc = classical.encode_image(codec, pixels, bits_stored, signed, near=n)
                timing = {}
                dec = classical.decode_image(codec, enc, timing=timing)
                err = metrics.max_abs_error(pixels, dec)
                rec.update(near=n, bytes=enc.n_bytes, side_bytes=enc.side_bytes,
                           bpp=metrics.bpp(enc.n_bytes, rows, cols, frames),
                           encode_s=enc.encode_s, decode_s=timing["decode_s"],
                           max_error=err, bound_ok=bool(err <= n),
                           psnr_bits=_finite(metrics.psnr_bits(pixels, dec, bits_stored)))
                if err > n:
                    fail(codec.name, f"near={n}", f"max error {err} exceeds NEAR={n}", rec)
            except Exception as exc:
                rec["bound_ok"] = False
                fail(codec.name, f"near={n}", _err_text(exc), rec)

    for codec in lossy:
        key = _lossy_key(codec)
        per = {}
        out["lossy"][key] = per
        history: dict = {}
        for t in targets:
            rec = {"target_bpp": t}
            per[_target_key(t)] = rec
            try:
                t0 = time.perf_counter()
                res = classical.encode_at_bpp(codec, pixels, t, tol, bits_stored=bits_stored,
                                              signed=signed, max_evals=MAX_RATE_EVALS, history=history)
                search_s = time.perf_counter() - t0
                enc = res.encoded
                timing = {}
                dec = classical.decode_image(codec, enc, timing=timing)
                m = metrics.image_metrics(pixels, dec, bits_stored)
                rec.update(
                    bytes=enc.n_bytes, side_bytes=enc.side_bytes,
                    bpp=metrics.bpp(enc.n_bytes, rows, cols, frames),
                    rel_error=res.rel_error, within_tol=res.within_tol,
                    param={codec.rate.param: res.param}, evaluations=res.evaluations,
                    search_s=search_s, encode_s=enc.encode_s, decode_s=timing["decode_s"],
                    psnr_bits=_finite(m["psnr_bits"]), psnr_range=_finite(m["psnr_range"]),
                    ssim=_finite(m["ssim"]), ms_ssim=_finite(m["ms_ssim"]),
                    max_error=m["max_abs_error"], mse=m["mse"],
                )
            except Exception as exc:
                fail(codec.name, f"target={t:g}", _err_text(exc), rec)
    return out, failures


def benchmark_file(path: str, rel: str) -> dict:
    """Read one DICOM and benchmark it. Returns ``{"record": ...}`` or
    ``{"skip": reason}`` (the file could not be read or is not supported)."""
    t0 = time.perf_counter()
    try:
        img = read_dicom(path)
        pixels = np.asarray(img.pixels)
    except MedcodecError as exc:
        return {"skip": str(exc).splitlines()[0]}
    except Exception as exc:  # an unexpected reader failure still only skips the file
        return {"skip": f"{path}: {_err_text(exc)}"}
    if pixels.ndim not in (2, 3) or pixels.dtype.kind not in "iu" or pixels.dtype.itemsize > 2:
        return {"skip": f"{path}: unsupported pixel data (shape {pixels.shape}, dtype {pixels.dtype}); "
                        "need 8-16-bit single-sample frames"}
    lo, hi = (int(v) for v in img.value_range)
    bits_stored = int(img.bits_stored)
    signed = bool(img.signed)
    rec = {
        "path": rel,
        "modality": img.modality or "",
        "group": modality_group(img.modality),
        "rows": int(img.rows),
        "cols": int(img.cols),
        "frames": int(img.frames),
        "bits_stored": bits_stored,
        "signed": signed,
        "photometric": img.photometric,
        "dtype": str(pixels.dtype),
        "min": lo,
        "max": hi,
    }
    frames = [pixels] if pixels.ndim == 2 else list(pixels)
    try:
        coded = [classical.to_coded(f, bits_stored, signed)[1:] for f in frames]
        rec["coded"] = {"offset": [c[0] for c in coded], "precision": [c[1] for c in coded],
                        "side_bytes": len(frames) * pixels.dtype.itemsize if signed else 0}
    except ValueError as exc:
        return {"skip": f"{path}: {exc}"}
    try:
        results, failures = benchmark_pixels(pixels, bits_stored, signed)
    except Exception as exc:  # pragma: no cover - benchmark_pixels records codec errors itself
        results, failures = {}, [{"codec": "*", "setting": "*", "error": _err_text(exc),
                                  "traceback": traceback.format_exc()}]
    rec.update(results)
    rec["failures"] = failures
    rec["seconds"] = time.perf_counter() - t0
    return {"record": rec}


# --------------------------------------------------------------------------
# aggregation and table
# --------------------------------------------------------------------------


def _mean(values):
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def by_group(records: list[dict]) -> list[tuple[str, list[dict]]]:
    """The records per modality group in ``GROUPS`` order, then ``ALL``; empty groups left out."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    if records:
        groups["ALL"] = list(records)
    return [(g, groups[g]) for g in [*GROUPS, "ALL"] if groups.get(g)]


def aggregate(records: list[dict]) -> dict:
    """Per-group (and ``ALL``) means: lossless bpp per codec, near-lossless bpp
    per NEAR, lossy bpp / PSNR / SSIM / MS-SSIM per codec and target."""
    out = {}
    for g, recs in by_group(records):
        agg: dict = {"images": len(recs),
                     "modalities": sorted({r["modality"] for r in recs}),
                     "pixels": int(sum(r["rows"] * r["cols"] * r["frames"] for r in recs)),
                     "lossless": {}, "near_lossless": {}, "lossy": {}}
        for name in _keys(recs, "lossless"):
            ok = [r["lossless"][name] for r in recs if "bpp" in r["lossless"].get(name, {})]
            pix = sum(r["rows"] * r["cols"] * r["frames"] for r in recs if "bpp" in r["lossless"].get(name, {}))
            agg["lossless"][name] = {
                "n": len(ok),
                "mean_bpp": _mean(x["bpp"] for x in ok),
                "pooled_bpp": 8.0 * sum(x["bytes"] for x in ok) / pix if pix else None,
                "mean_encode_s": _mean(x["encode_s"] for x in ok),
                "mean_decode_s": _mean(x["decode_s"] for x in ok),
                "not_exact": sum(1 for r in recs if not r["lossless"].get(name, {}).get("exact", False)),
            }
        for name in _keys(recs, "near_lossless"):
            per = {}
            for lvl in _level_keys(recs, "near_lossless", name):
                ok = [r["near_lossless"][name][lvl] for r in recs
                      if "bpp" in r["near_lossless"].get(name, {}).get(lvl, {})]
                per[lvl] = {"n": len(ok), "mean_bpp": _mean(x["bpp"] for x in ok),
                            "max_error": max((x["max_error"] for x in ok), default=None),
                            "bound_violations": sum(1 for x in ok if not x["bound_ok"])}
            agg["near_lossless"][name] = per
        for name in _keys(recs, "lossy"):
            per = {}
            for tk in _level_keys(recs, "lossy", name):
                ok = [r["lossy"][name][tk] for r in recs if "bpp" in r["lossy"].get(name, {}).get(tk, {})]
                per[tk] = {
                    "n": len(ok),
                    "mean_bpp": _mean(x["bpp"] for x in ok),
                    "mean_psnr_bits": _mean(x["psnr_bits"] for x in ok),
                    "mean_psnr_range": _mean(x["psnr_range"] for x in ok),
                    "mean_ssim": _mean(x["ssim"] for x in ok),
                    "mean_ms_ssim": _mean(x["ms_ssim"] for x in ok),
                    "n_ms_ssim": sum(1 for x in ok if x["ms_ssim"] is not None),
                    "targets_missed": sum(1 for x in ok if not x["within_tol"]),
                }
            agg["lossy"][name] = per
        out[g] = agg
    return out


def _keys(recs, section):
    seen = []
    for r in recs:
        for k in r.get(section, {}):
            if k not in seen:
                seen.append(k)
    return seen


def _level_keys(recs, section, name):
    seen = []
    for r in recs:
        for k in r.get(section, {}).get(name, {}):
            if k not in seen:
                seen.append(k)
    return sorted(seen, key=float)


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _table(title, header, rows) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
    return [title, line(header), *[line(r) for r in rows], ""]


def format_table(aggregates: dict) -> str:
    """The human-readable summary printed on stdout."""
    groups = [g for g in [*GROUPS, "ALL"] if g in aggregates]
    if not groups:
        return "no images\n"
    labels = {c.name: c.label for c in classical.CODECS.values()}
    lines: list[str] = []
    ll = _keys([aggregates[g] for g in groups], "lossless")
    lines += _table(
        "Lossless: mean bpp per image (* = some decode not bit-exact)",
        ["group", "n", *[labels.get(k, k) for k in ll]],
        [[g, aggregates[g]["images"],
          *[_fmt(aggregates[g]["lossless"].get(k, {}).get("mean_bpp"), ".3f")
            + ("*" if aggregates[g]["lossless"].get(k, {}).get("not_exact") else "") for k in ll]]
         for g in groups])
    near = aggregates[groups[-1]]["near_lossless"]
    for name, per in near.items():
        lv = list(per)
        lines += _table(
            f"Near-lossless {labels.get(name, name)}: mean bpp (max error over all images)",
            ["group", *[f"NEAR={k}" for k in lv]],
            [[g, *[f"{_fmt(aggregates[g]['near_lossless'][name].get(k, {}).get('mean_bpp'), '.3f')}"
                   f" ({_fmt(aggregates[g]['near_lossless'][name].get(k, {}).get('max_error'), 'd')})"
                   for k in lv]] for g in groups])
    lossy = aggregates[groups[-1]]["lossy"]
    cols = [(name, tk) for name, per in lossy.items() for tk in per]
    head = [f"{'J2K' if n == 'j2k' else 'JXL' if n == 'jxl' else n}@{tk}" for n, tk in cols]
    for metric, title, spec in (
        ("mean_psnr_bits", "Lossy: mean PSNR (dB, peak 2^BitsStored-1) at target bpp", ".2f"),
        ("mean_psnr_range", "Lossy: mean PSNR (dB, peak = image max-min) at target bpp", ".2f"),
        ("mean_ms_ssim", "Lossy: mean MS-SSIM (data range 2^BitsStored-1; images >= 161 px)", ".5f"),
        ("mean_bpp", "Lossy: mean achieved bpp [targets missed by > 3 %]", ".3f"),
    ):
        rows = []
        for g in groups:
            row = [g]
            for n, tk in cols:
                a = aggregates[g]["lossy"].get(n, {}).get(tk, {})
                cell = _fmt(a.get(metric), spec)
                if metric == "mean_bpp" and a.get("targets_missed"):
                    cell += f" [{a['targets_missed']}]"
                row.append(cell)
            rows.append(row)
        lines += _table(title, ["group", *head], rows)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def register(sub) -> None:
    p = sub.add_parser(
        "baseline",
        help="classical codecs (JPEG-LS, JPEG 2000, JPEG-XL, HTJ2K, deflate) on a DICOM folder",
        description=(
            "Code every DICOM under DATA_DIR (recursive) at native bit depth with lossless, "
            "near-lossless (JPEG-LS NEAR=1,2,4) and rate-targeted lossy (JPEG 2000, JPEG-XL at "
            "0.25/0.5/1/2 bpp) classical codecs; verify every decode; write per-image records and "
            "per-modality means to a JSON file and print a summary table."
        ),
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="folder searched recursively for DICOM files")
    p.add_argument("--json", dest="json_path", metavar="OUT.json", required=True,
                   help="where to write the results (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="overwrite an existing OUT.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                   help="images coded in parallel by N processes (default 1; codecs are single-threaded)")
    p.set_defaults(func=run)


def _warn(msg: str, bar=None) -> None:
    text = f"medcodec baseline: {msg}"
    if bar is not None and not bar.disable:
        bar.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def run(args) -> int:
    data_dir = Path(args.data_dir)
    if not data_dir.exists():
        raise MedcodecError(f"{data_dir}: no such directory")
    if not data_dir.is_dir():
        raise MedcodecError(f"{data_dir}: not a directory")
    out_path = check_writable(args.json_path, args.force)  # before the long run
    parent = out_path.parent if str(out_path.parent) else Path(".")
    if not parent.is_dir():
        raise MedcodecError(f"{out_path}: directory {parent} does not exist")
    files = dicom_inputs([data_dir])
    if not files:
        raise MedcodecError(f"{data_dir}: no DICOM files found")

    from tqdm import tqdm

    t_start = time.perf_counter()
    records: list[dict] = []
    skipped: list[dict] = []
    failures: list[dict] = []
    jobs = min(args.jobs, len(files))
    bar = tqdm(total=len(files), desc="baseline", unit="img", file=sys.stderr,
               disable=args.no_progress, dynamic_ncols=True)
    rels = [f.relative_to(data_dir).as_posix() for f in files]

    def collect(rel, res):
        if "skip" in res:
            skipped.append({"path": rel, "reason": res["skip"]})
            _warn(f"warning: skipped {res['skip']}", bar)
        else:
            rec = res["record"]
            records.append(rec)
            for f in rec["failures"]:
                entry = {"path": rel, **{k: v for k, v in f.items() if k != "traceback"}}
                failures.append(entry)
                _warn(f"FAILURE: {rel}: {f['codec']} {f['setting']}: {f['error']}", bar)
        bar.set_postfix_str(rel[-40:], refresh=False)
        bar.update(1)

    try:
        if jobs <= 1:
            for f, rel in zip(files, rels, strict=True):
                collect(rel, benchmark_file(str(f), rel))
        else:
            import multiprocessing as mp

            with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(benchmark_file, str(f), rel): rel for f, rel in zip(files, rels, strict=True)}
                pending = dict(futures)
                while pending:
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        rel = pending.pop(fut)
                        collect(rel, fut.result())
    finally:
        bar.close()
    order = {rel: i for i, rel in enumerate(rels)}
    records.sort(key=lambda r: order[r["path"]])
    skipped.sort(key=lambda s: order[s["path"]])
    failures.sort(key=lambda s: order[s["path"]])
    wall_s = time.perf_counter() - t_start

    aggregates = aggregate(records)
    report = {
        "tool": "medcodec baseline",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data_dir": str(data_dir.resolve()),
        "versions": {**classical.codec_versions(), "python": platform.python_version()},
        "settings": {
            "codecs": {c.name: c.describe() for c in classical.CODECS.values()},
            "near_levels": list(NEAR_LEVELS),
            "targets_bpp": list(TARGETS_BPP),
            "rate_tolerance": RATE_TOL,
            "rate_max_encodes": MAX_RATE_EVALS,
            "coded_domain": CODED_DOMAIN_NOTE,
            "bpp": "8 * bytes / (rows * cols * frames); bytes = codestream lengths (per frame, summed) "
                   "+ side information",
            "metrics": "codec.metrics: psnr_bits peak 2^BitsStored-1, psnr_range peak max-min of the image, "
                       "SSIM/MS-SSIM data_range 2^BitsStored-1 (MS-SSIM null under 161 px), max error on "
                       "stored values",
            "groups": "CT, MR, XR (CR, DX, RG, MG, other projection radiography), OTHER; raw modality kept",
            "timing": "encode_s/decode_s: codec calls only, single-threaded, perf_counter; lossy encode_s is "
                      "the chosen setting's encode, search_s the whole rate search",
            "jobs": jobs,
            "cpu_count": os.cpu_count(),
        },
        "n_files": len(files),
        "n_images": len(records),
        "wall_s": wall_s,
        "images": records,
        "skipped": skipped,
        "failures": failures,
        "aggregates": aggregates,
    }
    payload = json.dumps(_json_safe(report), indent=1, allow_nan=False).encode() + b"\n"
    atomic_write(out_path, payload, force=args.force)

    if records:
        print(format_table(aggregates), flush=True)
    print(f"medcodec baseline: {len(records)} image(s), {len(skipped)} skipped, {len(failures)} failure(s) "
          f"in {wall_s:.1f} s; wrote {out_path}", file=sys.stderr, flush=True)
    if not records:
        raise MedcodecError(f"none of the {len(files)} DICOM file(s) under {data_dir} could be read")
    if failures:
        raise MedcodecError(f"{len(failures)} verification failure(s) or codec error(s); see 'failures' in "
                            f"{out_path}")
    return 0


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
