"""Finding input files."""

from __future__ import annotations

from pathlib import Path

from codec.errors import MedcodecError
from codec.sources import has_preamble

__all__ = ["dicom_inputs", "has_preamble"]


def dicom_inputs(paths) -> list[Path]:
    """Expand files and directories (recursively) into a sorted list of DICOM files.

    A directory contributes its ``*.dcm`` files and any extension-less file that
    starts with a DICOM preamble ("DICM" at byte 128). A file named explicitly is
    taken as it is: reading it decides whether it is DICOM.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and (f.suffix.lower() == ".dcm" or (not f.suffix and has_preamble(f))):
                    out.append(f)
        elif p.is_file():
            out.append(p)
        else:
            raise MedcodecError(f"{p}: no such file or directory")
    return out
