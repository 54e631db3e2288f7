"""``medcodec bench``: speed and memory of the building blocks, as JSON.

Speed goals live here, never as timed assertions in tests. Each entry is the
median of ``--repeat`` runs (after one warm-up) on this machine, with the machine
described in the output so numbers from different hosts are not mixed up.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from codec import lsq, residual
from codec.dicom import merge_dicom, read_dicom, split_dicom
from codec.entropy import decode, encode, gaussian_tables
from codec.errors import MedcodecError
from codec.fileio import atomic_write, check_writable
from codec.metrics import ms_ssim
from pipelines import classical
from pipelines.paths import dicom_inputs

ROOT = Path(__file__).resolve().parents[1]


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark DICOM I/O, metrics, entropy coding and classical codecs",
                       description="Time the building blocks on the bundled samples and write JSON.")
    p.add_argument("--json", required=True, metavar="OUT.json", help="where to write the results")
    p.add_argument("--data", default=str(ROOT / "samples"), help="DICOM files or a folder (default: samples/)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per entry (default 3)")
    p.add_argument("--volume", default=str(ROOT / "volumes" / "mr_t1w_studyforrest"),
                   help="a series folder for the volume codec ('' to skip; default volumes/mr_t1w_studyforrest)")
    p.add_argument("--stripes", default="2048x2048", metavar="ROWSxCOLS",
                   help="a synthetic frame for the striped residual layer, one worker against all "
                        "(default 2048x2048; '' to skip)")
    p.add_argument("--force", action="store_true", help="overwrite OUT.json")
    p.set_defaults(func=run)


def _shape(text: str) -> tuple[int, int]:
    try:
        rows, cols = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise MedcodecError(f"--stripes wants ROWSxCOLS, got {text!r}") from None
    if rows < 1 or cols < 1:
        raise MedcodecError(f"--stripes wants positive sizes, got {text!r}")
    return rows, cols


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def machine() -> dict:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "residual_backend": lsq.backend(),
    }


@contextmanager
def _backend(name: str):
    """Run the residual layer on ``name`` ("numpy" or "numba") inside the block."""
    old = os.environ.get(lsq.JIT_ENV)
    os.environ[lsq.JIT_ENV] = "1" if name == "numba" else "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(lsq.JIT_ENV, None)
        else:
            os.environ[lsq.JIT_ENV] = old


def _residual_runs(name: str, frames: np.ndarray, mpix: float, backends: list[str]) -> dict:
    """The residual layer alone (the .mdc lossless default) on every frame, one run per backend: the
    default backend under its predictor's name, the numpy code as ``...-numpy`` when numba is the
    default (the same bytes, checked; the speed-up is the point)."""
    out = {}
    for pred in residual.PREDICTORS:
        data = None
        for be in backends:
            with _backend(be):
                residual.encode(frames[0][:16, :16], predictor=pred)  # compiles (or loads) the kernels
                t0 = time.perf_counter()
                streams = [residual.encode(x, predictor=pred).data for x in frames]
                enc_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                back = [residual.decode(d, shape=x.shape, dtype=x.dtype) for d, x in zip(streams, frames, strict=True)]
                dec_s = time.perf_counter() - t0
            if not all(np.array_equal(b, x) for b, x in zip(back, frames, strict=True)):
                raise MedcodecError(f"{name}: the residual layer ({pred}, {be}) did not decode bit-exact")
            if data is not None and streams != data:
                raise MedcodecError(f"{name}: the residual layer ({pred}) codes other bytes with numba than with numpy")
            data = streams
            key = f"medcodec-residual-{pred}" + ("" if be == backends[0] else f"-{be}")
            out[key] = {"bpp": 8 * sum(map(len, streams)) / frames.size, "backend": be,
                        "encode_mpix_s": mpix / enc_s, "decode_mpix_s": mpix / dec_s}
    return out


def bench_images(files, repeat: int) -> list[dict]:
    return [bench_image(f, repeat) for f in files]


def bench_image(f, repeat: int) -> dict:
    img = read_dicom(f)
    px = img.pixels
    mpix = img.rows * img.cols * img.frames / 1e6
    meta, _ = split_dicom(f)
    entry = {
        "file": f.name,
        "rows": img.rows, "cols": img.cols, "bits_stored": img.bits_stored,
        "read_s": _time(lambda: read_dicom(f), repeat),
        "split_s": _time(lambda: split_dicom(f), repeat),
        "merge_s": _time(lambda: merge_dicom(meta, px), repeat),
        "meta_deflated_bytes": len(meta),
    }
    if min(img.rows, img.cols) >= 161:
        noisy = np.clip(px.astype(np.int64) + 3, *img.value_range)
        entry["ms_ssim_s"] = _time(lambda: ms_ssim(px, noisy, 2**img.bits_stored - 1), repeat)
    codecs = {}
    for codec in classical.available_codecs("lossless"):
        enc = classical.encode_image(codec, px, img.bits_stored, img.signed)
        codecs[codec.name] = {
            "bpp": enc.bpp,
            "encode_mpix_s": mpix / _time(lambda c=codec: classical.encode_image(c, px, img.bits_stored, img.signed), repeat),
            "decode_mpix_s": mpix / _time(lambda c=codec, e=enc: classical.decode_image(c, e), repeat),
        }
    default = lsq.backend()
    backends = [default] + (["numpy"] if default == "numba" else [])
    codecs.update(_residual_runs(f.name, px.reshape(-1, img.rows, img.cols), mpix, backends))
    entry["lossless"] = codecs
    return entry


def bench_entropy(repeat: int) -> dict:
    rng = np.random.default_rng(0)
    scales = np.exp(np.linspace(np.log(0.11), np.log(256), 64))
    tables = gaussian_tables(scales)
    idx = rng.integers(0, 64, size=1_000_000)
    sym = np.round(rng.normal(0, scales[idx])).astype(np.int64)
    data = encode(sym, idx, tables)
    return {
        "symbols": int(sym.size),
        "bits_per_symbol": 8 * len(data) / sym.size,
        "encode_msym_s": sym.size / 1e6 / _time(lambda: encode(sym, idx, tables), repeat),
        "decode_msym_s": sym.size / 1e6 / _time(lambda: decode(data, idx, tables), repeat),
        "tables_build_s": _time(lambda: gaussian_tables(scales), repeat),
    }


def bench_learned(files, quality: int = 3) -> dict:
    """Learned codec speed per image; what tiling costs (256x256 tiles vs one whole-image tile); what the
    input map costs (the image's own min..max, the default, vs the whole BitsStored range).

    The whole-image variant uses the same package with its tile size set to the image's side rounded up to
    64 (the networks are fully convolutional; the DPU build needs the fixed 256 tile).
    """
    import copy

    from codec import gdncodec, metrics
    from codec.errors import MedcodecError
    from pipelines.compress import load_codec

    try:
        nets, pkg = load_codec("gdn-hyperprior", quality)
    except MedcodecError as exc:
        return {"skipped": str(exc)}
    out = []
    for f in files:
        img = read_dicom(f)
        src = gdncodec.Source(img.pixels, img.bits_stored, img.signed)
        whole = copy.copy(pkg)
        whole.meta = dict(pkg.meta, tile=-(-max(img.rows, img.cols) // 64) * 64)
        entry = {"file": f.name, "quality": quality}
        for label, p, mode in (("tiles_256", pkg, "minmax"), ("whole_image", whole, "minmax"),
                               ("container_map", pkg, "container")):
            t_enc, t_dec = gdncodec.Timing(), gdncodec.Timing()
            t0 = time.perf_counter()
            data = gdncodec.compress(src, nets, p, timing=t_enc, map_mode=mode)
            t1 = time.perf_counter()
            dec = gdncodec.decompress(data, nets, p, timing=t_dec)
            t2 = time.perf_counter()
            entry[label] = {
                "tile": p.tile, "bpp": len(data) * 8 / img.pixels.size,
                "psnr_bits": metrics.psnr_bits(img.pixels, dec.pixels, img.bits_stored),
                "psnr_range": metrics.psnr_range(img.pixels, dec.pixels),
                "encode_s": t1 - t0, "decode_s": t2 - t1,
                "encode_parts_s": {"analysis": t_enc.analysis_s, "h_s_int": t_enc.hyper_s, "coding": t_enc.coding_s},
                "decode_parts_s": {"synthesis": t_dec.synthesis_s, "h_s_int": t_dec.hyper_s, "coding": t_dec.coding_s},
            }
        a, b = entry["tiles_256"], entry["whole_image"]
        entry["tiling_cost"] = {"bpp_pct": 100 * (a["bpp"] / b["bpp"] - 1), "psnr_db": a["psnr_bits"] - b["psnr_bits"]}
        c = entry["container_map"]
        entry["container_map_cost"] = {"bpp_pct": 100 * (c["bpp"] / a["bpp"] - 1), "psnr_db": c["psnr_bits"] - a["psnr_bits"]}
        out.append(entry)
    return {"images": out}


def bench_volume(folder: Path) -> dict:
    """Seconds and Mvoxel/s of the volume codec (each model, lossless) on one series, one run each (the MLP
    is seconds per slice), through the same calls as ``medcodec compress SERIES_DIR OUT.mdc``."""
    from codec import volume as V
    from codec.series import read_series
    from models import zoo

    if not folder.is_dir():
        return {"skipped": f"{folder}: no such series folder"}
    vol = read_series(folder).volume
    out = {"series": folder.name, "shape": list(vol.shape), "models": {}}
    for model, rp in (("prev-slice", "ls"), ("prev-slice", "blend"), ("mlp3d-pyramid", "ls")):
        pred, sha = zoo.load_volume_predictor(model)
        t0 = time.perf_counter()
        data = V.compress_volume(vol, pred, model=model, package_sha256=sha, bits_stored=16,
                                 signed=vol.dtype.kind == "i", source="npy", residual_predictor=rp)
        enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, back, _ = V.decompress_volume(data, pred)
        dec = time.perf_counter() - t0
        if not np.array_equal(back, vol):
            raise MedcodecError(f"{folder}: {model} did not decode bit-exact")
        out["models"][f"{model} ({rp})"] = {"bpp": 8 * len(data) / vol.size, "encode_s": enc, "decode_s": dec,
                                "encode_mvox_s": vol.size / enc / 1e6, "decode_mvox_s": vol.size / dec / 1e6}
    return out


def bench_stripes(shape=(2048, 2048)) -> dict:
    """A radiograph-sized frame (synthetic: a smooth 12-bit field plus noise) through the residual layer
    (least-squares predictor, lossless), its stripes coded by one process and by every CPU."""
    rows, cols = shape
    r, c = np.mgrid[0:rows, 0:cols]
    rng = np.random.default_rng(2)
    field = 2048 + 900 * np.sin(r / 170.0) * np.cos(c / 230.0) + 400 * np.tanh((c - cols / 2) / 40.0)
    x = np.clip(field + rng.normal(0, 12, shape), 0, 4095).astype(np.uint16)
    out = {"shape": [rows, cols], "stripes": residual.stripe_count(rows, cols), "runs": {}}
    for workers in sorted({1, residual.default_workers()}):
        t0 = time.perf_counter()
        enc = residual.encode(x, predictor="ls", workers=workers)
        enc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        back = residual.decode(enc.data, shape=x.shape, dtype=x.dtype, workers=workers)
        dec_s = time.perf_counter() - t0
        if not np.array_equal(back, x):
            raise MedcodecError("the striped residual stream did not decode bit-exact")
        out["bpp"] = 8 * len(enc.data) / x.size
        out["runs"][str(workers)] = {"encode_s": enc_s, "decode_s": dec_s,
                                     "encode_mpix_s": x.size / enc_s / 1e6, "decode_mpix_s": x.size / dec_s / 1e6}
    return out


def run(args) -> int:
    out = check_writable(args.json, args.force)
    out.parent.mkdir(parents=True, exist_ok=True)
    files = dicom_inputs([args.data])
    stripes_shape = _shape(args.stripes) if args.stripes else None
    t0 = time.perf_counter()
    result = {
        "machine": machine(),
        "repeat": args.repeat,
        "images": bench_images(files, args.repeat),
        "entropy_coding": bench_entropy(args.repeat),
        "learned": bench_learned(files),
        "volume": bench_volume(Path(args.volume)) if args.volume else {"skipped": "--volume ''"},
        "stripes": bench_stripes(stripes_shape) if stripes_shape else {"skipped": "--stripes ''"},
    }
    big = np.random.default_rng(1).integers(0, 4096, (2048, 2500)).astype(np.uint16)
    result["ms_ssim_2048x2500_s"] = _time(lambda: ms_ssim(big, big // 2 * 2, 4095), 1)
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    atomic_write(out, (json.dumps(result, indent=2) + "\n").encode(), force=True)
    for e in result["images"]:
        ll = ", ".join(f"{k} {v['bpp']:.2f} bpp {v['encode_mpix_s']:.3g}/{v['decode_mpix_s']:.3g} Mpx/s"
                       for k, v in e["lossless"].items())
        print(f"{e['file']}: read {e['read_s'] * 1e3:.1f} ms, split {e['split_s'] * 1e3:.1f} ms, "
              f"merge {e['merge_s'] * 1e3:.1f} ms; {ll}")
    ec = result["entropy_coding"]
    print(f"entropy coding: {ec['encode_msym_s']:.1f} Msym/s encode, {ec['decode_msym_s']:.1f} Msym/s decode, "
          f"{ec['bits_per_symbol']:.3f} bits/symbol")
    for e in result["learned"].get("images", []):
        a, c = e["tiles_256"], e["tiling_cost"]
        print(f"learned q{e['quality']} {e['file']}: {a['bpp']:.3f} bpp, {a['psnr_bits']:.2f} dB, encode {a['encode_s']:.2f} s, "
              f"decode {a['decode_s']:.2f} s; tiling costs {c['bpp_pct']:+.1f} % bpp, {c['psnr_db']:+.2f} dB; "
              f"container-range input map: {e['container_map_cost']['bpp_pct']:+.1f} % bpp, "
              f"{e['container_map_cost']['psnr_db']:+.2f} dB")
    if "skipped" in result["learned"]:
        print(f"learned codec: skipped ({result['learned']['skipped']})")
    for m, v in result["volume"].get("models", {}).items():
        print(f"volume {result['volume']['series']} {m}: {v['bpp']:.3f} bpp, encode {v['encode_s']:.1f} s, "
              f"decode {v['decode_s']:.1f} s ({v['encode_mvox_s']:.2f} / {v['decode_mvox_s']:.2f} Mvoxel/s)")
    st = result["stripes"]
    if "skipped" not in st:
        print(f"residual ls {st['shape'][0]}x{st['shape'][1]} in {st['stripes']} stripes ({st['bpp']:.3f} bpp): "
              + "; ".join(f"{w} worker(s) encode {v['encode_s']:.1f} s, decode {v['decode_s']:.1f} s"
                          for w, v in st["runs"].items()))
    print(f"ms_ssim 2048x2500: {result['ms_ssim_2048x2500_s']:.2f} s; peak RSS {result['peak_rss_mb']:.0f} MB")
    print(f"wrote {out}")
    return 0
