"""``medcodec demo``: the main job on the bundled samples.

What it shows at this stage of the project:
1. DICOM in and out: every sample is split (metadata deflated, pixels at native
   depth) and merged back; the rebuilt file is checked element by element and
   pixel by pixel, and written under ``--out``.
2. The learned codec (float GDN hyperprior, zoo quality ``--quality``): every
   sample compressed to a real ``.mdc`` file and decompressed to DICOM, with bpp
   from the file size, PSNR at native depth and MS-SSIM, beside JPEG 2000 run in
   the same process at the same bpp.
3. The classical baselines on the same samples, at native depth: lossless bpp
   per codec, and JPEG 2000 / JPEG-XL PSNR at 0.25-2 bpp; then medcodec's own
   lossless and near-lossless .mdc files (the residual layer) beside them.
4. The DPU pipeline on the int8 codec (``dpu-hyperprior``): rewrite -> calibrate -> quantize ->
   compile (no vai_c_xir here: the emulator package, stated) -> runtime -> deploy to the virtual
   board (OpenSSH's sshd on 127.0.0.1) -> validate there, with the board's figures beside
   JPEG 2000 at the same bpp. Without sshd the same board app runs locally, and says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom

from codec import metrics
from codec.dicom import merge_dicom, read_dicom, split_dicom, write_dicom
from codec.errors import MedcodecError
from codec.fileio import atomic_write
from pipelines import baseline, classical
from pipelines.paths import dicom_inputs

ROOT = Path(__file__).resolve().parents[1]

DPU_STAGES = ("rewrite", "calibrate", "quantize", "compile", "runtime")


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the demo on the bundled samples",
                       description="DICOM round trip and classical baselines on the bundled samples.")
    p.add_argument("--data", default=str(ROOT / "samples"), help="DICOM files or a folder (default: samples/)")
    p.add_argument("--out", default="build/demo", help="output folder (default build/demo)")
    p.add_argument("--quality", type=int, default=2, help="learned codec quality 1-4 (default 2)")
    p.add_argument("--calib-tiles", type=int, default=8, help="calibration tiles for the int8 codec (default 8)")
    p.add_argument("--volume", default=str(ROOT / "volumes" / "mr_t1w_studyforrest"),
                   help="a series folder for the volume section ('' to skip; default: volumes/mr_t1w_studyforrest)")
    p.set_defaults(func=run)


def _elements_equal(a: pydicom.Dataset, b: pydicom.Dataset) -> bool:
    skip = {0x7FE00010}
    ta = {e.tag for e in a if e.tag not in skip and e.tag.element != 0}
    tb = {e.tag for e in b if e.tag not in skip and e.tag.element != 0}
    return ta == tb and all(a[t].value == b[t].value for t in ta)


def _f(v, spec):
    return format(v, spec) if v is not None and v == v else "-".rjust(int(spec.split(".")[0]))


def learned_vs_j2k(path: Path, out: Path, quality: int) -> dict:
    """Compress and decompress one image through real files; JPEG 2000 at the same bpp."""
    from pipelines.compress import compress_file, decompress_file

    img = read_dicom(path)
    mdc = out / f"{path.stem}.q{quality}.mdc"
    enc = compress_file(path, mdc, "gdn-hyperprior", quality, force=True)
    dec = decompress_file(mdc, out / f"{path.stem}.q{quality}.dcm", force=True)
    bpp = metrics.file_bpp(mdc, img.rows, img.cols, img.frames)
    m = metrics.image_metrics(img.pixels, dec["pixels"], img.bits_stored)
    codec = classical.get_codec("j2k-lossy")
    res = classical.encode_at_bpp(codec, img.pixels, bpp, bits_stored=img.bits_stored, signed=img.signed)
    j = metrics.image_metrics(img.pixels, classical.decode_image(codec, res.encoded), img.bits_stored)
    return {"bpp": bpp, "psnr": m["psnr_bits"], "ms_ssim": m["ms_ssim"], "max_err": int(m["max_abs_error"]),
            "encode_s": enc["encode_s"], "decode_s": dec["decode_s"],
            "j2k_bpp": res.bpp, "j2k_psnr": j["psnr_bits"], "j2k_ms_ssim": j["ms_ssim"]}


def _zoo_int8(path: Path, out: Path, quality: int) -> dict:
    """The committed (QAT) int8 package on one image, through a real .mdc file, on the host emulator."""
    from pipelines.compress import compress_file, decompress_file

    img = read_dicom(path)
    mdc = out / f"{path.stem}.q{quality}.int8.mdc"
    compress_file(path, mdc, "dpu-hyperprior", quality, force=True, backend="int8")
    dec = decompress_file(mdc, None, force=True)
    m = metrics.image_metrics(img.pixels, dec["pixels"], img.bits_stored)
    return {"bpp": metrics.file_bpp(mdc, img.rows, img.cols, img.frames), **m}


def dpu_pipeline(files: list[Path], out: Path, args) -> dict:
    """Section 4: the stages on the int8 codec, the virtual board when sshd exists, figures vs JPEG 2000."""
    import subprocess
    import sys

    from board import sim
    from pipelines.stages import StageConfig, run_stage, stage_dir

    q = args.quality
    on_board = sim.is_available()
    cfg = StageConfig(board="sim", model="dpu-hyperprior", qualities=(q,), data=str(args.data),
                      out=str(out / "build"), calib_tiles=args.calib_tiles)
    print(f"\n== 4. DPU pipeline: dpu-hyperprior q{q} in int8 -> {stage_dir(cfg, '*').parent}/")
    for name in DPU_STAGES:
        t0 = time.perf_counter()
        print(f"-- {name}", flush=True)
        run_stage(name, cfg)
        print(f"   ({time.perf_counter() - t0:.1f} s)")
    if on_board:
        from board import inventory

        was_up = sim.status(inventory.sim_dir("sim")) is not None
        try:
            for name in ("deploy", "validate"):
                t0 = time.perf_counter()
                print(f"-- {name} (virtual board: OpenSSH's sshd on 127.0.0.1)", flush=True)
                run_stage(name, cfg)
                print(f"   ({time.perf_counter() - t0:.1f} s)")
        finally:
            if not was_up:  # leave no server behind that the user did not start (make board-sim-up keeps one)
                sim.down(inventory.sim_dir("sim"))
        metrics_path = stage_dir(cfg, "validate") / "board_metrics.sim.json"
        where = "on the virtual board (over SSH, integer DPU emulator), bitstreams identical to the host's"
    else:
        print("-- deploy / validate: OpenSSH's sshd is not installed, so there is no virtual board: the same "
              "board app runs locally instead (apt-get install openssh-server for the SSH path)")
        metrics_path = stage_dir(cfg, "validate") / "local_metrics.json"
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        app = stage_dir(cfg, "runtime") / "app" / "app.py"
        r = subprocess.run([sys.executable, "-B", str(app), "validate", str(args.data), "--out", str(metrics_path),
                            "--force", "--quality", str(q), "--runner", "emulator"], capture_output=True, text=True)
        if r.returncode != 0:
            raise MedcodecError(f"board app failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        where = "by the board app run locally (integer DPU emulator)"
    doc = json.loads(metrics_path.read_text())
    by_name = {f.name: f for f in files}
    print(f"  int8 codec (post-training int8 calibrated just now on the samples) {where};")
    print("  right: the zoo's int8 package of the same quality (quantization-aware fine-tuned, "
          "models/weights/README.md) on the host emulator, and JPEG 2000 at the int8 codec's bpp:")
    print(f"  {'image':34s} {'bpp':>6} {'PSNR':>7} {'range':>6} {'MS-SSIM':>8} {'enc s':>6} {'dec s':>6} |"
          f" {'zoo bpp':>7} {'range':>6} | {'J2K bpp':>7} {'PSNR':>7} {'range':>6}")
    for res in doc["results"]:
        name = res["image"].split("_", 1)[1] if res["image"][:3].isdigit() else res["image"]
        src = by_name.get(name) or by_name.get(res["image"])
        j = None
        if src is not None:
            img = read_dicom(src)
            codec = classical.get_codec("j2k-lossy")
            enc = classical.encode_at_bpp(codec, img.pixels, res["bpp"], bits_stored=img.bits_stored, signed=img.signed)
            j = {"bpp": enc.bpp, **metrics.image_metrics(img.pixels, classical.decode_image(codec, enc.encoded),
                                                          img.bits_stored)}
        zoo = _zoo_int8(src, out, q) if src is not None else None
        print(f"  {name:34s} {res['bpp']:6.3f} {_f(res['psnr_bits'], '7.2f')} {_f(res['psnr_range'], '6.2f')} "
              f"{_f(res['ms_ssim'], '8.5f')} {res['encode_s']:6.2f} {res['decode_s']:6.2f} | "
              + (f"{zoo['bpp']:7.3f} {_f(zoo['psnr_range'], '6.2f')} | " if zoo else "- | ")
              + (f"{j['bpp']:7.3f} {_f(j['psnr_bits'], '7.2f')} {_f(j['psnr_range'], '6.2f')}" if j else "-"))
    print("  (PSNR at native depth and over the image's own range; the network time is the integer emulator's "
          "on this CPU: see the compile report's roofline for the Ultra96 DPU estimate)")
    return doc


def lossless_section(files, records: list[dict], out: Path, near: int = 2) -> list[dict]:
    """Section 3b: medcodec's own lossless and near-lossless files (the residual layer with its least-squares
    predictor, no network) through real .mdc files and back to DICOM, beside the classical codecs' figures
    of section 3 for the same images."""
    from codec import container
    from pipelines import compress as compress_cmd

    print(f"\n== 3b. medcodec lossless and near-lossless (D={near}): the residual layer, .mdc -> DICOM, checked")
    print(f"  {'image':34s} {'.mdc bpp':>8} {'pixels':>7} {'JPEG-LS':>7} {'JPEG-XL':>7} {'J2K':>6} {'enc s':>6} {'dec s':>6} |"
          f" {'D=' + str(near) + ' bpp':>8} {'JPEG-LS':>7} {'maxerr':>6}")
    by_name = {r["path"]: r for r in records}
    rows = []
    for f in files:
        rec = by_name.get(f.name)
        if rec is None:
            continue
        px = read_dicom(f).pixels
        row = {"image": f.name}
        for mode, d in (("lossless", 0), ("near-lossless", near)):
            mdc, dcm = out / f"{f.stem}.{mode}.mdc", out / f"{f.stem}.{mode}.dcm"
            r = compress_cmd.compress_file(f, mdc, compress_cmd.IMAGE_DEFAULT_MODEL, 1, True, mode=mode,
                                          max_error=d or None)
            t0 = time.perf_counter()
            compress_cmd.decompress_file(mdc, dcm, True)
            dec_s = time.perf_counter() - t0
            back = read_dicom(dcm).pixels
            err = int(np.abs(back.astype(np.int64) - px.astype(np.int64)).max())
            if back.shape != px.shape or err > d:
                raise MedcodecError(f"{f}: {mode} decoded with max error {err} (bound {d})")
            streams = container.read_container(mdc.read_bytes()).residuals
            row[mode] = {"bpp": r["bpp"], "pixel_bpp": 8 * sum(map(len, streams)) / px.size,
                         "encode_s": r["encode_s"], "decode_s": dec_s, "max_error": err}
        ll, nl = row["lossless"], row["near-lossless"]
        # a classical codec this imagecodecs build lacks (or that failed in section 3) prints as "-"
        cl = {k: rec.get("lossless", {}).get(k, {}).get("bpp", float("nan")) for k in ("jpegls", "jxl", "j2k")}
        jls_near = rec.get("near_lossless", {}).get("jpegls", {}).get(str(near), {}).get("bpp", float("nan"))
        print(f"  {f.name:34s} {ll['bpp']:8.3f} {ll['pixel_bpp']:7.3f} {_f(cl['jpegls'], '7.3f')} "
              f"{_f(cl['jxl'], '7.3f')} {_f(cl['j2k'], '6.3f')} {ll['encode_s']:6.2f} {ll['decode_s']:6.2f} | "
              f"{nl['pixel_bpp']:8.3f} {_f(jls_near, '7.3f')} {nl['max_error']:6d}")
        rows.append(row)
    print("  (.mdc bpp: the whole file, with the deflated DICOM metadata; pixels: its pixel streams alone, "
          "comparable with the classical codestreams; every decoded DICOM checked against its bound)")
    return rows


def volume_section(folder: Path, out: Path) -> dict:
    """Section 5: a series folder -> one lossless .mdc (seed 001's int8 predictor + the residual layer) and
    back (every pixel and element checked); beside the residual layer alone and JPEG-XL / JPEG-LS lossless on the same slices."""
    from codec import residual
    from codec.series import read_series
    from pipelines import volume_cmd

    ser = read_series(folder)
    vol = ser.volume
    print(f"\n== 5. A volume, lossless: {folder.name}/ ({vol.shape[0]} slices of {vol.shape[1]}x{vol.shape[2]}, "
          f"{ser.modality} {ser.bits_stored}-bit) with {volume_cmd.MLP_MODEL}")
    mdc, back = out / f"{folder.name}.mdc", out / f"{folder.name}.decoded"
    if back.exists():
        import shutil

        shutil.rmtree(back)
    r = volume_cmd.compress_series(folder, mdc, model=volume_cmd.MLP_MODEL, force=True, progress=False)
    d = volume_cmd.decompress_series(mdc, back, force=True, progress=False)
    same = True
    for n in ser.names:
        a, b = read_dicom(folder / n), read_dicom(back / n)
        same &= a.pixels.dtype == b.pixels.dtype and np.array_equal(a.pixels, b.pixels) and \
            _elements_equal(a.dataset, b.dataset)
    if not same:
        raise MedcodecError(f"{folder}: the decoded series differs from the original")
    from codec import volume

    _, _, slice_streams = volume.read_volume(mdc.read_bytes())
    rows = [(f"medcodec {volume_cmd.MLP_MODEL} (slice streams)", 8 * sum(map(len, slice_streams)) / vol.size,
             r["encode_s"], d["decode_s"]),
            (f"  the whole .mdc (HEAD, metadata of {vol.shape[0]} slices)", r["bpp"], float("nan"), float("nan"))]
    t0 = time.perf_counter()
    streams, prev = [], None
    for x in vol:
        enc = residual.encode(x, x_hat=prev)
        streams.append(enc.data)
        prev = x
    rows.append((f"medcodec {volume_cmd.DEFAULT_MODEL} (the default: slice s-1 as x_hat)",
                 8 * sum(map(len, streams)) / vol.size, time.perf_counter() - t0, float("nan")))
    t0 = time.perf_counter()
    streams = [residual.encode(x).data for x in vol]
    rows.append(("medcodec residual layer alone", 8 * sum(map(len, streams)) / vol.size,
                 time.perf_counter() - t0, float("nan")))
    for name in ("jxl", "jpegls"):
        if name in classical.CODECS:
            enc = classical.encode_image(name, vol, ser.bits_stored, ser.signed)
            rows.append((f"{classical.CODECS[name].label} lossless (per slice)", enc.bpp, enc.encode_s, float("nan")))
    print(f"  {'method':54s} {'bpp':>6} {'enc s':>6} {'dec s':>6}")
    for name, bpp, es, ds in rows:
        print(f"  {name:54s} {bpp:6.3f} {_f(es, '6.2f')} {_f(ds, '6.2f')}")
    print(f"  decoded {back}/: every slice's pixels and elements identical to its original file's")
    return {"rows": rows}


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

    print(f"\n== 2. Learned codec (gdn-hyperprior q{args.quality}, float) vs JPEG 2000 at the same bpp")
    print(f"  {'image':34s} {'bpp':>6} {'PSNR':>7} {'MS-SSIM':>8} {'maxerr':>7} {'enc s':>6} {'dec s':>6} |"
          f" {'J2K bpp':>7} {'PSNR':>7} {'MS-SSIM':>8}")
    for f in files:
        r = learned_vs_j2k(f, out, args.quality)
        print(f"  {f.name:34s} {r['bpp']:6.3f} {r['psnr']:7.2f} {_f(r['ms_ssim'], '8.5f')} {r['max_err']:7d} "
              f"{r['encode_s']:6.2f} {r['decode_s']:6.2f} | {r['j2k_bpp']:7.3f} {r['j2k_psnr']:7.2f} "
              f"{_f(r['j2k_ms_ssim'], '8.5f')}")
    print("  (PSNR in dB at the image's own bit depth, peak 2^BitsStored-1; MS-SSIM with that data range)")

    print("\n== 3. Classical codecs at native bit depth (in-process, imagecodecs)")
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
    lossless_section(files, records, out)

    dpu_pipeline(files, out, args)
    if args.volume:
        volume_section(Path(args.volume), out)
    print(f"\ndemo done in {time.perf_counter() - t_start:.1f} s")
    return 0
