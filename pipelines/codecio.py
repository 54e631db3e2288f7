"""Reading inputs and writing outputs for the learned codec on the host: DICOM, PNG, .npy.

The logic is ``codec/sources.py`` (shared with the board app); the host adds PNG through
imagecodecs, which codec/ does not import.
"""

from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np

from codec import sources
from codec.gdncodec import Source

METHOD = sources.METHOD
kind_of = sources.kind_of
output_suffix = sources.output_suffix


def load_source(path) -> Source:
    """Read one input file into a ``Source`` (stored values and what to record)."""
    return sources.load_source(Path(path), png_decode=imagecodecs.png_decode)


def encode_output(head: dict, pixels: np.ndarray, meta: bytes | None, compressed_bytes: int) -> bytes:
    """Decoded pixels -> the bytes of the output file (DICOM marked lossy, PNG, or .npy)."""
    return sources.encode_output(head, pixels, meta, compressed_bytes, png_encode=imagecodecs.png_encode)
