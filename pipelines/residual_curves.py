"""``medcodec residual-eval --curves``: PSNR against bpp of the lossy layer alone, of the lossy layer plus
the near-lossless residual, and of the residual alone, beside JPEG 2000 at the same bpp (issue 6).

    medcodec residual-eval DATA_DIR --curves --model dpu-hyperprior --backend int8 --json OUT.json

For every DICOM under DATA_DIR (stored values at native depth, coded per frame):

* **lossy only**: the learned codec (``--model``, ``--backend``: ``int8`` is the DPU's integers on the
  emulator) at every quality of ``--curve-qualities`` (default 1-4): the tile streams and the
  reconstruction x_hat exactly as ``decompress`` rebuilds it;
* **lossy + residual**: the lossy layer of ``--quality`` (default 2) plus the residual layer against
  its x_hat, at every bound D of ``--ladder`` (default 64, 32, 16, 8, 4, 2, 1, 0; D = 0 is lossless);
* **residual only**: the residual layer without x_hat at the same D (what ``medcodec compress
  --mode near-lossless`` writes by default);
* **JPEG 2000** (irreversible 9/7, ``pipelines/classical.py``) rate-targeted to the bpp of every point
  above (D >= 1), and reversible J2K for the lossless points.

Each point records bpp (8 * stream bytes / pixels: tile streams + residual streams, or the J2K
codestream; HEAD, META and chunk framing are not counted, as in the rest of residual-eval), PSNR over
the image's own range (peak = max - min of the original: ``psnr_range``) and at native depth (peak
2^BitsStored - 1: ``psnr_bits``), and the largest absolute error. Every residual stream is decoded
and checked (bit-exact at D = 0, ``|x - decoded| <= D`` otherwise); a failure is recorded and makes
the command exit 1 after writing the JSON. Per modality group the mean of each point over the images
is tabled and plotted (``curves_<group>.png``: PSNR range and PSNR bits against bpp, log scale).
"""

from __future__ import annotations

import math
import time

import numpy as np

from codec import gdncodec, metrics
from codec.errors import MedcodecError
from pipelines import classical
from pipelines.baseline import GROUPS, _mean, by_group

LADDER = (64, 32, 16, 8, 4, 2, 1, 0)
CURVE_QUALITIES = (1, 2, 3, 4)
SERIES = ("lossy", "lossy_residual", "residual_only")
J2K = "j2k-lossy"


def _frames(px: np.ndarray) -> list[np.ndarray]:
    return [px] if px.ndim == 2 else list(px)


def _quality(x: np.ndarray, y: np.ndarray, bits: int) -> dict:
    err = int(np.abs(x.astype(np.int64) - y).max())
    return {"psnr_range": metrics.psnr_range(x, y), "psnr_bits": metrics.psnr_bits(x, y, bits), "max_error": err}


def _residual_point(frames, x_hats, d: int, predictor: str = "ls") -> tuple[int, np.ndarray, float, float, str | None]:
    """Encode + decode every frame at bound ``d``: (bytes, decoded pixels, enc s, dec s, failure)."""
    from pipelines.residual_eval import code_frames

    encs, out, enc_s, dec_s = code_frames(frames, x_hats, d, predictor)
    y = out[0] if len(out) == 1 else np.stack(out)
    err = max(int(np.abs(o.astype(np.int64) - x).max()) for o, x in zip(out, frames, strict=True))
    return sum(len(e.data) for e in encs), y, enc_s, dec_s, (f"max error {err} exceeds D={d}" if err > d else None)


def _j2k_at(px, bits, signed, target, history) -> dict:
    res = classical.encode_at_bpp(J2K, px, target, bits_stored=bits, signed=signed, history=history)
    dec = classical.decode_image(J2K, res.encoded)
    return {"target_bpp": target, "bpp": res.bpp, "within_tol": res.within_tol, **_quality(px, dec, bits)}


def evaluate_pixels(px: np.ndarray, bits: int, signed: bool, *, model: str, backend: str, qualities=CURVE_QUALITIES,
                    base_quality: int | None = 2, ladder=LADDER, with_j2k: bool = True,
                    threads: int | None = 1, residual_predictor: str = "ls") -> tuple[dict, list[dict]]:
    """Every curve point of one image's stored values; (record sections, failures).

    ``base_quality`` None: no lossy + residual series (residual only and, with ``qualities``, lossy only).
    """
    failures: list[dict] = []

    def fail(method, setting, msg):
        failures.append({"method": method, "setting": setting, "error": msg})

    frames = _frames(px)
    n = px.size
    rec: dict = {s: [] for s in SERIES}
    base = None
    wanted = sorted(set(qualities) | ({base_quality} if base_quality is not None else set()))
    for q in wanted:
        # torch (float backends): only when a lossy layer is measured
        from pipelines.compress import load_codec

        nets, pkg = load_codec(model, q, threads, backend)
        t0 = time.perf_counter()
        head, streams = gdncodec.lossy_layer(gdncodec.Source(px, bits, signed), nets, pkg)
        t1 = time.perf_counter()
        x_hats = gdncodec.lossy_reconstruction(head, streams, nets, pkg)
        t2 = time.perf_counter()
        n_bytes = sum(len(s) for tile in streams for s in tile)
        y = x_hats[0] if len(x_hats) == 1 else np.stack(x_hats)
        if q in qualities:
            rec["lossy"].append({"quality": q, "bytes": n_bytes, "bpp": 8 * n_bytes / n, "encode_s": t1 - t0,
                                 "decode_s": t2 - t1, **_quality(px, y, bits)})
        if q == base_quality:
            base = (q, x_hats, n_bytes)
    for d in ladder:
        runs = [("residual_only", None, 0)]
        if base is not None:
            runs.append(("lossy_residual", base[1], base[2]))
        for series, x_hats, lossy_bytes in runs:
            label = "residual-only" if x_hats is None else f"lossy-q{base[0]}+residual"
            try:
                r_bytes, y, enc_s, dec_s, bad = _residual_point(frames, x_hats, d, residual_predictor)
            except MedcodecError as exc:
                fail(label, f"D={d}", str(exc).splitlines()[0])
                continue
            if bad:
                fail(label, f"D={d}", bad)
            point = {"max_error_bound": d, "bytes": lossy_bytes + r_bytes, "bpp": 8 * (lossy_bytes + r_bytes) / n,
                     "residual_bytes": r_bytes, "encode_s": enc_s, "decode_s": dec_s, **_quality(px, y, bits)}
            if x_hats is not None:
                point["quality"] = base[0]
            rec[series].append(point)
    if with_j2k:
        history: dict = {}  # encodes made for this image: later targets start from a bracket
        for series in SERIES:
            for p in rec[series]:
                try:
                    if p.get("max_error_bound") == 0:
                        enc = classical.encode_image("j2k", px, bits, signed)
                        if not np.array_equal(classical.decode_image("j2k", enc), px):
                            fail("j2k", "lossless", "decoded image is not bit-exact")
                        p["j2k"] = {"bpp": enc.bpp, "lossless": True}
                    else:
                        p["j2k"] = _j2k_at(px, bits, signed, p["bpp"], history)
                except Exception as exc:  # a codec failure is recorded, not fatal
                    fail("j2k", f"{series} at {p['bpp']:.3f} bpp", f"{type(exc).__name__}: {exc}".splitlines()[0])
    return rec, failures


def evaluate_file(path: str, rel: str, settings: dict) -> dict:
    """One DICOM -> {"record": ...} or {"skip": reason} (``settings``: the keywords of evaluate_pixels)."""
    from pipelines.residual_eval import load_record

    img, px, rec = load_record(path, rel)
    if img is None:
        return {"skip": rec}
    t0 = time.perf_counter()
    rec["range"] = [int(px.min()), int(px.max())]
    try:
        sections, failures = evaluate_pixels(px, img.bits_stored, img.signed, **settings)
    except MedcodecError as exc:
        sections, failures = {}, [{"method": "*", "setting": "*", "error": str(exc).splitlines()[0]}]
    rec["curves"] = sections
    rec["failures"] = failures
    rec["seconds"] = time.perf_counter() - t0
    return {"record": rec}


# --------------------------------------------------------------------------- aggregation


def _key(series: str, p: dict):
    return p["quality"] if series == "lossy" else p["max_error_bound"]


def _finite(v):
    return v if v is not None and math.isfinite(v) else None


def aggregate(records: list[dict]) -> dict:
    """Per group (and ALL): per series and point (quality or D) the means over the images."""
    out = {}
    for g, recs in by_group(records):
        agg: dict = {"images": len(recs), "megapixels": float(sum(r["rows"] * r["cols"] * r["frames"] for r in recs))
                     / 1e6, "series": {}}
        for series in SERIES:
            keys = []
            for r in recs:
                for p in r.get("curves", {}).get(series, []):
                    if _key(series, p) not in keys:
                        keys.append(_key(series, p))
            points = []
            for k in keys:
                ps = [p for r in recs for p in r.get("curves", {}).get(series, []) if _key(series, p) == k]
                lossless = all(p["max_error"] == 0 for p in ps)
                js = [p.get("j2k") for p in ps if p.get("j2k")]
                lossy_js = [j for j in js if not j.get("lossless")]
                pt = {("quality" if series == "lossy" else "max_error_bound"): k, "n": len(ps),
                      "bpp": _mean(p["bpp"] for p in ps),
                      "psnr_range": None if lossless else _mean(_finite(p["psnr_range"]) for p in ps),
                      "psnr_bits": None if lossless else _mean(_finite(p["psnr_bits"]) for p in ps),
                      "lossless": lossless, "max_error": max(p["max_error"] for p in ps),
                      "encode_s": _mean(p.get("encode_s") for p in ps), "decode_s": _mean(p.get("decode_s") for p in ps)}
                if js:
                    pt["j2k_bpp"] = _mean(j["bpp"] for j in js)
                if lossy_js:
                    pt["j2k_psnr_range"] = _mean(_finite(j["psnr_range"]) for j in lossy_js)
                    pt["j2k_psnr_bits"] = _mean(_finite(j["psnr_bits"]) for j in lossy_js)
                    pt["j2k_within_tol"] = sum(bool(j["within_tol"]) for j in lossy_js)
                    # the same images at the same bpp: the difference of the means is the mean difference
                    pt["delta_psnr_range_vs_j2k"] = _mean(
                        _finite(p["psnr_range"]) - _finite(p["j2k"]["psnr_range"]) for p in ps
                        if p.get("j2k") and not p["j2k"].get("lossless") and _finite(p["psnr_range"]) is not None
                        and _finite(p["j2k"]["psnr_range"]) is not None)
                    pt["delta_psnr_bits_vs_j2k"] = _mean(
                        _finite(p["psnr_bits"]) - _finite(p["j2k"]["psnr_bits"]) for p in ps
                        if p.get("j2k") and not p["j2k"].get("lossless") and _finite(p["psnr_bits"]) is not None
                        and _finite(p["j2k"]["psnr_bits"]) is not None)
                points.append(pt)
            agg["series"][series] = points
        out[g] = agg
    return out


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def _label(series: str, pt: dict, base_quality) -> str:
    if series == "lossy":
        return f"lossy q{pt['quality']}"
    d = pt["max_error_bound"]
    head = f"q{base_quality} + residual" if series == "lossy_residual" else "residual only"
    return f"{head} D={d}" + (" (lossless)" if d == 0 else "")


def format_table(aggregates: dict, base_quality) -> str:
    lines = []
    header = ["point", "bpp", "PSNR range", "PSNR bits", "max err", "J2K bpp", "J2K range", "J2K bits", "- J2K"]
    for g in [x for x in [*GROUPS, "ALL"] if x in aggregates]:
        a = aggregates[g]
        rows = []
        for series in SERIES:
            for pt in a["series"][series]:
                rows.append([_label(series, pt, base_quality), _fmt(pt["bpp"], ".3f"),
                             "lossless" if pt["lossless"] else _fmt(pt["psnr_range"]),
                             "lossless" if pt["lossless"] else _fmt(pt["psnr_bits"]), str(pt["max_error"]),
                             _fmt(pt.get("j2k_bpp"), ".3f"), _fmt(pt.get("j2k_psnr_range")),
                             _fmt(pt.get("j2k_psnr_bits")), _fmt(pt.get("delta_psnr_range_vs_j2k"), "+.2f")])
        if not rows:
            continue
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

        def line(cells, widths=widths):
            return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

        lines += [f"{g}: {a['images']} image(s), {a['megapixels']:.2f} Mpx; means per image", line(header),
                  *[line(r) for r in rows], ""]
    lines.append("PSNR in dB: range = peak max - min of the original, bits = peak 2^BitsStored - 1; J2K = JPEG 2000 "
                 "9/7 rate-targeted to each point's bpp (reversible J2K for the lossless points); - J2K = the point's PSNR minus "
                 "J2K's on the same images (the same with either peak).")
    return "\n".join(lines)


def plot(aggregates: dict, folder, title: str, base_quality) -> list:
    """One PNG per group: PSNR range and PSNR bits against bpp (log), each series with its JPEG 2000 twin
    (dashed, same colour: J2K rate-targeted to that series' points on the same images); dotted verticals
    at the lossless rates (black: reversible J2K)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    folder.mkdir(parents=True, exist_ok=True)
    names = {"lossy": f"{title} lossy only", "lossy_residual": f"q{base_quality} + residual (D ladder)",
             "residual_only": "residual only (D ladder)"}
    short = {"lossy": "lossy-only", "lossy_residual": f"q{base_quality} + residual", "residual_only": "residual-only"}
    styles = {"lossy": "o-", "lossy_residual": "^-", "residual_only": "v-"}
    paths = []
    for g, a in aggregates.items():
        if not any(a["series"][s] for s in SERIES):
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
        for ax, key in zip(axes, ("psnr_range", "psnr_bits"), strict=True):
            rates = []
            for series in SERIES:
                pts = [p for p in a["series"][series] if p.get(key) is not None]
                color = "grey"
                if pts:
                    (ln,) = ax.plot([p["bpp"] for p in pts], [p[key] for p in pts], styles[series],
                                    label=names[series])
                    color = ln.get_color()
                    rates += [p["bpp"] for p in pts]
                twin = sorted((p["j2k_bpp"], p[f"j2k_{key}"]) for p in pts if p.get(f"j2k_{key}") is not None)
                if twin:
                    ax.plot([b for b, _ in twin], [v for _, v in twin], "s--", color=color, ms=3, lw=1,
                            label=f"JPEG 2000 at the {short[series]} bpp")
                for p in a["series"][series]:
                    if p["lossless"]:
                        ax.axvline(p["bpp"], color=color, ls=":", lw=1)
                        rates.append(p["bpp"])
                        if p.get("j2k_bpp") is not None:
                            ax.axvline(p["j2k_bpp"], color="black", ls=":", lw=1)
            ax.set_xscale("log")
            if rates:
                ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20)
                         if min(rates) / 1.5 <= t <= max(rates) * 1.5]
                ax.set_xticks(ticks)
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("bpp (stream bytes; dotted: lossless, black: reversible J2K)")
            ax.set_ylabel("PSNR (dB, peak " + ("max-min of the image)" if key == "psnr_range" else "2^BitsStored-1)"))
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{g}: {a['images']} image(s), means per image")
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.9, wspace=0.22)  # fixed: no layout pass
        p = folder / f"curves_{g}.png"
        fig.savefig(p)
        plt.close(fig)
        paths.append(p)
    return paths
