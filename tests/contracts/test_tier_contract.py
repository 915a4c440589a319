"""The cache tier contract, run against MemoryTier, DiskTier and RedisTier.

One suite (``TestTierContract``) checks what the :class:`~rag_perf_plugins.cache.tiers.Tier`
protocol and the module docstring of ``cache/tiers.py`` promise, through public methods
only, on every implementation (as cachetools' ``CacheTestMixin`` runs one suite over every
cache class). Per-implementation behaviour (LRU order and byte bounds, diskcache rows,
Redis outages and expiry) stays in ``tests/core/cache`` and ``tests/core/redis``.

To add an implementation, add a :class:`TierMaker` to ``MAKERS``.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins.cache import DiskTier, MemoryTier, Tier
from rag_perf_plugins.cache.serialize import encode


@dataclass(frozen=True)
class TierMaker:
    """How the suite builds one implementation.

    ``open(where)`` returns a tier on the storage named by ``where``; calling it twice with
    the same ``where`` gives two objects on one storage when ``shared`` (disk, Redis), and
    two separate stores when not (memory: never shared between objects). ``sticky_tags``:
    a key stays in a tag once stored with it (see ``test_a_rewrite_carries_its_own_tag``).
    """

    name: str
    blocking: bool
    shared: bool
    sticky_tags: bool
    open: Callable[[pytest.FixtureRequest, Path, str], Tier]


def _memory(request: pytest.FixtureRequest, tmp_path: Path, where: str) -> Tier:
    return MemoryTier(max_items=10_000, max_bytes=64 * 2**20)


def _disk(request: pytest.FixtureRequest, tmp_path: Path, where: str) -> Tier:
    # timeout: SQLite's lock wait. The default (0.1 s) is for a service that would rather
    # go uncached than wait; the threads test below contends on purpose.
    return DiskTier(tmp_path / where, shards=4, timeout=2.0)


def _redis(request: pytest.FixtureRequest, tmp_path: Path, where: str) -> Tier:
    from rag_perf_plugins.cache.redis_tier import RedisTier

    url: str = request.getfixturevalue("redis_url")
    return RedisTier(url, prefix=f"contract-{where}", timeout=2.0)


def counted(tier: Tier) -> dict[str, Any]:
    """The tier's own ``items`` and ``bytes``: ``stats()``, or Redis's ``scan_stats()``.

    Documented difference (cache/redis_tier.py, RedisTier.stats): Redis's ``stats()`` scans
    nothing and reports the whole database; its exact count of one prefix is a SCAN.
    """
    scan = getattr(tier, "scan_stats", None)
    return scan() if scan is not None else tier.stats()


MAKERS = [
    pytest.param(
        TierMaker("memory", blocking=False, shared=False, sticky_tags=False, open=_memory),
        id="memory",
    ),
    pytest.param(
        TierMaker("disk", blocking=True, shared=True, sticky_tags=False, open=_disk),
        id="disk",
    ),
    pytest.param(
        TierMaker("redis", blocking=True, shared=True, sticky_tags=True, open=_redis),
        id="redis",
        marks=pytest.mark.redis,
    ),
]


@pytest.fixture(params=MAKERS)
def maker(request: pytest.FixtureRequest) -> TierMaker:
    made: TierMaker = request.param
    return made


@pytest.fixture
def opener(
    maker: TierMaker, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], Tier]]:
    """Opens tiers on named storages; closes every one of them after the test."""
    opened: list[Tier] = []
    where_prefix = uuid.uuid4().hex[:8]

    def open_tier(where: str = "main") -> Tier:
        tier = maker.open(request, tmp_path, f"{where_prefix}-{where}")
        opened.append(tier)
        return tier

    yield open_tier
    for tier in opened:
        tier.close()


@pytest.fixture
def tier(opener: Callable[[str], Tier]) -> Tier:
    return opener("main")


def blob(n: int, size: int = 16) -> bytes:
    """Opaque test bytes (not an envelope: a tier must not interpret them)."""
    return (f"value-{n}:".encode() + bytes(range(256)) * (size // 256 + 1))[:size]


# Keys a tier must store as they are: separators, glob and LIKE characters, unicode.
ODD_KEYS = [
    "llm:1:ab12",
    "with space",
    "star*key",
    "question?key",
    "[bracket]key",
    "percent%_under",
    "back\\slash",
    "ключ-ü-🙂",
    "x" * 300,
]


class TestTierContract:
    """What every :class:`Tier` does, whatever stores the bytes."""

    # --- shape --------------------------------------------------------------------------
    def test_satisfies_the_protocol(self, tier: Tier, maker: TierMaker) -> None:
        assert isinstance(tier, Tier)
        assert tier.name == maker.name
        assert tier.blocking is maker.blocking

    def test_identity_is_a_stable_tuple_of_strings(self, tier: Tier) -> None:
        identity = tier.identity
        assert isinstance(identity, tuple) and identity
        assert all(isinstance(part, str) for part in identity)
        assert identity[0] == tier.name
        assert tier.identity == identity
        hash(identity)  # used as a dict key by the manager's version cache

    def test_identity_names_the_storage(
        self, opener: Callable[[str], Tier], maker: TierMaker
    ) -> None:
        first, again, other = opener("one"), opener("one"), opener("two")
        assert first.identity != other.identity
        first.set_many({"k": blob(1)})
        if maker.shared:
            # Two objects on one storage: one identity, one set of entries.
            assert again.identity == first.identity
            assert again.get_many(["k"]) == {"k": blob(1)}
        else:
            # Documented difference: a memory tier is never shared, each object is its own.
            assert again.identity != first.identity
            assert again.get_many(["k"]) == {}
        assert other.get_many(["k"]) == {}

    # --- get_many / set_many ------------------------------------------------------------
    def test_absent_keys_are_left_out(self, tier: Tier) -> None:
        assert tier.get_many([]) == {}
        assert tier.get_many(["nope", "nada"]) == {}
        tier.set_many({"a": blob(1), "b": blob(2)})
        assert tier.get_many(["nope", "a", "nada", "b"]) == {"a": blob(1), "b": blob(2)}

    def test_bytes_come_back_exactly(self, tier: Tier) -> None:
        items = {
            "empty-ish": b"\x00",
            "every-byte": bytes(range(256)),
            "large": blob(3, size=300_000),  # past diskcache's file threshold
            "envelope": encode({"a": [1, 2.5, "x"]}, created_at=100.0, expires_at=None),
        }
        tier.set_many(items)
        got = tier.get_many(list(items))
        assert got == items
        assert all(type(value) is bytes for value in got.values())

    def test_keys_are_stored_as_they_are(self, tier: Tier) -> None:
        items = {key: blob(i) for i, key in enumerate(ODD_KEYS)}
        tier.set_many(items)
        assert tier.get_many(ODD_KEYS) == items
        assert tier.get_many(["star", "star?key", "*", "[bracket]"]) == {}

    def test_set_replaces_and_empty_calls_do_nothing(self, tier: Tier) -> None:
        tier.set_many({"k": blob(1), "other": blob(9)})
        tier.set_many({"k": blob(2, size=5000)})
        tier.set_many({})
        assert tier.get_many(["k", "other"]) == {"k": blob(2, size=5000), "other": blob(9)}
        assert counted(tier)["items"] == 2

    def test_many_keys_in_one_call(self, tier: Tier) -> None:
        # Past the 500-key chunks of the disk tier's SELECT and the Redis tier's MGET.
        items = {f"bulk:{i:04d}": blob(i) for i in range(1200)}
        tier.set_many(items)
        keys = [*items, "bulk:missing"]
        assert tier.get_many(keys) == items
        assert counted(tier)["items"] == 1200

    @pytest.mark.parametrize("ttl", [None, 3600.0, math.inf])
    def test_ttl_is_a_hint_not_an_early_expiry(self, tier: Tier, ttl: float | None) -> None:
        # Expiry is the manager's (from the envelope); a tier may only clean up later.
        tier.set_many({"k": blob(1)}, ttl=ttl)
        assert tier.get_many(["k"]) == {"k": blob(1)}

    # --- deleting -----------------------------------------------------------------------
    def test_delete_many_counts_what_existed(self, tier: Tier) -> None:
        tier.set_many({"a": blob(1), "b": blob(2), "c": blob(3)})
        assert tier.delete_many([]) == 0
        assert tier.delete_many(["a", "missing", "c"]) == 2
        assert tier.delete_many(["a"]) == 0
        assert tier.get_many(["a", "b", "c"]) == {"b": blob(2)}

    def test_clear_by_prefix(self, tier: Tier) -> None:
        tier.set_many({"llm:1:a": blob(1), "llm:1:b": blob(2), "llm:2:a": blob(3)})
        tier.set_many({"emb:1:a": blob(4), "llm": blob(5), "llm:10:a": blob(6)})
        assert tier.clear("llm:1:") == 2
        assert tier.clear("llm:1:") == 0
        assert tier.clear("nothing-here") == 0
        left = tier.get_many(["llm:1:a", "llm:1:b", "llm:2:a", "emb:1:a", "llm", "llm:10:a"])
        assert sorted(left) == ["emb:1:a", "llm", "llm:10:a", "llm:2:a"]

    def test_clear_prefix_is_literal(self, tier: Tier) -> None:
        # Glob (Redis SCAN MATCH) and range (SQLite) characters in a prefix match themselves.
        tier.set_many({"star*key": blob(1), "starXkey": blob(2), "star": blob(3)})
        tier.set_many({"[bracket]key": blob(4), "bkey": blob(5), "q?x": blob(6), "qax": blob(7)})
        assert tier.clear("star*") == 1
        assert tier.clear("[b") == 1
        assert tier.clear("q?") == 1
        left = tier.get_many(["star*key", "starXkey", "star", "[bracket]key", "bkey", "qax"])
        assert sorted(left) == ["bkey", "qax", "star", "starXkey"]

    def test_clear_prefix_of_unicode_and_last_code_points(self, tier: Tier) -> None:
        tier.set_many({"ключ-1": blob(1), "ключ-2": blob(2), "ключа": blob(3), "клю": blob(4)})
        assert tier.clear("ключ-") == 2
        assert sorted(tier.get_many(["ключ-1", "ключ-2", "ключа", "клю"])) == ["клю", "ключа"]

    def test_clear_everything(self, tier: Tier) -> None:
        tier.set_many({"a": blob(1), "b:1": blob(2)}, tag="model-a")
        tier.set_many({"c": blob(3)})
        assert tier.clear() == 3
        assert tier.get_many(["a", "b:1", "c"]) == {}
        assert counted(tier)["items"] == 0
        assert tier.clear() == 0
        # Tags went with the entries: a purge finds nothing, and new entries are unaffected.
        tier.set_many({"a": blob(1)})
        assert tier.purge_tag("model-a") == 0
        assert tier.get_many(["a"]) == {"a": blob(1)}

    def test_clear_with_an_empty_prefix_clears_everything(self, tier: Tier) -> None:
        tier.set_many({"a": blob(1), "b": blob(2)})
        assert tier.clear("") == 2
        assert tier.get_many(["a", "b"]) == {}

    # --- tags ---------------------------------------------------------------------------
    def test_purge_tag_drops_one_model(self, tier: Tier) -> None:
        tier.set_many({"a:1": blob(1), "a:2": blob(2)}, tag="model-a")
        tier.set_many({"b:1": blob(3)}, tag="model-b")
        tier.set_many({"n:1": blob(4)})
        assert tier.purge_tag("model-a") == 2
        assert tier.purge_tag("model-a") == 0
        assert tier.purge_tag("never-used") == 0
        assert sorted(tier.get_many(["a:1", "a:2", "b:1", "n:1"])) == ["b:1", "n:1"]

    def test_purge_tag_counts_only_entries_that_exist(self, tier: Tier) -> None:
        tier.set_many({"a:1": blob(1), "a:2": blob(2), "a:3": blob(3)}, tag="model-a")
        assert tier.delete_many(["a:1"]) == 1
        assert tier.clear("a:2") == 1
        assert tier.purge_tag("model-a") == 1
        assert tier.get_many(["a:3"]) == {}

    def test_a_rewrite_carries_its_own_tag(self, tier: Tier, maker: TierMaker) -> None:
        tier.set_many({"k1": blob(1), "k2": blob(2), "k3": blob(3)}, tag="model-a")
        tier.set_many({"k1": blob(11)}, tag="model-b")
        tier.set_many({"k2": blob(12)})
        if not maker.sticky_tags:
            # Memory and disk keep the tag of a key's last write: rewritten under another
            # tag or none, it no longer belongs to the old one.
            assert tier.purge_tag("model-a") == 1
            assert tier.get_many(["k1", "k2", "k3"]) == {"k1": blob(11), "k2": blob(12)}
        else:
            # Documented difference (cache/redis_tier.py, RedisTier): Redis keeps one set
            # of keys per tag, added to and never pruned by a rewrite, so a key stays in
            # every tag it was stored with until that tag is purged or the tier cleared.
            # Kept on purpose: the manager promotes hits into upper tiers without their
            # tag, and a sticky tag still lets purge_model reach such a copy in Redis.
            assert tier.purge_tag("model-a") == 3
            assert tier.get_many(["k1", "k2", "k3"]) == {}
            tier.set_many({"k1": blob(11)}, tag="model-b")
        assert tier.purge_tag("model-b") == 1
        assert tier.get_many(["k1"]) == {}

    def test_a_deleted_then_untagged_key(self, tier: Tier, maker: TierMaker) -> None:
        tier.set_many({"k": blob(1)}, tag="model-a")
        assert tier.delete_many(["k"]) == 1
        tier.set_many({"k": blob(2)})
        if not maker.sticky_tags:
            assert tier.purge_tag("model-a") == 0
            assert tier.get_many(["k"]) == {"k": blob(2)}
        else:  # documented difference: see test_a_rewrite_carries_its_own_tag
            assert tier.purge_tag("model-a") == 1
            assert tier.get_many(["k"]) == {}

    # --- stats and lifecycle ------------------------------------------------------------
    def test_stats_has_items_bytes_and_evictions(self, tier: Tier) -> None:
        empty = tier.stats()
        for field in ("items", "bytes", "evictions"):
            assert isinstance(empty[field], int) and empty[field] >= 0, field
        assert counted(tier)["items"] == 0
        items = {f"k{i}": blob(i, size=1000) for i in range(5)}
        tier.set_many(items)
        full = tier.stats()
        assert counted(tier)["items"] == 5
        # at least the payload (disk: whole SQLite pages; Redis stats: the server's memory)
        assert counted(tier)["bytes"] >= 5 * 1000 and full["bytes"] >= 5 * 1000
        assert full["evictions"] >= empty["evictions"]
        assert tier.delete_many(["k0", "k1"]) == 2
        assert counted(tier)["items"] == 3

    def test_close_is_idempotent(self, opener: Callable[[str], Tier]) -> None:
        tier = opener("closing")
        tier.set_many({"k": blob(1)})
        tier.close()
        tier.close()

    def test_threads_share_one_tier(self, tier: Tier) -> None:
        threads_n, keys_n = 8, 40
        errors: list[BaseException] = []
        start = threading.Barrier(threads_n)

        def worker(t: int) -> None:
            try:
                start.wait()
                for i in range(keys_n):
                    key = f"t{t}:{i}"
                    tier.set_many({key: blob(t * 1000 + i)}, tag=f"tag-{t % 2}")
                    assert tier.get_many([key]) == {key: blob(t * 1000 + i)}
                    if i % 4 == 0:
                        assert tier.delete_many([key]) == 1
            except BaseException as exc:  # reported below, with the thread's own traceback
                errors.append(exc)

        threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [f"{type(e).__name__}: {str(e)[:300]}" for e in errors] == []
        kept = threads_n * keys_n * 3 // 4
        assert counted(tier)["items"] == kept
        every = [f"t{t}:{i}" for t in range(threads_n) for i in range(keys_n)]
        assert len(tier.get_many(every)) == kept
        assert tier.purge_tag("tag-0") + tier.purge_tag("tag-1") == kept
