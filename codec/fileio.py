"""Safe output: write to a temporary name in the same directory, then rename.

The rename is atomic on POSIX, so a reader never sees a half-written file and a
crash never leaves a truncated output under the final name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from codec.errors import MedcodecError, OutputExistsError


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB blocks (sha256 by default; md5 for vai_c_xir's md5sum.txt)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path) -> str:
    return file_digest(path, "sha256")


def check_writable(path, force: bool = False) -> Path:
    """Fail early (before any work) if ``path`` exists and ``force`` is false."""
    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(path)
    if path.is_dir():
        raise MedcodecError(f"{path}: is a directory")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, data: bytes, force: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = check_writable(path, force)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise MedcodecError(f"{path}: directory {parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
