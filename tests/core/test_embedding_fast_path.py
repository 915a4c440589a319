"""The lean request path: lazy single-flight futures, gate token estimates, manager choice."""

from __future__ import annotations

import asyncio
import threading
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag_perf_plugins.admission import AdmissionGate, RetryPolicy
from rag_perf_plugins.cache import (
    CacheManager,
    cache_manager_for,
    get_cache_manager,
    set_cache_manager,
)
from rag_perf_plugins.cache.serialize import round_vectors
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import (
    CacheEmbeddingStore,
    EmbeddingService,
    default_embedding_store,
)
from rag_perf_plugins.tokens import estimate_tokens
from rag_perf_plugins.tracking import NULL_TRACKER, PerformanceTracker

OFF = PerformanceConfig(enable_caching=False, enable_metrics=False)


class RecordingGate:
    """A real AdmissionGate that records the token counts it is asked for."""

    def __init__(self, config: PerformanceConfig) -> None:
        self.gate = AdmissionGate(config, tracker=NULL_TRACKER)
        self.limits = self.gate.limits
        self.tokens: list[int] = []

    def aacquire(self, *, tokens: int = 0) -> Any:
        self.tokens.append(tokens)
        return self.gate.aacquire(tokens=tokens)

    @contextmanager
    def acquire(self, *, tokens: int = 0) -> Iterator[Any]:
        self.tokens.append(tokens)
        with self.gate.acquire(tokens=tokens) as ticket:
            yield ticket


def _service(**kw: Any) -> EmbeddingService:
    def embed(texts: list[str]) -> list[list[float]]:
        return [[float(len(t)), 0.1] for t in texts]

    options: dict[str, Any] = {"provider": "p", "model": "m", "symmetric": True, "config": OFF}
    options.update(kw)
    return EmbeddingService(embed, **options)


def test_gate_gets_token_estimates_only_under_a_token_budget() -> None:
    unlimited = RecordingGate(PerformanceConfig(enable_metrics=False))
    _service(gate=unlimited, batching=False).embed_documents(["one two three", "four"])
    assert unlimited.tokens == [0]

    budget = RecordingGate(PerformanceConfig(tokens_per_minute=10_000, enable_metrics=False))
    _service(gate=budget, batching=False).embed_documents(["one two three", "four"])
    assert budget.tokens == [4]


def test_uncontended_calls_leave_no_flight_behind_and_round_once() -> None:
    service = _service(batching=False)
    assert service.embed_documents(["ab", "ab", "abc"]) == round_vectors(
        [[2.0, 0.1], [2.0, 0.1], [3.0, 0.1]], "float32"
    )
    assert service.provider_calls == 1 and len(service._flights) == 0


def test_a_follower_joining_a_running_flight_gets_the_leaders_vector() -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[list[str]] = []

    def slow(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        started.set()
        assert release.wait(5)
        return [[1.0] for _ in texts]

    service = EmbeddingService(
        slow, provider="p", model="m", symmetric=True, config=OFF, batching=False
    )
    results: list[list[float]] = []
    leader = threading.Thread(target=lambda: results.append(service.embed_query("same")))
    leader.start()
    assert started.wait(5)
    follower = threading.Thread(target=lambda: results.append(service.embed_query("same")))
    follower.start()
    while service._flights._table["query\x00same"].future is None:  # follower is waiting
        threading.Event().wait(0.001)
    release.set()
    leader.join(5)
    follower.join(5)
    assert results == [[1.0], [1.0]] and len(calls) == 1


def test_a_failed_flight_reaches_a_waiting_async_follower() -> None:
    async def run() -> None:
        started, release = asyncio.Event(), asyncio.Event()

        async def failing(texts: list[str]) -> list[list[float]]:
            started.set()
            await release.wait()
            raise RuntimeError("provider down")

        service = EmbeddingService(
            lambda texts: [],
            aembed_many=failing,
            provider="p",
            model="m",
            symmetric=True,
            config=OFF,
            batching=False,
        )
        first = asyncio.ensure_future(service.aembed_query("q"))
        await started.wait()
        second = asyncio.ensure_future(service.aembed_query("q"))
        await asyncio.sleep(0)
        release.set()
        for task in (first, second):
            with pytest.raises(RuntimeError, match="provider down"):
                await task
        assert service.provider_calls == 1 and len(service._flights) == 0

    asyncio.run(run())


def test_cache_store_is_written_with_the_services_rounding(tmp_path: Path) -> None:
    manager = CacheManager(PerformanceConfig(cache_dir=str(tmp_path), enable_metrics=False))
    cfg = PerformanceConfig(cache_dir=str(tmp_path), enable_metrics=False)
    service = _service(config=cfg, store=CacheEmbeddingStore(manager), batching=False)
    cold = service.embed_documents(["abc"])
    warm = service.embed_documents(["abc"])
    assert cold == warm == round_vectors([[3.0, 0.1]], "float32")
    assert service.provider_calls == 1
    assert manager.set_vectors({"k": [0.1]}) == {"k": [0.10000000149011612]}
    assert manager.set_vectors({"k": [0.5]}, rounded=True) == {"k": [0.5]}
    manager.close()


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_query_hit_is_recorded_as_the_general_path_records_it(
    tmp_path: Path, asynchronous: bool
) -> None:
    counts = []
    for shortcut in (True, False):
        cfg = PerformanceConfig(cache_dir=str(tmp_path / str(shortcut)))
        tracker = PerformanceTracker()
        store = CacheEmbeddingStore(CacheManager(cfg))
        service = _service(config=cfg, store=store, batching=False, tracker=tracker)
        text = "what is retrieval augmented generation?"
        cold = service.embed_query(text)
        if shortcut:
            warm = (
                asyncio.run(service.aembed_query(text))
                if asynchronous
                else service.embed_query(text)
            )
        else:  # the general path: plan, memory-tier lookup, record
            warm = (
                asyncio.run(service._aembed([text], "query"))
                if asynchronous
                else service._embed([text], "query")
            )[0]
        assert warm == cold and warm is not cold
        warm[0] = 42.0  # the caller's own list
        assert service.embed_query(text) == cold
        metrics = tracker.get_metrics("embedding.query")
        counts.append(
            {k: v for k, v in metrics.items() if "latency" not in k and "throughput" not in k}
        )
        assert service.provider_calls == 1
    assert counts[0] == counts[1]
    assert counts[0]["cache_hits"] == 2 and counts[0]["tokens_saved"] == 2 * estimate_tokens(
        "what is retrieval augmented generation?"
    )


def test_manager_choice_follows_the_cache_settings(tmp_path: Path) -> None:
    previous = set_cache_manager(None)
    try:
        process = get_cache_manager()
        assert cache_manager_for(PerformanceConfig()) is process
        assert cache_manager_for(PerformanceConfig(batch_size=64)) is process
        assert cache_manager_for(process.config.replace(batch_size=7)) is process
        own = cache_manager_for(PerformanceConfig(cache_dir=str(tmp_path / "a")))
        assert own is not process
        assert own.config.cache_dir == str(tmp_path / "a")
        same = cache_manager_for(PerformanceConfig(cache_dir=str(tmp_path / "a"), batch_size=3))
        assert same is own
        other = cache_manager_for(PerformanceConfig(cache_dir=str(tmp_path / "b")))
        assert other is not own
        assert default_embedding_store(PerformanceConfig(enable_caching=False)) is None
        store = default_embedding_store(PerformanceConfig(cache_dir=str(tmp_path / "a")))
        assert isinstance(store, CacheEmbeddingStore) and store.cache is own
    finally:
        set_cache_manager(previous)


# --- the one-text, uncached path (embed_query / one-text embed_documents, no store) -----


def test_one_text_uncached_calls_are_recorded_like_any_call() -> None:
    tracker = PerformanceTracker()
    service = _service(tracker=tracker, batching=False)
    assert service.embed_query("one two three") == round_vectors([[13.0, 0.1]], "float32")[0]
    assert service.embed_documents(["four"]) == round_vectors([[4.0, 0.1]], "float32")
    query = tracker.get_operation_stats("embedding.query")
    document = tracker.get_operation_stats("embedding.document")
    assert (query.count, query.errors, query.tokens_in, query.tokens_saved) == (
        1,
        0,
        estimate_tokens("one two three"),
        0,
    )
    assert (query.cache_hits, query.cache_misses, query.batch_size_max) == (0, 0, 1)
    assert (document.count, document.tokens_in) == (1, estimate_tokens("four"))
    assert service.provider_calls == 2 and len(service._flights) == 0


def test_one_text_uncached_error_is_counted_and_frees_the_flight() -> None:
    tracker = PerformanceTracker()
    fail = [True]

    def flaky(texts: list[str]) -> list[list[float]]:
        if fail[0]:
            raise ValueError("bad input")  # not retryable: reaches the caller at once
        return [[1.0] for _ in texts]

    service = EmbeddingService(
        flaky,
        provider="p",
        model="m",
        symmetric=True,
        config=OFF,
        batching=False,
        tracker=tracker,
    )
    with pytest.raises(ValueError, match="bad input"):
        service.embed_query("q")
    assert len(service._flights) == 0
    fail[0] = False
    assert service.embed_query("q") == [1.0]
    stats = tracker.get_operation_stats("embedding.query")
    assert (stats.count, stats.errors) == (2, 1)


def test_one_text_follower_is_counted_as_coalesced_and_gets_its_own_list() -> None:
    started, release = threading.Event(), threading.Event()
    tracker = PerformanceTracker()

    def slow(texts: list[str]) -> list[list[float]]:
        started.set()
        assert release.wait(5)
        return [[1.0, 2.0] for _ in texts]

    service = EmbeddingService(
        slow,
        provider="p",
        model="m",
        symmetric=True,
        config=OFF,
        batching=False,
        tracker=tracker,
    )
    results: list[list[float]] = []
    leader = threading.Thread(target=lambda: results.append(service.embed_query("same")))
    leader.start()
    assert started.wait(5)
    follower = threading.Thread(target=lambda: results.append(service.embed_query("same")))
    follower.start()
    while service._flights._table["query\x00same"].future is None:  # follower is waiting
        threading.Event().wait(0.001)
    release.set()
    leader.join(5)
    follower.join(5)
    assert results == [[1.0, 2.0], [1.0, 2.0]] and results[0] is not results[1]
    stats = tracker.get_operation_stats("embedding.query")
    assert stats.count == 2 and stats.counters == {"coalesced": 1}
    assert (stats.tokens_in, stats.tokens_saved) == (estimate_tokens("same"),) * 2
    assert service.provider_calls == 1


@pytest.mark.parametrize("batching", [False, True])
def test_one_text_uncached_results_are_each_callers_own(batching: bool) -> None:
    # Unbatched and without a follower the leader keeps the rounded list (no copy); it
    # must still be a list nobody else holds: not the provider's, not the last call's.
    given = [1.0, 2.0]
    service = EmbeddingService(
        lambda texts: [given for _ in texts],
        provider="p",
        model="m",
        symmetric=True,
        config=OFF,
        batching=batching,
    )
    first = service.embed_query("q")
    first.append(9.0)
    second = service.embed_documents(["q"])[0]
    second.append(8.0)
    assert service.embed_query("q") == [1.0, 2.0] and given == [1.0, 2.0]
    assert first is not given and second is not given
    service.close()


@pytest.mark.parametrize("call", ["query", "one document", "documents"])
def test_a_given_gate_admits_every_provider_call(call: str) -> None:
    limited = AdmissionGate(
        PerformanceConfig(requests_per_minute=6_000, enable_metrics=False),
        key=f"fast-path-{call}",
        tracker=NULL_TRACKER,
    )
    service = _service(gate=limited, batching=False)
    for i in range(3):
        if call == "query":
            service.embed_query(f"q{i}")
        elif call == "one document":
            service.embed_documents([f"d{i}"])
        else:
            service.embed_documents([f"a{i}", f"b{i}"])
    assert limited.stats()["admitted"] == service.provider_calls == 3


def test_without_a_gate_the_retry_policy_alone_wraps_each_provider_call() -> None:
    attempts: list[str] = []

    def flaky(texts: list[str]) -> list[list[float]]:
        attempts.extend(texts)
        if len(attempts) == 1:
            raise ConnectionError("reset by peer")  # retryable
        return [[0.5] for _ in texts]

    retry = RetryPolicy(OFF, sleep=lambda seconds: None)
    service = EmbeddingService(
        flaky,
        provider="p",
        model="m",
        symmetric=True,
        config=OFF,
        batching=False,
        retry=retry,
    )
    assert service.embed_query("q") == [0.5]
    assert attempts == ["q", "q"] and service.provider_calls == 2
    assert (retry.stats()["calls"], retry.stats()["retries"]) == (1, 1)


def test_round_vectors_matches_array_float32_exactly() -> None:
    vectors: list[Any] = [
        [0.1, -0.0, 1e-45, 3.4028235677973366e38, 1e300, -1e300, float("inf"), 7, True],
        list(np.linspace(-3.0, 3.0, 384)),  # numpy float64 items
        np.arange(4.0),  # a numpy row
        [],
    ]
    rounded = round_vectors(vectors, "float32")
    expected = [array("f", v).tolist() for v in vectors]
    assert repr(rounded) == repr(expected)
    assert all(type(x) is float for row in rounded for x in row)
    nan = round_vectors([[float("nan")]], "float32")[0][0]
    assert nan != nan
    not_numbers: Any = [[0.5, "x"]]
    with pytest.raises(TypeError, match="real number"):
        round_vectors(not_numbers, "float32")


def test_a_price_registered_or_removed_between_calls_is_used_at_the_next_call(
    tmp_path: Path,
) -> None:
    from rag_perf_plugins.cost import register_price, unregister_price

    model = "fast-path-price-test"
    cfg = PerformanceConfig(cache_dir=str(tmp_path))
    tracker = PerformanceTracker()
    store = CacheEmbeddingStore(CacheManager(cfg))
    service = _service(config=cfg, store=store, batching=False, tracker=tracker, model=model)
    text = "one two three four"
    tokens = estimate_tokens(text)

    def hit() -> tuple[Any, int]:
        service.embed_query(text)  # a memory-tier hit (the one-text shortcut)
        stats = tracker.get_operation_stats("embedding.query")
        return stats.cost_saved_usd, stats.cost_unknown_calls

    service.embed_query(text)  # the miss: no price yet
    assert hit() == (0.0, 2)
    try:
        register_price(model, embedding=2.0, as_of="2026-12-05", source="test")
        assert hit() == (pytest.approx(tokens * 2.0 / 1e6), 2)
        register_price(model, embedding=4.0, as_of="2026-12-05", source="test")
        assert hit() == (pytest.approx(tokens * 6.0 / 1e6), 2)
    finally:
        unregister_price(model)
    assert hit() == (pytest.approx(tokens * 6.0 / 1e6), 3)


# --- a gate that admits at once: no acquire block, the same admission ------------------
@pytest.mark.parametrize("asynchronous", [False, True])
def test_gate_admitting_at_once_listens_records_and_frees_its_slot(asynchronous: bool) -> None:
    from rag_perf_plugins.pool import http

    tracker = PerformanceTracker()
    gate = AdmissionGate(
        PerformanceConfig(enable_caching=False), key=f"at-once-{asynchronous}",
        tracker=tracker, operation="embedding.admission",
    )  # fmt: skip
    assert gate.admit_now() is not None  # no rate budget: this gate admits at once
    heard: list[Any] = []
    fail = {"now": False}

    def embed(texts: list[str]) -> list[list[float]]:
        heard.append(http._listener.get())  # the listeners in place during the call
        if fail["now"]:
            raise ValueError("provider said no")
        return [[float(len(t)), 1.0] for t in texts]

    async def aembed(texts: list[str]) -> list[list[float]]:
        return embed(texts)

    service = EmbeddingService(
        embed, aembed_many=aembed, provider="p", model="m", symmetric=True, config=OFF,
        gate=gate, retry=RetryPolicy(OFF, retry_max_attempts=1), tracker=NULL_TRACKER,
        batching=False,
    )  # fmt: skip

    def run(text: str) -> list[float]:
        if asynchronous:
            return asyncio.run(service.aembed_query(text))
        return service.embed_query(text)

    assert run("four") == [4.0, 1.0]
    fail["now"] = True
    with pytest.raises(ValueError, match="provider said no"):
        run("seven!!")
    listeners = heard[0]
    assert listeners is not None and listeners[0] == gate.observe_response
    assert heard[1] == listeners
    assert http._listener.get() is None  # restored after each call, failed or not
    stats = gate.stats()
    assert stats["admitted"] == 3  # the admit_now probe above, and one per call
    assert stats["in_flight"] == 1  # only the probe's ticket, never left
    op = tracker.get_operation_stats("embedding.admission")
    assert op.count == 2 and op.errors == 1  # one record per call, the failure as an error


class AskedGate(AdmissionGate):
    """A gate subclass that notes every acquire: what it adds must not be skipped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[str] = []

    def acquire(self, **kwargs: Any) -> Any:
        self.asked.append("acquire")
        return super().acquire(**kwargs)

    def aacquire(self, **kwargs: Any) -> Any:
        self.asked.append("aacquire")
        return super().aacquire(**kwargs)


def test_a_gate_subclass_is_always_asked_through_its_acquire() -> None:
    gate = AskedGate(OFF, key="asked-gate", tracker=NULL_TRACKER)
    assert gate.admit_now() is not None  # it could admit at once ...

    async def aembed(texts: list[str]) -> list[list[float]]:
        return [[1.0]] * len(texts)

    service = EmbeddingService(
        lambda texts: [[1.0]] * len(texts), aembed_many=aembed, provider="p", model="m",
        symmetric=True, config=OFF, gate=gate, batching=False, tracker=NULL_TRACKER,
    )  # fmt: skip
    service.embed_query("a")
    asyncio.run(service.aembed_query("b"))
    assert gate.asked == ["acquire", "aacquire"]  # ... but its overrides are what it adds
