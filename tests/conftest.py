"""Shared fixtures. ``../shared/data`` (beside the checkout) holds the larger real
data set; tests that need it skip with a reason when it is absent. The bundled
``samples/`` are always there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"


def _shared_data() -> Path:
    env = os.environ.get("MEDCODEC_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


SHARED_DATA = _shared_data()


def sample_files() -> list[Path]:
    """The bundled DICOM samples (always present)."""
    return sorted(SAMPLES.rglob("*.dcm"))


def shared_files() -> list[Path]:
    """Every DICOM file of ../shared/data, or [] when it is absent."""
    if not SHARED_DATA.is_dir():
        return []
    return sorted(SHARED_DATA.rglob("*.dcm"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data set not found at {SHARED_DATA}")
    return SHARED_DATA
