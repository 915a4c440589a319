"""The hit paths' shortcuts give exactly what the general paths give (keys, vectors, counts).

- ``EmbeddingKeyer`` and ``llm_key_tail``/``llm_key_from_tail`` are the same keys as
  ``embedding_key`` / ``llm_key``, errors included.
- The memory tier's kept vectors stay within ``max_bytes`` (counted in ``stats()``), are
  dropped with their entry, never served past expiry, and equal a decode of the blob.
- ``CacheManager.memory_vectors`` / ``get`` count a hit exactly as ``get_vectors`` does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.cache import (
    CacheManager,
    EmbeddingKeyer,
    MemoryTier,
    cache_control,
    embedding_key,
    llm_key,
    llm_key_from_tail,
    llm_key_tail,
)
from rag_perf_plugins.cache.serialize import encode_vector, round_vectors
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import CacheEmbeddingStore

TEXTS = ["", "What is RAG?", 'quotes " and \\ and \n', "é ü 中文 \u2028", "x" * 2000]


@pytest.mark.parametrize("dimensions", [None, 384])
@pytest.mark.parametrize("role", ["query", "document"])
def test_embedding_keyer_gives_embedding_key(dimensions: int | None, role: Any) -> None:
    fields = {"provider": 'lc/"q"/é', "model": "m", "dimensions": dimensions, "role": role}
    keyer = EmbeddingKeyer(**fields)
    for text in TEXTS:
        assert keyer.key(text) == embedding_key(**fields, text=text)
    for text in TEXTS:  # again, from the keyer's memo
        assert keyer.key(text) == embedding_key(**fields, text=text)


def test_embedding_keyer_memo_is_bounded_and_never_answers_for_another_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rag_perf_plugins.cache import keys

    monkeypatch.setattr(keys, "MEMO_TEXTS", 3)
    monkeypatch.setattr(keys, "MEMO_CHARS", 10)
    fields: dict[str, Any] = {"provider": "p", "model": "m", "dimensions": None}
    keyer = EmbeddingKeyer(**fields, role="query")
    for i in range(10):
        text = f"t{i}"
        assert keyer.key(text) == embedding_key(**fields, role="query", text=text)
        assert len(keyer._memo) <= 3 and keyer._chars <= 10
    remembered = dict(keyer._memo)
    long = "x" * 50  # longer than the whole bound: keyed, not remembered
    assert keyer.key(long) == embedding_key(**fields, role="query", text=long)
    assert keyer._memo == remembered

    class Folded(str):
        # A str subclass that compares equal regardless of case: never looked up in the memo.
        def __eq__(self, other: object) -> bool:
            return isinstance(other, str) and self.lower() == other.lower()

        __hash__ = str.__hash__

    keyer.key("abc")
    folded = Folded("ABC")
    assert keyer.key(folded) == embedding_key(**fields, role="query", text="ABC")
    assert keyer.key(folded) != keyer.key("abc")


def test_embedding_keyer_refuses_what_embedding_key_refuses() -> None:
    with pytest.raises(ValueError, match="role"):
        EmbeddingKeyer(provider="p", model="m", dimensions=None, role="other")  # type: ignore[arg-type]
    keyer = EmbeddingKeyer(provider="p", model="m", dimensions=None, role="query")
    with pytest.raises(TypeError, match="text must be str"):
        keyer.key(b"bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "m"},
        {"model": "m", "provider": "p", "params": {"temperature": 0.0, "timeout": 3}},
        {"model": "m", "params": {"tools": ["x"], "n": 2.0}, "tools": [{"a": 1}], "seed": 7},
        {"model": "m", "response_format": {"type": "json_object"}, "tool_choice": "auto"},
    ],
)
def test_llm_key_tail_gives_llm_key(fields: dict[str, Any]) -> None:
    tail = llm_key_tail(**fields)
    for messages in ([], [{"role": "user", "content": "hi"}], [{"c": [1.0, {"x": None}]}]):
        assert llm_key_from_tail(messages, tail) == llm_key(messages=messages, **fields)


def test_llm_key_tail_refuses_what_llm_key_refuses() -> None:
    with pytest.raises(TypeError, match=r"key\.params\.temperature"):
        llm_key_tail(model="m", params={"temperature": math.nan})
    tail = llm_key_tail(model="m")
    with pytest.raises(TypeError, match=r"key\.messages\[0\]"):
        llm_key_from_tail([object()], tail)


def _vector_blob(values: list[float], expires_at: float | None = None) -> bytes:
    return encode_vector(values, created_at=0.0, expires_at=expires_at)


def test_kept_vectors_are_counted_and_bounded() -> None:
    blob = _vector_blob([0.5] * 64)
    plain_cost = len(blob) + len("k0") + MemoryTier.ENTRY_OVERHEAD
    kept_cost = MemoryTier.KEPT_OVERHEAD + MemoryTier.KEPT_BYTES_PER_FLOAT * 64
    # Room for two entries and one kept copy.
    tier = MemoryTier(max_items=10, max_bytes=2 * plain_cost + kept_cost + 10)
    tier.set_many({"k0": blob, "k1": blob})
    assert tier.get_vectors_kept(["k0"], now=0.0) == [[0.5] * 64]
    assert tier.stats()["bytes"] == 2 * plain_cost + kept_cost
    # No room to keep the second: still answered (decoded), not kept, bound held.
    assert tier.get_vectors_kept(["k1"], now=0.0) == [[0.5] * 64]
    assert tier.stats()["bytes"] == 2 * plain_cost + kept_cost <= tier.max_bytes
    tier.delete_many(["k0"])
    assert tier.stats()["bytes"] == plain_cost
    tier.clear()
    assert tier.stats()["bytes"] == 0


def test_kept_vectors_are_new_lists_equal_to_a_decode() -> None:
    values = [0.1, -2.5, 1e-8, 3.4e38]
    tier = MemoryTier(max_items=10, max_bytes=1 << 20)
    tier.set_many({"k": _vector_blob(values)})
    first = tier.get_vectors_kept(["k"], now=0.0)
    second = tier.get_vectors_kept(["k"], now=0.0)
    assert first is not None and second is not None
    assert first == second and first[0] is not second[0]
    first[0][0] = 42.0
    assert tier.get_vectors_kept(["k"], now=0.0) == second


def test_kept_at_write_only_for_the_very_blob_stored() -> None:
    values = [0.25, -1.0]
    blob, other = _vector_blob(values), _vector_blob([9.0, 9.0])
    tier = MemoryTier(max_items=10, max_bytes=1 << 20)
    tier.set_many({"k": blob, "j": other})
    tier.set_many({"j": _vector_blob([9.0, 9.0])})  # another writer's blob since
    tier.keep_vectors({"k": (blob, values), "j": (other, [9.0, 9.0]), "gone": (blob, values)})
    data = tier._data
    assert data["k"][2] is not None and data["k"][2][1] == (0.25, -1.0)
    assert data["j"][2] is None and "gone" not in data  # not that blob: decoded at its hit
    assert tier.get_vectors_kept(["k", "j"], now=0.0) == [values, [9.0, 9.0]]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_vectors_kept_at_write_equal_a_fresh_process_read(cache_dir: Path, dtype: Any) -> None:
    config = PerformanceConfig(cache_dir=str(cache_dir), cache_vector_dtype=dtype)
    values = {"a": [0.1, 1 / 3, -2.5e-8, 3.0e38], "b": [float(i) / 7 for i in range(384)]}
    writer = CacheManager(config)
    cold = writer.set_vectors(values)
    tier = writer.tiers[0]
    assert isinstance(tier, MemoryTier)
    assert all(item[2] is not None for item in tier._data.values())  # kept at the write
    cold["a"][0] = 42.0  # the caller's list is its own
    warm = writer.memory_vectors(["a", "b"])
    fresh = CacheManager(config).get_vectors(["a", "b"])  # decoded from the disk tier
    assert warm == [fresh["a"], fresh["b"]] and warm[0][0] != 42.0
    assert warm == [[*v] for v in writer.set_vectors(values).values()]


def test_kept_vectors_answer_all_or_nothing() -> None:
    tier = MemoryTier(max_items=10, max_bytes=1 << 20)
    tier.set_many(
        {
            "live": _vector_blob([1.0], expires_at=100.0),
            "old": _vector_blob([1.0], expires_at=10.0),
            "struct": b"not a vector envelope",
        }
    )
    assert tier.get_vectors_kept(["live"], now=50.0) == [[1.0]]
    assert tier.get_vectors_kept(["live", "absent"], now=50.0) is None
    assert tier.get_vectors_kept(["old"], now=50.0) is None  # expired: the general path
    assert tier.get_vectors_kept(["live"], now=100.0) is None  # the kept copy expires too
    assert tier.get_vectors_kept(["struct"], now=0.0) is None


def test_memory_vectors_count_hits_like_get_vectors(cache_dir: Path, fake_clock: FakeClock) -> None:
    cache = CacheManager(PerformanceConfig(cache_dir=str(cache_dir)), clock=fake_clock)
    stored = cache.set_vectors({"a": [0.1, 0.2], "b": [0.3]})
    assert cache.memory_vectors(["a", "missing"]) is None  # counts nothing
    assert cache.get_stats()["misses"] == 0
    assert cache.memory_vectors(["a", "b"]) == [stored["a"], stored["b"]]
    assert cache.get_vectors(["a"]) == {"a": stored["a"]}
    stats = cache.get_stats()
    assert stats["hits"] == 3 and stats["tiers"]["memory"]["hits"] == 3
    with cache_control("bypass"):
        assert cache.memory_vectors(["a"]) is None
    cache.close()


def test_get_memory_hit_counts_once_and_respects_expiry(
    cache_dir: Path, fake_clock: FakeClock
) -> None:
    cache = CacheManager(PerformanceConfig(cache_dir=str(cache_dir)), clock=fake_clock)
    cache.set("k", {"answer": [1, 2]}, ttl=10.0)
    first, second = cache.get("k"), cache.get("k")
    assert first == second == {"answer": [1, 2]} and first is not second
    assert cache.get_stats()["hits"] == 2
    fake_clock.advance(11.0)
    assert cache.get("k", "gone") == "gone"
    assert cache.get_stats()["misses"] == 1
    cache.close()


def test_numpy_vectors_written_as_rounded_hit_as_python_floats(cache_dir: Path) -> None:
    config = PerformanceConfig(cache_dir=str(cache_dir))  # float32, as numpy's below
    writer = CacheManager(config)
    array = np.array([0.1, -0.0, 3.5], dtype=np.float32)  # accepted at runtime, not typed
    writer.set_vectors({"n": array}, rounded=True)  # type: ignore[dict-item]
    warm = writer.memory_vectors(["n"])
    fresh = CacheManager(config).get_vectors(["n"])
    assert warm == [fresh["n"]] == [writer.get_vectors(["n"])["n"]]
    assert warm is not None and all(type(x) is float for x in warm[0])
    writer.close()


def test_unrounded_vectors_passed_as_rounded_hit_as_a_decode(cache_dir: Path) -> None:
    config = PerformanceConfig(cache_dir=str(cache_dir))
    writer = CacheManager(config)
    writer.set_vectors({"a": [0.1, 1 / 3]}, rounded=True)  # float64 values, float32 cache
    assert writer.memory_vectors(["a"]) == [writer.get_vectors(["a"])["a"]]
    assert writer.memory_vectors(["a"]) != [[0.1, 1 / 3]]
    # The embedding service's store vouches for its floats (round_vectors): kept as given.
    store = CacheEmbeddingStore(writer)
    tier = writer.tiers[0]
    assert isinstance(tier, MemoryTier)
    kept_before = sum(item[2] is not None for item in tier._data.values())
    store.set_many({"b": round_vectors([[0.1, 1 / 3]], "float32")[0]}, rounded=True)
    assert sum(item[2] is not None for item in tier._data.values()) == kept_before + 1
    fresh = CacheManager(config).get_vectors(["b"], namespace=store.namespace)
    assert store.memory_vectors(["b"]) == [fresh["b"]]
    writer.close()


def test_embedding_keyer_memo_bound_holds_under_threads() -> None:
    """Threads keying texts at once: the memo's character count is exact, so its bound holds.

    Unlocked, two threads could both read the count before either wrote it (one text's
    characters lost, the memo past ``MEMO_CHARS``) or both add the same text twice.
    """
    import sys
    import threading

    from rag_perf_plugins.cache import keys

    fields: dict[str, Any] = {"provider": "p", "model": "m", "dimensions": None}
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(5):
            keyer = EmbeddingKeyer(**fields, role="document")

            def run(tid: int, keyer: EmbeddingKeyer = keyer) -> None:
                for i in range(1500):
                    keyer.key(f"{tid % 4}-{i}-" + "x" * 1000)  # pairs of threads overlap

            threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            held = sum(len(t) for t in list(keyer._memo))
            assert keyer._chars == held
            assert held <= keys.MEMO_CHARS and len(keyer._memo) <= keys.MEMO_TEXTS
    finally:
        sys.setswitchinterval(switch)
    text = "a text"
    assert keyer.key(text) == embedding_key(**fields, role="document", text=text)
