"""RESD chunks of the .mdc container: the residual layer, one stream per frame after the tiles."""

from __future__ import annotations

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
