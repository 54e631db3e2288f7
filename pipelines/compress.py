"""``medcodec compress`` and ``medcodec decompress``.

    medcodec compress IN.dcm OUT.mdc --model gdn-hyperprior --quality 3
    medcodec compress DIR/ OUTDIR/ --quality 3          (every DICOM/PNG/.npy under DIR)
    medcodec decompress IN.mdc OUT.dcm                   (or a folder of .mdc -> OUTDIR/)
    medcodec compress IN.dcm OUT.mdc --mode lossless                  (bit-exact)
    medcodec compress IN.dcm OUT.mdc --mode near-lossless --max-error 2   (|error| <= 2)
    medcodec compress IN.dcm OUT.mdc --mode near-lossless --target-psnr 60
    medcodec compress SERIES_DIR OUT.mdc --mode lossless   (a series folder -> one volume file, seed 001)
    medcodec decompress OUT.mdc OUT_DIR                    (a volume file -> the series folder)

A decompressed DICOM has every original element back, Lossy Image Compression
"01" with its ratio and method, and a new SOP Instance UID; near-lossless adds
its bound to Derivation Description; a lossless one keeps its SOP Instance UID
and is not marked lossy. Outputs are written to a temporary name and renamed;
existing outputs need ``--force``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import imagecodecs
from tqdm import tqdm

from codec import gdncodec, residual, sources, volume
from codec.errors import MedcodecError
from codec.fileio import atomic_write
from models import zoo
from models.export import TorchNetworks
from pipelines import codecio, volume_cmd

INPUT_SUFFIXES = (".dcm", ".dicom", ".png", ".npy")
IMAGE_DEFAULT_MODEL = "gdn-hyperprior"


def _add_model_args(p) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")


def register(sub) -> None:
    p = sub.add_parser("compress", help="compress DICOM / PNG / .npy images into .mdc files",
                       description="Compress one image file, or every image under a folder, with a learned codec.")
    p.add_argument("input", metavar="IN", help="a DICOM, .png or .npy file, or a folder of them")
    p.add_argument("output", metavar="OUT",
                   help="the .mdc file, or a folder when IN is a folder (a folder IN and an OUT named *.mdc: the "
                        "folder is one series, coded as one volume with --mode lossless / near-lossless)")
    p.add_argument("--model", default=IMAGE_DEFAULT_MODEL,
                   help="codec model (default gdn-hyperprior; for a series folder -> one .mdc: prev-slice (default), "
                        "mlp3d-pyramid or mlp3d-cube, seed 001's int8 MLP)")
    p.add_argument("--quality", type=int, default=3, help="rate point 1 (smallest) .. 4 (best) (default 3)")
    p.add_argument("--backend", choices=BACKENDS, default="float",
                   help="float (torch), rewritten (exact DPU rewrites, torch) or int8 (the DPU's integers, "
                        "on the emulator; dpu-hyperprior only) (default float)")
    p.add_argument("--mode", choices=gdncodec.MODES, default="lossy",
                   help="lossy (the learned layer only, default), near-lossless (plus the residual layer: "
                        "|error| <= D) or lossless (bit-exact)")
    p.add_argument("--max-error", type=int, default=None, metavar="D",
                   help="near-lossless: the largest absolute error in stored values, D >= 1")
    p.add_argument("--target-psnr", type=float, default=None, metavar="DB",
                   help="near-lossless: the largest D per frame whose PSNR (peak 2^BitsStored-1) is >= DB")
    p.add_argument("--lossy-layer", choices=gdncodec.LOSSY_LAYERS, default=None,
                   help="lossless / near-lossless (--max-error or --target-psnr): what lies under the residual "
                        "layer. none (the default of these modes): the residual layer alone, no network, nothing "
                        "of --model / --quality / --backend used; measured smaller than the learned layer plus "
                        "the residual on the 62 images of the shared data set (lossless mean bpp CT 5.94 vs "
                        "6.73 with q2, MR 2.69 vs 3.66, XR 5.19 vs 5.55; near-lossless likewise, "
                        "docs/residual.md). learned: the --model --quality tiles first (a lossy preview inside "
                        "the file), then the residual against their reconstruction. lossy mode always uses "
                        "learned")
    p.add_argument("--residual-predictor", choices=residual.PREDICTORS, default="ls",
                   help="lossless / near-lossless: the residual layer's predictor. ls (default): the blend plus a "
                        "per-pixel least-squares predictor (3-D for a series), 0.4-18 %% fewer bits, 5-7 times "
                        "slower (about 2 s per 512x512 frame each way); blend: the fixed-predictor blend alone")
    p.add_argument("--group", type=int, default=volume.GROUP, metavar="N",
                   help=f"a series folder -> one .mdc: slices per independently coded group (default "
                        f"{volume.GROUP}; 0: one chain, the fewest bits); groups decode in parallel, and "
                        f"decompress --slices needs only the groups of the slices asked for")
    _add_model_args(p)
    p.set_defaults(func=run_compress)

    d = sub.add_parser("decompress", help="decompress .mdc files back to DICOM / PNG / .npy",
                       description="Decompress one .mdc file, or every .mdc under a folder.")
    d.add_argument("input", metavar="IN", help="a .mdc file or a folder of them")
    d.add_argument("output", metavar="OUT", help="output file (a folder when IN is a folder or a volume file)")
    d.add_argument("--slices", default=None, metavar="LIST",
                   help="a volume file: only these slices (positions in the file's slice order from 0, "
                        "e.g. 0,5-9); only the groups that hold them are decoded")
    _add_model_args(d)
    d.set_defaults(func=run_decompress)


_CACHE: dict = {}


BACKENDS = ("float", "rewritten", "int8")


def load_codec(name: str, quality: int, threads: int | None = None, backend: str = "float"):
    """(Networks, CodecPackage) for a zoo entry, hashes verified.

    ``float``: the trained torch networks; ``rewritten``: the same after the exact DPU rewrites
    (``quantize/codec_int8.dpu_networks``), same package; ``int8``: the committed int8 package run
    on the integer DPU emulator (``codec/dpunets.py``), bit for bit what the DPU computes.
    """
    if backend not in BACKENDS:
        raise MedcodecError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    key = (name, quality, backend)
    if key not in _CACHE:
        if backend == "int8":
            from codec.dpunets import emulator_networks

            pkg = zoo.load_int8_package(name, quality)
            _CACHE[key] = (emulator_networks(pkg), pkg)
        else:
            model, pkg = zoo.load_codec(name, quality)
            if backend == "rewritten":
                from quantize.codec_int8 import dpu_networks

                nets, _ = dpu_networks(model)
                model = _rewritten(model, nets)
            _CACHE[key] = (TorchNetworks(model, threads), pkg)
    return _CACHE[key]


def _rewritten(model, nets):
    """A copy of ``model`` with the deployable networks (h_a(|y|) = absorbed h_a(y): abs is idempotent)."""
    import copy

    m = copy.deepcopy(model)
    m.g_a, m.g_s, m.h_s, m.h_a = nets["g_a"], nets["g_s"], nets["h_s"], nets["h_a"]
    return m


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




def compress_file(src_path: Path, dst: Path, name: str, quality: int, force: bool, threads=None,
                  backend: str = "float", *, mode: str = "lossy", max_error: int | None = None,
                  target_psnr: float | None = None, lossy_layer: str | None = None,
                  residual_predictor: str = "ls") -> dict:
    """One image -> .mdc (``codec.sources.compress_file`` with the zoo's codec and imagecodecs' PNG).

    ``lossy_layer`` None: the mode's default (learned for lossy,
    none for lossless and near-lossless: residual only, no network loaded)."""
    return sources.compress_file(src_path, dst, lambda: load_codec(name, quality, threads, backend), force=force,
                                 png_decode=imagecodecs.png_decode, mode=mode, max_error=max_error,
                                 target_psnr=target_psnr, lossy_layer=lossy_layer,
                                 residual_predictor=residual_predictor)


def decompress_file(src_path: Path, dst: Path | None, force: bool, threads=None, backend: str | None = None) -> dict:
    """.mdc -> image (``codec.sources.decompress_file`` with the zoo's codec and imagecodecs' PNG).

    ``backend`` None: the one the file was made with (its HEAD; an int8 file decodes on the emulator).
    A residual-only file loads no model (the zoo's codec is not asked for)."""
    return sources.decompress_file(
        src_path, dst, lambda head: load_codec(head["model"], head["quality"], threads,
                                               backend or head.get("backend", "float")),
        force=force, png_encode=imagecodecs.png_encode)


def run_compress(args) -> int:
    gdncodec.check_mode(args.mode, args.max_error, args.target_psnr, args.lossy_layer)  # before any work
    if volume_cmd.is_volume_request(Path(args.input), Path(args.output)):
        return _compress_volume(args)
    modes = {"mode": args.mode, "max_error": args.max_error, "target_psnr": args.target_psnr,
             "lossy_layer": args.lossy_layer, "residual_predictor": args.residual_predictor}
    pairs = _pairs(Path(args.input), Path(args.output), INPUT_SUFFIXES, ".mdc")
    if len(pairs) == 1 and not Path(args.input).is_dir():
        r = compress_file(pairs[0][0], pairs[0][1], args.model, args.quality, args.force, args.threads,
                          backend=args.backend, **modes)
        print(f"{pairs[0][1]}: {r['bytes']} bytes, {r['bpp']:.3f} bpp, {r['encode_s']:.2f} s, {r['mode']}")
        return 0
    failed = 0
    for src, dst in tqdm(pairs, desc="compress", unit="img", disable=args.no_progress, file=sys.stderr):
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            compress_file(src, dst, args.model, args.quality, args.force, args.threads, backend=args.backend, **modes)
        except MedcodecError as exc:
            failed += 1
            tqdm.write(f"medcodec compress: error: {exc}", file=sys.stderr)
    print(f"compressed {len(pairs) - failed} of {len(pairs)} files into {args.output}")
    return 1 if failed else 0


def _compress_volume(args) -> int:
    """A series folder -> one .mdc (seed 001's volume codec: lossless or near-lossless)."""
    if args.mode == gdncodec.FORMAT_MODE_LOSSY or args.target_psnr is not None:
        raise MedcodecError("a series folder -> one .mdc is coded lossless (--mode lossless) or near-lossless "
                            "(--mode near-lossless --max-error D); for lossy coding give an output folder")
    model = volume_cmd.DEFAULT_MODEL if args.model == IMAGE_DEFAULT_MODEL else args.model
    if args.group < 0:
        raise MedcodecError(f"--group must be >= 0 (slices per group; 0: one chain), got {args.group}")
    r = volume_cmd.compress_series(Path(args.input), Path(args.output), model=model,
                                   max_error=args.max_error or 0, force=args.force, progress=not args.no_progress,
                                   residual_predictor=args.residual_predictor, group=args.group)
    s, h, w = r["shape"]
    print(f"{args.output}: {s} slices of {h}x{w}, {r['bytes']} bytes, {r['bpp']:.3f} bpp, {r['encode_s']:.1f} s, "
          f"{args.mode}" + (f" D={args.max_error}" if args.max_error else ""))
    return 0


def _is_volume_file(path: Path) -> bool:
    from codec import container

    try:
        head = container.read_container(path.read_bytes(), schema={}).head
    except (OSError, container.ContainerError):
        return False  # the image path gives the precise error
    return volume.is_volume(head)


def run_decompress(args) -> int:
    inp = Path(args.input)
    if inp.is_file() and _is_volume_file(inp):
        r = volume_cmd.decompress_series(inp, Path(args.output), force=args.force, progress=not args.no_progress,
                                         slices=volume_cmd.parse_slices(args.slices) if args.slices else None)
        s, h, w = r["shape"]
        print(f"{args.output}/: {s} slices of {h}x{w} {r['volume'].dtype}, {r['decode_s']:.1f} s")
        return 0
    if args.slices:
        raise MedcodecError(f"{inp}: --slices is for a volume file (a series coded into one .mdc)")
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
