"""Constants and helpers shared by the board runtime tests (the fixtures are in runtime_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

from arch import load_arch
from board.runtime import network_entries
from codec.package import load_package
from tests.board import fake_vart

MODEL = "tiny-dpu"
QUALITIES = (1, 2)
ARCH = load_arch()
NAMES_Q1 = {"g_a": {"input": "GA__input_0_fix", "output": "GA__GA_Conv2d_3__fix"},
            "h_a": {"input": "HA__input_0_fix", "output": "HA__HA_Conv2d_2__fix"},
            "g_s": {"input": "GS__input_0_fix", "output": "GS__GS_ConvTranspose2d_3__fix"}}


def fake_xmodels(int8_packages, folder: Path, names: dict | None = None) -> dict[int, dict[str, Path]]:
    """FAKE xmodels matching the packages (what a correct compile would give)."""
    out = {}
    for q, path in int8_packages.items():
        entries = network_entries(load_package(path), names if q == 1 else None)
        out[q] = {net: fake_vart.write_xmodel(folder / f"q{q}" / f"{net}.xmodel", path, net, e)
                  for net, e in entries.items()}
    return out
