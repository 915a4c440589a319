"""The stored form of a cache entry: a binary envelope, and a diskcache ``Disk`` without pickle.

Every value the cache stores is one ``bytes`` blob::

    blob = encode(["a", 1], created_at=clock(), expires_at=clock() + 60.0)
    entry = decode(blob)          # Entry(kind="msgpack", value=["a", 1], ...)
    entry.expired(now=clock())    # False

Layout (little-endian), 22 bytes of header then the payload:

==========  ======  =====================================================
magic       3 B     ``b"RPC"``
schema      1 B     :data:`SCHEMA_VERSION`; another version reads as a miss
kind        1 B     1 msgpack structure, 2 float32 vector, 3 float64 vector
reserved    1 B     0
created_at  8 B     float64 seconds, on the cache's clock
expires_at  8 B     float64 seconds, ``+inf`` for never
payload     rest    msgpack, or raw little-endian float32/float64
==========  ======  =====================================================

Nothing here ever unpickles. :class:`SafeDisk` is the diskcache ``Disk`` of our disk tier:
it stores only ``bytes`` values under ``str``/``bytes`` keys, and refuses to read any row
it could not have written (pickled keys or values, text files, integers), so a pickle
planted in the cache directory is never loaded (diskcache's own ``JSONDisk`` still
unpickles such rows).

Not done here: signing (HMAC) of entries. The envelope guards against pickle and torn or
foreign rows, not against a writer that can already write valid msgpack to the directory.
"""

from __future__ import annotations

import array
import functools
import math
import sqlite3
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import diskcache
import msgpack
import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "CorruptEntry",
    "Entry",
    "PackedVector",
    "SafeDisk",
    "UnsafeRow",
    "decode",
    "encode",
    "encode_vector",
    "round_vector",
    "round_vectors",
]

SCHEMA_VERSION: Final = 1
MAGIC: Final = b"RPC"
_HEADER = struct.Struct("<3sBBBdd")
HEADER_SIZE: Final = _HEADER.size  # 22 bytes

KIND_MSGPACK: Final = 1
KIND_F32: Final = 2
KIND_F64: Final = 3
_KIND_NAMES: Final = {KIND_MSGPACK: "msgpack", KIND_F32: "float32", KIND_F64: "float64"}
_DTYPES: Final[dict[int, np.dtype[Any]]] = {KIND_F32: np.dtype("<f4"), KIND_F64: np.dtype("<f8")}

VectorDtype = Literal["float32", "float64"]
_LITTLE_ENDIAN: Final = sys.byteorder == "little"


class CorruptEntry(ValueError):
    """A stored blob is not a valid envelope of this schema (torn, foreign or garbage)."""


class UnsafeRow(CorruptEntry):
    """A disk row was not written by :class:`SafeDisk` (for example a pickle); never read."""


@dataclass(frozen=True, slots=True)
class Entry:
    """A decoded envelope: ``value`` plus its kind and times (seconds on the cache clock)."""

    kind: str
    value: Any
    created_at: float
    expires_at: float

    def expired(self, now: float) -> bool:
        """True when ``now`` (seconds) is at or past the entry's expiry."""
        return now >= self.expires_at


def _header(kind: int, created_at: float, expires_at: float | None) -> bytes:
    return _HEADER.pack(
        MAGIC, SCHEMA_VERSION, kind, 0, created_at, math.inf if expires_at is None else expires_at
    )


def encode(value: Any, *, created_at: float, expires_at: float | None) -> bytes:
    """Envelope a structure (msgpack): ``encode({"a": 1}, created_at=0.0, expires_at=None)``.

    Accepts what msgpack does: None, bool, int, float, str, bytes, lists, tuples (read back
    as lists) and dicts. Raises ``TypeError`` for anything else (no ``default=str``: a value
    that would not round-trip is refused, not silently changed).
    """
    try:
        payload = msgpack.packb(value, use_bin_type=True, strict_types=False)
    except (TypeError, ValueError, OverflowError) as exc:
        msg = f"cannot store a value of type {type(value).__name__} in the cache: {exc}"
        raise TypeError(msg) from exc
    return _header(KIND_MSGPACK, created_at, expires_at) + payload


def encode_vector(
    vector: Sequence[float] | np.ndarray[Any, Any],
    *,
    created_at: float,
    expires_at: float | None,
    dtype: VectorDtype = "float32",
) -> bytes:
    """Envelope one vector as raw little-endian float32 (4 bytes per dimension) or float64."""
    kind = KIND_F32 if dtype == "float32" else KIND_F64
    array = np.asarray(vector, dtype=_DTYPES[kind])
    if array.ndim != 1:
        msg = f"a vector must be one-dimensional, got shape {array.shape}"
        raise ValueError(msg)
    return _header(kind, created_at, expires_at) + bytes(array.tobytes())


def round_vector(
    vector: Sequence[float] | np.ndarray[Any, Any], dtype: VectorDtype = "float32"
) -> list[float]:
    """One vector exactly as a later cache hit will return it: ``round_vector([0.1])``.

    :func:`round_vectors` of one vector (the one rounding of the project).
    """
    return round_vectors([vector], dtype)[0]


def decode(blob: bytes) -> Entry:
    """Read an envelope; raises :class:`CorruptEntry` when it is not one of ours."""
    kind, created_at, expires_at = _check_header(blob)
    return Entry(_KIND_NAMES[kind], _payload(blob, kind), created_at, expires_at)


EXPIRED: Final[Any] = object()
"""Returned by :func:`decode_live` for an expired entry."""


def decode_live(blob: bytes, now: float, *, defer_vectors: bool = False) -> Any:
    """The value of an envelope, or :data:`EXPIRED` (payload left undecoded) past its expiry.

    The hot path of a lookup: no :class:`Entry` object. Raises :class:`CorruptEntry`.
    With ``defer_vectors``, a vector comes back as a checked :class:`PackedVector` (no
    Python floats made yet); structures are decoded as usual.
    """
    kind, _created_at, expires_at = _check_header(blob)
    if now >= expires_at:
        return EXPIRED
    if defer_vectors and kind != KIND_MSGPACK:
        return PackedVector(blob, kind)
    return _payload(blob, kind)


class PackedVector:
    """A stored vector not yet turned into Python floats; its length is already checked.

    Example: ``packed.tolist()`` (a new ``list[float]``, as a hit returns it) or
    ``packed.array()`` (a read-only one-dimensional numpy view of the stored float32 or
    float64 bytes: no copy, no per-element work). Decoding 1,000 384-d vectors into lists
    costs ~12 ms of CPU here (the Python floats); the views cost ~0.5 ms.
    """

    __slots__ = ("blob", "kind")

    def __init__(self, blob: bytes, kind: int) -> None:
        if (len(blob) - HEADER_SIZE) % _DTYPES[kind].itemsize:
            raise CorruptEntry("vector payload is not a whole number of elements (torn write?)")
        self.blob = blob
        self.kind = kind

    def tolist(self) -> list[float]:
        """The vector as a new list of Python floats (float32 widened exactly)."""
        values: list[float] = _payload(self.blob, self.kind)
        return values

    def array(self) -> np.ndarray[Any, Any]:
        """A read-only numpy view of the stored little-endian float32/float64 elements."""
        return np.frombuffer(self.blob, dtype=_DTYPES[self.kind], offset=HEADER_SIZE)


def check_header(blob: bytes) -> tuple[int, float, float]:
    """(kind, created_at, expires_at) of an envelope; raises :class:`CorruptEntry`."""
    return _check_header(blob)


def _check_header(blob: bytes) -> tuple[int, float, float]:
    if len(blob) < HEADER_SIZE:
        msg = f"entry too short ({len(blob)} bytes)"
        raise CorruptEntry(msg)
    magic, schema, kind, _reserved, created_at, expires_at = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CorruptEntry("not a rag-perf cache entry (bad magic)")
    if schema != SCHEMA_VERSION:
        msg = f"entry schema {schema}, this code reads {SCHEMA_VERSION}"
        raise CorruptEntry(msg)
    if kind not in _KIND_NAMES:
        msg = f"unknown entry kind {kind}"
        raise CorruptEntry(msg)
    return kind, created_at, expires_at


def _payload(blob: bytes, kind: int) -> Any:
    payload = memoryview(blob)[HEADER_SIZE:]
    if kind == KIND_MSGPACK:
        try:
            return msgpack.unpackb(payload, raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            msg = f"undecodable msgpack payload: {exc}"
            raise CorruptEntry(msg) from exc
    dtype = _DTYPES[kind]
    if len(payload) % dtype.itemsize:
        raise CorruptEntry("vector payload is not a whole number of elements (torn write?)")
    if _LITTLE_ENDIAN:
        # array.frombytes + tolist is ~1.5x faster than numpy for one 384-d vector
        # and gives the same Python floats (float32 widened exactly to float64).
        items = array.array("f" if kind == KIND_F32 else "d")
        items.frombytes(payload)
        return items.tolist()
    return np.frombuffer(payload, dtype=dtype).astype(np.float64).tolist()


def peek_expires_at(blob: bytes) -> float:
    """Expiry (seconds) of an envelope without decoding its payload; raises CorruptEntry."""
    if len(blob) < HEADER_SIZE or blob[:3] != MAGIC:
        raise CorruptEntry("not a rag-perf cache entry")
    return float(_HEADER.unpack_from(blob)[5])


class SafeDisk(diskcache.Disk):  # type: ignore[misc]
    """A diskcache ``Disk`` that stores our envelopes and never unpickles.

    Keys must be ``str`` or ``bytes`` and values ``bytes``; anything else raises
    ``TypeError`` on write. On read, only rows in the two modes this class writes (raw
    bytes inline, or a binary file) are returned; any other row raises :class:`UnsafeRow`,
    which the tier reads as a corrupt entry (a miss).
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        """Database key of ``key``: str or bytes only (no pickled keys)."""
        if type(key) is str:
            return key, True
        if type(key) is bytes:
            return sqlite3.Binary(key), True
        msg = f"cache keys must be str or bytes, got {type(key).__name__}"
        raise TypeError(msg)

    def get(self, key: Any, raw: bool) -> Any:
        """Python key of a row; refuses pickled keys."""
        if not raw:
            raise UnsafeRow("refusing a pickled key")
        return bytes(key) if type(key) is sqlite3.Binary else key

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        """Row fields of a bytes value (inline below ``min_file_size``, else a file)."""
        if type(value) is not bytes:
            msg = f"SafeDisk stores bytes only, got {type(value).__name__}"
            raise TypeError(msg)
        return super().store(value, False, key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        """Bytes of a row we wrote; raises :class:`UnsafeRow` for any other mode."""
        return fetch_row(self, mode, filename, value)


def fetch_row(disk: diskcache.Disk, mode: int, filename: str | None, value: Any) -> bytes:
    """The bytes of one Cache-table row, or :class:`UnsafeRow` for a mode we never write."""
    if mode == diskcache.core.MODE_RAW and isinstance(value, bytes | memoryview):
        return bytes(value)
    if mode == diskcache.core.MODE_BINARY and filename is not None and value is None:
        path = disk._directory + "/" + filename
        with open(path, "rb") as reader:
            return reader.read()
    msg = f"refusing a row in mode {mode} (only raw bytes and binary files are ours)"
    raise UnsafeRow(msg)


def round_vectors(
    vectors: Sequence[Sequence[float] | np.ndarray[Any, Any]], dtype: str
) -> list[list[float]]:
    """Round vectors to ``dtype`` the way the store keeps them, as Python float lists.

    Example: ``round_vectors([[0.1]], "float32") == [[0.10000000149011612]]``.
    Rounding on the miss path is what makes a cold call return the same numbers as a warm one.
    The one rounding of the project: the embedding service rounds its misses with it and the
    cache manager's ``set_vectors`` too, so they cannot drift apart.
    """
    if dtype == "float64":
        return [[float(x) for x in v] for v in vectors]
    if dtype != "float32":
        msg = f"dtype must be 'float32' or 'float64', got {dtype!r}"
        raise ValueError(msg)
    # Native struct 'f' packing is the same C cast to float as array('f') (and numpy), so
    # the numbers are identical; packing all items in one call is about a third cheaper
    # than array('f', v) item by item (7 us instead of 10 us for 384 floats).
    try:
        return [array.array("f", _float32_struct(len(v)).pack(*v)).tolist() for v in vectors]
    except struct.error:  # not all numbers: let array('f') raise its usual TypeError
        return [array.array("f", v).tolist() for v in vectors]


@functools.lru_cache(maxsize=64)
def _float32_struct(n: int) -> struct.Struct:
    """The native-order ``struct`` of ``n`` float32 values (a handful of sizes per process)."""
    return struct.Struct(f"{n}f")
