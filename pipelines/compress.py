"""``medcodec compress`` and ``medcodec decompress``.

    medcodec compress IN.dcm OUT.mdc --model gdn-hyperprior --quality 3
    medcodec compress DIR/ OUTDIR/ --quality 3          (every DICOM/PNG/.npy under DIR)
    medcodec decompress IN.mdc OUT.dcm                   (or a folder of .mdc -> OUTDIR/)

A decompressed DICOM has every original element back, Lossy Image Compression
"01" with its ratio and method, and a new SOP Instance UID. Outputs are written
to a temporary name and renamed; existing outputs need ``--force``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from codec import container, gdncodec
from codec.errors import MedcodecError
from codec.fileio import atomic_write, check_writable
from models import zoo
from models.export import TorchNetworks
from pipelines import codecio

INPUT_SUFFIXES = (".dcm", ".dicom", ".png", ".npy")


def _add_model_args(p) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")


def register(sub) -> None:
    p = sub.add_parser("compress", help="compress DICOM / PNG / .npy images into .mdc files",
                       description="Compress one image file, or every image under a folder, with a learned codec.")
    p.add_argument("input", metavar="IN", help="a DICOM, .png or .npy file, or a folder of them")
    p.add_argument("output", metavar="OUT", help="the .mdc file (or a folder when IN is a folder)")
    p.add_argument("--model", default="gdn-hyperprior", help="codec model (default gdn-hyperprior)")
    p.add_argument("--quality", type=int, default=3, help="rate point 1 (smallest) .. 4 (best) (default 3)")
    _add_model_args(p)
    p.set_defaults(func=run_compress)

    d = sub.add_parser("decompress", help="decompress .mdc files back to DICOM / PNG / .npy",
                       description="Decompress one .mdc file, or every .mdc under a folder.")
    d.add_argument("input", metavar="IN", help="a .mdc file or a folder of them")
    d.add_argument("output", metavar="OUT", help="output file (or folder when IN is a folder)")
    _add_model_args(d)
    d.set_defaults(func=run_decompress)


_CACHE: dict = {}


def load_codec(name: str, quality: int, threads: int | None = None):
    """(TorchNetworks, CodecPackage) for a zoo entry, hashes verified."""
    key = (name, quality)
    if key not in _CACHE:
        model, pkg = zoo.load_codec(name, quality)
        _CACHE[key] = (TorchNetworks(model, threads), pkg)
    return _CACHE[key]


def _pairs(inp: Path, out: Path, suffixes, new_suffix: str | None):
    """(input, output) pairs: one file, or a folder mirrored into another."""
    if inp.is_dir():
        files = sorted(f for f in inp.rglob("*") if f.is_file() and f.suffix.lower() in suffixes)
        if not files:
            raise MedcodecError(f"{inp}: no input files ({', '.join(suffixes)})")
        if out.exists() and not out.is_dir():
            raise MedcodecError(f"{out}: must be a folder when the input is a folder")
        return [(f, (out / f.relative_to(inp)).with_suffix(new_suffix or f.suffix)) for f in files]
    if not inp.exists():
        raise MedcodecError(f"{inp}: no such file or directory")
    return [(inp, out)]


def compress_file(src_path: Path, dst: Path, name: str, quality: int, force: bool, threads=None) -> dict:
    check_writable(dst, force)
    src = codecio.load_source(src_path)
    nets, pkg = load_codec(name, quality, threads)
    timing = gdncodec.Timing()
    t0 = time.perf_counter()
    data = gdncodec.compress(src, nets, pkg, timing=timing)
    enc_s = time.perf_counter() - t0
    atomic_write(dst, data, force=force)
    px = src.pixels
    return {"bytes": len(data), "bpp": len(data) * 8 / px.size, "encode_s": enc_s, "timing": timing}


def decompress_file(src_path: Path, dst: Path | None, force: bool, threads=None) -> dict:
    data = Path(src_path).read_bytes() if Path(src_path).is_file() else None
    if data is None:
        raise MedcodecError(f"{src_path}: no such file")
    try:
        head = container.read_container(data).head
    except container.ContainerError as exc:
        raise MedcodecError(f"{src_path}: {exc}") from None
    quality = head.get("quality")
    if not isinstance(quality, int):
        raise MedcodecError(f"{src_path}: HEAD has no quality")
    nets, pkg = load_codec(head["model"], quality, threads)
    if dst is not None:
        want = codecio.output_suffix(head)
        if dst.suffix.lower() != want:
            raise MedcodecError(f"{src_path}: holds a {head.get('source')} image; name the output *{want}")
        check_writable(dst, force)
    timing = gdncodec.Timing()
    t0 = time.perf_counter()
    try:
        dec = gdncodec.decompress(data, nets, pkg, timing=timing)
    except MedcodecError as exc:
        raise MedcodecError(f"{src_path}: {exc}") from None
    dec_s = time.perf_counter() - t0
    out = codecio.encode_output(dec.head, dec.pixels, dec.meta, len(data))
    if dst is not None:
        atomic_write(dst, out, force=force)
    return {"decode_s": dec_s, "pixels": dec.pixels, "head": dec.head, "output": out, "timing": timing}


def run_compress(args) -> int:
    pairs = _pairs(Path(args.input), Path(args.output), INPUT_SUFFIXES, ".mdc")
    if len(pairs) == 1 and not Path(args.input).is_dir():
        r = compress_file(pairs[0][0], pairs[0][1], args.model, args.quality, args.force, args.threads)
        print(f"{pairs[0][1]}: {r['bytes']} bytes, {r['bpp']:.3f} bpp, {r['encode_s']:.2f} s")
        return 0
    failed = 0
    for src, dst in tqdm(pairs, desc="compress", unit="img", disable=args.no_progress, file=sys.stderr):
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            compress_file(src, dst, args.model, args.quality, args.force, args.threads)
        except MedcodecError as exc:
            failed += 1
            tqdm.write(f"medcodec compress: error: {exc}", file=sys.stderr)
    print(f"compressed {len(pairs) - failed} of {len(pairs)} files into {args.output}")
    return 1 if failed else 0


def run_decompress(args) -> int:
    inp = Path(args.input)
    if inp.is_dir():
        pairs = _pairs(inp, Path(args.output), (".mdc",), None)
        failed = 0
        for src, _ in tqdm(pairs, desc="decompress", unit="img", disable=args.no_progress, file=sys.stderr):
            try:
                r = decompress_file(src, None, args.force, args.threads)
                dst = (Path(args.output) / src.relative_to(inp)).with_suffix(codecio.output_suffix(r["head"]))
                dst.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(dst, r["output"], force=args.force)
            except MedcodecError as exc:
                failed += 1
                tqdm.write(f"medcodec decompress: error: {exc}", file=sys.stderr)
        print(f"decompressed {len(pairs) - failed} of {len(pairs)} files into {args.output}")
        return 1 if failed else 0
    r = decompress_file(inp, Path(args.output), args.force, args.threads)
    print(f"{args.output}: {r['pixels'].shape[-2]}x{r['pixels'].shape[-1]} {r['pixels'].dtype}, {r['decode_s']:.2f} s")
    return 0
