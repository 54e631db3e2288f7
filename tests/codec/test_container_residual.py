"""RESD chunks of the .mdc container: the residual layer, one stream per frame after the tiles."""

from __future__ import annotations

import json
import struct

import pytest

from codec.container import (
    IEND,
    RESD,
    SIGNATURE,
    TILE,
    ContainerError,
    make_chunk,
    read_container,
    write_container,
)
from tests.codec.test_container import make_head


def _file(frames: int = 2, residuals=(b"r0", b"")) -> bytes:
    return write_container(make_head(2, frames=frames), [[b"a"], [b"b"]], meta=b"m", residuals=list(residuals))


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = len(SIGNATURE) + 2, []
    while pos < len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        out.append((ctype, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _build(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return SIGNATURE + struct.pack(">H", 1) + b"".join(make_chunk(t, p) for t, p in chunks)


def test_residuals_round_trip_after_the_tiles():
    data = _file()
    c = read_container(data)
    assert c.residuals == [b"r0", b""] and c.tiles == [[b"a"], [b"b"]] and c.meta == b"m"
    types = [t for t, _ in _chunks(data)]
    assert types == [b"HEAD", b"META", TILE, TILE, RESD, RESD, IEND]
    assert [p for t, p in _chunks(data) if t == RESD] == [struct.pack(">I", 0) + b"r0", struct.pack(">I", 1)]


def test_files_without_residuals_are_unchanged():
    head, tiles = make_head(2), [[b"a"], [b"b"]]
    assert write_container(head, tiles) == write_container(head, tiles, residuals=())
    assert read_container(write_container(head, tiles)).residuals == []


def test_resd_is_critical():
    assert RESD[:1].isupper()  # a reader that does not know it refuses the file


def test_writer_checks_the_residual_count_and_types():
    with pytest.raises(ContainerError, match="residual count 1 != HEAD frames 2"):
        _file(2, [b"x"])
    with pytest.raises(ContainerError, match="expected bytes"):
        _file(2, [b"x", "text"])
    with pytest.raises(ContainerError, match="list of byte streams"):
        write_container(make_head(2, frames=1), [[b"a"], [b"b"]], residuals=b"abc")


def _damaged(edit) -> bytes:
    chunks = _chunks(_file())
    return _build(edit(chunks))


@pytest.mark.parametrize("edit, message", [
    (lambda c: c[:5] + c[6:], "residual count 1 != HEAD frames 2"),
    (lambda c: c[:4] + [c[5], c[4]] + c[6:], "residual frame index 1 out of order"),
    (lambda c: c[:5] + [(RESD, struct.pack(">I", 0) + b"x")] + c[6:], "residual frame index 0 out of order"),
    (lambda c: c[:5] + [(RESD, struct.pack(">I", 7))] + c[6:], "residual frame index 7 out of range"),
    (lambda c: c[:5] + [(RESD, b"\0\0")] + c[6:], "shorter than its 4-byte frame index"),
    (lambda c: c[:3] + [c[4], c[3]] + c[5:], "TILE chunk at offset .* after a RESD chunk"),
])
def test_reader_refuses_misplaced_or_missing_residuals(edit, message):
    with pytest.raises(ContainerError, match=message) as info:
        read_container(_damaged(edit))
    assert "\n" not in str(info.value)


def test_a_damaged_resd_chunk_fails_its_crc():
    data = bytearray(_file())
    data[data.rindex(b"r0")] ^= 0x01
    with pytest.raises(ContainerError, match="CRC mismatch in chunk RESD #0"):
        read_container(bytes(data))


# --------------------------------------------------------------------------- residual-only files (no TILE)


def ro_head(frames: int = 2, **extra) -> dict:
    """The HEAD of a residual-only file (lossy_layer "none", tiles 0), as gdncodec writes it."""
    head = {"lossy_layer": "none", "mode": "lossless", "max_error": 0, "source": "npy", "rows": 4, "cols": 5,
            "frames": frames, "dtype": "<u2", "bits_stored": 12, "signed": False, "photometric": "MONOCHROME2",
            "tiles": 0}
    head.update(extra)
    return head


def _ro_file(frames: int = 2) -> bytes:
    return write_container(ro_head(frames), [], meta=b"m", residuals=[b"r%d" % f for f in range(frames)])


def test_residual_only_round_trip_and_layout():
    data = _ro_file()
    c = read_container(data)
    assert c.tiles == [] and c.residuals == [b"r0", b"r1"] and c.head == ro_head()
    assert [t for t, _ in _chunks(data)] == [b"HEAD", b"META", RESD, RESD, IEND]
    # it names no model, so it needs none: an expected model is not compared
    assert read_container(data, expected_model="gdn-hyperprior", expected_sha256="0" * 64).residuals == [b"r0", b"r1"]


@pytest.mark.parametrize("edit, message", [
    (lambda c: c[:3] + c[4:], "residual count 1 != HEAD frames 2"),  # the last RESD removed
    (lambda c: c[:2] + c[3:], "residual frame index 1 out of order"),  # the first one removed
    (lambda c: c[:2] + c[4:], "no TILE and no RESD chunk"),  # both removed
    (lambda c: c[:3] + [(RESD, c[3][1][:3])] + c[4:], "shorter than its 4-byte frame index"),  # truncated payload
    (lambda c: c[:2] + [c[3], c[2]] + c[4:], "residual frame index 1 out of order"),
    (lambda c: c[:2] + [(TILE, struct.pack(">IH", 0, 0))] + c[2:], "tile index 0 out of range .*HEAD tiles 0"),
])
def test_reader_refuses_a_residual_only_file_with_missing_or_damaged_resd(edit, message):
    with pytest.raises(ContainerError, match=message) as info:
        read_container(_build(edit(_chunks(_ro_file()))))
    assert "\n" not in str(info.value)


def test_residual_only_single_frame_without_its_resd_is_refused():
    chunks = _chunks(_ro_file(1))
    with pytest.raises(ContainerError, match=r"no TILE and no RESD chunk.*\(HEAD frames 1\)"):
        read_container(_build([c for c in chunks if c[0] != RESD]))
    with pytest.raises(ContainerError, match="no TILE and no RESD chunk"):
        write_container(ro_head(1), [], residuals=[])


def test_residual_only_file_truncated_or_bit_flipped_is_refused():
    data = _ro_file()
    for cut in (len(data) - 1, len(data) - 12, data.rindex(b"r1") + 1, data.rindex(b"r1") - 6):
        with pytest.raises(ContainerError, match="truncated|missing IEND"):
            read_container(data[:cut])
    for pos in (data.rindex(b"r1"), data.rindex(b"r0") - 1, data.index(b'"tiles"') + 3):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        with pytest.raises(ContainerError, match="CRC mismatch"):
            read_container(bytes(flipped))


@pytest.mark.parametrize("change, message", [
    ({"tiles": 1}, "'tiles' must be 0 in a file without a lossy layer"),
    ({"tiles": False}, "'tiles' must be 0"),
    ({"lossy_layer": "nothing"}, "'lossy_layer' must be \"learned\" or \"none\", got 'nothing'"),
    ({"lossy_layer": 0}, "'lossy_layer' must be \"learned\" or \"none\", got 0"),
    ({"lossy_layer": None}, "'lossy_layer' must be"),
    ({"lossy_layer": "learned"}, "missing required key 'model'"),  # then it needs the learned layer's keys
    ({"model": "gdn-hyperprior"}, "'model' is not allowed in a file without a lossy layer"),
    ({"quality": 2}, "'quality' is not allowed"),
    ({"input_map": [[0, 1]]}, "'input_map' is not allowed"),
    ({"rows": 0}, "'rows' must be an int >= 1"),
    ({"signed": 1}, "'signed' must be bool"),
])
def test_residual_only_head_schema(change, message):
    head = ro_head(1)
    head.update(change)
    with pytest.raises(ContainerError, match=message):
        write_container(head, [], residuals=[b"r"])
    raw = json.dumps(head, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ContainerError, match=message):
        read_container(_build([(b"HEAD", raw), (RESD, struct.pack(">I", 0) + b"r"), (IEND, b"")]))


def test_residual_only_head_missing_key_and_learned_head_without_tiles():
    head = ro_head(1)
    del head["tiles"]
    with pytest.raises(ContainerError, match="missing required key 'tiles'"):
        write_container(head, [], residuals=[b"r"])
    # a HEAD of the learned layer (no lossy_layer key, or "learned") still needs >= 1 tile
    for extra in ({}, {"lossy_layer": "learned"}):
        with pytest.raises(ContainerError, match="'tiles' must be an int >= 1"):
            write_container(make_head(0, **extra), [], residuals=[b"r"])
    learned = write_container(make_head(2, lossy_layer="learned"), [[b"a"], [b"b"]])
    assert read_container(learned).head["lossy_layer"] == "learned"
