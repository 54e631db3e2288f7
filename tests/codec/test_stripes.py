"""Striped residual streams: large frames cut into stripes coded in parallel processes.

The tests shrink the stripe thresholds (the split happens in the calling process, so the workers need
no patching) to get several stripes out of small frames.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from codec import parallel, residual
from codec.errors import MedcodecError
from codec.residual import ResidualError

FLAGS_BYTE = 5
STRIPE_BIT = 8


def _frame(rows=72, cols=40, seed=3, dtype=np.uint16, hi=4000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    smooth = 0.5 * hi + 0.3 * hi * np.sin(r / 9.0) * np.cos(c / 7.0)
    return np.clip(smooth + rng.normal(0, 20, (rows, cols)), 0, hi).astype(dtype)


@pytest.fixture
def small_stripes(monkeypatch):
    """Stripes of at least 16 rows and 256 pixels: a 72 x 40 frame becomes 4 stripes."""
    monkeypatch.setattr(residual, "STRIPE_PIXELS", 256)
    monkeypatch.setattr(residual, "MIN_STRIPE_ROWS", 16)
    monkeypatch.setattr(residual, "MAX_STRIPES", 4)


def _refused(data: bytes, x: np.ndarray, x_hat=None) -> str:
    with pytest.raises(ResidualError) as info:
        residual.decode(data, x_hat, shape=x.shape, dtype=x.dtype, workers=1)
    msg = str(info.value)
    assert msg and "\n" not in msg
    return msg


def test_stripe_count_follows_the_geometry_only():
    assert residual.stripe_count(512, 512) == 1  # CT and MR slices: unchanged streams
    assert residual.stripe_count(1024, 1024) == 1
    assert residual.stripe_count(1368, 1350) == 1
    assert residual.stripe_count(1760, 1760) == 2
    assert residual.stripe_count(1955, 1841) == 3
    assert residual.stripe_count(2500, 2048) == 4
    assert residual.stripe_count(4664, 3064) == 13
    assert residual.stripe_count(9000, 9000) == residual.MAX_STRIPES
    assert residual.stripe_count(300, 100_000) == 1  # a stripe keeps MIN_STRIPE_ROWS rows
    assert residual.stripe_count(1, 1) == 1


def test_a_frame_below_the_threshold_is_one_stripe_without_the_flag():
    x = _frame()
    enc = residual.encode(x, predictor="blend")
    assert enc.header.stripes == 1
    assert not enc.data[FLAGS_BYTE] & STRIPE_BIT
    assert residual.read_header(enc.data).stripes == 1


@pytest.mark.parametrize("predictor", residual.PREDICTORS)
@pytest.mark.parametrize("d", [0, 2])
@pytest.mark.parametrize("with_xhat", [False, True])
def test_striped_round_trip(small_stripes, predictor, d, with_xhat):
    x = _frame()
    x_hat = (x // 64 * 64).astype(x.dtype) if with_xhat else None
    enc = residual.encode(x, x_hat, d, predictor=predictor, workers=1)
    assert enc.header.stripes == 4
    assert enc.data[FLAGS_BYTE] & STRIPE_BIT
    head = residual.read_header(enc.data)
    assert head.stripes == 4 and head.predictor == predictor
    out = residual.decode(enc.data, x_hat, shape=x.shape, dtype=x.dtype, workers=1)
    assert out.dtype == x.dtype
    assert np.array_equal(out, enc.recon)
    assert int(np.abs(out.astype(np.int64) - x).max()) <= d


def test_stripes_are_coded_independently(small_stripes):
    """Each stripe's words are what the same stripe coded as a frame of its own gives."""
    x = _frame()
    enc = residual.encode(x, predictor="blend", pack=False, workers=1)
    lo, hi = int(x.min()), int(x.max())
    edges = [k * x.shape[0] // 4 for k in range(5)]
    pos = residual._HEAD.size + 2
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        (n,) = struct.unpack_from("<I", enc.data, pos)
        words = np.frombuffer(enc.data, dtype="<u4", count=n, offset=pos + 4)
        alone, _ = residual._code_frame(x[a:b].astype(np.int64) - lo, hi - lo, 0, None, False)
        assert np.array_equal(words, alone)
        pos += 4 + 4 * n
    assert pos == len(enc.data)


def test_packed_striped_frame(small_stripes):
    x = (_frame(hi=1300) * 3).astype(np.uint16)  # every third value: packing pays
    enc = residual.encode(x, predictor="blend", workers=1)
    assert enc.header.packed and enc.header.stripes == 4
    assert np.array_equal(residual.decode(enc.data, shape=x.shape, dtype=x.dtype, workers=1), x)


def test_the_stream_does_not_depend_on_the_workers_and_processes_decode_it(small_stripes):
    x = _frame(dtype=np.int16, hi=3000) - 1000
    x = x.astype(np.int16)
    one = residual.encode(x, predictor="ls", workers=1)
    two = residual.encode(x, predictor="ls", workers=2)
    assert one.data == two.data
    assert np.array_equal(one.recon, two.recon)
    out = residual.decode(two.data, shape=x.shape, dtype=x.dtype, workers=2)
    assert np.array_equal(out, x)


def test_workers_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEDCODEC_WORKERS", "3")
    assert residual.default_workers() == 3
    monkeypatch.delenv("MEDCODEC_WORKERS")
    assert residual.default_workers() >= 1
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("MEDCODEC_WORKERS", bad)
        with pytest.raises(MedcodecError, match="MEDCODEC_WORKERS"):
            residual.default_workers()
    monkeypatch.delenv("MEDCODEC_WORKERS")
    with pytest.raises(MedcodecError, match="workers"):
        residual.encode(_frame(), workers=0)


def _square(v):
    return v * v


def _fail(v):
    if v == 1:
        raise ResidualError(f"job {v} failed")
    return v


def _die(v):
    import os
    os._exit(3)


def _fail_first_or_mark(v, folder):
    import pathlib
    import time
    if v == 0:
        raise ResidualError("job 0 failed")
    time.sleep(0.2)
    (pathlib.Path(folder) / str(v)).write_text("ran")
    return v


def test_a_failure_drops_the_jobs_not_started(tmp_path):
    """The first failure is raised without running the queue of jobs behind it to the end."""
    with pytest.raises(ResidualError, match="job 0 failed"):
        parallel.map_processes(_fail_first_or_mark, [(v, str(tmp_path)) for v in range(16)], 2)
    assert len(list(tmp_path.iterdir())) < 15


def test_map_processes_order_errors_and_dead_workers():
    seen = []
    assert parallel.map_processes(_square, [(v,) for v in range(7)], 3, seen.append) == [v * v for v in range(7)]
    assert sorted(seen) == list(range(7))
    assert parallel.map_processes(_square, [(4,)], 8) == [16]  # one job: no pool
    with pytest.raises(ResidualError, match="job 1 failed"):
        parallel.map_processes(_fail, [(0,), (1,), (2,)], 2)
    with pytest.raises(MedcodecError, match="worker process died") as info:
        parallel.map_processes(_die, [(1,), (2,)], 2)
    assert "\n" not in str(info.value)


def test_damaged_striped_streams_are_refused(small_stripes):
    x = _frame()
    data = residual.encode(x, predictor="blend", workers=1).data
    pos = residual._HEAD.size
    # every truncation, including exactly at a stripe boundary
    (n0,) = struct.unpack_from("<I", data, pos + 2)
    for cut in (pos + 1, pos + 2, pos + 4, pos + 6 + 4 * n0, pos + 6 + 4 * n0 + 3, len(data) - 4, len(data) - 1):
        _refused(data[:cut], x)
    _refused(data + b"\0\0\0\0", x)
    # stripe counts out of range
    for count in (0, 1, residual.MAX_STRIPES + 1, 0xFFFF):
        bad = bytearray(data)
        struct.pack_into("<H", bad, pos, count)
        assert "stripes" in _refused(bytes(bad), x) or "corrupt" in _refused(bytes(bad), x)
    # a word count that runs past the end of the data
    bad = bytearray(data)
    struct.pack_into("<I", bad, pos + 2, 1 << 30)
    assert "length wrong" in _refused(bytes(bad), x)
    # two stripes swapped: every stripe decodes, the CRC-32 of the image does not match
    s_edges = []
    p = pos + 2
    while p < len(data):
        (n,) = struct.unpack_from("<I", data, p)
        s_edges.append((p, p + 4 + 4 * n))
        p += 4 + 4 * n
    chunks = [data[a:b] for a, b in s_edges]
    swapped = data[:pos + 2] + chunks[1] + chunks[0] + b"".join(chunks[2:])
    _refused(swapped, x)


def test_the_stripe_flag_on_an_unstriped_stream_is_refused():
    x = _frame()
    data = bytearray(residual.encode(x, predictor="blend").data)
    data[FLAGS_BYTE] |= STRIPE_BIT
    _refused(bytes(data), x)


def test_a_stripe_error_in_a_worker_process_is_one_line(small_stripes):
    x = _frame()
    data = bytearray(residual.encode(x, predictor="blend", workers=1).data)
    data[-9] ^= 0x5A  # inside the last stripe's words
    with pytest.raises(ResidualError) as info:
        residual.decode(bytes(data), shape=x.shape, dtype=x.dtype, workers=2)
    assert "\n" not in str(info.value)
