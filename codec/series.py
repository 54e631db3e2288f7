"""A series folder of single-frame DICOM slices -> one volume (stored values), in slice order.

Order: by position along the slice normal (Image Position Patient . the cross product of Image
Orientation Patient's row and column directions) when every slice has both, else by Instance Number,
else by file name. Every slice must have the same size, bits and signedness, and positions must
not repeat (two series mixed in one folder). numpy + pydicom: runs on the board too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from codec.dicom import split_dicom
from codec.errors import MedcodecError

__all__ = ["Series", "read_series", "series_files"]

DICOM_SUFFIXES = (".dcm", ".dicom", "")


@dataclass
class Series:
    volume: np.ndarray  # (slices, rows, cols), stored values, native dtype
    metas: list[bytes]  # deflated metadata per slice (codec.dicom.split_dicom)
    names: list[str]  # file names, in volume order
    bits_stored: int
    signed: bool
    photometric: str
    modality: str


def series_files(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise MedcodecError(f"{folder}: not a folder")
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in DICOM_SUFFIXES
                   and not f.name.startswith("."))
    if not files:
        raise MedcodecError(f"{folder}: no DICOM files (*.dcm)")
    return files


def _key(ds) -> tuple[float | None, int | None]:
    pos, ori = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    z = None
    try:
        if pos is not None and ori is not None and len(pos) == 3 and len(ori) == 6:
            row, col = np.asarray(ori[:3], float), np.asarray(ori[3:], float)
            z = float(np.dot(np.asarray(pos, float), np.cross(row, col)))
    except (TypeError, ValueError):
        z = None
    try:
        inst = int(ds.get("InstanceNumber")) if ds.get("InstanceNumber") is not None else None
    except (TypeError, ValueError):
        inst = None
    return z, inst


def read_series(folder, min_slices: int = 2) -> Series:
    """Read every DICOM file of ``folder`` (not recursive) into a :class:`Series`."""
    files = series_files(folder)
    if len(files) < min_slices:
        raise MedcodecError(f"{folder}: {len(files)} DICOM file(s); a volume needs at least {min_slices} slices")
    items = []
    for f in files:
        meta, img = split_dicom(f)
        if img.frames != 1:
            raise MedcodecError(f"{f}: a series slice must be single-frame, this has {img.frames} frames")
        items.append((f, meta, img, _key(img.dataset)))
    first = items[0][2]
    for f, _, img, _ in items[1:]:
        if (img.rows, img.cols, img.bits_stored, img.signed, img.pixels.dtype) != \
                (first.rows, first.cols, first.bits_stored, first.signed, first.pixels.dtype):
            raise MedcodecError(f"{f}: {img.rows}x{img.cols} {img.bits_stored}-bit differs from "
                                f"{items[0][0].name} ({first.rows}x{first.cols} {first.bits_stored}-bit): one series per folder")
    zs = [k[0] for *_, k in items]
    insts = [k[1] for *_, k in items]
    if all(z is not None for z in zs):
        if len({round(z, 4) for z in zs}) != len(zs):
            raise MedcodecError(f"{folder}: two slices at the same position (more than one series in the folder?)")
        items.sort(key=lambda it: it[3][0])
    elif all(i is not None for i in insts) and len(set(insts)) == len(insts):
        items.sort(key=lambda it: it[3][1])
    vol = np.stack([it[2].pixels for it in items])
    return Series(volume=vol, metas=[it[1] for it in items], names=[it[0].name for it in items],
                  bits_stored=first.bits_stored, signed=first.signed, photometric=first.photometric,
                  modality=first.modality)
