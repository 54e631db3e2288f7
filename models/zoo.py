"""Model zoo: quality (1..4) -> lambda, channels, checkpoint file and its sha256.

Checkpoints are fp32 ``state_dict`` files in ``models/weights/`` (each with a JSON
record of how it was trained beside it). :func:`load_model` verifies the sha256
before it unpickles anything and raises :class:`ZooError` (a ``MedcodecError``)
when the file is missing, not yet trained, or does not match.

Zoo keys equal registry keys (``models/registry.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from codec.errors import MedcodecError
from codec.fileio import sha256_file
from models import registry

__all__ = ["WEIGHTS_DIR", "ZOO", "ZooError", "checkpoint_path", "int8_package_path", "load_int8_package", "load_model",
           "sha256_file", "verify_checkpoint"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ZooError(MedcodecError):
    """A zoo checkpoint that is unknown, missing or whose sha256 does not match."""


#: name -> quality -> entry. The sha256 values of the committed checkpoint and package are in
#: weights/zoo.json (checked on load). Lambdas weigh MSE on each image's own [0, 1] (min..max)
#: scale: loss = lambda * MSE + bpp (no 255^2 factor, unlike CompressAI's 0.0018-0.0483). They are
#: the lambdas the committed weights were trained with (weights/README.md): on CPU, at high rates
#: the bpp is limited by training time more than by lambda.
ZOO: dict[str, dict[int, dict]] = {
    "gdn-hyperprior": {
        1: {"lambda": 1000.0, "N": 64, "M": 128, "checkpoint": "gdn-hyperprior-q1.pt"},
        2: {"lambda": 8000.0, "N": 64, "M": 128, "checkpoint": "gdn-hyperprior-q2.pt"},
        3: {"lambda": 60000.0, "N": 64, "M": 128, "checkpoint": "gdn-hyperprior-q3.pt"},
        4: {"lambda": 300000.0, "N": 64, "M": 128, "checkpoint": "gdn-hyperprior-q4.pt"},
    },
    "dpu-hyperprior": {
        1: {"lambda": 1000.0, "N": 64, "M": 128, "checkpoint": "dpu-hyperprior-q1.pt"},
        2: {"lambda": 8000.0, "N": 64, "M": 128, "checkpoint": "dpu-hyperprior-q2.pt"},
        3: {"lambda": 60000.0, "N": 64, "M": 128, "checkpoint": "dpu-hyperprior-q3.pt"},
        4: {"lambda": 300000.0, "N": 64, "M": 128, "checkpoint": "dpu-hyperprior-q4.pt"},
    },
}


def entry(name: str, quality: int) -> dict:
    if name not in ZOO:
        raise ZooError(f"no zoo entry for model {name!r}; known: {', '.join(sorted(ZOO))}")
    if quality not in ZOO[name]:
        raise ZooError(f"{name}: quality must be one of {sorted(ZOO[name])}, got {quality}")
    return ZOO[name][quality]


def checkpoint_path(name: str, quality: int, weights_dir=None) -> Path:
    return Path(weights_dir or WEIGHTS_DIR) / entry(name, quality)["checkpoint"]




def verify_checkpoint(path, sha256: str | None) -> Path:
    """Raise :class:`ZooError` unless ``path`` exists and hashes to ``sha256``."""
    path = Path(path)
    if sha256 is None:
        raise ZooError(f"{path.name}: no checkpoint committed for this zoo entry yet (train it with `medcodec train`)")
    if not path.is_file():
        raise ZooError(f"{path}: checkpoint file missing")
    got = sha256_file(path)
    if got != sha256.lower():
        raise ZooError(f"{path}: sha256 mismatch (expected {sha256}, got {got})")
    return path


def _manifest(weights_dir=None) -> dict:
    path = Path(weights_dir or WEIGHTS_DIR) / "zoo.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ZooError(f"{path}: not valid JSON ({exc.msg})") from None


def hashes(name: str, quality: int, weights_dir=None) -> dict:
    """{"sha256", "package_sha256"} recorded for a zoo entry (committed in weights/zoo.json)."""
    entry(name, quality)
    return _manifest(weights_dir).get(name, {}).get(str(quality), {})


def package_path(name: str, quality: int, weights_dir=None) -> Path:
    return checkpoint_path(name, quality, weights_dir).with_suffix(".npz")


def int8_package_path(name: str, quality: int, weights_dir=None) -> Path:
    """The committed int8 codec package (``make quantize``'s output for the zoo's calibration set)."""
    return checkpoint_path(name, quality, weights_dir).with_suffix(".int8.npz")


def load_int8_package(name: str = "dpu-hyperprior", quality: int = 1, weights_dir=None):
    """The committed int8 ``CodecPackage`` of a zoo entry, verified against weights/zoo.json."""
    from codec.package import PackageError, load_package

    h = hashes(name, quality, weights_dir)
    path = int8_package_path(name, quality, weights_dir)
    if not h.get("int8_package_sha256"):
        hint = "run `make calibrate quantize QAT_STEPS=600`" if name == "dpu-hyperprior" else \
            "int8 packages exist for dpu-hyperprior (GDN is not a DPU operator: see `make rewrite MODEL=" + name + "`)"
        raise ZooError(f"{path.name}: no int8 package recorded for {name} q{quality}; {hint}")
    try:
        return load_package(path, h["int8_package_sha256"])
    except PackageError as exc:
        raise ZooError(str(exc)) from None


def load_codec(name: str = "gdn-hyperprior", quality: int = 1, weights_dir=None):
    """(model in eval mode, CodecPackage), both verified against the recorded sha256 values."""
    from codec.package import PackageError, load_package

    h = hashes(name, quality, weights_dir)
    model = load_model(name, quality, weights_dir, sha256=h.get("sha256"))
    pkg_file = package_path(name, quality, weights_dir)
    if not h.get("package_sha256"):
        raise ZooError(f"{pkg_file.name}: no codec package recorded for {name} q{quality} (run `medcodec export`)")
    try:
        pkg = load_package(pkg_file, h["package_sha256"])
    except PackageError as exc:
        raise ZooError(str(exc)) from None
    return model, pkg


def load_model(name: str = "gdn-hyperprior", quality: int = 1, weights_dir=None, sha256: str | None = None):
    """Build the registered model with the zoo's channels and load its verified weights (eval mode).

    ``sha256`` overrides the zoo's hash (for checkpoints not yet in the table).
    """
    e = entry(name, quality)
    path = verify_checkpoint(checkpoint_path(name, quality, weights_dir),
                             sha256 or e.get("sha256") or hashes(name, quality, weights_dir).get("sha256"))
    model = registry.create(name, N=e["N"], M=e["M"])
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


#: volume predictors (seed 001): name -> the int8 package in weights/, its sha256 in zoo.json under
#: name -> "volume" -> "package_sha256". Only the package ships: the float checkpoints (4 MB each) are
#: not needed to code or decode, and `medcodec train-mlp3d` remakes them in minutes (the command, seed and
#: their sha256 are in weights/<name>.json).
VOLUME_ZOO: dict[str, dict] = {
    "mlp3d-pyramid": {"package": "mlp3d-pyramid.npz"},
    "mlp3d-cube": {"package": "mlp3d-cube.npz"},
    #: no weights: the previous decoded slice is the prediction (the reference the MLP has to beat)
    "prev-slice": {"package": None},
}


def volume_hashes(name: str, weights_dir=None) -> dict:
    if name not in VOLUME_ZOO:
        raise ZooError(f"no volume model {name!r}; known: {', '.join(sorted(VOLUME_ZOO))}")
    return _manifest(weights_dir).get(name, {}).get("volume", {})


def load_volume_predictor(name: str = "mlp3d-pyramid", weights_dir=None):
    """(``codec.volume.VolumePredictor``, package sha256) of a committed volume model, hash checked."""
    from codec.volume import PreviousSlice, load_predictor

    if name in VOLUME_ZOO and VOLUME_ZOO[name]["package"] is None:
        return PreviousSlice(), PreviousSlice.SHA256
    h = volume_hashes(name, weights_dir)
    path = Path(weights_dir or WEIGHTS_DIR) / VOLUME_ZOO[name]["package"]
    if not h.get("package_sha256"):
        raise ZooError(f"{path.name}: no package recorded for {name} (train it with `medcodec train-mlp3d --model {name}`)")
    verify_checkpoint(path, h["package_sha256"])
    return load_predictor(path), h["package_sha256"]
