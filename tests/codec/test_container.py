"""The .mdc container: round trips, and every kind of damage is a ContainerError."""

from __future__ import annotations

import json
import random
import struct
import zlib

import pytest

from codec.container import (
    DEFAULT_HEAD_SCHEMA,
    FORMAT_VERSION,
    MAX_CHUNK_LENGTH,
    SIGNATURE,
    Check,
    Container,
    ContainerError,
    make_chunk,
    read_container,
    write_container,
)
from codec.errors import MedcodecError

SHA = "ab12" + "0" * 58 + "ff"
OTHER_SHA = "cd34" + "1" * 60


def make_head(tiles: int = 3, **extra) -> dict:
    head = {
        "model": "gdn-hyperprior",
        "checkpoint_sha256": SHA,
        "quality": 3,
        "mode": "lossy",
        "rows": 512,
        "cols": 384,
        "frames": 1,
        "bits_stored": 12,
        "signed": False,
        "photometric": "MONOCHROME2",
        "map_offset": 0.0,
        "map_scale": 1.0 / 4095,
        "tile": 256,
        "tile_rows": 2,
        "tile_cols": 2,
        "tiles": tiles,
    }
    head.update(extra)
    return head


def small_file() -> bytes:
    """A complete file with every chunk type, a little over 400 bytes."""
    tiles = [[b"y0", b"zz0"], [b"", b"z1"], []]
    return write_container(make_head(3), tiles, meta=b"\x78\x9c meta", extra=[("note", b"x")])


def large_file() -> tuple[bytes, list[list[bytes]]]:
    rng = random.Random(1)
    tiles = [[rng.randbytes(700 + 100 * i), rng.randbytes(90)] for i in range(4)]
    return write_container(make_head(4), tiles, meta=rng.randbytes(300)), tiles


def chunk_table(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, total size) of every chunk, walked independently of the module."""
    pos, out = len(SIGNATURE) + 2, []
    while pos < len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        out.append((pos, ctype, 12 + length))
        pos += 12 + length
    assert pos == len(data)
    return out


def assemble(*chunks: bytes, version: int = FORMAT_VERSION) -> bytes:
    return SIGNATURE + struct.pack(">H", version) + b"".join(chunks)


def head_chunk(head: dict | None = None) -> bytes:
    head = make_head() if head is None else head
    return make_chunk("HEAD", json.dumps(head, sort_keys=True).encode())


def tile_chunk(index: int, streams=(b"ab",)) -> bytes:
    payload = struct.pack(">IH", index, len(streams))
    payload += b"".join(struct.pack(">I", len(s)) + s for s in streams)
    return make_chunk("TILE", payload)


IEND_CHUNK = make_chunk("IEND", b"")


def reject(data: bytes, match: str | None = None, **kwargs) -> ContainerError:
    with pytest.raises(ContainerError, match=match) as info:
        read_container(data, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message
    return info.value


# --------------------------------------------------------------------------- round trips


def test_round_trip_with_every_chunk_type():
    head = make_head(3, patient_note="Ünïcödé ok")
    tiles = [[b"\x00" * 10, b"abc"], [b""], []]
    extra = [("future-thing", b"\x01\x02"), ("k", b"")]
    data = write_container(head, tiles, meta=b"deflated", extra=extra)
    got = read_container(data, expected_model="gdn-hyperprior", expected_sha256=SHA.upper())
    assert isinstance(got, Container)
    assert got.head == head
    assert got.tiles == tiles
    assert got.meta == b"deflated"
    assert got.extra == extra
    assert got.version == 1
    assert write_container(head, tiles, meta=b"deflated", extra=extra) == data  # deterministic


def test_layout_is_signature_version_then_ordered_chunks():
    data = small_file()
    assert data[:8] == b"\x8dMDC\r\n\x1a\n" and data[0] >= 0x80
    assert data[8:10] == b"\x00\x01"
    types = [t for _, t, _ in chunk_table(data)]
    assert types == [b"HEAD", b"META", b"XTRA", b"TILE", b"TILE", b"TILE", b"IEND"]
    # HEAD is compact JSON with sorted keys; every CRC covers type + payload
    offset, _, size = chunk_table(data)[0]
    payload = data[offset + 8 : offset + size - 4]
    assert list(json.loads(payload)) == sorted(make_head())
    for offset, _, size in chunk_table(data):
        (crc,) = struct.unpack_from(">I", data, offset + size - 4)
        assert crc == zlib.crc32(data[offset + 4 : offset + size - 4])


def test_round_trip_without_meta_and_large_tiles():
    data, tiles = large_file()
    got = read_container(bytearray(data))
    assert got.tiles == tiles and got.extra == []
    got = read_container(write_container(make_head(1), [[b"s"]]))
    assert got.meta is None and got.tiles == [[b"s"]]


def test_container_error_is_a_medcodec_error():
    assert issubclass(ContainerError, MedcodecError)


# --------------------------------------------------------------------------- truncation


def test_truncation_at_every_byte_of_a_small_file_is_rejected():
    data = small_file()
    read_container(data)
    for n in range(len(data)):
        reject(data[:n])


def test_truncation_at_chunk_boundaries_and_inside_chunks_says_where():
    data, _ = large_file()
    table = chunk_table(data)
    names = ["HEAD", "META", "TILE #0", "TILE #1", "TILE #2", "TILE #3", "IEND"]
    for (offset, _, size), name in zip(table, names, strict=True):
        # at the boundary before this chunk: the file ends after the previous chunk
        err = reject(data[:offset])
        if name == "HEAD":
            assert "missing HEAD" in str(err)
        else:
            assert "missing IEND" in str(err)
        for inside in sorted({1, 4, 7, 8, 9, size // 2, size - 4, size - 1}):
            if inside >= size:
                continue
            err = reject(data[: offset + inside])
            message = str(err)
            if inside < 8:
                assert "truncated in chunk header" in message, message
            else:
                assert f"truncated in chunk {name} at offset {offset}" in message, message
                assert f"(needed {size} bytes, {inside} left)" in message, message


def test_truncated_signature_and_version():
    data = small_file()
    assert "empty file" in str(reject(b""))
    assert "truncated in signature" in str(reject(data[:5]))
    assert "truncated in format version" in str(reject(data[:9]))
    assert "missing HEAD" in str(reject(data[:10]))


# --------------------------------------------------------------------------- bit flips


def test_every_single_bit_flip_of_a_small_file_is_rejected():
    data = bytearray(small_file())
    for i in range(len(data)):
        for bit in range(8):
            data[i] ^= 1 << bit
            try:
                read_container(bytes(data))
            except ContainerError:
                pass
            else:
                pytest.fail(f"flipping bit {bit} of byte {i} went unnoticed")
            data[i] ^= 1 << bit
    read_container(bytes(data))  # restored


def test_bit_flips_in_each_chunk_of_a_large_file_are_reported():
    data, _ = large_file()
    names = ["HEAD", "META", "TILE #0", "TILE #1", "TILE #2", "TILE #3", "IEND"]
    for (offset, _, size), name in zip(chunk_table(data), names, strict=True):
        for rel in sorted({4, 6, 8, size // 2, size - 5, size - 1}):
            if rel >= size:
                continue
            damaged = bytearray(data)
            damaged[offset + rel] ^= 0x10
            message = str(reject(bytes(damaged)))
            if rel >= 8:  # payload or CRC: the message names the chunk
                assert f"CRC mismatch in chunk {name} at offset {offset}" in message, message
            else:  # a type letter: another letter (CRC catches it) or no letter at all
                assert "CRC mismatch" in message or "invalid chunk type" in message, message


def test_flipped_length_field_is_rejected():
    data, _ = large_file()
    for offset, _, _ in chunk_table(data):
        for bit in (0, 7, 13, 31):
            damaged = bytearray(data)
            struct.pack_into(">I", damaged, offset, struct.unpack_from(">I", data, offset)[0] ^ (1 << bit))
            reject(bytes(damaged))


# --------------------------------------------------------------------------- model identity


def test_wrong_model_or_checkpoint_is_rejected():
    data = small_file()
    message = str(reject(data, expected_sha256=OTHER_SHA))
    assert message == (
        "model mismatch: file was written by gdn-hyperprior q3 sha256 ab1200000000.. "
        "but the loaded checkpoint is gdn-hyperprior sha256 cd3411111111.."
    )
    message = str(reject(data, expected_model="factorized"))
    assert "model mismatch" in message and "factorized" in message
    read_container(data, expected_model="gdn-hyperprior", expected_sha256=SHA)


# --------------------------------------------------------------------------- chunk rules


def test_unknown_critical_chunk_is_rejected_and_ancillary_skipped():
    base = [head_chunk(make_head(1)), tile_chunk(0)]
    got = read_container(assemble(*base, make_chunk("abcd", b"whatever"), make_chunk("zZzZ", b""), IEND_CHUNK))
    assert got.tiles == [[b"ab"]]
    reject(assemble(*base, make_chunk("ABCD", b"x"), IEND_CHUNK), "unknown critical chunk ABCD")
    reject(assemble(*base, make_chunk("Abcd", b"x"), IEND_CHUNK), "unknown critical chunk Abcd")
    # an ancillary chunk is still CRC-checked (a flipped case bit in "TILE" must not make it skippable)
    bad = bytearray(make_chunk("abcd", b"payload"))
    bad[-1] ^= 1
    reject(assemble(*base, bytes(bad), IEND_CHUNK), "CRC mismatch in chunk abcd #0")
    reject(assemble(*base, make_chunk("abcd", b"")[:4] + b"ab1d" + b"\0" * 4, IEND_CHUNK), "invalid chunk type")


def test_garbage_after_iend_is_rejected():
    data = small_file()
    reject(data + b"\0", "trailing bytes after IEND")
    reject(data + IEND_CHUNK, "trailing bytes after IEND")
    reject(data + data, "trailing bytes after IEND")


def test_bad_signatures_and_versions():
    data = small_file()
    reject(b"\x89PNG\r\n\x1a\n" + data[8:], r"not a medcodec file \(bad signature\)")
    reject(b"%PDF-1.7 hello world", "bad signature")
    reject(data.replace(b"\r\n", b"\n", 1), "CR LF turned into LF")
    reject(data[:4] + b"\r\r\n\x1a\r\n" + data[8:], "LF turned into CR LF")
    reject(bytes([data[0] & 0x7F]) + data[1:], "7-bit")
    reject(data[:8] + b"\x00\x07" + data[10:], r"^unsupported format version 7 ")
    reject(data[:8] + b"\x00\x00" + data[10:], "unsupported format version 0")


def test_tile_index_and_count_rules():
    h4 = head_chunk(make_head(4))
    reject(assemble(h4, tile_chunk(0), tile_chunk(1), tile_chunk(2), IEND_CHUNK), r"^tile count 3 != HEAD tiles 4$")
    reject(assemble(h4, tile_chunk(0), tile_chunk(1), tile_chunk(1), IEND_CHUNK), "duplicate tile index 1 in chunk TILE #2")
    reject(assemble(h4, tile_chunk(0), tile_chunk(2), IEND_CHUNK), r"tile index 2 out of order .*expected 1")
    reject(assemble(h4, tile_chunk(9), IEND_CHUNK), r"tile index 9 out of range .*HEAD tiles 4")
    reject(assemble(h4, *[tile_chunk(i) for i in range(5)], IEND_CHUNK), "out of range")
    with pytest.raises(ContainerError, match="tile count 2 != HEAD tiles 4"):
        write_container(make_head(4), [[b""], [b""]])


def test_tile_payload_structure_is_checked():
    h1 = head_chunk(make_head(1))
    reject(assemble(h1, make_chunk("TILE", b"\0\0\0"), IEND_CHUNK), "shorter than its 6-byte header")
    # stream longer than the payload
    payload = struct.pack(">IHI", 0, 1, 50) + b"short"
    reject(assemble(h1, make_chunk("TILE", payload), IEND_CHUNK), r"TILE #0: stream 0 of 1 is 50 bytes, 5 left")
    # leftover bytes after the declared streams
    payload = struct.pack(">IHI", 0, 1, 2) + b"ab" + b"junk"
    reject(assemble(h1, make_chunk("TILE", payload), IEND_CHUNK), "4 unexpected bytes after stream 0")
    payload = struct.pack(">IH", 0, 2) + b"\0\0"
    reject(assemble(h1, make_chunk("TILE", payload), IEND_CHUNK), "length field needs 4 bytes")


def test_chunk_order_rules():
    head, t0 = head_chunk(make_head(1)), tile_chunk(0)
    meta = make_chunk("META", b"m")
    reject(assemble(t0, head, IEND_CHUNK), "first chunk is TILE")
    reject(assemble(make_chunk("abcd", b""), head, t0, IEND_CHUNK), "first chunk is abcd")
    reject(assemble(head, head, t0, IEND_CHUNK), "second HEAD")
    reject(assemble(head, meta, meta, t0, IEND_CHUNK), "second META")
    reject(assemble(head, t0, meta, IEND_CHUNK), "META chunk at offset .* after the first TILE")
    reject(assemble(head, t0, make_chunk("IEND", b"x")), "IEND chunk at offset .* is not empty")
    reject(assemble(head, t0), r"missing IEND \(file ends after chunk TILE #0\)")
    # XTRA may come anywhere between HEAD and IEND
    xtra = make_chunk("XTRA", b"late\0data")
    assert read_container(assemble(head, t0, xtra, IEND_CHUNK)).extra == [("late", b"data")]
    reject(assemble(head, make_chunk("XTRA", b"no-terminator"), t0, IEND_CHUNK), "XTRA #0: no NUL-terminated key")
    reject(assemble(head, make_chunk("XTRA", b"\0data"), t0, IEND_CHUNK), "XTRA #0: invalid key")


def test_chunk_length_limit():
    data = small_file()
    offset = chunk_table(data)[1][0]
    damaged = bytearray(data)
    struct.pack_into(">I", damaged, offset, MAX_CHUNK_LENGTH + 1)
    reject(bytes(damaged), "over the 1 GiB limit")


# --------------------------------------------------------------------------- HEAD schema


@pytest.mark.parametrize(
    "change, match",
    [
        ({"rows": None}, "'rows' must be an int >= 1"),
        ({"rows": 0}, "'rows' must be an int >= 1"),
        ({"rows": 5.0}, "'rows' must be an int >= 1"),
        ({"frames": True}, "'frames' must be an int >= 1"),
        ({"signed": 0}, "'signed' must be bool"),
        ({"checkpoint_sha256": "AB" * 32}, "64 lowercase hex"),
        ({"checkpoint_sha256": "ab"}, "64 lowercase hex"),
        ({"model": ""}, "'model' must be a non-empty string"),
        ({"bits_stored": 33}, "'bits_stored' must be an int in 1..32"),
    ],
)
def test_head_schema_violations_are_rejected_on_read_and_write(change, match):
    head = make_head(1)
    head.update(change)
    reject(assemble(head_chunk(head), tile_chunk(0), IEND_CHUNK), match)
    with pytest.raises(ContainerError, match=match):
        write_container(head, [[b""]])


def test_head_missing_key_and_bad_json():
    head = make_head(1)
    del head["cols"]
    reject(assemble(head_chunk(head), tile_chunk(0), IEND_CHUNK), "missing required key 'cols'")
    for payload, match in [
        (b"[1, 2]", "not a JSON object"),
        (b"{", "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": 1e999}', "out of range"),
        (b'{"a": 1, "a": 2}', "duplicate key"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[" * 100000 + b"]" * 100000, "not"),
    ]:
        reject(assemble(make_chunk("HEAD", payload), tile_chunk(0), IEND_CHUNK), match)


def test_custom_schema():
    schema = {"model": str, "checkpoint_sha256": str, "level": Check(int, lambda v: v < 10, "an int < 10")}
    head = {"model": "m", "checkpoint_sha256": "x", "level": 3}
    data = write_container(head, [[b"a"], [b"b"]], schema=schema)  # no "tiles" key: count unchecked
    assert read_container(data, schema=schema).tiles == [[b"a"], [b"b"]]
    reject(data)  # the default schema wants more keys
    edited = data.replace(b'"level":3', b'"level":4')  # an edit without a new CRC
    reject(edited, "CRC mismatch in chunk HEAD", schema=schema)
    with pytest.raises(ContainerError, match="'level' must be an int < 10"):
        write_container({**head, "level": 12}, [], schema=schema)
    assert set(DEFAULT_HEAD_SCHEMA) == {
        "model", "checkpoint_sha256", "rows", "cols", "frames", "bits_stored", "signed", "tile", "tiles",
    }


def test_writer_refuses_what_the_reader_would_refuse():
    with pytest.raises(ContainerError, match="invalid XTRA key"):
        write_container(make_head(1), [[b""]], extra=[(" bad", b"")])
    with pytest.raises(ContainerError, match="invalid XTRA key"):
        write_container(make_head(1), [[b""]], extra=[("a\0b", b"")])
    with pytest.raises(ContainerError, match="expected bytes"):
        write_container(make_head(1), [["text"]])
    with pytest.raises(ContainerError, match="list of byte streams"):
        write_container(make_head(1), [b"abc"])
    with pytest.raises(ContainerError, match="cannot be written as JSON"):
        write_container(make_head(1, x=float("nan")), [[b""]])
    with pytest.raises(ContainerError, match="invalid chunk type"):
        make_chunk("AB1D", b"")


# --------------------------------------------------------------------------- fuzz


def _check_result(got: Container) -> None:
    """Whatever parses must be a complete, self-consistent container."""
    assert isinstance(got.head, dict)
    assert len(got.tiles) == got.head["tiles"]
    assert all(isinstance(s, bytes) for tile in got.tiles for s in tile)


def test_fuzz_reader_raises_only_container_error():
    rng = random.Random(20240611)
    seeds = [small_file(), large_file()[0]]
    prefix = SIGNATURE + b"\x00\x01"
    outcomes = {"error": 0, "parsed": 0}

    def attempt(data: bytes) -> None:
        try:
            got = read_container(data)
        except ContainerError as exc:
            assert str(exc) and "\n" not in str(exc)
            outcomes["error"] += 1
        else:
            _check_result(got)
            outcomes["parsed"] += 1

    for case in range(3000):
        kind = case % 6
        base = seeds[case % 2]
        if kind == 0:  # random bytes, half of them behind a valid signature + version
            data = rng.randbytes(rng.randrange(0, 200))
            data = prefix + data if case % 4 == 0 else data
        elif kind == 1:  # random byte overwrites
            data = bytearray(base)
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data)
        elif kind == 2:  # insertions / deletions
            i = rng.randrange(len(base))
            if rng.random() < 0.5:
                data = base[:i] + rng.randbytes(rng.randrange(1, 20)) + base[i:]
            else:
                data = base[:i] + base[i + rng.randrange(1, 20) :]
        elif kind == 3:  # splice two files / chunk sequences
            a, b = rng.randrange(len(base)), rng.randrange(len(seeds[0]))
            data = base[:a] + seeds[0][b:]
        else:  # mutate a chunk's payload and fix its CRC, so the semantic checks are fuzzed
            table = chunk_table(base)
            offset, ctype, size = table[rng.randrange(len(table))]
            payload = bytearray(base[offset + 8 : offset + size - 4])
            if ctype == b"HEAD" and rng.random() < 0.5:
                text = payload.decode()
                i = rng.randrange(len(text))
                payload = bytearray((text[:i] + rng.choice('{}[]",:0-9.etrufalsn ') + text[i + 1 :]).encode())
            elif payload:
                for _ in range(rng.randrange(1, 4)):
                    payload[rng.randrange(len(payload))] = rng.randrange(256)
            if kind == 5 and payload:
                payload = payload[: rng.randrange(len(payload))]
            chunk = make_chunk(ctype, bytes(payload))
            data = base[:offset] + chunk + base[offset + size :]
        attempt(data)
    assert outcomes["error"] > 2000  # nearly every mutation is caught
