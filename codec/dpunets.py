"""The int8 codec's networks behind ``codec.gdncodec.Networks``: one interface, two runners.

An int8 package (``CodecPackage.backend == "int8"``) holds g_a, h_a and g_s as int8
``FixedNet`` s. A *runner* executes one of them on integer data, as a DPU does::

    runner.run_int(name, x_q)  -> y_q        x_q int8 (B, C, H, W) at fix_in(name); y_q int8 at fix_out(name)

- :class:`EmulatorRunner`: the integer DPU emulator (``codec.fixednet``), numpy only;
- the VART runner of the board runtime (``board/``) drives the DPU with the same
  calls, after checking that the xmodel's tensors carry the package's fix points.

:class:`RunnerNetworks` turns a runner into the codec's ``Networks``: it quantizes real
inputs the DPU way (``round_half_up(x * 2^fix_in)``, saturated to int8, never wrapped),
runs the network, and dequantizes (``y_q * 2^-fix_out``)::

    analysis:  x01 tiles -> g_a -> y (int8 at g_a's fix_out) -> h_a -> z
    synthesis: y_int -> g_s -> x01 (clipped to [0, 1])

h_a takes y as it is: the ``abs`` in front of it is part of the int8 h_a
(``quantize/absorb_abs.py``). h_s is not run here: both sides compute the table index
from it in ``CodecPackage.scale_index`` (integers only), so the encoder and the decoder
choose identical tables whatever runs g_a and g_s.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from codec.errors import MedcodecError
from codec.fixednet import FixedNet
from codec.intconv import round_half_up, saturate
from codec.package import CodecPackage

__all__ = ["DPU_NETWORKS", "EmulatorRunner", "NetRunner", "RunnerNetworks", "emulator_networks"]

#: the networks an int8 package holds besides h_s, in pipeline order
DPU_NETWORKS: tuple[str, ...] = ("g_a", "h_a", "g_s")


class NetRunner(Protocol):
    name: str

    def fix_in(self, net: str) -> int: ...

    def fix_out(self, net: str) -> int: ...

    def run_int(self, net: str, x_q: np.ndarray) -> np.ndarray:
        """int8-valued (B, C, H, W) at fix_in -> int8-valued (B, C', H', W') at fix_out."""


class EmulatorRunner:
    """The integer DPU emulator: each network a :class:`codec.fixednet.FixedNet`."""

    name = "emulator"

    def __init__(self, nets: dict[str, FixedNet]):
        missing = [n for n in DPU_NETWORKS if n not in nets]
        if missing:
            raise MedcodecError(f"int8 package lacks network(s) {missing}")
        self.nets = nets

    def fix_in(self, net: str) -> int:
        return self.nets[net].fp_in

    def fix_out(self, net: str) -> int:
        return self.nets[net].fp_out

    def run_int(self, net: str, x_q: np.ndarray) -> np.ndarray:
        fn = self.nets[net]
        return np.stack([fn.forward_int(x) for x in x_q])


class RunnerNetworks:
    """``codec.gdncodec.Networks`` over any :class:`NetRunner`; ``times`` holds seconds per network."""

    def __init__(self, runner: NetRunner):
        self.runner = runner
        self.times: dict[str, float] = dict.fromkeys(DPU_NETWORKS, 0.0)
        self.calls: dict[str, int] = dict.fromkeys(DPU_NETWORKS, 0)

    def run(self, net: str, x: np.ndarray) -> np.ndarray:
        """Real (B, C, H, W) -> real, through the runner's integers."""
        x_q = saturate(round_half_up(np.asarray(x, dtype=np.float64) * 2.0 ** self.runner.fix_in(net)), 8)
        t0 = time.perf_counter()
        y_q = self.runner.run_int(net, x_q)
        self.times[net] += time.perf_counter() - t0
        self.calls[net] += x_q.shape[0]
        return np.asarray(y_q, dtype=np.float64) * 2.0 ** -self.runner.fix_out(net)

    def analysis(self, tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = self.run("g_a", np.asarray(tiles)[:, None])
        z = self.run("h_a", y)
        return y, z

    def synthesis(self, y_int: np.ndarray) -> np.ndarray:
        return np.clip(self.run("g_s", y_int)[:, 0], 0.0, 1.0)


def emulator_networks(pkg: CodecPackage) -> RunnerNetworks:
    """The emulator-backed networks of an int8 package."""
    if pkg.backend != "int8":
        raise MedcodecError(f"{pkg.name} q{pkg.quality}: not an int8 package (backend {pkg.backend!r})")
    return RunnerNetworks(EmulatorRunner(pkg.nets))
