"""codec/volume.py: seed 001's inter-slice predictor + the residual layer (numpy side), and the series reader."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid

from codec import residual
from codec import volume as V
from codec.series import read_series
from models.mlp3d import MLP3D
from quantize.builtin import FakeQuant
from quantize.mlp3d_int8 import export_int8
from tests.codec.test_dicom import make_dataset, save
from tests.conftest import ROOT


def tiny_predictor(sampling="pyramid", seed=0, hidden=(16, 8)) -> V.VolumePredictor:
    torch.manual_seed(seed)
    m = MLP3D(sampling, hidden)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.integers(-127, 128, (512, V.num_features(sampling))).astype(np.float32) / 128)
    fixed, _ = export_int8(m, x)
    return V.VolumePredictor(fixed, sampling)


def smooth_volume(shape=(6, 24, 28), bits=12, seed=0, signed=False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s, h, w = shape
    z, y, x = np.meshgrid(np.arange(s), np.arange(h), np.arange(w), indexing="ij")
    base = 0.4 + 0.3 * np.sin(x / 5.0 + z / 3.0) * np.cos(y / 7.0)
    hi = (1 << bits) - 1
    v = base * hi + rng.normal(0, 6, shape)
    v = np.clip(np.round(v), 0, hi).astype(np.int64)
    if signed:
        v = v - (1 << (bits - 1))
        return v.astype(np.int16)
    return v.astype(np.uint16)


@pytest.fixture(scope="module")
def pred():
    return tiny_predictor()


# -- features -----------------------------------------------------------------------------------------------
def test_feature_layout_and_values():
    prev = np.zeros((3, 5, 6), dtype=np.int64)
    prev[0] = 100
    prev[0, 2, 3] = 100  # ref of voxel (2, 3)
    prev[1] = 100 + 8 * np.arange(6)[None, :]
    prev[2] = 60
    x, ref = V.features(prev, "pyramid", shift=2, lo=0, hi=1000)
    assert x.shape == (30, V.num_features("pyramid")) == (30, 25 + 81 + 169 + 1)
    assert np.array_equal(ref, prev[0].reshape(-1))
    i = 2 * 6 + 3
    assert x[i, 12] == 0  # the centre of the s-1 window is ref itself
    # s-2 window (9x9) centre: (100 + 24 - 100) / 4 = 6; its right neighbour (col 4): 32/4 = 8
    assert x[i, 25 + 40] == 6 and x[i, 25 + 41] == 8
    assert x[i, 25 + 81 + 84] == -10  # s-3 centre: (60 - 100) / 4
    assert x[i, -1] == (100 * 254 + 500) // 1000 - 127  # the level of ref over lo..hi
    # outside the slice: padded with lo -> (0 - 100) / 4 = -25
    assert x[0, 0] == -25


def test_features_clip_and_round():
    prev = np.zeros((3, 3, 3), dtype=np.int64)
    prev[1] = 10_000
    prev[2, 1, 1] = 6  # (6 - 0) / 4 = 1.5 -> rounds half up to 2
    x, _ = V.features(prev, "cube", shift=2, lo=0, hi=10_000)
    assert x[:, 1:122].max() <= V.QMAX and x.min() >= -V.QMAX
    assert x[4, 121 + 60] == V.QMAX  # s-2 clipped to +127
    assert x[4, 242 + 60] == 2


def test_choose_shift():
    assert V.choose_shift(np.zeros((1, 4, 4), np.uint16)) == 0
    v = np.zeros((3, 10, 10), np.int64)
    v[1] = 100
    assert V.choose_shift(v) == 0
    v[1] = 1000
    assert V.choose_shift(v) == 3  # 1000 <= 127 * 8


# -- the int8 MLP ---------------------------------------------------------------------------------------------
def test_int8_mlp_matches_emulator_and_fake_quant(pred):
    rng = np.random.default_rng(1)
    x = rng.integers(-127, 128, (300, V.num_features("pyramid")))
    fast = V._mlp_int(pred.net, x)
    ref = pred.net.forward_int(x.T.reshape(1, -1, 300, 1)[0])[0, :, 0]  # the conv emulator, float64
    assert np.array_equal(fast, ref.astype(np.int64))


@pytest.mark.parametrize("fps", [(7, 11, 11, 7, "leaky_relu"), (7, 8, 15, 15, "relu"), (7, 6, 9, 13, "none"),
                                 (7, 9, 10, 9, "leaky_relu"), (7, 6, 16, 10, "leaky_relu")])
def test_int8_mlp_int32_path_matches_emulator(fps):
    """The int32 requantisation (shift cut 0 and > 0, bias shift >= 0; relu, leaky, none) and the float64
    fallback (negative bias shift) against the conv emulator, on saturating inputs and weights."""
    from codec.fixednet import FixedLayer, FixedNet

    fp_in, fp_w, fp_b, fp_out, act = fps
    rng = np.random.default_rng(sum(fps[:4]))
    layers = [FixedLayer("conv", rng.integers(-128, 128, (32, 40, 1, 1)).astype(np.float64),
                         rng.integers(-128, 128, 32).astype(np.float64), fp_w, fp_b, fp_out, act=act),
              FixedLayer("conv", rng.integers(-128, 128, (1, 32, 1, 1)).astype(np.float64),
                         rng.integers(-128, 128, 1).astype(np.float64), 7, 7, 7)]
    net = FixedNet(layers, fp_in)
    x = rng.integers(-128, 128, (500, 40))
    x[:5] = 127
    ref = net.forward_int(x.T.reshape(1, 40, 500, 1)[0])[0, :, 0]
    assert np.array_equal(V._mlp_int(net, x), ref.astype(np.int64))


def test_committed_predictor_matches_emulator():
    from models import zoo

    pred, _ = zoo.load_volume_predictor("mlp3d-pyramid")
    x = np.random.default_rng(2).integers(-127, 128, (200, V.num_features("pyramid")))
    ref = pred.net.forward_int(x.T.reshape(1, -1, 200, 1)[0])[0, :, 0]
    assert np.array_equal(V._mlp_int(pred.net, x), ref.astype(np.int64))


def test_fake_quant_agrees():
    torch.manual_seed(3)
    m = MLP3D("pyramid", (16, 8))
    rng = np.random.default_rng(3)
    xi = rng.integers(-127, 128, (256, V.num_features("pyramid")))
    xr = torch.from_numpy(xi.astype(np.float32) / 128)
    fixed, spec = export_int8(m, xr)
    assert spec.fp_in == V.FP_IN and spec.layers[-1].fp_out == V.FP_OUT
    fq = FakeQuant(m.net, spec)
    y = fq(xr.T.reshape(1, -1, 256, 1).double())[0, 0, :, 0].numpy()
    assert np.array_equal(V._mlp_int(fixed, xi), y.astype(np.int64))


def test_predictor_checks_shapes(pred):
    with pytest.raises(V.VolumeError, match="inputs"):
        V.VolumePredictor(pred.net, "cube")
    with pytest.raises(V.VolumeError, match="unknown sampling"):
        V.VolumePredictor(pred.net, "sphere")


# -- coding -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [False, True])
def test_lossless_round_trip(pred, signed):
    vol = smooth_volume(signed=signed)
    streams, info = V.encode_volume(vol, pred)
    out = V.decode_volume(streams, pred, rows=vol.shape[1], cols=vol.shape[2], dtype=vol.dtype, **info)
    assert out.dtype == vol.dtype and np.array_equal(out, vol)


@pytest.mark.parametrize("model", ["mlp", "prev-slice"])
def test_lossless_slices_encode_in_parallel_to_the_same_streams(pred, model):
    """Lossless slices are independent jobs: 2 worker processes give the streams one process gives."""
    vol = smooth_volume(shape=(5, 24, 28))
    predictor = pred if model == "mlp" else V.PreviousSlice()
    done = []
    one, info1 = V.encode_volume(vol, predictor, workers=1)
    two, info2 = V.encode_volume(vol, predictor, workers=2, progress=done.append)
    assert one == two and info1 == info2
    assert done == [1] * vol.shape[0]
    back = V.decode_volume(two, predictor, rows=24, cols=28, dtype=vol.dtype, **info2)
    assert np.array_equal(back, vol)


@pytest.mark.parametrize("d", [0, 2])
def test_groups_are_independent_and_decode_alone(pred, d):
    """group=2 on 5 slices: groups (0, 1), (2, 3), (4); their first slices have no x_hat; the groups
    decode in parallel to the same slices, and one slice needs only its group."""
    vol = smooth_volume(shape=(5, 20, 24))
    streams, info = V.encode_volume(vol, pred, max_error=d, group=2, workers=1)
    again, _ = V.encode_volume(vol, pred, max_error=d, group=2, workers=2)
    assert again == streams
    assert [residual.read_header(x).has_xhat for x in streams] == [False, True, False, True, False]
    kw = dict(rows=20, cols=24, dtype=vol.dtype, **info)
    for workers in (1, 2):
        back = V.decode_volume(streams, pred, group=2, workers=workers, **kw)
        assert int(np.abs(back.astype(np.int64) - vol).max()) <= d
    steps = []
    one = V.decode_volume(streams, pred, group=2, slices=[3], progress=steps.append, **kw)
    assert one.shape == (1, 20, 24) and np.array_equal(one[0], back[3]) and sum(steps) == 2
    # the streams of group (2, 3) alone are enough: the others may be anything
    junk = [b"" if s not in (2, 3) else x for s, x in enumerate(streams)]
    assert np.array_equal(V.decode_volume(junk, pred, group=2, slices=[3], **kw)[0], back[3])
    # a group stream decoded as one chain is refused (its first slice was coded without x_hat)
    with pytest.raises(V.VolumeError, match="slice 2"):
        V.decode_volume(streams, pred, group=0, **kw)
    with pytest.raises(V.VolumeError, match="out of range"):
        V.decode_volume(streams, pred, group=2, slices=[5], **kw)
    for bad in (-1, 1.5, True):
        with pytest.raises(V.VolumeError, match="group"):
            V.encode_volume(vol, pred, group=bad)


def test_group_in_the_head(pred):
    vol = smooth_volume(shape=(5, 20, 24))
    kw = dict(model="m", package_sha256="0" * 64, bits_stored=12, signed=False, source="npy")
    chained = V.compress_volume(vol, pred, group=0, **kw)
    assert "group" not in V.read_volume(chained)[0]  # files of one chain are as before groups
    grouped = V.compress_volume(vol, pred, group=2, **kw)
    head = V.read_volume(grouped)[0]
    assert head["group"] == 2
    h, back, _ = V.decompress_volume(grouped, pred, slices=[4, 1])
    assert np.array_equal(back, vol[[1, 4]])
    assert V.read_volume(V.compress_volume(vol, pred, **kw))[0]["group"] == V.GROUP
    from codec import container

    c = container.read_container(grouped, schema=V._schema())
    for bad in (-1, "2", True, 2.5):
        data = container.write_container({**c.head, "group": bad}, [], c.meta, schema=V._schema(),
                                         residuals=c.residuals)
        with pytest.raises(V.VolumeError, match="group"):
            V.read_volume(data)


def adversarial():
    rng = np.random.default_rng(7)
    yield "noise", rng.integers(0, 4096, (4, 16, 20)).astype(np.uint16)
    e = np.zeros((4, 16, 20), np.int16)
    e[:, :, 10:] = 32767
    e[:, ::2, :3] = -32768
    yield "edges-extremes", e
    yield "constant", np.full((4, 16, 20), 1234, np.uint16)
    yield "full-range-u16", rng.choice(np.array([0, 65535], np.uint16), (3, 12, 12))


@pytest.mark.parametrize("d", [1, 2, 4])
@pytest.mark.parametrize("name,vol", list(adversarial()), ids=[n for n, _ in adversarial()])
def test_near_lossless_bound_on_adversarial_volumes(pred, name, vol, d):
    streams, info = V.encode_volume(vol, pred, max_error=d)
    out = V.decode_volume(streams, pred, rows=vol.shape[1], cols=vol.shape[2], dtype=vol.dtype, **info)
    assert int(np.abs(out.astype(np.int64) - vol).max()) <= d


@pytest.mark.parametrize("name,vol", list(adversarial()), ids=[n for n, _ in adversarial()])
def test_lossless_adversarial(pred, name, vol):
    streams, info = V.encode_volume(vol, pred)
    out = V.decode_volume(streams, pred, rows=vol.shape[1], cols=vol.shape[2], dtype=vol.dtype, **info)
    assert np.array_equal(out, vol)


def test_predictor_uses_previous_slices(pred):
    """The x_hat of slice s depends on slices s-1..s-3 only, and the stream records its CRC."""
    vol = smooth_volume()
    streams, info = V.encode_volume(vol, pred)
    assert residual.read_header(streams[0]).xhat_crc == 0  # first slice: residual layer alone
    prev = V._previous([v.astype(np.int64) for v in vol], 4, info["lo"], vol.shape[1:])
    xh = pred.predict(prev, info["shift"], info["lo"], info["hi"])
    assert residual.read_header(streams[4]).xhat_crc == residual.crc32_of(xh.astype(vol.dtype))
    changed = vol.copy()
    changed[0] += 1  # slice 0 is not in slice 4's window
    prev2 = V._previous([v.astype(np.int64) for v in changed], 4, info["lo"], vol.shape[1:])
    assert np.array_equal(pred.predict(prev2, info["shift"], info["lo"], info["hi"]), xh)


def test_other_predictor_is_refused(pred):
    vol = smooth_volume()
    streams, info = V.encode_volume(vol, pred)
    other = tiny_predictor(seed=5)
    with pytest.raises(V.VolumeError, match="slice 1"):
        V.decode_volume(streams, other, rows=vol.shape[1], cols=vol.shape[2], dtype=vol.dtype, **info)


_CHILD = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from codec import volume as V
pred = V.load_predictor(sys.argv[2])
vol = np.load(sys.argv[3])
h, out, _ = V.decompress_volume(open(sys.argv[1], "rb").read(), pred)
print(int(np.array_equal(out, vol)), int("torch" in sys.modules))
"""


@pytest.mark.parametrize("threads", ["1", "2"])
def test_decode_in_another_process_with_other_threads(pred, tmp_path, threads):
    """Decoded in a fresh process (numpy only: no torch) with 1 and 2 BLAS threads: the same voxels."""
    from models.mlp3d import save_package

    vol = smooth_volume()
    data = V.compress_volume(vol, pred, model="mlp3d-pyramid", package_sha256="0" * 64, bits_stored=12,
                             signed=False, source="npy")
    (tmp_path / "v.mdc").write_bytes(data)
    save_package(tmp_path / "p.npz", pred.net, pred.sampling)
    np.save(tmp_path / "v.npy", vol)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    r = subprocess.run([sys.executable, "-c", _CHILD.format(root=str(ROOT)), str(tmp_path / "v.mdc"),
                        str(tmp_path / "p.npz"), str(tmp_path / "v.npy")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "0"]


# -- the file ---------------------------------------------------------------------------------------------------
def test_file_round_trip_and_damage(pred):
    vol = smooth_volume(shape=(4, 16, 18))
    metas = [f"meta{i}".encode() for i in range(4)]
    data = V.compress_volume(vol, pred, model="mlp3d-pyramid", package_sha256="a" * 64, bits_stored=12,
                             signed=False, metas=metas, names=[f"s{i}.dcm" for i in range(4)])
    h, out, m = V.decompress_volume(data, pred)
    assert np.array_equal(out, vol) and m == metas and h["names"][2] == "s2.dcm" and h["mode"] == "lossless"
    for bad in (data[:-5], data[:len(data) // 2], data[:20] + bytes([data[20] ^ 1]) + data[21:],
                data[:-30] + bytes([data[-30] ^ 0x10]) + data[-29:]):
        with pytest.raises(V.VolumeError):
            V.decompress_volume(bad, pred)


def test_head_refuses_unsafe_names(pred):
    vol = smooth_volume(shape=(2, 8, 8))
    for names in (["../x.dcm", "b.dcm"], ["a.dcm", "a.dcm"], ["a/b.dcm", "c.dcm"]):
        with pytest.raises(V.VolumeError, match="names"):
            V.compress_volume(vol, pred, model="m", package_sha256="a" * 64, bits_stored=12, signed=False,
                              source="npy", names=names)


def test_meta_pack():
    blobs = [b"", b"abc", bytes(300)]
    assert V.unpack_meta(V.pack_meta(blobs), 3) == blobs
    with pytest.raises(V.VolumeError):
        V.unpack_meta(V.pack_meta(blobs)[:-1], 3)
    with pytest.raises(V.VolumeError):
        V.unpack_meta(V.pack_meta(blobs), 2)


# -- series -------------------------------------------------------------------------------------------------------
def write_series(folder, vol, shuffle=True, positions=True):
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    order = np.random.default_rng(0).permutation(len(vol)) if shuffle else range(len(vol))
    for k, i in enumerate(order):
        ds = make_dataset(shape=vol.shape[1:], pixels=vol[i], bits_stored=12)
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = int(i) + 1
        if positions:
            ds.ImagePositionPatient = [0.0, 0.0, -2.5 * float(i)]  # descending z: normal . pos sorts by it
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        save(ds, folder / f"f{k:02d}.dcm")
    return folder


def test_read_series_orders_slices(tmp_path):
    vol = smooth_volume(shape=(5, 10, 12))
    ser = read_series(write_series(tmp_path / "a", vol))
    assert np.array_equal(ser.volume, vol[::-1])  # by position along the normal (z ascending)
    ser2 = read_series(write_series(tmp_path / "b", vol, positions=False))
    assert np.array_equal(ser2.volume, vol)  # by Instance Number


def test_read_series_refuses_mixed_sizes(tmp_path):
    folder = write_series(tmp_path / "a", smooth_volume(shape=(3, 10, 12)))
    save(make_dataset(shape=(8, 8), bits_stored=12), folder / "odd.dcm")
    with pytest.raises(Exception, match="one series per folder"):
        read_series(folder)
