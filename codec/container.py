"""The ``.mdc`` container: a chunked binary format in the spirit of PNG.

Layout (all integers big-endian; the full specification is ``docs/container.md``)::

    signature   8 bytes   8D 4D 44 43 0D 0A 1A 0A   ("\\x8dMDC\\r\\n\\x1a\\n")
    version     u16       1
    chunk*      u32 length | 4-byte ASCII type | payload (length bytes) | u32 CRC-32(type + payload)

Chunks of version 1, in file order::

    HEAD   exactly once, first: UTF-8 JSON object (sorted keys) describing the image and model
    META   0 or 1, before the first TILE: deflated DICOM metadata (opaque here)
    XTRA   0..n, anywhere between HEAD and IEND: key (ASCII) + NUL + opaque bytes
    TILE   one per tile, tile index 0, 1, 2, ... in order (none in a residual-only file):
           u32 tile index | u16 stream count | (u32 length | bytes) per stream
    RESD   0 or one per frame (one per frame when there is no TILE), after the last TILE,
           frame index 0, 1, 2, ... in order:
           u32 frame index | the frame's residual stream (``codec/residual.py``)
    IEND   exactly once, last, empty

RESD (the residual layer of the lossless and near-lossless modes) came after the first files of
version 1; it is critical, so an older reader refuses such a file instead of decoding only its lossy
layer, and files without it are unchanged (the version stays 1).

A *residual-only* file (HEAD ``lossy_layer: "none"``, ``tiles: 0``) has no lossy layer: no TILE,
one RESD per frame, and a HEAD that names no model (:data:`RESIDUAL_ONLY_HEAD_SCHEMA`; the keys
of :data:`LEARNED_LAYER_KEYS` are refused). A reader that predates it refuses ``tiles: 0``.

A chunk type whose first letter is uppercase is *critical*: a reader that does
not know it must reject the file. A lowercase first letter marks an *ancillary*
chunk, which a reader that does not know it skips (after checking its CRC).

Every problem found while reading or writing raises :class:`ContainerError`
(a :class:`~codec.errors.MedcodecError`) with a one-line message that says what
is wrong and where; reading arbitrary bytes raises nothing else.
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from codec.errors import MedcodecError

__all__ = [
    "SIGNATURE",
    "FORMAT_VERSION",
    "MAX_CHUNK_LENGTH",
    "MAX_HEAD_LENGTH",
    "MAX_FILE_SIZE",
    "HEAD",
    "META",
    "TILE",
    "XTRA",
    "RESD",
    "IEND",
    "Check",
    "DEFAULT_HEAD_SCHEMA",
    "RESIDUAL_ONLY_HEAD_SCHEMA",
    "LEARNED_LAYER_KEYS",
    "LOSSY_LAYER_KEY",
    "LAYER_LEARNED",
    "LAYER_NONE",
    "LOSSY_LAYERS",
    "is_residual_only",
    "Container",
    "ContainerError",
    "make_chunk",
    "write_container",
    "read_container",
]

#: 8-byte signature. The first byte has its high bit set (a 7-bit channel strips
#: it), "MDC" names the format, CR LF / LF catch text-mode line-ending
#: conversion, and 0x1A (Ctrl-Z) stops ``type`` on DOS-like systems, as in PNG.
SIGNATURE = b"\x8dMDC\r\n\x1a\n"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)

#: Sanity limit for one chunk's payload (a corrupt length field is caught
#: before any allocation).
MAX_CHUNK_LENGTH = 1 << 30  # 1 GiB
#: Limit for the HEAD chunk (a JSON object of a few hundred bytes in practice).
MAX_HEAD_LENGTH = 1 << 20  # 1 MiB
#: Limit for a whole file, checked by the writer and the reader.
MAX_FILE_SIZE = 1 << 32  # 4 GiB
#: Longest XTRA key (as PNG's tEXt keyword).
MAX_XTRA_KEY = 79

HEAD = b"HEAD"
META = b"META"
TILE = b"TILE"
XTRA = b"XTRA"
RESD = b"RESD"
IEND = b"IEND"
KNOWN_TYPES = (HEAD, META, TILE, XTRA, RESD, IEND)

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_CHUNK_HEADER = struct.Struct(">I4s")  # length, type
_TYPE_RE = re.compile(rb"[A-Za-z]{4}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_XTRA_KEY_RE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


class ContainerError(MedcodecError):
    """A ``.mdc`` file (or the data to write into one) is malformed."""


# --------------------------------------------------------------------------- schema


class Check(NamedTuple):
    """A HEAD field rule: a Python type plus an extra predicate described in words."""

    type: type | tuple[type, ...]
    predicate: Callable[[Any], bool]
    what: str  # e.g. "an int >= 1", used in error messages


def _positive_int(v: Any) -> bool:
    return v >= 1


#: Required HEAD keys of version 1 and their rules. Extra keys are allowed (and
#: kept). A value may be a type (``int`` never accepts ``bool``) or a Check.
DEFAULT_HEAD_SCHEMA: dict[str, type | Check] = {
    "model": Check(str, lambda v: 0 < len(v) <= 200, "a non-empty string"),
    "checkpoint_sha256": Check(str, lambda v: _SHA256_RE.fullmatch(v) is not None, "64 lowercase hex digits"),
    "rows": Check(int, _positive_int, "an int >= 1"),
    "cols": Check(int, _positive_int, "an int >= 1"),
    "frames": Check(int, _positive_int, "an int >= 1"),
    "bits_stored": Check(int, lambda v: 1 <= v <= 32, "an int in 1..32"),
    "signed": bool,
    "tile": Check(int, _positive_int, "an int >= 1"),
    "tiles": Check(int, _positive_int, "an int >= 1"),
}

#: HEAD key that names the lossy layer: absent or "learned" (the TILE chunks of a learned codec, the
#: default schema above), or "none" (a residual-only file: no TILE, one RESD per frame). Files with a
#: learned layer do not write the key, so they are byte for byte what they were before it existed.
LOSSY_LAYER_KEY = "lossy_layer"
LAYER_LEARNED = "learned"
LAYER_NONE = "none"
LOSSY_LAYERS = (LAYER_NONE, LAYER_LEARNED)

#: Required HEAD keys of a residual-only file (``lossy_layer: "none"``): no model, no tile size, no tiles.
RESIDUAL_ONLY_HEAD_SCHEMA: dict[str, type | Check] = {
    LOSSY_LAYER_KEY: Check(str, lambda v: v == LAYER_NONE, '"none"'),
    "rows": Check(int, _positive_int, "an int >= 1"),
    "cols": Check(int, _positive_int, "an int >= 1"),
    "frames": Check(int, _positive_int, "an int >= 1"),
    "bits_stored": Check(int, lambda v: 1 <= v <= 32, "an int in 1..32"),
    "signed": bool,
    "tiles": Check(int, lambda v: v == 0, "0 in a file without a lossy layer"),
}

#: Keys of the learned layer that a residual-only HEAD must not hold: it was coded by no model, and a
#: file that named one without carrying its tiles would claim what it does not hold.
LEARNED_LAYER_KEYS = ("model", "checkpoint_sha256", "weights_sha256", "quality", "backend", "tile", "grid",
                      "input_map")


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool):
        return bool in types  # JSON true/false is not an int here
    if isinstance(value, int) and float in types:
        return True  # an int is acceptable where a float is asked for
    return isinstance(value, types)


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(t.__name__ for t in types)


def _check_head(head: Any, schema: Mapping[str, type | Check]) -> None:
    if not isinstance(head, dict):
        raise ContainerError(f"HEAD is not a JSON object (got {type(head).__name__})")
    for key, rule in schema.items():
        if key not in head:
            raise ContainerError(f"HEAD: missing required key {key!r}")
        value = head[key]
        if isinstance(rule, Check):
            if not _type_ok(value, rule.type):
                raise ContainerError(f"HEAD: {key!r} must be {rule.what}, got {_short(value)}")
            try:
                ok = bool(rule.predicate(value))
            except Exception:  # a predicate that cannot judge the value rejects it
                ok = False
            if not ok:
                raise ContainerError(f"HEAD: {key!r} must be {rule.what}, got {_short(value)}")
        elif not _type_ok(value, rule):
            raise ContainerError(f"HEAD: {key!r} must be {_type_name(rule)}, got {_short(value)}")


def is_residual_only(head: Any) -> bool:
    """True when a HEAD says the file has no lossy layer (``lossy_layer: "none"``)."""
    return isinstance(head, dict) and head.get(LOSSY_LAYER_KEY) == LAYER_NONE


def _schema_for(head: Any, schema: Mapping[str, type | Check] | None) -> Mapping[str, type | Check]:
    """The caller's schema, or the default one for the HEAD's lossy layer (learned or none)."""
    if schema is not None:
        return schema
    if isinstance(head, dict) and LOSSY_LAYER_KEY in head:
        layer = head[LOSSY_LAYER_KEY]
        if not isinstance(layer, str) or layer not in LOSSY_LAYERS:
            raise ContainerError(f"HEAD: {LOSSY_LAYER_KEY!r} must be \"learned\" or \"none\", got {_short(layer)}")
        if layer == LAYER_NONE:
            return RESIDUAL_ONLY_HEAD_SCHEMA
    return DEFAULT_HEAD_SCHEMA


def _check_head_default(head: Any, schema: Mapping[str, type | Check] | None) -> None:
    """Schema check; with the default schemas also the rules of a residual-only HEAD."""
    _check_head(head, _schema_for(head, schema))
    if schema is None and is_residual_only(head):
        named = [k for k in LEARNED_LAYER_KEYS if k in head]
        if named:
            raise ContainerError(f"HEAD: {named[0]!r} is not allowed in a file without a lossy layer "
                                 f"({LOSSY_LAYER_KEY} \"none\")")


def _no_image(n_frames: int | None) -> str:
    return ("no TILE and no RESD chunk: a file without a lossy layer needs one RESD per frame"
            + (f" (HEAD frames {n_frames})" if n_frames is not None else ""))


def _head_tiles(head: Mapping) -> int | None:
    """HEAD's tile count, or None when a custom schema left it out."""
    n = head.get("tiles")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _head_frames(head: Mapping) -> int | None:
    """HEAD's frame count, or None when a custom schema left it out."""
    n = head.get("frames")
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- result


@dataclass
class Container:
    """What :func:`read_container` returns."""

    head: dict
    meta: bytes | None = None
    tiles: list[list[bytes]] = field(default_factory=list)
    extra: list[tuple[str, bytes]] = field(default_factory=list)
    version: int = FORMAT_VERSION
    residuals: list[bytes] = field(default_factory=list)  # one per frame, or none


# --------------------------------------------------------------------------- writing


def make_chunk(ctype: bytes | str, payload: bytes) -> bytes:
    """One encoded chunk: length, type, payload and CRC-32 over type + payload.

    Public so that tools and tests can build files with ancillary or future
    chunk types; the type must be 4 ASCII letters.
    """
    if isinstance(ctype, str):
        ctype = ctype.encode("ascii", "replace")
    if not isinstance(ctype, bytes) or _TYPE_RE.fullmatch(ctype) is None:
        raise ContainerError(f"invalid chunk type {ctype!r}: must be 4 ASCII letters")
    payload = bytes(payload)
    if len(payload) > MAX_CHUNK_LENGTH:
        raise ContainerError(
            f"chunk {ctype.decode()} is {len(payload)} bytes, over the {MAX_CHUNK_LENGTH >> 30} GiB chunk limit"
        )
    crc = zlib.crc32(payload, zlib.crc32(ctype))
    return _CHUNK_HEADER.pack(len(payload), ctype) + payload + _U32.pack(crc)


def _encode_head(head: Mapping) -> bytes:
    try:
        text = json.dumps(head, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ContainerError(f"HEAD cannot be written as JSON: {exc}") from None
    data = text.encode("utf-8")
    if len(data) > MAX_HEAD_LENGTH:
        raise ContainerError(f"HEAD is {len(data)} bytes, over the {MAX_HEAD_LENGTH} byte limit")
    return data


def _encode_tile(index: int, streams: Sequence[bytes]) -> bytes:
    if isinstance(streams, (bytes, bytearray, memoryview, str)):
        raise ContainerError(f"tile {index}: expected a list of byte streams, got {type(streams).__name__}")
    if len(streams) > 0xFFFF:
        raise ContainerError(f"tile {index}: {len(streams)} streams, at most 65535")
    parts = [_U32.pack(index), _U16.pack(len(streams))]
    for j, stream in enumerate(streams):
        if not isinstance(stream, (bytes, bytearray, memoryview)):
            raise ContainerError(f"tile {index} stream {j}: expected bytes, got {type(stream).__name__}")
        stream = bytes(stream)
        if len(stream) > MAX_CHUNK_LENGTH:
            raise ContainerError(f"tile {index} stream {j}: {len(stream)} bytes, over the chunk limit")
        parts.append(_U32.pack(len(stream)))
        parts.append(stream)
    return b"".join(parts)


def _encode_xtra(key: str, data: bytes) -> bytes:
    if not isinstance(key, str) or len(key) > MAX_XTRA_KEY or _XTRA_KEY_RE.fullmatch(key) is None:
        raise ContainerError(
            f"invalid XTRA key {_short(key)}: 1-{MAX_XTRA_KEY} printable ASCII characters, "
            "no leading or trailing space"
        )
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ContainerError(f"XTRA {key!r}: expected bytes, got {type(data).__name__}")
    return key.encode("ascii") + b"\0" + bytes(data)


def write_container(
    head: dict,
    tiles: list[list[bytes]],
    meta: bytes | None = None,
    extra: Sequence[tuple[str, bytes]] = (),
    *,
    schema: Mapping[str, type | Check] | None = None,
    residuals: Sequence[bytes] = (),
) -> bytes:
    """Serialize a ``.mdc`` file: HEAD, META (if given), XTRA (one per ``extra``
    item, ``(key, bytes)``), one TILE per entry of ``tiles`` (each a list of
    byte streams), one RESD per entry of ``residuals`` (none, or one residual
    stream per frame), IEND.

    ``head`` is checked against ``schema`` (default :data:`DEFAULT_HEAD_SCHEMA`, or
    :data:`RESIDUAL_ONLY_HEAD_SCHEMA` when ``head["lossy_layer"]`` is ``"none"``),
    ``head["tiles"]`` must equal ``len(tiles)``, when there are residuals
    ``head["frames"]`` must equal ``len(residuals)``, and a file without tiles needs
    its residuals, so that the writer never produces a file its reader refuses.
    """
    _check_head_default(head, schema)
    if _head_tiles(head) is not None and head["tiles"] != len(tiles):
        raise ContainerError(f"tile count {len(tiles)} != HEAD tiles {head['tiles']}")
    if isinstance(residuals, (bytes, bytearray, memoryview, str)):
        raise ContainerError(f"residuals: expected a list of byte streams, got {type(residuals).__name__}")
    if residuals and _head_frames(head) is not None and head["frames"] != len(residuals):
        raise ContainerError(f"residual count {len(residuals)} != HEAD frames {head['frames']}")
    if not tiles and not residuals:
        raise ContainerError(_no_image(_head_frames(head)))
    parts = [SIGNATURE, _U16.pack(FORMAT_VERSION), make_chunk(HEAD, _encode_head(head))]
    if meta is not None:
        if not isinstance(meta, (bytes, bytearray, memoryview)):
            raise ContainerError(f"META: expected bytes, got {type(meta).__name__}")
        parts.append(make_chunk(META, bytes(meta)))
    for item in extra:
        try:
            key, data = item
        except (TypeError, ValueError):
            raise ContainerError(f"extra: expected (key, bytes) pairs, got {_short(item)}") from None
        parts.append(make_chunk(XTRA, _encode_xtra(key, data)))
    if len(tiles) > 0xFFFFFFFF:
        raise ContainerError(f"{len(tiles)} tiles, at most 2**32 - 1")
    for i, streams in enumerate(tiles):
        parts.append(make_chunk(TILE, _encode_tile(i, streams)))
    if len(residuals) > 0xFFFFFFFF:
        raise ContainerError(f"{len(residuals)} residual streams, at most 2**32 - 1")
    for f, stream in enumerate(residuals):
        if not isinstance(stream, (bytes, bytearray, memoryview)):
            raise ContainerError(f"residual {f}: expected bytes, got {type(stream).__name__}")
        parts.append(make_chunk(RESD, _U32.pack(f) + bytes(stream)))
    parts.append(make_chunk(IEND, b""))
    total = sum(len(p) for p in parts)
    if total > MAX_FILE_SIZE:
        raise ContainerError(f"file would be {total} bytes, over the {MAX_FILE_SIZE >> 30} GiB limit")
    return b"".join(parts)


# --------------------------------------------------------------------------- reading


def _bad_signature(data: bytes) -> str:
    """Explain why ``data`` does not start with the signature."""
    if len(data) == 0:
        return "not a medcodec file (empty file)"
    if len(data) < len(SIGNATURE) and SIGNATURE.startswith(data):
        return f"truncated in signature (file is {len(data)} bytes)"
    if data.startswith(SIGNATURE[1:4], 1):
        if data[0] == SIGNATURE[0] & 0x7F:
            return "not a medcodec file (bad signature: high bit of the first byte cleared by a 7-bit transfer)"
        if data.startswith(b"MDC\n\x1a\n", 1):
            return "not a medcodec file (bad signature: CR LF turned into LF, transferred in text mode?)"
        if data.startswith(b"MDC\r\r\n", 1) or data.startswith(b"MDC\r\n\x1a\r\n", 1):
            return "not a medcodec file (bad signature: LF turned into CR LF, transferred in text mode?)"
    return "not a medcodec file (bad signature)"


def _json_object_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {_short(text, 30)} is out of range")
    return value


def _decode_head(payload: bytes, schema: Mapping[str, type | Check] | None) -> dict:
    if len(payload) > MAX_HEAD_LENGTH:
        raise ContainerError(f"HEAD is {len(payload)} bytes, over the {MAX_HEAD_LENGTH} byte limit")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContainerError(f"HEAD is not valid UTF-8 (byte {exc.start})") from None
    try:
        head = json.loads(
            text, object_pairs_hook=_json_object_pairs, parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ContainerError(f"HEAD is not valid JSON: {_short(reason, 100)}") from None
    _check_head_default(head, schema)
    return head


def _decode_tile(payload: bytes, where: str) -> tuple[int, list[bytes]]:
    if len(payload) < 6:
        raise ContainerError(f"{where}: payload is {len(payload)} bytes, shorter than its 6-byte header")
    (index,) = _U32.unpack_from(payload, 0)
    (count,) = _U16.unpack_from(payload, 4)
    pos = 6
    streams = []
    for j in range(count):
        if len(payload) - pos < 4:
            raise ContainerError(
                f"{where}: stream {j} of {count}: length field needs 4 bytes, {len(payload) - pos} left"
            )
        (n,) = _U32.unpack_from(payload, pos)
        pos += 4
        if n > len(payload) - pos:
            raise ContainerError(f"{where}: stream {j} of {count} is {n} bytes, {len(payload) - pos} left")
        streams.append(payload[pos : pos + n])
        pos += n
    if pos != len(payload):
        raise ContainerError(f"{where}: {len(payload) - pos} unexpected bytes after stream {count - 1}")
    return index, streams


def _decode_xtra(payload: bytes, where: str) -> tuple[str, bytes]:
    nul = payload.find(b"\0", 0, MAX_XTRA_KEY + 1)
    if nul < 0:
        raise ContainerError(f"{where}: no NUL-terminated key of 1-{MAX_XTRA_KEY} characters")
    try:
        key = payload[:nul].decode("ascii")
    except UnicodeDecodeError:
        key = ""
    if _XTRA_KEY_RE.fullmatch(key) is None:
        raise ContainerError(f"{where}: invalid key {payload[:nul]!r}")
    return key, payload[nul + 1 :]


def _describe(head: Mapping) -> str:
    text = str(head.get("model"))
    quality = head.get("quality")
    if quality is not None:
        q = str(quality)
        text += f" {q}" if q.startswith("q") else f" q{q}"
    sha = head.get("checkpoint_sha256")
    if isinstance(sha, str):
        text += f" sha256 {sha[:12]}.."
    return text


def _check_model(head: dict, expected_model: str | None, expected_sha256: str | None) -> None:
    sha = str(head.get("checkpoint_sha256", ""))
    model = head.get("model")
    bad_model = expected_model is not None and model != expected_model
    bad_sha = expected_sha256 is not None and sha.lower() != str(expected_sha256).lower()
    if bad_model or bad_sha:
        loaded = expected_model if expected_model is not None else str(model)
        if expected_sha256 is not None:
            loaded += f" sha256 {str(expected_sha256).lower()[:12]}.."
        raise ContainerError(
            f"model mismatch: file was written by {_describe(head)} but the loaded checkpoint is {loaded}"
        )


def read_container(
    data: bytes,
    *,
    expected_model: str | None = None,
    expected_sha256: str | None = None,
    schema: Mapping[str, type | Check] | None = None,
) -> Container:
    """Parse and fully validate a ``.mdc`` file held in memory.

    Checks the signature, version, every chunk's length / CRC / order, the HEAD
    against ``schema`` (default :data:`DEFAULT_HEAD_SCHEMA`, or
    :data:`RESIDUAL_ONLY_HEAD_SCHEMA` for ``lossy_layer: "none"``), the model
    (``expected_model`` / ``expected_sha256``, when given; a residual-only file
    names none and needs none), the tile indices and count, the RESD count (one
    per frame, required without tiles), IEND and that nothing follows it.
    Returns a :class:`Container`, or raises :class:`ContainerError`; any input
    bytes raise nothing else.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"read_container expects bytes, got {type(data).__name__}")
    data = bytes(data)  # accepts bytearray / memoryview; no copy for bytes
    size = len(data)
    if size > MAX_FILE_SIZE:
        raise ContainerError(f"file is {size} bytes, over the {MAX_FILE_SIZE >> 30} GiB limit")
    if not data.startswith(SIGNATURE):
        raise ContainerError(_bad_signature(data))
    pos = len(SIGNATURE)
    if size - pos < 2:
        raise ContainerError(f"truncated in format version (needed 2 bytes, {size - pos} left)")
    (version,) = _U16.unpack_from(data, pos)
    if version not in SUPPORTED_VERSIONS:
        raise ContainerError(f"unsupported format version {version} (this reader supports 1)")
    pos += 2

    head: dict | None = None
    meta: bytes | None = None
    tiles: list[list[bytes]] = []
    extra: list[tuple[str, bytes]] = []
    residuals: list[bytes] = []
    counts: dict[bytes, int] = {}
    last = "version"  # name of the last complete chunk, for messages
    seen_iend = False

    while pos < size:
        if size - pos < 8:
            raise ContainerError(
                f"truncated in chunk header after {last} at offset {pos} (needed 8 bytes, {size - pos} left)"
            )
        length, ctype = _CHUNK_HEADER.unpack_from(data, pos)
        if _TYPE_RE.fullmatch(ctype) is None:
            raise ContainerError(f"invalid chunk type {ctype!r} at offset {pos + 4} after {last} (corrupt file)")
        tname = ctype.decode("ascii")
        ordinal = counts.get(ctype, 0)
        where = tname if ctype in (HEAD, META, IEND) else f"{tname} #{ordinal}"
        if length > MAX_CHUNK_LENGTH:
            raise ContainerError(
                f"chunk {where} at offset {pos}: length {length} over the {MAX_CHUNK_LENGTH >> 30} GiB limit"
            )
        needed = 8 + length + 4
        if size - pos < needed:
            raise ContainerError(
                f"truncated in chunk {where} at offset {pos} (needed {needed} bytes, {size - pos} left)"
            )
        payload = data[pos + 8 : pos + 8 + length]
        (crc,) = _U32.unpack_from(data, pos + 8 + length)
        if zlib.crc32(payload, zlib.crc32(ctype)) != crc:
            raise ContainerError(f"CRC mismatch in chunk {where} at offset {pos}")
        start = pos
        pos += needed
        counts[ctype] = ordinal + 1

        if head is None and ctype != HEAD:
            raise ContainerError(f"first chunk is {tname} at offset {start}, expected HEAD")
        if ctype == HEAD:
            if head is not None:
                raise ContainerError(f"second HEAD chunk at offset {start}")
            head = _decode_head(payload, schema)
            if not is_residual_only(head):
                _check_model(head, expected_model, expected_sha256)
        elif ctype == META:
            if meta is not None:
                raise ContainerError(f"second META chunk at offset {start}")
            if tiles:
                raise ContainerError(f"META chunk at offset {start} after the first TILE")
            meta = payload
        elif ctype == XTRA:
            extra.append(_decode_xtra(payload, where))
        elif ctype == TILE:
            if residuals:
                raise ContainerError(f"TILE chunk at offset {start} after a RESD chunk")
            index, streams = _decode_tile(payload, where)
            n_head = _head_tiles(head)
            if index < len(tiles):
                raise ContainerError(f"duplicate tile index {index} in chunk {where} at offset {start}")
            if n_head is not None and index >= n_head:
                raise ContainerError(
                    f"tile index {index} out of range in chunk {where} at offset {start} (HEAD tiles {n_head})"
                )
            if index != len(tiles):
                raise ContainerError(
                    f"tile index {index} out of order in chunk {where} at offset {start} (expected {len(tiles)})"
                )
            tiles.append(streams)
        elif ctype == RESD:
            if length < 4:
                raise ContainerError(f"{where}: payload is {length} bytes, shorter than its 4-byte frame index")
            (index,) = _U32.unpack_from(payload, 0)
            n_frames = _head_frames(head)
            if n_frames is not None and index >= n_frames:
                raise ContainerError(
                    f"residual frame index {index} out of range in chunk {where} at offset {start} "
                    f"(HEAD frames {n_frames})"
                )
            if index != len(residuals):
                raise ContainerError(
                    f"residual frame index {index} out of order in chunk {where} at offset {start} "
                    f"(expected {len(residuals)})"
                )
            residuals.append(payload[4:])
        elif ctype == IEND:
            if length != 0:
                raise ContainerError(f"IEND chunk at offset {start} is not empty ({length} bytes)")
            seen_iend = True
            break
        elif ctype[0:1].isupper():
            raise ContainerError(f"unknown critical chunk {tname} at offset {start}")
        # else: unknown ancillary chunk (lowercase first letter): skipped
        last = where

    if head is None:
        raise ContainerError("missing HEAD (file ends after the format version)")
    if not seen_iend:
        raise ContainerError(f"missing IEND (file ends after chunk {last})")
    if pos != size:
        raise ContainerError(f"trailing bytes after IEND ({size - pos} bytes at offset {pos})")
    n_head = _head_tiles(head)
    if n_head is not None and len(tiles) != n_head:
        raise ContainerError(f"tile count {len(tiles)} != HEAD tiles {n_head}")
    n_frames = _head_frames(head)
    if residuals and n_frames is not None and len(residuals) != n_frames:
        raise ContainerError(f"residual count {len(residuals)} != HEAD frames {n_frames}")
    if not tiles and not residuals:
        raise ContainerError(_no_image(n_frames))
    return Container(head=head, meta=meta, tiles=tiles, extra=extra, version=version, residuals=residuals)
