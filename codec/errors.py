"""Typed errors. A ``MedcodecError`` is a user error: the CLI prints its message
on one line and exits 1, never with a traceback."""

from __future__ import annotations


class MedcodecError(Exception):
    """A failure the user can act on (bad input, refused overwrite, ...)."""


class DicomError(MedcodecError):
    """A DICOM file that cannot be read, split or rebuilt."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class OutputExistsError(MedcodecError):
    """An output file exists and ``--force`` was not given."""

    def __init__(self, path):
        self.path = str(path)
        super().__init__(f"{self.path}: output exists (use --force to overwrite)")
