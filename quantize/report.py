"""The quantize stage's per-layer report: ``layers.json`` and a one-page HTML with the SQNR chart.

``layers.json``: ``{quality: {network: [{layer, op, act, fp_w, fp_b, fp_out, shift_cut, sqnr_db}]}}``.
The HTML page draws the per-layer SQNR of every quality as inline SVG bars (no scripts, no
external files) and, when given, the rate-distortion points of ``medcodec eval --backend``.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from codec.fileio import atomic_write

__all__ = ["layer_table", "write_layer_report"]


def layer_table(quant_report: dict) -> dict:
    """``{quality: {network: [row, ...]}}`` from the quantize stage's per-quality reports."""
    table: dict = {}
    for q, rep in quant_report.items():
        table[q] = {}
        for net, spec in rep["networks"].items():
            rows, fp = [], spec["fp_in"]
            for ls in spec["layers"]:
                rows.append({"layer": ls["name"], "op": ls["op"], "act": ls["act"], "fp_in": fp, "fp_w": ls["fp_w"],
                             "fp_b": ls["fp_b"], "fp_out": ls["fp_out"], "shift_cut": ls["fp_w"] + fp - ls["fp_out"],
                             "sqnr_db": ls["sqnr_db"]})
                fp = ls["fp_out"]
            table[q][net] = rows
    return table


def _bars(rows: list[tuple[str, float]], width: int = 760, bar_h: int = 14) -> str:
    finite = [v for _, v in rows if v is not None and math.isfinite(v)]
    top = max(finite + [40.0])
    h = bar_h * len(rows) + 20
    parts = [f'<svg width="{width}" height="{h}" xmlns="http://www.w3.org/2000/svg" font-size="11">']
    for i, (label, v) in enumerate(rows):
        y = i * bar_h + 4
        w = 0 if v is None or not math.isfinite(v) else max(0.0, v) / top * (width - 260)
        parts.append(f'<text x="0" y="{y + 10}">{html.escape(label)}</text>')
        parts.append(f'<rect x="200" y="{y}" width="{w:.1f}" height="{bar_h - 3}" fill="#4a7ab8"/>')
        parts.append(f'<text x="{205 + w:.1f}" y="{y + 10}">{"inf" if w == 0 and v else f"{v:.1f} dB"}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _rd_svg(points: dict[str, list[tuple[float, float]]], width: int = 520, height: int = 320) -> str:
    allp = [p for pts in points.values() for p in pts]
    if not allp:
        return "<p>no RD points</p>"
    x0, x1 = 0.0, max(p[0] for p in allp) * 1.1
    y0, y1 = min(p[1] for p in allp) - 1, max(p[1] for p in allp) + 1
    colours = ["#1b6ac9", "#d9480f", "#2b8a3e", "#862e9c", "#495057", "#e67700"]

    def sx(v):
        return 50 + (v - x0) / (x1 - x0 or 1) * (width - 70)

    def sy(v):
        return height - 30 - (v - y0) / (y1 - y0 or 1) * (height - 50)

    parts = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg" font-size="11">',
             f'<line x1="50" y1="{height - 30}" x2="{width - 20}" y2="{height - 30}" stroke="black"/>',
             f'<line x1="50" y1="20" x2="50" y2="{height - 30}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 5}">bpp</text><text x="5" y="15">PSNR dB</text>',
             f'<text x="45" y="{height - 15}">{x0:.1f}</text><text x="{width - 40}" y="{height - 15}">{x1:.2f}</text>',
             f'<text x="5" y="{height - 30}">{y0:.1f}</text><text x="5" y="25">{y1:.1f}</text>']
    for i, (label, pts) in enumerate(sorted(points.items())):
        c = colours[i % len(colours)]
        pts = sorted(pts)
        parts.append('<polyline fill="none" stroke="{}" points="{}"/>'.format(
            c, " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in pts)))
        parts += [f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="3" fill="{c}"/>' for a, b in pts]
        parts.append(f'<text x="{width - 170}" y="{30 + 14 * i}" fill="{c}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_layer_report(quant_report: dict, json_path, html_path, *, model: str,
                       rd: dict[str, dict[str, list[tuple[float, float]]]] | None = None) -> dict:
    """Write ``layers.json`` and the HTML page; ``rd``: {group: {curve label: [(bpp, psnr)]}}."""
    table = layer_table(quant_report)
    atomic_write(Path(json_path), (json.dumps(table, indent=1, default=str) + "\n").encode(), force=True)
    body = [f"<h1>{html.escape(model)}: int8 quantization report</h1>",
            "<p>Per-layer SQNR of the DPU int8 networks (builtin quantizer: power-of-two scales, the DPU's "
            "rounding), each layer's dequantized output against the float network's, errors accumulated "
            "from the input. Fix positions: value = q &times; 2<sup>-fp</sup>.</p>"]
    for q, nets in table.items():
        body.append(f"<h2>{html.escape(str(q))}</h2>")
        rows = [(f"{net}.{r['layer']} (fp {r['fp_out']})", r["sqnr_db"]) for net, rs in nets.items() for r in rs]
        body.append(_bars(rows))
    if rd:
        body.append("<h2>Rate-distortion (PSNR over the image range)</h2>")
        for group, curves in sorted(rd.items()):
            body.append(f"<h3>{html.escape(group)}</h3>" + _rd_svg(curves))
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>medcodec quantization report</title>"
            "<style>body{font-family:sans-serif;max-width:900px;margin:2em auto}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    atomic_write(Path(html_path), page.encode(), force=True)
    return table
