"""Cache tiers: where envelope bytes live. The manager owns all policy; a tier only stores.

The seam (:class:`Tier`) is small so the Redis tier plugs in without touching the manager::

    class RedisTier:                      # satisfies Tier
        name = "redis"
        def get_many(self, keys): ...     # -> {key: blob} for the keys found
        def set_many(self, items, *, ttl=None, tag=None): ...
        def delete_many(self, keys): ...
        def clear(self, prefix=None): ...
        def purge_tag(self, tag): ...
        def stats(self): ...
        def close(self): ...

    CacheManager(config, tiers=[MemoryTier(...), RedisTier(...), DiskTier(...)])

Contract of a tier:

- Keys are ``str``; values are opaque envelope ``bytes`` (see :mod:`.serialize`). A tier
  never interprets them, except that it may return :data:`CORRUPT` for a stored row it
  refuses to read (e.g. a planted pickle); the manager counts it and deletes the key.
- Expiry is the manager's job (it reads ``expires_at`` from the envelope against its
  injectable clock); ``ttl`` is passed only so a tier can clean up on its own schedule.
- ``tag`` is the model name (or ``None``) so :meth:`Tier.purge_tag` can drop one model.
- Methods may raise on storage faults (full disk, lock timeout, connection refused): the
  manager catches, counts, warns once and carries on uncached. Tiers do not swallow errors.
- A tier is thread-safe. The manager calls a tier flagged ``blocking = True`` from its
  small executor in async code, and a non-blocking one (memory) inline on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

import diskcache

from .serialize import (
    KIND_MSGPACK,
    CorruptEntry,
    PackedVector,
    SafeDisk,
    UnsafeRow,
    check_header,
    fetch_row,
)

__all__ = ["CORRUPT", "DiskTier", "MemoryTier", "Tier"]

_MODE_RAW: Final = diskcache.core.MODE_RAW

CORRUPT: Final = b""
"""Returned by a tier for a stored row it will not read; never a valid envelope."""

# SQLite allows 32766 bound parameters in the version bundled here, 999 in old builds.
_SQL_CHUNK: Final = 500

# A row's columns as diskcache's Cache.set builds them:
# (expire_time, tag, size, mode, filename, value).
_Columns: TypeAlias = tuple[Any, Any, Any, Any, Any, Any]


@runtime_checkable
class Tier(Protocol):
    """Storage of envelope bytes by string key. See the module docstring for the contract."""

    name: str
    blocking: bool

    @property
    def identity(self) -> tuple[str, ...]:
        """What makes two tier objects the same storage (``("disk", directory)``).

        Two managers whose shared tiers have equal identities see one namespace version:
        a bump through either invalidates both.
        """
        ...

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The stored blobs of the keys found (absent keys are left out)."""
        ...

    def set_many(
        self, items: Mapping[str, bytes], *, ttl: float | None = None, tag: str | None = None
    ) -> None:
        """Store every item; ``ttl`` in seconds is a clean-up hint only."""
        ...

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete keys; returns how many existed."""
        ...

    def clear(self, prefix: str | None = None) -> int:
        """Delete every key, or those starting with ``prefix``; returns how many."""
        ...

    def purge_tag(self, tag: str) -> int:
        """Delete every key stored with ``tag``; returns how many."""
        ...

    def stats(self) -> dict[str, Any]:
        """At least ``items``, ``bytes`` and ``evictions``."""
        ...

    def close(self) -> None:
        """Release files and connections; idempotent."""
        ...


# A vector kept decoded in the memory tier: (expires_at seconds, its floats, bytes counted).
_Kept: TypeAlias = tuple[float, tuple[float, ...], int]


def _vector_header(blob: bytes) -> tuple[int, float] | None:
    """``(kind, expires_at)`` of a vector blob; ``None`` for a structure or an unreadable one.

    Structures are never kept: they are unpacked per hit (msgpack is their cheap deep copy).
    """
    try:
        kind, _created_at, expires_at = check_header(blob)
    except CorruptEntry:
        return None
    return None if kind == KIND_MSGPACK else (kind, expires_at)


def _kept(expires_at: float, floats: tuple[float, ...]) -> _Kept:
    """The kept record of a vector's floats, with the bytes the tier counts for it."""
    return (
        expires_at,
        floats,
        MemoryTier.KEPT_OVERHEAD + MemoryTier.KEPT_BYTES_PER_FLOAT * len(floats),
    )


def _decode_kept(blob: bytes) -> _Kept | None:
    """A vector blob decoded for keeping, or ``None`` (a structure, or unreadable)."""
    header = _vector_header(blob)
    if header is None:
        return None
    try:
        floats = tuple(PackedVector(blob, header[0]).tolist())
    except CorruptEntry:
        return None
    return _kept(header[1], floats)


class MemoryTier:
    """An LRU of envelope bytes bounded by item count and by bytes.

    Example: ``MemoryTier(max_items=10_000, max_bytes=64 * 2**20)``. ``bytes`` counts each
    blob, its key and :data:`ENTRY_OVERHEAD` bytes of bookkeeping (the measured per-item
    cost of the dict slot, tuple and object headers), so ``max_bytes`` bounds real memory.
    Evictions (least recently used first) are counted. Not shared between processes.

    A vector read through :meth:`get_vectors_kept` is also kept decoded beside its blob (a
    tuple of Python floats, counted at :data:`KEPT_BYTES_PER_FLOAT` bytes a dimension plus
    a tuple header, within ``max_bytes``), so the next hit copies floats instead of making
    them again; the blob stays the stored form (promotion, the other tiers, numpy views).
    """

    ENTRY_OVERHEAD: Final = 240  # bytes; measured with tracemalloc, see bench "cache"
    KEPT_BYTES_PER_FLOAT: Final = 32  # a float object (24) and its tuple slot (8)
    KEPT_OVERHEAD: Final = 120  # the tuple's header and the kept record

    __slots__ = ("_bytes", "_data", "_lock", "evictions", "max_bytes", "max_items")

    name = "memory"
    blocking = False

    @property
    def identity(self) -> tuple[str, ...]:
        """This object alone: a memory tier is never shared."""
        return ("memory", str(id(self)))

    def __init__(self, *, max_items: int, max_bytes: int) -> None:
        if max_items < 1:
            msg = f"max_items must be >= 1, got {max_items}"
            raise ValueError(msg)
        if max_bytes < 1:
            msg = f"max_bytes must be >= 1, got {max_bytes}"
            raise ValueError(msg)
        self.max_items = max_items
        self.max_bytes = max_bytes
        # key -> (blob, tag, kept): kept is None or (expires_at, floats, its bytes).
        self._data: OrderedDict[str, tuple[bytes, str | None, _Kept | None]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def _cost(self, key: str, blob: bytes, kept: _Kept | None = None) -> int:
        return len(blob) + len(key) + self.ENTRY_OVERHEAD + (kept[2] if kept else 0)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Blobs of the keys present; each found key becomes most recently used."""
        found: dict[str, bytes] = {}
        data = self._data
        with self._lock:
            for key in keys:
                item = data.get(key)
                if item is not None:
                    data.move_to_end(key)
                    found[key] = item[0]
        return found

    def get_vectors_kept(self, keys: Sequence[str], now: float) -> list[list[float]] | None:
        """New lists of the vectors of ``keys``, in order, or ``None`` unless all are here.

        Example: ``tier.get_vectors_kept(["embeddings:1:emb:v1:..."], time.time())``.
        ``None`` (and nothing moved or kept) when a key is absent, expired at ``now``
        (seconds, the cache's clock), not a vector, or unreadable: the caller then takes
        the general path, which decodes, deletes and counts as usual. A vector read the
        first time is decoded from its blob (the same floats a decode gives) and kept.
        """
        data = self._data
        out: list[tuple[float, ...]] = []
        with self._lock:
            for key in keys:
                item = data.get(key)
                if item is None:
                    return None
                kept = item[2]
                if kept is None:
                    kept = _decode_kept(item[0])
                    if kept is None:
                        return None
                    self._attach(key, item, kept)
                if now >= kept[0]:
                    return None
                out.append(kept[1])
            for key in keys:
                data.move_to_end(key)
        return [list(v) for v in out]

    def set_many(
        self, items: Mapping[str, bytes], *, ttl: float | None = None, tag: str | None = None
    ) -> None:
        """Store items, evicting least recently used ones past either bound."""
        data = self._data
        with self._lock:
            for key, blob in items.items():
                old = data.pop(key, None)
                if old is not None:
                    self._bytes -= self._cost(key, old[0], old[2])
                cost = self._cost(key, blob)
                if cost > self.max_bytes:
                    continue  # larger than the whole tier: keep it on disk only
                data[key] = (blob, tag, None)
                self._bytes += cost
            while data and (len(data) > self.max_items or self._bytes > self.max_bytes):
                old_key, (old_blob, _, old_kept) = data.popitem(last=False)
                self._bytes -= self._cost(old_key, old_blob, old_kept)
                self.evictions += 1

    def keep_vectors(self, vectors: Mapping[str, tuple[bytes, Sequence[float]]]) -> None:
        """Keep the floats of vectors just stored here beside their blobs.

        Example: ``tier.set_many({key: blob}); tier.keep_vectors({key: (blob, floats)})``.
        The floats must be the values ``blob`` decodes to (the cache passes the vectors it
        rounded and encoded), so the first hit after a write copies floats instead of
        decoding them, as the later hits do. Skipped: a key whose entry is no longer that
        very blob (another writer's since, evicted, or too large for the tier), one already
        kept, or one not fitting ``max_bytes``.
        """
        data = self._data
        with self._lock:
            for key, (blob, floats) in vectors.items():
                item = data.get(key)
                if item is None or item[0] is not blob or item[2] is not None:
                    continue
                header = _vector_header(blob)
                if header is not None:
                    self._attach(key, item, _kept(header[1], tuple(floats)))

    def _attach(self, key: str, item: tuple[bytes, str | None, _Kept | None], kept: _Kept) -> None:
        """Keep ``kept`` beside ``key``'s blob if it fits ``max_bytes`` (under the lock)."""
        if self._bytes + kept[2] <= self.max_bytes:
            self._data[key] = (item[0], item[1], kept)  # same place in the LRU order
            self._bytes += kept[2]

    def delete_many(self, keys: Sequence[str]) -> int:
        """Drop keys; returns how many were present."""
        n = 0
        with self._lock:
            for key in keys:
                old = self._data.pop(key, None)
                if old is not None:
                    self._bytes -= self._cost(key, old[0], old[2])
                    n += 1
        return n

    def _drop_where(self, match: Any) -> int:
        with self._lock:
            doomed = [k for k, (_, tag, _) in self._data.items() if match(k, tag)]
            for key in doomed:
                blob, _, kept = self._data.pop(key)
                self._bytes -= self._cost(key, blob, kept)
        return len(doomed)

    def clear(self, prefix: str | None = None) -> int:
        """Drop everything, or the keys starting with ``prefix``."""
        if prefix is None:
            with self._lock:
                n = len(self._data)
                self._data.clear()
                self._bytes = 0
            return n
        return self._drop_where(lambda key, _tag: key.startswith(prefix))

    def purge_tag(self, tag: str) -> int:
        """Drop the keys stored with ``tag`` (a scan; purges are rare)."""
        return self._drop_where(lambda _key, t: t == tag)

    def drop_untagged(self) -> int:
        """Drop the keys stored without a tag, such as copies promoted from a shared tier."""
        return self._drop_where(lambda _key, t: t is None)

    def stats(self) -> dict[str, Any]:
        """Items, bytes (payload, keys and bookkeeping) and evictions."""
        return {"items": len(self._data), "bytes": self._bytes, "evictions": self.evictions}

    def close(self) -> None:
        """Drop all entries."""
        self.clear()

    def reset_lock(self) -> None:
        """Replace the lock (after ``fork()``, another thread may have held it)."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return (
            f"MemoryTier(items={len(self._data)}/{self.max_items}, "
            f"bytes={self._bytes}/{self.max_bytes}, evictions={self.evictions})"
        )


# How long opening a cache directory may wait for other processes' schema and settings
# writes (seconds). Opening takes SQLite write locks; when many workers start at once
# (gunicorn, a multiprocessing pool) the per-call ``timeout`` is far too short for it, and
# failing the open would run that whole process uncached. Reads and writes keep ``timeout``.
OPEN_LOCK_WAIT: Final = 10.0


def _open_fanout(
    directory: str, *, shards: int, timeout: float, size_limit: int
) -> diskcache.FanoutCache:
    deadline = time.monotonic() + OPEN_LOCK_WAIT
    pause = 0.01
    while True:
        try:
            return diskcache.FanoutCache(
                directory,
                shards=shards,
                timeout=timeout,
                disk=SafeDisk,
                size_limit=size_limit,
                eviction_policy="least-recently-stored",
                tag_index=True,
                statistics=False,
            )
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.25)


class DiskTier:
    """A persistent tier on ``diskcache.FanoutCache`` with :class:`SafeDisk` (no pickle).

    Example::

        tier = DiskTier("/var/cache/app", shards=8, timeout=0.1, size_limit=2**30)
        tier.set_many({"k": blob}, ttl=60.0, tag="text-embedding-3-small")
        tier.get_many(["k", "other"])      # {"k": blob}: one SQL query per shard touched

    ``directory`` is created owner-only (0o700). ``size_limit`` (bytes) is split evenly over
    the shards, as diskcache does; past it diskcache evicts least recently stored entries,
    which this tier counts. ``timeout`` (seconds) is SQLite's lock wait: past it a write
    raises ``diskcache.Timeout`` instead of blocking.

    Reads go straight to each shard's SQLite table with one ``SELECT ... WHERE key IN (...)``
    per shard (diskcache offers no batched get; per-key ``get`` costs ~14 µs here) and skip
    diskcache's own expiry and statistics: expiry is the manager's, and a read never writes.
    This uses diskcache internals (``_shards``, ``_sql``, ``_transact``, the ``Cache`` table),
    stable in 5.x, which is effectively frozen. Safe across ``fork()``: diskcache reopens
    its SQLite connection when the process id changes.

    Not done: locking across hosts (do not put the directory on NFS).
    """

    __slots__ = ("_cache", "_count", "_evictions", "_lock", "_shards", "directory")

    name = "disk"
    blocking = True

    @property
    def identity(self) -> tuple[str, ...]:
        """``("disk", directory)``: every tier on one directory is one storage."""
        return ("disk", self.directory)

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        shards: int = 8,
        timeout: float = 0.1,
        size_limit: int = 2**30,
    ) -> None:
        if shards < 1:
            msg = f"shards must be >= 1, got {shards}"
            raise ValueError(msg)
        if timeout <= 0:
            msg = f"timeout must be > 0 seconds, got {timeout}"
            raise ValueError(msg)
        path = Path(directory).expanduser()
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            path.chmod(0o700)  # mkdir's mode is masked by the umask, and the dir may pre-exist
        self.directory = str(path)
        self._cache = _open_fanout(
            self.directory, shards=shards, timeout=timeout, size_limit=size_limit
        )
        self._shards: tuple[diskcache.Cache, ...] = self._cache._shards
        self._count = len(self._shards)
        self._lock = threading.Lock()
        self._evictions = 0

    # --- reads ----------------------------------------------------------------------------
    def _by_shard(self, keys: Sequence[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        hash_ = self._cache._hash
        count = self._count
        adler32 = zlib.adler32
        for key in keys:
            # diskcache's Disk.hash of a str key (SafeDisk stores it as is), inlined:
            # ~1 µs less per key than the two method calls.
            index = (adler32(key.encode()) if type(key) is str else hash_(key)) % count
            groups.setdefault(index, []).append(key)
        return groups

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """One SELECT per shard (per 500 keys); refused rows come back as :data:`CORRUPT`."""
        found: dict[str, bytes] = {}
        for index, group in self._by_shard(keys).items():
            shard = self._shards[index]
            sql = shard._sql
            disk = shard._disk
            for start in range(0, len(group), _SQL_CHUNK):
                chunk = group[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = sql(
                    "SELECT key, mode, filename, value FROM Cache"
                    f" WHERE raw = 1 AND key IN ({marks})",
                    chunk,
                ).fetchall()
                for key, mode, filename, value in rows:
                    if mode == _MODE_RAW and type(value) is bytes:
                        found[key] = value  # fetch_row's common case, inlined
                        continue
                    try:
                        found[key] = fetch_row(disk, mode, filename, value)
                    except (UnsafeRow, OSError):
                        # Refused (not ours) or its file vanished mid-read: corrupt to us.
                        found[key] = CORRUPT
        return found

    # --- writes ---------------------------------------------------------------------------
    def set_many(
        self, items: Mapping[str, bytes], *, ttl: float | None = None, tag: str | None = None
    ) -> None:
        """One transaction per shard; counts the entries diskcache culls to stay in size.

        This is diskcache's ``Cache.set`` body, batched: values are written (files first),
        then rows are inserted or updated in one ``BEGIN IMMEDIATE`` transaction, and the
        files of replaced or culled rows are removed only after the commit. (Calling
        ``Cache.set`` inside our own transaction would delete a replaced value's file
        before our commit, so a writer killed at that moment leaves a row without a file.)
        """
        groups = self._by_shard(list(items))
        evicted = 0
        now = time.time()
        expire_time = None if ttl is None or ttl == float("inf") else now + ttl
        for index, group in groups.items():
            shard = self._shards[index]
            disk = shard._disk
            prepared: list[tuple[Any, bool, _Columns]] = []
            try:
                for key in group:
                    db_key, raw = disk.put(key)
                    size, mode, filename, db_value = disk.store(items[key], False, key=key)
                    prepared.append(
                        (db_key, raw, (expire_time, tag, size, mode, filename, db_value))
                    )
                with shard._transact(retry=False) as (sql, cleanup):
                    before = _settings_count(sql)
                    # One SELECT per 500 keys finds the rows being replaced, then one
                    # executemany per statement (was one SELECT and one write per entry).
                    old = _existing_rows(sql, [db_key for db_key, _raw, _columns in prepared])
                    updates: list[tuple[int, _Columns]] = []
                    inserts: list[tuple[Any, bool, _Columns]] = []
                    for db_key, raw, columns in prepared:
                        found = old.get((db_key, bool(raw)))
                        if found is None:
                            inserts.append((db_key, raw, columns))
                        else:
                            rowid, old_filename = found
                            cleanup(old_filename)  # removed only after the commit
                            updates.append((rowid, columns))
                    _write_rows(shard, now, updates, inserts)
                    replaced = len(updates)
                    # diskcache culls up to cull_limit (10) rows per set; a batch culls as
                    # many as it added, plus that slack.
                    shard._cull(now, sql, cleanup, limit=len(prepared) + 10)
                    after = _settings_count(sql)
            except BaseException:
                for _db_key, _raw, columns in prepared:
                    if columns[4] is not None:
                        disk.remove(columns[4])  # rolled back: its new files are orphans
                raise
            # Rows that vanished beyond the ones we replaced were culled by diskcache
            # (expired ones first, then least recently stored past size_limit).
            evicted += max(0, before + (len(prepared) - replaced) - after)
        if evicted:
            with self._lock:
                self._evictions += evicted

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete keys (their files too); returns how many existed."""
        n = 0
        for index, group in self._by_shard(keys).items():
            shard = self._shards[index]
            with shard._transact(retry=False):
                for key in group:
                    n += bool(shard.delete(key, retry=False))
        return n

    def _delete_where(self, where: str, params: Sequence[Any]) -> int:
        n = 0
        for shard in self._shards:
            with shard._transact(retry=False) as (sql, cleanup):
                rows = sql(f"SELECT rowid, filename FROM Cache WHERE {where}", params).fetchall()
                for start in range(0, len(rows), _SQL_CHUNK):
                    chunk = rows[start : start + _SQL_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    sql(f"DELETE FROM Cache WHERE rowid IN ({marks})", [r[0] for r in chunk])
                    for _rowid, filename in chunk:
                        cleanup(filename)  # files are removed after the commit
                n += len(rows)
        return n

    def clear(self, prefix: str | None = None) -> int:
        """Delete everything, or the keys starting with ``prefix`` (an index range scan)."""
        if prefix is None:
            return self._delete_where("1", ())
        if not prefix:
            return self.clear()
        upper = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        return self._delete_where("key >= ? AND key < ?", (prefix, upper))

    def purge_tag(self, tag: str) -> int:
        """Delete every entry stored with ``tag`` (indexed)."""
        return self._delete_where("tag = ?", (tag,))

    # --- inspection -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Items and bytes on disk (diskcache's counters, all processes) and our evictions."""
        return {
            "items": sum(len(s) for s in self._shards),
            "bytes": int(self._cache.volume()),
            "evictions": self._evictions,
            "shards": self._count,
            "directory": self.directory,
        }

    def iter_rows(self) -> Iterator[tuple[Any, ...]]:
        """Every stored row as ``(shard, key, raw, mode, filename, value, tag)``, for verify."""
        for index, shard in enumerate(self._shards):
            for row in shard._sql(
                "SELECT key, raw, mode, filename, value, tag FROM Cache ORDER BY rowid"
            ).fetchall():
                yield (index, *row)

    def read_row(self, shard: int, mode: int, filename: str | None, value: Any) -> bytes:
        """The bytes of a row from :meth:`iter_rows`; raises ``UnsafeRow`` or ``OSError``."""
        return fetch_row(self._shards[shard]._disk, mode, filename, value)

    def delete_row(self, shard: int, key: str) -> bool:
        """Delete ``key`` from one shard, where :meth:`iter_rows` found it.

        A row written by something else may sit in a shard its key does not hash to.
        """
        return bool(self._shards[shard].delete(key, retry=False))

    def close(self) -> None:
        """Close every shard's SQLite connection of this thread; idempotent."""
        self._cache.close()

    def __repr__(self) -> str:
        return f"DiskTier({self.directory!r}, shards={self._count}, evictions={self._evictions})"


# diskcache's Cache._row_update / Cache._row_insert statements, for executemany.
_UPDATE_ROW: Final = (
    "UPDATE Cache SET store_time = ?, expire_time = ?, access_time = ?, access_count = ?,"
    " tag = ?, size = ?, mode = ?, filename = ?, value = ? WHERE rowid = ?"
)
_INSERT_ROW: Final = (
    "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag,"
    " size, mode, filename, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _write_rows(
    shard: diskcache.Cache,
    now: float,
    updates: list[tuple[int, _Columns]],
    inserts: list[tuple[Any, bool, _Columns]],
) -> None:
    """Write the rows inside the open transaction: one ``executemany`` per statement.

    A single row goes through diskcache's own ``_row_update`` / ``_row_insert`` (the same
    statement, one ``execute`` either way), so one-entry writes stay exactly diskcache's.
    """
    if len(updates) + len(inserts) == 1:
        if updates:
            shard._row_update(updates[0][0], now, updates[0][1])
        else:
            shard._row_insert(inserts[0][0], inserts[0][1], now, inserts[0][2])
        return
    con = shard._con
    if updates:
        con.executemany(
            _UPDATE_ROW,
            [
                (now, exp, now, 0, tag, size, mode, fn, val, rowid)
                for rowid, (exp, tag, size, mode, fn, val) in updates
            ],
        )
    if inserts:
        con.executemany(
            _INSERT_ROW,
            [
                (key, raw, now, exp, now, 0, tag, size, mode, fn, val)
                for key, raw, (exp, tag, size, mode, fn, val) in inserts
            ],
        )


def _existing_rows(sql: Any, db_keys: Sequence[Any]) -> dict[tuple[Any, bool], tuple[int, Any]]:
    """``(key, raw) -> (rowid, filename)`` of the rows already stored for ``db_keys``."""
    found: dict[tuple[Any, bool], tuple[int, Any]] = {}
    for start in range(0, len(db_keys), _SQL_CHUNK):
        chunk = db_keys[start : start + _SQL_CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = sql(
            f"SELECT rowid, key, raw, filename FROM Cache WHERE key IN ({marks})", chunk
        ).fetchall()
        for rowid, key, raw, filename in rows:
            found[(key, bool(raw))] = (rowid, filename)
    return found


def _settings_count(sql: Any) -> int:
    row = sql("SELECT value FROM Settings WHERE key = 'count'").fetchone()
    return int(row[0]) if row else 0
