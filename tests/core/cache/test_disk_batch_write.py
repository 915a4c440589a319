"""DiskTier.set_many writes a batch with one SELECT and one executemany per shard.

Real diskcache directories; the fault is a real SQLite trigger that aborts an insert.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rag_perf_plugins.cache.tiers import DiskTier

BIG = 40_000  # bytes: above diskcache's min_file_size, so each value is its own file


def _files(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*.val")}


def test_batch_replace_keeps_one_row_and_one_file_per_key(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, shards=2)
    first = {f"k{i}": bytes([i]) * BIG for i in range(20)}
    tier.set_many(first, ttl=60.0, tag="m")
    old_files = _files(tmp_path)
    assert len(old_files) == 20

    second = {f"k{i}": bytes([100 + i]) * BIG for i in range(20)}
    second.update({f"n{i}": b"small" for i in range(5)})  # inline rows, new keys
    tier.set_many(second, ttl=60.0, tag="m")

    assert tier.get_many(list(second)) == second
    assert tier.stats()["items"] == 25
    new_files = _files(tmp_path)
    assert len(new_files) == 20 and not (old_files & new_files)  # replaced files removed
    assert tier.purge_tag("m") == 25
    tier.close()


def test_failed_batch_rolls_back_and_keeps_old_values(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, shards=1)
    tier.set_many({"keep": b"a" * BIG, "other": b"o"})
    before = _files(tmp_path)
    shard = tier._shards[0]
    shard._sql(
        "CREATE TRIGGER boom BEFORE INSERT ON Cache WHEN NEW.key LIKE 'boom%'"
        " BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
    )
    batch = {"keep": b"b" * BIG, "new": b"c" * BIG, "boom1": b"d" * BIG}
    with pytest.raises(sqlite3.IntegrityError, match="disk says no"):
        tier.set_many(batch)

    # Nothing of the batch was committed, the replaced value's file is still there, and the
    # batch's own new files were removed.
    assert tier.get_many(["keep", "new", "boom1", "other"]) == {
        "keep": b"a" * BIG,
        "other": b"o",
    }
    assert _files(tmp_path) == before
    assert tier.stats()["items"] == 2
    tier.close()


def test_eviction_accounting_for_a_batch(tmp_path: Path) -> None:
    # size_limit per shard is tiny: the batch's own inserts push older rows out.
    tier = DiskTier(tmp_path, shards=1, size_limit=5 * BIG)
    tier.set_many({f"a{i}": b"x" * BIG for i in range(4)})
    tier.set_many({f"b{i}": b"y" * BIG for i in range(4)})
    stats = tier.stats()
    assert stats["evictions"] == 8 - stats["items"] > 0
    tier.close()
