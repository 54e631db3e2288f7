"""Host side of validation: the board's metrics.json against the host emulator's, and a report.

Both documents come from the same code, ``board/app.py validate``, over the same images and the
same rendered runtime: the host runs it with ``--runner emulator``, the board with the DPU.
:func:`compare` checks

- bit-exactness: every (image, quality) is on both sides, with the same bitstream sha256 and
  the same decoded-pixel sha256 (the DPU computes what the emulator computes);
- the rate-distortion limits of a thresholds file (``board/thresholds.json``: per quality
  ``max_bpp``, ``min_psnr_bits``, ``min_psnr_range``, ``min_ms_ssim``, on the board's means);
- that both ran the same runtime (model hash) and that the board reported no errors.

:func:`write_html` writes a one-page report: the verdict and failures, the RD points (table and
an inline SVG plot), latency per network (ms per tile) and throughput, host against board.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from codec.dpunets import DPU_NETWORKS
from codec.errors import MedcodecError
from codec.fileio import atomic_write

__all__ = ["REPORT_SCHEMA", "THRESHOLDS", "ValidationError", "compare", "load_thresholds", "run", "write_html"]

THRESHOLDS = Path(__file__).resolve().parent / "thresholds.json"
THRESHOLDS_SCHEMA = "medcodec-thresholds/1"
METRICS_SCHEMA = "medcodec-board-metrics/1"
REPORT_SCHEMA = "medcodec-board-validation/1"
#: limit -> (summary figure it bounds, "max" or "min")
LIMITS = {"max_bpp": ("bpp_mean", "max"), "min_psnr_bits": ("psnr_bits_mean", "min"),
          "min_psnr_range": ("psnr_range_mean", "min"), "min_ms_ssim": ("ms_ssim_mean", "min")}
RD_FIGURES = ("bpp_mean", "psnr_bits_mean", "psnr_range_mean", "ms_ssim_mean")


class ValidationError(MedcodecError):
    """A thresholds or metrics document that cannot be compared."""


def _check_limits(table, where: str) -> dict:
    if not isinstance(table, dict):
        raise ValidationError(f"{where}: must be an object of limits")
    unknown = sorted(set(table) - set(LIMITS))
    if unknown:
        raise ValidationError(f"{where}: unknown limit(s) {unknown} (known: {sorted(LIMITS)})")
    for k, v in table.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise ValidationError(f"{where}: {k} must be a number or null, got {v!r}")
    return table


def load_thresholds(path=THRESHOLDS) -> dict:
    """Read and check a thresholds file (unknown keys are errors)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValidationError(f"{path}: not a readable thresholds file ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("schema") != THRESHOLDS_SCHEMA:
        raise ValidationError(f"{path}: schema must be {THRESHOLDS_SCHEMA!r}")
    unknown = sorted(set(doc) - {"schema", "about", "default", "quality"})
    if unknown:
        raise ValidationError(f"{path}: unknown key(s) {unknown}")
    _check_limits(doc.get("default", {}), f"{path} default")
    for q, table in doc.get("quality", {}).items():
        if not str(q).isdigit():
            raise ValidationError(f"{path}: quality key {q!r} is not a number")
        _check_limits(table, f"{path} quality {q}")
    return doc


def limits_for(thresholds: dict, quality) -> dict:
    """The default limits with the quality's own on top."""
    out = dict(thresholds.get("default", {}))
    out.update(thresholds.get("quality", {}).get(str(quality), {}))
    return {k: v for k, v in out.items() if v is not None}


def _check_doc(doc, side: str) -> None:
    if not isinstance(doc, dict) or doc.get("schema") != METRICS_SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ValidationError(f"{side} metrics: schema {got!r}, expected {METRICS_SCHEMA!r}")


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def _key(r: dict) -> tuple[str, int]:
    return r["image"], int(r["quality"])


def compare(host_metrics: dict, board_metrics: dict, thresholds: dict) -> dict:
    """The validation report (JSON-able): ``ok``, ``failures`` (one line each), checks, RD, latency."""
    _check_doc(host_metrics, "host")
    _check_doc(board_metrics, "board")
    failures: list[str] = []
    checks: list[dict] = []
    if host_metrics.get("model") != board_metrics.get("model"):
        failures.append(f"model differs: host {host_metrics.get('model')!r}, board {board_metrics.get('model')!r}")
    h_hash = host_metrics.get("runtime", {}).get("model_hash")
    b_hash = board_metrics.get("runtime", {}).get("model_hash")
    if h_hash != b_hash:
        failures.append(f"runtime model hash differs: host {str(h_hash)[:16]}.., board {str(b_hash)[:16]}..")
    for e in board_metrics.get("errors", []):
        failures.append(f"board error: {e.get('image')} q{e.get('quality')}: {e.get('error')}")
    for e in host_metrics.get("errors", []):
        failures.append(f"host error: {e.get('image')} q{e.get('quality')}: {e.get('error')}")

    host = {_key(r): r for r in host_metrics.get("results", [])}
    board = {_key(r): r for r in board_metrics.get("results", [])}
    exact = 0
    for key in sorted(set(host) | set(board)):
        image, q = key
        if key not in board or key not in host:
            side = "board" if key not in board else "host"
            failures.append(f"{image} q{q}: missing from the {side} metrics")
            checks.append({"check": "present", "image": image, "quality": q, "ok": False, "missing_on": side})
            continue
        ok_all = True
        for field in ("bitstream_sha256", "decoded_sha256"):
            hv, bv = host[key][field], board[key][field]
            ok = hv == bv
            ok_all &= ok
            checks.append({"check": field, "image": image, "quality": q, "ok": ok, "host": hv, "board": bv})
            if not ok:
                failures.append(f"{image} q{q}: {field} differs (host {hv[:16]}.., board {bv[:16]}..)")
        exact += ok_all

    hs, bs = host_metrics.get("summary", {}), board_metrics.get("summary", {})
    limits = {}
    for q in sorted(bs, key=int):
        limits[q] = lim = limits_for(thresholds, q)
        for name, limit in sorted(lim.items()):
            figure, kind = LIMITS[name]
            value = bs[q].get(figure)
            if value is None:  # psnr of exact images is inf (null); ms_ssim of small images nan (null)
                ok = figure.startswith("psnr") and bs[q].get("max_abs_error_max") == 0
            else:
                ok = value <= limit if kind == "max" else value >= limit
            checks.append({"check": name, "image": None, "quality": int(q), "ok": ok, "board": value, "limit": limit})
            if not ok:
                failures.append(f"q{q}: {figure} {_num(value)} is {'above' if kind == 'max' else 'below'} "
                                f"the limit {limit} ({name})")

    rd = {q: {"host": {f: hs.get(q, {}).get(f) for f in RD_FIGURES},
              "board": {f: bs[q].get(f) for f in RD_FIGURES}, "images": bs[q].get("images")} for q in bs}
    latency = {q: {side: {"network_ms_per_tile": s.get(q, {}).get("network_ms_per_tile", {}),
                          "images_per_s": s.get(q, {}).get("images_per_s"),
                          "encode_images_per_s": s.get(q, {}).get("encode_images_per_s"),
                          "decode_images_per_s": s.get(q, {}).get("decode_images_per_s")}
                   for side, s in (("host", hs), ("board", bs))} for q in sorted(set(hs) | set(bs), key=int)}
    return {
        "schema": REPORT_SCHEMA, "ok": not failures, "model": board_metrics.get("model"),
        "model_hash": b_hash,
        "runners": {"host": host_metrics.get("runner", {}).get("name"), "board": board_metrics.get("runner", {}).get("name")},
        "platforms": {"host": host_metrics.get("platform"), "board": board_metrics.get("platform")},
        "counts": {"host_results": len(host), "board_results": len(board), "bit_exact": exact,
                   "failures": len(failures)},
        "failures": failures, "checks": checks, "limits": limits, "rd": rd, "latency": latency,
    }


# ------------------------------------------------------------------------------------------ HTML


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def _rd_svg(rd: dict, figure: str = "psnr_range_mean", width: int = 480, height: int = 300) -> str:
    """bpp (x) against ``figure`` (y): board as a line with dots, host as rings."""
    pts = {side: [(v[side]["bpp_mean"], v[side][figure]) for _, v in sorted(rd.items(), key=lambda kv: int(kv[0]))
                  if v[side]["bpp_mean"] is not None and v[side][figure] is not None] for side in ("host", "board")}
    allp = pts["host"] + pts["board"]
    if not allp:
        return "<p>No finite RD points to plot.</p>"
    x0, x1 = min(p[0] for p in allp), max(p[0] for p in allp)
    y0, y1 = min(p[1] for p in allp), max(p[1] for p in allp)
    x0, x1 = (x0 - 0.1, x1 + 0.1) if x1 - x0 < 1e-9 else (x0 - 0.05 * (x1 - x0), x1 + 0.05 * (x1 - x0))
    y0, y1 = (y0 - 1.0, y1 + 1.0) if y1 - y0 < 1e-9 else (y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0))
    ml, mr, mt, mb = 60, 20, 20, 45

    def sx(x):
        return ml + (x - x0) / (x1 - x0) * (width - ml - mr)

    def sy(y):
        return height - mb - (y - y0) / (y1 - y0) * (height - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="RD plot">',
           f'<rect x="{ml}" y="{mt}" width="{width - ml - mr}" height="{height - mt - mb}" fill="none" stroke="#888"/>']
    for x in (x0, (x0 + x1) / 2, x1):
        out.append(f'<text x="{sx(x):.1f}" y="{height - mb + 16}" font-size="11" text-anchor="middle">{x:.3f}</text>')
    for y in (y0, (y0 + y1) / 2, y1):
        out.append(f'<text x="{ml - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">{y:.2f}</text>')
    out.append(f'<text x="{(ml + width - mr) / 2:.0f}" y="{height - 8}" font-size="12" text-anchor="middle">bpp</text>')
    out.append(f'<text x="14" y="{(mt + height - mb) / 2:.0f}" font-size="12" text-anchor="middle" '
               f'transform="rotate(-90 14 {(mt + height - mb) / 2:.0f})">{html.escape(figure)}</text>')
    if len(pts["board"]) > 1:
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts["board"])
        out.append(f'<polyline points="{line}" fill="none" stroke="#c0392b" stroke-width="2"/>')
    for x, y in pts["board"]:
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="#c0392b"><title>board</title></circle>')
    for x, y in pts["host"]:
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="7" fill="none" stroke="#2c3e50" stroke-width="1.5">'
                   '<title>host emulator</title></circle>')
    out.append("</svg>")
    return "\n".join(out)


def write_html(report: dict, path) -> Path:
    """The one-page HTML report of :func:`compare`'s result (written atomically)."""
    verdict = "PASS" if report["ok"] else "FAIL"
    color = "#1e8449" if report["ok"] else "#c0392b"
    c = report["counts"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>medcodec board validation: {html.escape(str(report.get('model')))}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f4f4f4}"
        "td:first-child,th:first-child{text-align:left}.bad{color:#c0392b}</style></head><body>",
        f"<h1>Board validation: {html.escape(str(report.get('model')))} "
        f'<span style="color:{color}">{verdict}</span></h1>',
        f"<p>Runners: host <b>{_fmt(report['runners']['host'])}</b>, board <b>{_fmt(report['runners']['board'])}</b>. "
        f"Model hash <code>{_fmt(report.get('model_hash'))}</code>. "
        f"Bit-exact (bitstream and decoded pixels): {c['bit_exact']} of {c['board_results']} board results "
        f"({c['host_results']} on the host).</p>",
    ]
    if report["failures"]:
        parts.append(f"<h2>Failures ({len(report['failures'])})</h2><ul>")
        parts += [f'<li class="bad">{html.escape(f)}</li>' for f in report["failures"][:200]]
        if len(report["failures"]) > 200:
            parts.append(f"<li>... and {len(report['failures']) - 200} more</li>")
        parts.append("</ul>")
    parts.append("<h2>Rate-distortion (means per quality)</h2><table><tr><th>quality</th><th>images</th>"
                 "<th>bpp board</th><th>bpp host</th><th>PSNR bits board</th><th>PSNR range board</th>"
                 "<th>PSNR range host</th><th>MS-SSIM board</th><th>limits</th></tr>")
    for q, v in sorted(report["rd"].items(), key=lambda kv: int(kv[0])):
        lim = ", ".join(f"{k} {val}" for k, val in sorted(report["limits"].get(q, {}).items())) or "none"
        b, h = v["board"], v["host"]
        parts.append(f"<tr><td>{q}</td><td>{_fmt(v['images'])}</td><td>{_fmt(b['bpp_mean'])}</td>"
                     f"<td>{_fmt(h['bpp_mean'])}</td><td>{_fmt(b['psnr_bits_mean'], 2)}</td>"
                     f"<td>{_fmt(b['psnr_range_mean'], 2)}</td><td>{_fmt(h['psnr_range_mean'], 2)}</td>"
                     f"<td>{_fmt(b['ms_ssim_mean'], 4)}</td><td>{html.escape(lim)}</td></tr>")
    parts.append("</table>")
    parts.append(_rd_svg(report["rd"]))
    parts.append("<h2>Latency (ms per tile) and throughput</h2><table><tr><th>quality</th><th>side</th>"
                 + "".join(f"<th>{n}</th>" for n in DPU_NETWORKS)
                 + "<th>images/s</th><th>encode images/s</th><th>decode images/s</th></tr>")
    for q, sides in sorted(report["latency"].items(), key=lambda kv: int(kv[0])):
        for side in ("board", "host"):
            s = sides[side]
            cells = "".join(f"<td>{_fmt(s['network_ms_per_tile'].get(n), 2)}</td>" for n in DPU_NETWORKS)
            parts.append(f"<tr><td>{q}</td><td>{side}</td>{cells}<td>{_fmt(s['images_per_s'], 2)}</td>"
                         f"<td>{_fmt(s['encode_images_per_s'], 2)}</td><td>{_fmt(s['decode_images_per_s'], 2)}</td></tr>")
    parts.append("</table></body></html>")
    return atomic_write(Path(path), ("\n".join(parts) + "\n").encode(), force=True)


def run(host_json, board_json, out_dir, thresholds=THRESHOLDS) -> dict:
    """Compare two metrics files; write ``report.json`` and ``report.html`` into ``out_dir``."""
    docs = []
    for side, p in (("host", host_json), ("board", board_json)):
        try:
            docs.append(json.loads(Path(p).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValidationError(f"{p}: {side} metrics not readable ({type(exc).__name__})") from None
    report = compare(docs[0], docs[1], load_thresholds(thresholds))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(out / "report.json", text.encode(), force=True)
    write_html(report, out / "report.html")
    return report
