"""The codec package: everything a coder needs besides the float networks.

A package (``.npz``, written once at export by ``models/export.py``) holds:

- ``meta``: JSON (model name, quality, N, M, tile size, checkpoint sha256, the
  scale table, how h_s was quantized);
- ``z``: the factorized model of the hyper-latent as integer pmf tables, one per
  channel, and the integer channel centres ``z_center`` (symbol = z_int - center);
- ``y``: the Gaussian conditional tables, one per entry of the fixed scale table;
- ``h_s``: the hyper-synthesis as a 16-bit ``FixedNet`` (exact integers), whose
  output, in scale-index space at ``fp_out``, gives the table index in integers;
- ``nets`` (int8 packages only, ``meta["backend"] == "int8"``): the DPU networks
  ``g_a``, ``h_a`` (with the ``abs`` absorbed) and ``g_s`` as int8 ``FixedNet`` s, made
  by ``quantize/codec_int8.py``; h_s is then int8 as well. They are what the integer
  emulator runs (``codec/dpunets.py``) and what a DPU computes from the same xmodel.

Both the encoder and the decoder derive every table choice from these integers,
so decoding never depends on floating-point luck. The package's own sha256 is
what a ``.mdc`` file records and checks.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codec.entropy import TableSet
from codec.errors import MedcodecError
from codec.fixednet import FixedNet
from codec.intconv import round_half_up

PACKAGE_VERSION = 1


class PackageError(MedcodecError):
    """A codec package that is missing, damaged or of another version."""


def tables_to_arrays(t: TableSet, prefix: str) -> dict[str, np.ndarray]:
    return {f"{prefix}.pmf": np.asarray(t.pmf), f"{prefix}.lengths": np.asarray(t.lengths),
            f"{prefix}.offsets": np.asarray(t.offsets), f"{prefix}.precision": np.int64(t.precision)}


def tables_from_arrays(a, prefix: str) -> TableSet:
    return TableSet(pmf=np.asarray(a[f"{prefix}.pmf"]), lengths=np.asarray(a[f"{prefix}.lengths"]),
                    offsets=np.asarray(a[f"{prefix}.offsets"]), precision=int(a[f"{prefix}.precision"]))


@dataclass
class CodecPackage:
    meta: dict
    z_tables: TableSet
    z_center: np.ndarray  # int (N,)
    y_tables: TableSet
    h_s: FixedNet
    sha256: str = ""
    nets: dict[str, FixedNet] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        """"float" (host torch networks + integer h_s) or "int8" (every network a FixedNet)."""
        return str(self.meta.get("backend", "float"))

    @property
    def name(self) -> str:
        return self.meta["model"]

    @property
    def quality(self) -> int:
        return int(self.meta["quality"])

    @property
    def tile(self) -> int:
        return int(self.meta["tile"])

    def scale_index(self, z_int: np.ndarray) -> np.ndarray:
        """z (integers, (N, h, w)) -> table index per element of y, (M, 4h, 4w), in integers only."""
        # z_int at the network's input fix position (0 for the 16-bit h_s: z itself), saturated, never wrapped
        t_q = self.h_s.forward_int(self.h_s.quantize_input(z_int))
        levels = self.y_tables.num_tables
        return np.clip(round_half_up(t_q * 2.0**-self.h_s.fp_out), 0, levels - 1).astype(np.int64)

    def to_bytes(self) -> bytes:
        arrays = {"meta": np.array(json.dumps(self.meta, sort_keys=True)),
                  "version": np.int64(PACKAGE_VERSION), "z_center": np.asarray(self.z_center, dtype=np.int64)}
        arrays.update(tables_to_arrays(self.z_tables, "z"))
        arrays.update(tables_to_arrays(self.y_tables, "y"))
        arrays.update(self.h_s.to_arrays("h_s"))
        if self.nets:
            arrays["nets"] = np.array(",".join(sorted(self.nets)))
            for name, net in sorted(self.nets.items()):
                arrays.update(net.to_arrays(f"net.{name}"))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = "package") -> CodecPackage:
        try:
            a = np.load(io.BytesIO(data), allow_pickle=False)
            version = int(a["version"])
            if version != PACKAGE_VERSION:
                raise PackageError(f"{where}: package version {version}, this medcodec reads {PACKAGE_VERSION}")
            return cls(
                meta=json.loads(str(a["meta"])),
                z_tables=tables_from_arrays(a, "z"),
                z_center=np.asarray(a["z_center"], dtype=np.int64),
                y_tables=tables_from_arrays(a, "y"),
                h_s=FixedNet.from_arrays(a, "h_s"),
                sha256=hashlib.sha256(data).hexdigest(),
                nets={n: FixedNet.from_arrays(a, f"net.{n}") for n in str(a["nets"]).split(",")}
                if "nets" in a else {},
            )
        except PackageError:
            raise
        except Exception as exc:  # a damaged npz can fail in many ways; all of them are one user error
            raise PackageError(f"{where}: not a valid codec package ({type(exc).__name__}: {exc})") from None


def load_package(path, sha256: str | None = None) -> CodecPackage:
    path = Path(path)
    if not path.is_file():
        raise PackageError(f"{path}: codec package missing")
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if sha256 is not None and got != sha256:
        raise PackageError(f"{path}: sha256 mismatch (expected {sha256[:16]}.., got {got[:16]}..)")
    return CodecPackage.from_bytes(data, str(path))
