"""FixedNet: the DPU-style integer datapath. Checked against an independent torch
float64 implementation of the same formula, and for bit-identical results across
processes and thread counts."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from codec.fixednet import FixedLayer, FixedNet

ROOT = Path(__file__).resolve().parents[2]


def _net(seed=0, bits=16):
    rng = np.random.default_rng(seed)
    lim = 2 ** (bits - 1)
    return FixedNet(
        layers=[
            FixedLayer("deconv", rng.integers(-lim, lim, (8, 6, 5, 5)).astype(float), rng.integers(-999, 999, 6).astype(float),
                       fp_w=14, fp_b=10, fp_out=8, stride=2, padding=2, output_padding=1, act="relu"),
            FixedLayer("conv", rng.integers(-lim, lim, (4, 6, 3, 3)).astype(float), rng.integers(-999, 999, 4).astype(float),
                       fp_w=13, fp_b=9, fp_out=9, stride=1, padding=1, act="leaky_relu"),
        ],
        fp_in=0, bits=bits,
    )


def _reference(net, x):
    """Same arithmetic with torch in float64, written out independently."""
    t = torch.from_numpy(x.astype(np.float64))[None]
    fp = net.fp_in
    for L in net.layers:
        w = torch.from_numpy(L.weight)
        b = torch.from_numpy(L.bias) * 2.0 ** (fp + L.fp_w - L.fp_b)
        if L.op == "conv":
            acc = F.conv2d(t, w, b, stride=L.stride, padding=L.padding)
        else:
            acc = F.conv_transpose2d(t, w, b, stride=L.stride, padding=L.padding, output_padding=L.output_padding)
        y = torch.floor(acc * 2.0 ** -(fp + L.fp_w - L.fp_out) + 0.5)
        if L.act == "relu":
            y = y.clamp_min(0)
        elif L.act == "leaky_relu":
            y = torch.where(y < 0, torch.floor(y * 26 / 256 + 0.5), y)
        t = y.clamp(-(2 ** (net.bits - 1)), 2 ** (net.bits - 1) - 1)
        fp = L.fp_out
    return t[0].numpy()


def test_fixednet_matches_independent_reference():
    net = _net()
    x = np.random.default_rng(1).integers(-40, 40, (8, 4, 4)).astype(np.float64)
    out = net.forward_int(x)
    assert out.shape == (4, 8, 8)
    assert np.array_equal(out, _reference(net, x))
    assert np.array_equal(out, np.round(out))


def test_storage_round_trip(tmp_path):
    net = _net(3)
    np.savez(tmp_path / "n.npz", **net.to_arrays("h_s"))
    back = FixedNet.from_arrays(np.load(tmp_path / "n.npz"), "h_s")
    x = np.random.default_rng(2).integers(-40, 40, (8, 4, 4)).astype(np.float64)
    assert np.array_equal(back.forward_int(x), net.forward_int(x))


def test_input_is_checked_and_quantize_input_saturates():
    net = _net(bits=8)
    q = net.quantize_input(np.array([1000.0, -1000.0, 0.5, -0.5]))
    assert q.tolist() == [127, -128, 1, 0]
    try:
        net.forward_int(np.full((8, 2, 2), 0.5))
    except ValueError as exc:
        assert "integer" in str(exc)
    else:
        raise AssertionError("non-integer input accepted")


def test_bit_identical_across_processes_and_thread_counts(tmp_path):
    net = _net(5)
    x = np.random.default_rng(9).integers(-60, 60, (8, 16, 16)).astype(np.float64)
    np.savez(tmp_path / "n.npz", x=x, **net.to_arrays("net"))
    code = (
        "import sys, numpy as np, hashlib\n"
        "from codec.fixednet import FixedNet\n"
        f"a = np.load(r'{tmp_path / 'n.npz'}')\n"
        "y = FixedNet.from_arrays(a, 'net').forward_int(a['x'])\n"
        "print(hashlib.sha256(y.astype(np.int64).tobytes()).hexdigest())\n"
    )
    digests = set()
    for threads in ("1", "2"):
        env = {"OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "PATH": "/usr/bin:/bin"}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        digests.add(out.stdout.strip())
    import hashlib
    digests.add(hashlib.sha256(net.forward_int(x).astype(np.int64).tobytes()).hexdigest())
    assert len(digests) == 1
