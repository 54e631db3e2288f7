"""``medcodec info``: what a DICOM file holds, as medcodec reads it."""

from __future__ import annotations

import json
import sys

from codec.dicom import read_dicom
from codec.errors import MedcodecError
from pipelines.paths import dicom_inputs


def register(sub) -> None:
    p = sub.add_parser("info", help="show geometry, bit depth and value range of DICOM files",
                       description="Read DICOM files (or every .dcm under a directory) and print what medcodec sees.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="DICOM files or directories")
    p.add_argument("--json", action="store_true", help="print one JSON object per file")
    p.set_defaults(func=run)


def describe(path) -> dict:
    img = read_dicom(path)
    lo, hi = img.value_range
    ts = getattr(getattr(img.dataset, "file_meta", None), "TransferSyntaxUID", None)
    return {
        "path": str(path),
        "modality": img.modality,
        "rows": img.rows,
        "cols": img.cols,
        "frames": img.frames,
        "bits_stored": img.bits_stored,
        "signed": img.signed,
        "photometric": img.photometric,
        "dtype": str(img.pixels.dtype),
        "min": lo,
        "max": hi,
        "bits_used": max(1, int(hi - lo).bit_length()),
        "transfer_syntax": ts.name if ts is not None else "",
    }


def run(args) -> int:
    files = dicom_inputs(args.paths)
    if not files:
        raise MedcodecError("no DICOM files found in " + ", ".join(args.paths))
    failed = 0
    for f in files:
        try:
            d = describe(f)
        except MedcodecError as exc:
            print(f"medcodec info: error: {exc}", file=sys.stderr, flush=True)
            failed += 1
            continue
        if args.json:
            print(json.dumps(d))
        else:
            frames = f" x{d['frames']} frames" if d["frames"] > 1 else ""
            print(f"{d['path']}: {d['modality'] or '?'} {d['rows']}x{d['cols']}{frames} "
                  f"{'int' if d['signed'] else 'uint'}{d['bits_stored']} {d['photometric']} "
                  f"range [{d['min']}, {d['max']}] ({d['bits_used']} bits used) {d['transfer_syntax']}")
    return 1 if failed else 0
