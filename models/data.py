"""Training data: random crops of real CT, MR and X-ray DICOM, and a fixed validation split.

- Files: every ``*.dcm`` under the data dir (default ``../shared/data`` beside the
  repository root, or ``$MEDCODEC_SHARED_DATA``), excluding :data:`EXCLUDE`:
  ``mammo/`` is left out on purpose (its only copy is lossy JPEG 2000, so its
  pixels carry J2K artefacts that we do not want the codec to learn, and decoding
  its 14 Mpixel frame costs seconds at every start) and ``xray_png/`` is not DICOM.
- Split: by patient / series, deterministic, written down in :data:`VALIDATION`
  (path prefixes relative to the data dir). Everything else trains.
- Modality group: the first folder of the relative path (ct, mr, xray); files
  outside those folders fall back to the DICOM Modality tag.
- Input map: :func:`input_map` gives each image's own (offset, scale) =
  (min, max - min) of its stored values (never a display window); the model sees
  ``x01 = (x - offset) / scale``. The container records exactly these two integers.
- Sampling: modality group uniformly, then an image (frame) uniformly within it,
  then a uniform crop position, random horizontal / vertical flips. Almost-constant
  crops (std < ``flat_std`` on the [0, 1] scale, e.g. CT padding) are redrawn with
  probability ``1 - keep_flat``. One ``numpy.random.Generator`` drives it all, so a
  seed (and a saved ``state``) reproduces the stream.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codec.dicom import read_dicom
from codec.gdncodec import input_map as codec_input_map

__all__ = [
    "EXCLUDE",
    "VALIDATION",
    "CropSampler",
    "Image",
    "default_data_dir",
    "input_map",
    "list_files",
    "load_images",
    "read_pixels",
    "split_files",
    "validation_crops",
]

ROOT = Path(__file__).resolve().parents[1]

#: Held-out validation set: one CT phantom/patient (NEMA CT1), both scans of COVID
#: patient A056642, the NEMA MR images, and two radiographs (Fuji chest, Fuji leg).
VALIDATION: tuple[str, ...] = (
    "ct/nema_wg04/",
    "ct/tcia_covid19-ny-sbu/A056642_",
    "mr/nema_wg04/",
    "xray/gdcm/CR-MONO1-10-chest.dcm",
    "xray/nema_wg04/RG3_UNC_CR_leg.dcm",
)

#: Never used: the lossy-J2K mammogram (see the module docstring) and the 8-bit PNGs.
EXCLUDE: tuple[str, ...] = ("mammo/", "xray_png/")

_GROUPS = ("ct", "mr", "xray")
_TAG_GROUP = {"CT": "ct", "MR": "mr", "CR": "xray", "DX": "xray", "RG": "xray", "MG": "xray", "DR": "xray"}


def default_data_dir() -> Path:
    env = os.environ.get("MEDCODEC_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def read_pixels(path) -> tuple[np.ndarray, str]:
    """path -> (stored pixel values, Modality tag), through ``codec.dicom.read_dicom``.

    Pixels are (rows, cols) or (frames, rows, cols) in their native dtype, before any rescale.
    """
    img = read_dicom(path)
    return np.asarray(img.pixels), str(img.modality or "")


def input_map(pixels: np.ndarray) -> tuple[int, int]:
    """(offset, scale) of the affine input map ``x01 = (x - offset) / scale``.

    The same map the codec applies and records (``codec.gdncodec.input_map``, min..max):
    offset = the image's min stored value, scale = max - min (1 for a constant image).
    """
    lo, hi = codec_input_map(np.asarray(pixels))
    return lo, max(hi - lo, 1)


def list_files(data_dir) -> list[str]:
    """Sorted relative posix paths of the usable ``*.dcm`` files under ``data_dir``."""
    root = Path(data_dir)
    out = []
    for p in sorted(root.rglob("*.dcm")):
        rel = p.relative_to(root).as_posix()
        if not rel.startswith(EXCLUDE):
            out.append(rel)
    return out


def split_files(files, validation: tuple[str, ...] = VALIDATION) -> tuple[list[str], list[str]]:
    """(train, val) by relative-path prefix."""
    train = [f for f in files if not f.startswith(tuple(validation))]
    val = [f for f in files if f.startswith(tuple(validation))]
    return train, val


@dataclass
class Image:
    """One 2-D frame in memory: native stored values plus its input map."""

    path: str
    frame: int
    group: str
    pixels: np.ndarray
    offset: int
    scale: int

    def crop01(self, r: int, c: int, size: int) -> np.ndarray:
        """float32 crop in [0, 1] at (r, c); reflect-padded where the frame is smaller."""
        a = self.pixels[r : r + size, c : c + size]
        if a.shape != (size, size):
            pad = ((0, size - a.shape[0]), (0, size - a.shape[1]))
            a = np.pad(a, pad, mode="reflect" if min(a.shape) > 1 else "edge")
        return (a.astype(np.float32) - np.float32(self.offset)) / np.float32(self.scale)


def load_images(data_dir, files) -> list[Image]:
    """Read each file once; multi-frame files give one :class:`Image` per frame."""
    root = Path(data_dir)
    images = []
    for rel in files:
        pixels, modality = read_pixels(root / rel)
        first = rel.split("/", 1)[0]
        group = first if first in _GROUPS else _TAG_GROUP.get(modality.upper(), "other")
        frames = pixels[None] if pixels.ndim == 2 else pixels
        for i, f in enumerate(frames):
            offset, scale = input_map(f)
            images.append(Image(rel, i, group, np.ascontiguousarray(f), offset, scale))
    return images


class CropSampler:
    """Seeded, modality-balanced random crops ``[B, 1, crop, crop]`` in [0, 1]."""

    def __init__(self, images: list[Image], crop: int, seed: int = 0, flat_std: float = 0.003,
                 keep_flat: float = 0.1, max_tries: int = 20):
        if not images:
            raise ValueError("no training images")
        self.images = images
        self.crop = int(crop)
        self.flat_std = float(flat_std)
        self.keep_flat = float(keep_flat)
        self.max_tries = int(max_tries)
        self.groups: dict[str, list[int]] = {}
        for i, im in enumerate(images):
            self.groups.setdefault(im.group, []).append(i)
        self.group_names = sorted(self.groups)
        self.rng = np.random.default_rng(seed)

    @property
    def state(self) -> dict:
        return self.rng.bit_generator.state

    @state.setter
    def state(self, value: dict) -> None:
        self.rng.bit_generator.state = value

    def _one(self) -> np.ndarray:
        rng = self.rng
        for _ in range(self.max_tries):
            g = self.group_names[rng.integers(len(self.group_names))]
            im = self.images[self.groups[g][rng.integers(len(self.groups[g]))]]
            h, w = im.pixels.shape
            r = int(rng.integers(max(h - self.crop, 0) + 1))
            c = int(rng.integers(max(w - self.crop, 0) + 1))
            a = im.crop01(r, c, self.crop)
            if a.std() >= self.flat_std or rng.random() < self.keep_flat:
                break
        if rng.random() < 0.5:
            a = a[:, ::-1]
        if rng.random() < 0.5:
            a = a[::-1, :]
        return a

    def sample(self, batch: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._one() for _ in range(batch)])[:, None].copy())


def validation_crops(images: list[Image], crop: int = 256, per_image: int = 2, seed: int = 1234,
                     flat_std: float = 0.003) -> tuple[torch.Tensor, list[str]]:
    """Fixed crops of the held-out images (independent of the training seed).

    Returns (``[n, 1, crop, crop]`` float32, group name of each crop). Crop
    positions come from ``seed``; flat crops are avoided (up to 50 draws).
    """
    rng = np.random.default_rng(seed)
    crops, groups = [], []
    for im in images:
        h, w = im.pixels.shape
        for _ in range(per_image):
            for _ in range(50):
                r = int(rng.integers(max(h - crop, 0) + 1))
                c = int(rng.integers(max(w - crop, 0) + 1))
                a = im.crop01(r, c, crop)
                if a.std() >= flat_std:
                    break
            crops.append(a)
            groups.append(im.group)
    if not crops:
        return torch.zeros(0, 1, crop, crop), []
    return torch.from_numpy(np.stack(crops)[:, None].copy()), groups
