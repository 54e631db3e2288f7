"""``medcodec demo``: the main job on the bundled samples.

What it shows at this stage of the project:
1. DICOM in and out: every sample is split (metadata deflated, pixels at native
   depth) and merged back; the rebuilt file is checked element by element and
   pixel by pixel, and written under ``--out``.
2. The classical baselines on the same samples, at native depth: lossless bpp
   per codec, and JPEG 2000 / JPEG-XL PSNR at 0.5 and 1 bpp.
3. Which pipeline stages come next (they are not built yet).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom

from codec.dicom import merge_dicom, read_dicom, split_dicom, write_dicom
from codec.errors import MedcodecError
from codec.fileio import atomic_write
from pipelines import baseline
from pipelines.paths import dicom_inputs

ROOT = Path(__file__).resolve().parents[1]

NEXT_STAGES = [
    ("train", "GDN hyperprior codec of seed 000 trained on real CT/MR/X-ray", "issue 3"),
    ("rewrite/calibrate/quantize", "DPU-only operators, power-of-two int8 as the DPU computes", "issue 4"),
    ("compile/runtime/deploy/validate", "partition report or vai_c_xir, board app, SSH deploy, virtual board", "issue 5"),
    ("residual layer", "near-lossless and lossless modes beyond the int8 cap", "issue 6"),
]


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the demo on the bundled samples",
                       description="DICOM round trip and classical baselines on the bundled samples.")
    p.add_argument("--data", default=str(ROOT / "samples"), help="DICOM files or a folder (default: samples/)")
    p.add_argument("--out", default="build/demo", help="output folder (default build/demo)")
    p.set_defaults(func=run)


def _elements_equal(a: pydicom.Dataset, b: pydicom.Dataset) -> bool:
    skip = {0x7FE00010}
    ta = {e.tag for e in a if e.tag not in skip and e.tag.element != 0}
    tb = {e.tag for e in b if e.tag not in skip and e.tag.element != 0}
    return ta == tb and all(a[t].value == b[t].value for t in ta)


def run(args) -> int:
    t_start = time.perf_counter()
    files = dicom_inputs([args.data])
    if not files:
        raise MedcodecError(f"{args.data}: no DICOM files")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    print(f"== 1. DICOM in and out ({len(files)} samples) -> {out}/")
    for f in files:
        img = read_dicom(f)
        meta, _ = split_dicom(f)
        rebuilt = merge_dicom(meta, img.pixels)
        target = write_dicom(out / f"{f.stem}.roundtrip.dcm", rebuilt, force=True)
        back = read_dicom(target)
        same_px = back.pixels.dtype == img.pixels.dtype and np.array_equal(back.pixels, img.pixels)
        same_el = _elements_equal(img.dataset, back.dataset)
        lo, hi = img.value_range
        print(f"  {f.name}: {img.modality} {img.rows}x{img.cols} {'int' if img.signed else 'uint'}{img.bits_stored} "
              f"[{lo}, {hi}]  metadata {len(meta)} B deflated; round trip: pixels "
              f"{'identical' if same_px else 'DIFFER'}, elements {'identical' if same_el else 'DIFFER'}")
        if not (same_px and same_el):
            raise MedcodecError(f"{f}: lossless DICOM round trip failed")

    print("\n== 2. Classical codecs at native bit depth (in-process, imagecodecs)")
    records = []
    for f in files:
        res = baseline.benchmark_file(str(f), f.name)
        if "record" in res:
            records.append(res["record"])
        else:
            print(f"  skipped: {res['skip']}")
    agg = baseline.aggregate(records)
    atomic_write(out / "baseline.json", (json.dumps({"records": records, "aggregates": agg},
                                                    indent=1, default=str) + "\n").encode(), force=True)
    print(baseline.format_table(agg))
    print(f"(per-image details in {out / 'baseline.json'})")

    print("\n== 3. Next stages (not built yet)")
    for name, what, issue in NEXT_STAGES:
        print(f"  {name:32s} {what} [{issue}]")
    print(f"\ndemo done in {time.perf_counter() - t_start:.1f} s")
    return 0
