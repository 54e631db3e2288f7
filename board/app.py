"""The board application: the int8 codec on a DPU (VART) or on the integer emulator.

Hand-written logic; ``board/runtime.py`` copies it, with codec/ and ``board/vart_runner.py``,
into a rendered runtime folder beside the data it reads (``runtime_manifest.json``, the int8
packages, the xmodels). It needs numpy, constriction and pydicom, never torch, and runs from
inside that folder with no install::

    python3 app.py selftest                       (the deploy smoke test; exit 0 / 1)
    python3 app.py compress IN.dcm OUT.mdc --quality 2
    python3 app.py decompress IN.mdc OUT.dcm
    python3 app.py validate IMAGES_DIR --out metrics.json [--quality 1 --quality 3]
    python3 app.py info
    python3 -m board.app ...                      (the same)

Every command takes ``--runner auto|vart|emulator`` (auto: VART when ``xir`` and ``vart``
import and the runtime holds xmodels for every quality, else the emulator) and prints the
runner it chose with the reason; ``validate`` records it in metrics.json. Errors are one line
(:class:`codec.errors.MedcodecError`) and exit 1.

``selftest`` codes a small synthetic 12-bit image and compares the bitstream's and the decoded
pixels' sha256 with what the host's emulator produced when the runtime was rendered: on a DPU
that is the bit-exactness check of the deployed xmodels.

metrics.json (``validate``; schema ``medcodec-board-metrics/1``): per image and quality the
bitstream's size and sha256, bpp from the real bytes, PSNR at native depth (peak 2^BitsStored-1)
and over the image's range, SSIM, MS-SSIM, MSE, max abs error, the decoded pixels' sha256,
encode / decode wall time, the codec's timing split and per-network seconds and calls; per
quality the means, images/s and ms per tile per network. ``board/validate.py`` compares it with
the host's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from board import vart_runner
from codec import gdncodec, metrics, sources
from codec.dpunets import DPU_NETWORKS, EmulatorRunner, NetRunner, RunnerNetworks
from codec.errors import MedcodecError
from codec.fileio import atomic_write, check_writable
from codec.package import CodecPackage, load_package

__all__ = ["METRICS_SCHEMA", "MANIFEST_NAME", "Runtime", "main", "pixels_sha256", "selftest", "synthetic_image",
           "validate_images"]

MANIFEST_NAME = "runtime_manifest.json"
MANIFEST_SCHEMA = "medcodec-runtime/1"
METRICS_SCHEMA = "medcodec-board-metrics/1"
RUNNERS = ("auto", "vart", "emulator")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".npy")
PROG = "medcodec-board"


class AppError(MedcodecError):
    """A runtime folder, a request or a result the board app cannot accept."""


# ------------------------------------------------------------------------------------------ helpers


def pixels_sha256(pixels: np.ndarray) -> str:
    """sha256 of decoded pixels: dtype (little-endian), shape, then the C-order values."""
    a = np.asarray(pixels)
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    h = hashlib.sha256(f"{le.dtype.str}{list(a.shape)}".encode())
    h.update(np.ascontiguousarray(le).tobytes())
    return h.hexdigest()


def synthetic_image(rows: int = 96, cols: int = 112, bits: int = 12) -> np.ndarray:
    """A deterministic test image (uint16, ``bits`` used): ramps, a disc and a fine texture.

    Integer arithmetic only, so every machine makes the same pixels.
    """
    r = np.arange(rows, dtype=np.int64)[:, None]
    c = np.arange(cols, dtype=np.int64)[None, :]
    top = (1 << bits) - 1
    img = (r * 7 + c * 5) * top // (rows * 7 + cols * 5)
    disc = (r - rows // 2) ** 2 + (c - cols // 3) ** 2 < (min(rows, cols) // 4) ** 2
    img = np.where(disc, top - img // 2, img)
    img = img + (((r * 31 + c * 17) * 2654435761) >> 7) % 64 - 32
    return np.clip(img, 0, top).astype(np.uint16)


def _finite(v):
    """A JSON-safe number: nan and +-inf become None (strict JSON has neither)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _write_json(path: Path, doc: dict, force: bool) -> None:
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(path, text.encode(), force=force)


# ------------------------------------------------------------------------------------------ runtime


@dataclass
class Runtime:
    """A rendered runtime folder: its manifest, packages and xmodels, and the runners made from them."""

    root: Path
    manifest: dict
    _packages: dict = field(default_factory=dict, repr=False)
    _runners: dict = field(default_factory=dict, repr=False)
    overlay_loaded: bool = False

    @classmethod
    def load(cls, root=None) -> Runtime:
        root = Path(root) if root is not None else Path(__file__).resolve().parent.parent
        path = root / MANIFEST_NAME
        if not path.is_file():
            raise AppError(f"{path}: no runtime manifest (run inside a rendered runtime, or pass --root)")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AppError(f"{path}: not a readable runtime manifest ({type(exc).__name__})") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != MANIFEST_SCHEMA:
            got = manifest.get("schema") if isinstance(manifest, dict) else None
            raise AppError(f"{path}: manifest schema {got!r}, this app reads {MANIFEST_SCHEMA!r}")
        return cls(root=root, manifest=manifest)

    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    @property
    def qualities(self) -> list[int]:
        return sorted(int(q) for q in self.manifest["qualities"])

    def entry(self, quality: int) -> dict:
        q = self.manifest["qualities"].get(str(int(quality)))
        if q is None:
            have = ", ".join(str(v) for v in self.qualities)
            raise AppError(f"quality {quality} is not in this runtime (it has {have})")
        return q

    def package(self, quality: int) -> CodecPackage:
        if quality not in self._packages:
            e = self.entry(quality)
            pkg = load_package(self.root / e["package"], sha256=e["package_sha256"])
            if pkg.backend != "int8" or pkg.name != self.model or pkg.quality != int(quality):
                raise AppError(f"{e['package']}: holds {pkg.name} q{pkg.quality} ({pkg.backend}), "
                               f"the manifest says {self.model} q{quality} (int8)")
            self._packages[quality] = pkg
        return self._packages[quality]

    def xmodels(self, quality: int) -> dict[str, Path] | None:
        """network -> xmodel path, or None when this quality has no complete set of xmodels."""
        nets = self.entry(quality)["networks"]
        paths = {n: nets[n].get("xmodel") for n in DPU_NETWORKS}
        if not all(paths.values()):
            return None
        return {n: self.root / p for n, p in paths.items()}

    def choose_runner(self, requested: str = "auto") -> tuple[str, str]:
        """(runner, reason) for ``requested`` in auto / vart / emulator."""
        if requested not in RUNNERS:
            raise AppError(f"unknown runner {requested!r} (one of {', '.join(RUNNERS)})")
        missing = [q for q in self.qualities if self.xmodels(q) is None]
        has_vart = vart_runner.available()
        if requested == "emulator":
            return "emulator", "requested"
        if requested == "vart":
            if not has_vart:
                raise AppError("--runner vart: the xir / vart modules do not import here (VART 2.5 via DPU-PYNQ)")
            if missing:
                raise AppError(f"--runner vart: this runtime has no xmodels for quality {missing}")
            return "vart", "requested"
        if not has_vart:
            return "emulator", "xir / vart do not import"
        if missing:
            return "emulator", f"no xmodels for quality {missing}"
        return "vart", "xir / vart import and every quality has its xmodels"

    def runner(self, quality: int, kind: str, overlay: str | None = None) -> NetRunner:
        """The runner ``kind`` for ``quality`` (made once); vart programs the overlay first."""
        key = (quality, kind)
        if key not in self._runners:
            pkg = self.package(quality)
            if kind == "emulator":
                self._runners[key] = EmulatorRunner(pkg.nets)
            elif kind == "vart":
                if overlay and not self.overlay_loaded:
                    vart_runner.load_overlay(overlay)
                    self.overlay_loaded = True
                xm = self.xmodels(quality)
                if xm is None:
                    raise AppError(f"quality {quality} has no xmodels")
                self._runners[key] = vart_runner.VartRunner(
                    xm, self.entry(quality)["networks"], fingerprint=self.manifest["arch"]["fingerprint"])
            else:
                raise AppError(f"unknown runner {kind!r}")
        return self._runners[key]

    def networks(self, quality: int, kind: str, overlay: str | None = None) -> RunnerNetworks:
        """Fresh ``RunnerNetworks`` (own times) over the quality's runner."""
        return RunnerNetworks(self.runner(quality, kind, overlay))

    def codec_for_head(self, head: dict, kind: str, overlay: str | None = None):
        if head.get("model") != self.model:
            raise AppError(f"the file was made by model {head.get('model')!r}; this runtime holds {self.model!r}")
        q = int(head["quality"])
        return self.networks(q, kind, overlay), self.package(q)


# ------------------------------------------------------------------------------------------ commands


@dataclass
class RoundTrip:
    """One image through encode and decode, in memory."""

    data: bytes
    pixels: np.ndarray
    encode_s: float
    decode_s: float
    enc_timing: gdncodec.Timing
    dec_timing: gdncodec.Timing
    nets: RunnerNetworks


def round_trip(src: gdncodec.Source, nets: RunnerNetworks, pkg: CodecPackage) -> RoundTrip:
    enc_t, dec_t = gdncodec.Timing(), gdncodec.Timing()
    t0 = time.perf_counter()
    data = gdncodec.compress(src, nets, pkg, timing=enc_t)
    t1 = time.perf_counter()
    dec = gdncodec.decompress(data, nets, pkg, timing=dec_t)
    t2 = time.perf_counter()
    return RoundTrip(data, dec.pixels, t1 - t0, t2 - t1, enc_t, dec_t, nets)


def synthetic_round_trip(nets: RunnerNetworks, pkg: CodecPackage, rows: int, cols: int, bits: int) -> RoundTrip:
    """The self-test image through encode and decode (also what the host records at render time)."""
    img = synthetic_image(rows, cols, bits)
    return round_trip(gdncodec.Source(img, bits, False, "npy"), nets, pkg)


def selftest(rt: Runtime, kind: str, quality: int | None = None, overlay: str | None = None) -> dict:
    """Code the synthetic image; compare with the host emulator's hashes from the manifest."""
    st = rt.manifest["selftest"]
    q = int(quality if quality is not None else st["quality"])
    rows, cols, bits = int(st["rows"]), int(st["cols"]), int(st["bits"])
    pkg = rt.package(q)
    first = synthetic_round_trip(rt.networks(q, kind, overlay), pkg, rows, cols, bits)
    again = synthetic_round_trip(rt.networks(q, kind, overlay), pkg, rows, cols, bits)
    img = synthetic_image(rows, cols, bits)
    out = {
        "quality": q, "runner": kind, "bytes": len(first.data), "bpp": metrics.bpp(len(first.data), rows, cols),
        "psnr_bits": _finite(metrics.psnr_bits(img, first.pixels, bits)),
        "bitstream_sha256": hashlib.sha256(first.data).hexdigest(), "decoded_sha256": pixels_sha256(first.pixels),
        "encode_s": first.encode_s, "decode_s": first.decode_s, "host_match": None,
    }
    if first.pixels.shape != img.shape or first.pixels.dtype != img.dtype:
        raise AppError(f"selftest: decoded {first.pixels.shape} {first.pixels.dtype}, "
                       f"expected {img.shape} {img.dtype}")
    if again.data != first.data or not np.array_equal(again.pixels, first.pixels):
        raise AppError("selftest: coding the same image twice gave different results")
    expect = st.get("expect", {}).get(str(q))
    if expect:
        for key in ("bitstream_sha256", "decoded_sha256"):
            if out[key] != expect[key]:
                raise AppError(f"selftest: q{q} {key} {out[key][:16]}.. differs from the host emulator's "
                               f"{expect[key][:16]}.. (runner {kind})")
        out["host_match"] = True
    return out


def find_images(folder: Path) -> list[Path]:
    """DICOM (.dcm / .dicom / extension-less with a preamble) and .npy files under ``folder``, sorted."""
    if not folder.is_dir():
        raise AppError(f"{folder}: not a directory")
    files = sorted(f for f in folder.rglob("*") if f.is_file() and (
        f.suffix.lower() in IMAGE_SUFFIXES or (not f.suffix and sources.has_preamble(f))))
    if not files:
        raise AppError(f"{folder}: no images (DICOM or .npy)")
    return files


def _result(name: str, q: int, src: gdncodec.Source, rt_: RoundTrip, pkg: CodecPackage) -> dict:
    px = np.asarray(src.pixels)
    frames = 1 if px.ndim == 2 else px.shape[0]
    m = metrics.image_metrics(px, rt_.pixels, int(src.bits_stored))
    nets = rt_.nets
    return {
        "image": name, "quality": q, "kind": src.kind, "rows": int(px.shape[-2]), "cols": int(px.shape[-1]),
        "frames": int(frames), "bits_stored": int(src.bits_stored), "signed": bool(src.signed),
        "dtype": px.dtype.str, "package_sha256": pkg.sha256,
        "bytes": len(rt_.data), "bpp": metrics.bpp(len(rt_.data), px.shape[-2], px.shape[-1], frames),
        **{k: _finite(float(v)) if k != "max_abs_error" else int(v) for k, v in m.items()},
        "bitstream_sha256": hashlib.sha256(rt_.data).hexdigest(), "decoded_sha256": pixels_sha256(rt_.pixels),
        "encode_s": rt_.encode_s, "decode_s": rt_.decode_s,
        "encode_timing": {k: v for k, v in asdict(rt_.enc_timing).items() if k != "extra"},
        "decode_timing": {k: v for k, v in asdict(rt_.dec_timing).items() if k != "extra"},
        "network_s": dict(nets.times), "network_tiles": dict(nets.calls),
    }


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarize(results: list[dict]) -> dict:
    """Per quality: means of the figures, throughput, and ms per tile per network."""
    out = {}
    for q in sorted({r["quality"] for r in results}):
        rs = [r for r in results if r["quality"] == q]
        enc = sum(r["encode_s"] for r in rs)
        dec = sum(r["decode_s"] for r in rs)
        net_s = {n: sum(r["network_s"][n] for r in rs) for n in DPU_NETWORKS}
        tiles = {n: sum(r["network_tiles"][n] for r in rs) for n in DPU_NETWORKS}
        out[str(q)] = {
            "images": len(rs),
            **{f"{k}_mean": _mean(r[k] for r in rs) for k in ("bpp", "psnr_bits", "psnr_range", "ssim", "ms_ssim")},
            "max_abs_error_max": max(r["max_abs_error"] for r in rs),
            "psnr_bits_min": min((r["psnr_bits"] for r in rs if r["psnr_bits"] is not None), default=None),
            "encode_s": enc, "decode_s": dec,
            "images_per_s": len(rs) / (enc + dec) if enc + dec > 0 else None,
            "encode_images_per_s": len(rs) / enc if enc > 0 else None,
            "decode_images_per_s": len(rs) / dec if dec > 0 else None,
            "coding_s": sum(r["encode_timing"]["coding_s"] + r["decode_timing"]["coding_s"] for r in rs),
            "network_s": net_s, "network_tiles": tiles,
            "network_ms_per_tile": {n: 1000.0 * net_s[n] / tiles[n] if tiles[n] else None for n in DPU_NETWORKS},
        }
    return out


def validate_images(rt: Runtime, kind: str, folder, qualities: list[int] | None = None, *, reason: str = "",
                    limit: int = 0, overlay: str | None = None, progress=None) -> dict:
    """Every image under ``folder`` at every quality, in memory: the metrics.json document."""
    folder = Path(folder)
    files = find_images(folder)
    if limit:
        files = files[:limit]
    qualities = sorted(set(qualities or rt.qualities))
    for q in qualities:
        rt.entry(q)
    t_start = time.perf_counter()
    results, errors, runner_details = [], [], {}
    for q in qualities:  # quality outermost: one set of DPU runners at a time; images are read again
        pkg = rt.package(q)
        runner = rt.runner(q, kind, overlay)
        if hasattr(runner, "describe"):
            runner_details[str(q)] = runner.describe()
        for f in files:
            name = f.relative_to(folder).as_posix()
            try:
                src = sources.load_source(f)
                rtrip = round_trip(src, rt.networks(q, kind, overlay), pkg)
                results.append(_result(name, q, src, rtrip, pkg))
            except MedcodecError as exc:
                errors.append({"image": name, "quality": q, "error": str(exc)})
            if progress is not None:
                progress(name, q)
    wall = time.perf_counter() - t_start
    results.sort(key=lambda r: (r["image"], r["quality"]))
    return {
        "schema": METRICS_SCHEMA, "model": rt.model, "qualities": qualities,
        "runner": {"name": kind, "reason": reason, "details": runner_details},
        "runtime": {"model_hash": rt.manifest["model_hash"], "arch_fingerprint": rt.manifest["arch"]["fingerprint"],
                    "manifest_sha256": hashlib.sha256((rt.root / MANIFEST_NAME).read_bytes()).hexdigest()},
        "platform": {"python": platform.python_version(), "machine": platform.machine(), "numpy": np.__version__},
        "images_dir": folder.name, "images": len(files),
        "results": results, "errors": errors, "summary": summarize(results),
        "wall_s": wall, "round_trips_per_s": len(results) / wall if wall > 0 else None,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runner", choices=RUNNERS, default="auto",
                        help="auto (vart when it imports and the xmodels are here, else emulator), vart, emulator")
    common.add_argument("--root", default=None, help="the runtime folder (default: the one this app is in)")
    common.add_argument("--overlay", default=None,
                        help="DPU overlay bitstream for vart (default: the manifest's; 'none' = already loaded)")
    p = argparse.ArgumentParser(prog=PROG, description="The medcodec int8 codec on the board (DPU or emulator).")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", parents=[common], help="compress a DICOM / .npy image into a .mdc file")
    c.add_argument("input", metavar="IN")
    c.add_argument("output", metavar="OUT.mdc")
    c.add_argument("--quality", type=int, required=True)
    c.add_argument("--force", action="store_true", help="overwrite an existing output")
    d = sub.add_parser("decompress", parents=[common], help="decompress a .mdc file (to .dcm or .npy)")
    d.add_argument("input", metavar="IN.mdc")
    d.add_argument("output", metavar="OUT")
    d.add_argument("--force", action="store_true", help="overwrite an existing output")
    v = sub.add_parser("validate", parents=[common], help="code every image of a folder; write metrics.json")
    v.add_argument("images", metavar="IMAGES_DIR")
    v.add_argument("--out", required=True, metavar="metrics.json")
    v.add_argument("--quality", type=int, action="append", help="a quality to run (repeatable; default all)")
    v.add_argument("--limit", type=int, default=0, help="at most N images (default all)")
    v.add_argument("--force", action="store_true", help="overwrite an existing metrics file")
    s = sub.add_parser("selftest", parents=[common], help="code a synthetic image; compare with the host's hashes")
    s.add_argument("--quality", type=int, default=None, help="quality (default: the manifest's)")
    sub.add_parser("info", parents=[common], help="what this runtime holds and which runner it would use")
    return p


def _overlay(args, rt: Runtime) -> str | None:
    value = args.overlay if args.overlay is not None else rt.manifest["runner"].get("overlay")
    return None if value in (None, "", "none") else value


def _run(args) -> int:
    rt = Runtime.load(args.root)
    kind, reason = rt.choose_runner(args.runner)
    overlay = _overlay(args, rt) if kind == "vart" else None
    print(f"runner: {kind} ({reason})")
    if args.command == "info":
        print(f"model: {rt.model} ({rt.manifest['model_hash'][:16]}..), qualities {rt.qualities}, "
              f"tile {rt.manifest['tile']}, arch {rt.manifest['arch']['name']} {rt.manifest['arch']['fingerprint']}")
        print(f"smoke test: {rt.manifest['smoke_test']}")
        return 0
    if args.command == "compress":
        r = sources.compress_file(Path(args.input), Path(args.output),
                                  lambda: (rt.networks(args.quality, kind, overlay), rt.package(args.quality)),
                                  force=args.force)
        print(f"{args.output}: {r['bytes']} bytes, {r['bpp']:.3f} bpp, {r['encode_s']:.2f} s")
        return 0
    if args.command == "decompress":
        r = sources.decompress_file(Path(args.input), Path(args.output),
                                    lambda head: rt.codec_for_head(head, kind, overlay), force=args.force)
        px = r["pixels"]
        print(f"{args.output}: {px.shape[-2]}x{px.shape[-1]} {px.dtype}, {r['decode_s']:.2f} s")
        return 0
    if args.command == "selftest":
        r = selftest(rt, kind, args.quality, overlay)
        match = "matches the host emulator" if r["host_match"] else "no host hashes to compare"
        print(f"selftest ok: q{r['quality']} {r['bytes']} bytes ({r['bpp']:.3f} bpp), "
              f"bitstream {r['bitstream_sha256'][:16]}.. {match}")
        return 0
    out = check_writable(Path(args.out), args.force)
    doc = validate_images(rt, kind, Path(args.images), args.quality, reason=reason, limit=args.limit,
                          overlay=overlay, progress=lambda name, q: print(f"q{q} {name}", flush=True))
    _write_json(out, doc, args.force)
    for q, s in doc["summary"].items():
        psnr = "n/a" if s["psnr_bits_mean"] is None else f"{s['psnr_bits_mean']:.2f} dB"
        print(f"q{q}: {s['images']} images, {s['bpp_mean']:.3f} bpp, PSNR {psnr}, "
              f"{s['images_per_s'] or 0:.2f} images/s")
    for e in doc["errors"]:
        print(f"{PROG} validate: error: {e['image']} q{e['quality']}: {e['error']}", file=sys.stderr)
    print(f"{out}: {len(doc['results'])} results, {len(doc['errors'])} errors")
    return 1 if doc["errors"] else 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except MedcodecError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
