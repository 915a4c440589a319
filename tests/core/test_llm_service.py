"""LLMService without any framework: keys, policy, control, single-flight, gate, retry, streams."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate, RetryPolicy
from rag_perf_plugins.cache import CacheManager, cache_control, parse_control
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.llm import LLMRequest, LLMService, Usage
from rag_perf_plugins.tracking import PerformanceTracker

Answer = dict[str, Any]


class Codec:
    """A plain-dict answer; hits come back marked, with zero usage."""

    def encode(self, value: Answer) -> Any:
        return {"text": value["text"], "usage": value["usage"]}

    def decode(self, data: Any) -> Answer:
        return {"text": data["text"], "usage": [0, 0], "cache_hit": True}

    def usage(self, value: Answer) -> Usage | None:
        return Usage(*value["usage"])


class ChunkCodec:
    def encode(self, chunk: str) -> Any:
        return chunk

    def decode(self, data: Any) -> str:
        return f"{data}*"  # replayed chunks are marked

    def usage(self, chunks: Sequence[str]) -> Usage | None:
        return Usage(10, len(chunks))


class Provider:
    """Counts calls; answers from the request; can fail the first ``fail`` attempts."""

    def __init__(self, fail: int = 0) -> None:
        self.calls = 0
        self.fail = fail

    def answer(self, request: LLMRequest) -> Answer:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionError("connection reset")
        return {
            "text": f"answer {self.calls} to {request.messages[-1]['content']}",
            "usage": [7, 3],
        }

    def chunks(self, n: int = 3, *, fail_at: int | None = None) -> Iterator[str]:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionError("connection reset")
        for i in range(n):
            if fail_at == i:
                raise RuntimeError("stream broke")
            yield f"c{i}"

    async def achunks(self, n: int = 3, *, fail_at: int | None = None) -> AsyncIterator[str]:
        for chunk in self.chunks(n, fail_at=fail_at):
            await asyncio.sleep(0)
            yield chunk


def request(**changes: Any) -> LLMRequest:
    fields: dict[str, Any] = {
        "model": "m",
        "provider": "sim",
        "messages": [{"role": "user", "content": "what is rag?"}],
        "params": {"temperature": 0.0, "max_tokens": 16, "timeout": 30},
    }
    fields.update(changes)
    return LLMRequest(**fields)


@pytest.fixture
def tracker() -> PerformanceTracker:
    return PerformanceTracker()


def make_service(
    tmp_path: Path, tracker: PerformanceTracker, **options: Any
) -> tuple[LLMService, CacheManager]:
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "cache"),
        cache_skip_sampled=options.pop("cache_skip_sampled", False),
    )
    cache = CacheManager(config)
    return LLMService(config=config, cache=cache, tracker=tracker, **options), cache


def test_miss_then_hit_is_marked_and_saves_tokens(
    tmp_path: Path, tracker: PerformanceTracker
) -> None:
    service, _ = make_service(tmp_path, tracker)
    provider = Provider()
    req = request()
    first = service.generate(req, lambda: provider.answer(req), Codec())
    second = service.generate(req, lambda: provider.answer(req), Codec())
    assert provider.calls == 1
    assert "cache_hit" not in first
    assert second == {"text": first["text"], "usage": [0, 0], "cache_hit": True}
    stats = tracker.get_metrics("llm")
    assert stats["count"] == 2
    assert stats["tokens_in"] == 7 and stats["tokens_out"] == 3  # the hit billed nothing
    assert stats["tokens_saved"] == 10
    assert stats["cache_hits"] == 1 and stats["cache_misses"] == 1


def test_cached_answers_memory_hits_only_and_counts_them_as_generate_does(
    tmp_path: Path, tracker: PerformanceTracker
) -> None:
    service, cache = make_service(tmp_path, tracker)
    other = PerformanceTracker()
    reference, _ = make_service(tmp_path / "reference", other)
    provider = Provider()
    req = request()
    assert service.cached(req, Codec()) is None  # a miss: nothing counted
    assert tracker.get_metrics("llm")["count"] == 0
    assert cache.get_stats()["misses"] == 0
    first = service.generate(req, lambda: provider.answer(req), Codec())
    hit = service.cached(req, Codec())
    assert hit == {"text": first["text"], "usage": [0, 0], "cache_hit": True}
    # The same call through generate() on a twin service: the same statistics.
    reference.generate(req, lambda: provider.answer(req), Codec())
    reference.generate(req, lambda: provider.answer(req), Codec())

    def counts(metrics: dict[str, Any]) -> dict[str, Any]:
        timed = ("latency", "throughput", "qps", "window", "uptime", "ttft", "queue_wait")
        return {k: v for k, v in metrics.items() if not any(t in k for t in timed)}

    assert counts(tracker.get_metrics("llm")) == counts(other.get_metrics("llm"))
    assert tracker.get_metrics("llm")["cache_hits"] == 1
    with cache_control("bypass"):
        assert service.cached(req, Codec()) is None
    assert service.cached(req, Codec(), control=parse_control("refresh")) is None
    # On disk only (a new process): the caller's general path reads it, counted once there.
    fresh, fresh_cache = make_service(tmp_path, PerformanceTracker())
    assert fresh.cached(req, Codec()) is None
    assert fresh_cache.get_stats()["misses"] == 0 and fresh_cache.get_stats()["hits"] == 0
    assert provider.calls == 2


def test_cached_leaves_a_corrupt_entry_to_the_general_path(tmp_path: Path) -> None:
    class Refuses(Codec):
        def decode(self, data: Any) -> Answer:
            raise ValueError("not an answer")

    req = request()
    counters = []
    for peek_first in (True, False):
        tracker = PerformanceTracker()
        service, cache = make_service(tmp_path / str(peek_first), tracker)
        key = service.cache_key(req)
        assert key is not None
        cache.set(key, {"kind": "result", "data": 1, "usage": [1, 1]}, namespace="llm")
        if peek_first:
            assert service.cached(req, Refuses()) is None
            assert tracker.get_metrics("llm")["count"] == 0
        provider = Provider()
        service.generate(req, functools.partial(provider.answer, req), Refuses())
        assert provider.calls == 1
        counters.append(tracker.get_metrics("llm")["counters"])
    assert counters[0] == counters[1] and counters[0]["cache.errors"] >= 1  # counted once


def test_a_new_service_on_the_same_directory_hits(
    tmp_path: Path, tracker: PerformanceTracker
) -> None:
    service, cache = make_service(tmp_path, tracker)
    provider = Provider()
    req = request()
    service.generate(req, lambda: provider.answer(req), Codec())
    cache.close()
    again, _ = make_service(tmp_path, tracker)
    assert again.generate(req, lambda: provider.answer(req), Codec())["cache_hit"] is True
    assert provider.calls == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"model": "other-model"},
        {"provider": "other-endpoint"},
        {"params": {"temperature": 0.5, "max_tokens": 16}},
        {"params": {"temperature": 0.0, "max_tokens": 17}},
        {"messages": [{"role": "user", "content": "what is RAG?"}]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "required"},
        {"response_format": {"type": "json_object"}},
        {"seed": 7},
    ],
)
def test_must_miss(tmp_path: Path, tracker: PerformanceTracker, changes: dict[str, Any]) -> None:
    service, _ = make_service(tmp_path, tracker)
    provider = Provider()
    base, other = request(), request(**changes)
    service.generate(base, lambda: provider.answer(base), Codec())
    answer = service.generate(other, lambda: provider.answer(other), Codec())
    assert provider.calls == 2
    assert "cache_hit" not in answer


def test_timeouts_and_retries_do_not_change_the_key() -> None:
    a = request(params={"temperature": 0.0, "max_tokens": 16, "timeout": 30})
    b = request(params={"temperature": 0.0, "max_tokens": 16, "timeout": 5, "max_retries": 9})
    assert a.key() == b.key()
    assert "timeout" in a.explain().excluded


def test_skip_sampled_policy(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, _ = make_service(tmp_path, tracker, cache_skip_sampled=True)
    provider = Provider()
    sampled = request(params={"temperature": 0.7})
    seeded = request(params={"temperature": 0.7}, seed=3)
    for _ in range(2):
        service.generate(sampled, lambda: provider.answer(sampled), Codec())
    assert provider.calls == 2
    assert service.cache_key(sampled) is None
    for _ in range(2):
        service.generate(seeded, lambda: provider.answer(seeded), Codec())
    assert provider.calls == 3


def test_policy_is_the_services_config_not_the_managers(
    tmp_path: Path, tracker: PerformanceTracker
) -> None:
    shared = CacheManager(PerformanceConfig(cache_dir=str(tmp_path / "shared")))
    service = LLMService(
        config=PerformanceConfig(cache_skip_sampled=True), cache=shared, tracker=tracker
    )
    assert service.cache_key(request(params={"temperature": 0.7})) is None
    assert service.cache_key(request()) is not None


def test_cache_control_modes(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, _ = make_service(tmp_path, tracker)
    provider = Provider()
    req = request()

    def ask() -> Answer:
        return service.generate(req, lambda: provider.answer(req), Codec())

    with cache_control("no-store"):
        ask()
    assert provider.calls == 1
    with cache_control("bypass"):
        ask()
    assert provider.calls == 2
    first = ask()  # stored now
    assert ask()["text"] == first["text"]
    assert provider.calls == 3
    with cache_control("refresh"):
        refreshed = ask()
    assert provider.calls == 4
    assert ask()["text"] == refreshed["text"] != first["text"]
    assert provider.calls == 4


def test_errors_are_not_stored(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, _ = make_service(tmp_path, tracker)
    provider = Provider(fail=1)
    req = request()
    with pytest.raises(ConnectionError):
        service.generate(req, lambda: provider.answer(req), Codec())
    assert "cache_hit" not in service.generate(req, lambda: provider.answer(req), Codec())
    assert provider.calls == 2
    assert tracker.get_metrics("llm")["errors"] == 1


def test_unkeyable_request_goes_uncached(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, _ = make_service(tmp_path, tracker)
    provider = Provider()
    req = request(response_format=object())
    assert service.cache_key(req) is None
    for _ in range(2):
        service.generate(req, lambda: provider.answer(req), Codec())
    assert provider.calls == 2


def test_corrupt_entry_is_a_miss(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, cache = make_service(tmp_path, tracker)
    provider = Provider()
    req = request()
    key = service.cache_key(req)
    assert key is not None
    cache.set(key, {"kind": "result", "data": 1, "usage": "lots"}, namespace="llm")
    service.generate(req, lambda: provider.answer(req), Codec())
    assert provider.calls == 1


def test_threads_coalesce_identical_misses(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, _ = make_service(tmp_path, tracker)
    release = threading.Event()
    entered = threading.Event()
    calls = 0

    def slow() -> Answer:
        nonlocal calls
        calls += 1
        entered.set()
        release.wait(5)
        return {"text": "one", "usage": [1, 1]}

    req = request()
    results: list[Answer] = []
    leader = threading.Thread(target=lambda: results.append(service.generate(req, slow, Codec())))
    leader.start()
    assert entered.wait(5)
    followers = [
        threading.Thread(target=lambda: results.append(service.generate(req, slow, Codec())))
        for _ in range(3)
    ]
    for t in followers:
        t.start()
    # Followers either joined the flight or (if they looked up after it ended) hit the cache.
    release.set()
    for t in [leader, *followers]:
        t.join(5)
    assert calls == 1
    assert [r["text"] for r in results] == ["one"] * 4
    assert sum("cache_hit" not in r for r in results) == 1


async def test_tasks_coalesce_identical_misses(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, _ = make_service(tmp_path, tracker)
    calls = 0

    async def slow() -> Answer:
        nonlocal calls
        calls += 1
        for _ in range(5):
            await asyncio.sleep(0)
        return {"text": "one", "usage": [1, 1]}

    req = request()
    results = await asyncio.gather(*(service.agenerate(req, slow, Codec()) for _ in range(5)))
    assert calls == 1
    assert sum("cache_hit" not in r for r in results) == 1
    metrics = tracker.get_metrics("llm")
    assert metrics["count"] == 5
    assert metrics["tokens_in"] == 1  # followers billed nothing
    assert metrics["tokens_saved"] == 4 * 2  # each follower saved the leader's 1 + 1
    assert (await service.agenerate(req, slow, Codec()))["cache_hit"] is True
    assert calls == 1


def test_gate_and_retry_on_misses_only(tmp_path: Path, tracker: PerformanceTracker) -> None:
    clock = FakeClock()
    gate = AdmissionGate(
        PerformanceConfig(tokens_per_minute=100_000, enable_metrics=False),
        key="test/llm",
        clock=clock,
        sleep=clock.advance,
    )
    retry = RetryPolicy(
        PerformanceConfig(retry_max_attempts=3, enable_metrics=False),
        clock=clock,
        sleep=clock.advance,
    )
    service, _ = make_service(tmp_path, tracker, gate=gate, retry=retry)
    provider = Provider(fail=1)
    req = request()
    service.generate(req, lambda: provider.answer(req), Codec())
    assert provider.calls == 2
    assert gate.stats()["admitted"] == 2
    assert retry.stats()["retries"] == 1
    service.generate(req, lambda: provider.answer(req), Codec())  # a hit
    assert gate.stats()["admitted"] == 2 and provider.calls == 2
    assert tracker.get_metrics("llm")["retries"] == 1


def test_gate_reconciles_the_estimate_with_actual_usage(
    tmp_path: Path, tracker: PerformanceTracker
) -> None:
    reconciled: list[int] = []

    class Ticket:
        queue_wait_s = 0.25

        def reconcile(self, actual: int) -> None:
            reconciled.append(actual)

    class Gate:
        def __init__(self) -> None:
            self.tokens: list[int] = []

        def acquire(self, *, tokens: int = 0) -> Any:
            self.tokens.append(tokens)
            return _Ctx(Ticket())

        def aacquire(self, *, tokens: int = 0) -> Any:  # pragma: no cover - sync test
            raise AssertionError

    gate = Gate()
    service, _ = make_service(tmp_path, tracker, gate=gate)
    req = request()
    service.generate(req, lambda: Provider().answer(req), Codec())
    assert gate.tokens == [req.estimated_tokens()]
    assert req.estimated_tokens() >= 16  # max_tokens is part of the estimate
    assert reconciled == [10]
    assert tracker.get_metrics("llm")["queue_wait_p50_s"] == pytest.approx(0.25, rel=0.01)


class _Ctx:
    def __init__(self, value: Any) -> None:
        self.value = value

    def __enter__(self) -> Any:
        return self.value

    def __exit__(self, *exc: object) -> None:
        return None


# --- streams ------------------------------------------------------------------------------
def test_stream_recorded_then_replayed_with_ttft(
    tmp_path: Path, tracker: PerformanceTracker
) -> None:
    clock = FakeClock()
    service, _ = make_service(tmp_path, tracker, clock=clock)
    provider = Provider()
    req = request()

    def open_stream() -> Iterator[str]:
        clock.advance(0.5)  # the provider's time to first chunk
        return provider.chunks()

    class SlowDecode(ChunkCodec):
        def decode(self, data: Any) -> str:
            clock.advance(0.01)  # decoding the stored chunks takes the replay's time
            return super().decode(data)

    assert list(service.stream(req, open_stream, SlowDecode())) == ["c0", "c1", "c2"]
    assert list(service.stream(req, open_stream, SlowDecode())) == ["c0*", "c1*", "c2*"]
    assert provider.calls == 1
    stats = tracker.get_metrics("llm.stream")
    assert stats["count"] == 2 and stats["cache_hits"] == 1
    assert stats["tokens_in"] == 10 and stats["tokens_out"] == 3 and stats["tokens_saved"] == 13
    hist = tracker.histograms("llm.stream")["ttft"]
    assert hist.count == 2
    # only the first stored chunk is decoded before it is yielded; the rest follow lazily
    assert hist.min == pytest.approx(0.01, rel=0.01)
    assert hist.max == pytest.approx(0.5, rel=0.01)  # the live one
    # a streamed entry does not answer a non-streamed call
    assert service.cache_key(req) != service.cache_key(req, stream=True)


def test_abandoned_stream_is_not_stored(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, _ = make_service(tmp_path, tracker)
    provider = Provider()
    req = request()
    stream = service.stream(req, provider.chunks, ChunkCodec())
    assert next(stream) == "c0"
    stream.close()
    assert list(service.stream(req, provider.chunks, ChunkCodec())) == ["c0", "c1", "c2"]
    assert provider.calls == 2
    assert tracker.get_metrics("llm.stream")["streams_abandoned"] == 1


def test_broken_stream_is_not_stored(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, _ = make_service(tmp_path, tracker)
    provider = Provider()
    req = request()
    with pytest.raises(RuntimeError, match="stream broke"):
        list(service.stream(req, lambda: provider.chunks(fail_at=2), ChunkCodec()))
    assert list(service.stream(req, provider.chunks, ChunkCodec())) == ["c0", "c1", "c2"]
    assert provider.calls == 2
    assert tracker.get_metrics("llm.stream")["errors"] == 1


def test_stream_open_is_retried_before_the_first_chunk(
    tmp_path: Path, tracker: PerformanceTracker
) -> None:
    clock = FakeClock()
    retry = RetryPolicy(
        PerformanceConfig(retry_max_attempts=3, enable_metrics=False),
        clock=clock,
        sleep=clock.advance,
    )
    service, _ = make_service(tmp_path, tracker, retry=retry)
    provider = Provider(fail=1)
    req = request()
    assert list(service.stream(req, provider.chunks, ChunkCodec())) == ["c0", "c1", "c2"]
    assert retry.stats()["retries"] == 1


async def test_async_stream_record_replay_and_abandon(
    tmp_path: Path, tracker: PerformanceTracker
) -> None:
    service, _ = make_service(tmp_path, tracker)
    provider = Provider()
    req = request()
    abandoned = service.astream(req, provider.achunks, ChunkCodec())
    assert await anext(abandoned) == "c0"
    await abandoned.aclose()
    live = [c async for c in service.astream(req, provider.achunks, ChunkCodec())]
    replay = [c async for c in service.astream(req, provider.achunks, ChunkCodec())]
    assert live == ["c0", "c1", "c2"] and replay == ["c0*", "c1*", "c2*"]
    assert provider.calls == 2
    with pytest.raises(RuntimeError):
        other = request(model="other")
        async for _ in service.astream(other, lambda: provider.achunks(fail_at=1), ChunkCodec()):
            pass
    assert [c async for c in service.astream(other, provider.achunks, ChunkCodec())] == [
        "c0",
        "c1",
        "c2",
    ]
    stats = tracker.get_metrics("llm.stream")
    assert stats["streams_abandoned"] == 1 and stats["errors"] == 1 and stats["cache_hits"] == 1


def test_unstorable_answers_go_on_uncached(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, _ = make_service(tmp_path, tracker)
    provider = Provider()
    req = request()

    class Unstorable(Codec):
        def encode(self, value: Answer) -> Any:
            return {"text": object()}  # msgpack cannot store it

    class BadChunks(ChunkCodec):
        def encode(self, chunk: str) -> Any:
            raise ValueError("no")

    for _ in range(2):
        assert "cache_hit" not in service.generate(req, lambda: provider.answer(req), Unstorable())
        assert list(service.stream(req, provider.chunks, BadChunks())) == ["c0", "c1", "c2"]
    assert provider.calls == 4
    assert tracker.get_metrics("llm")["counters"]["cache.errors"] == 4  # 2 answers, 2 streams


def test_replay_failing_midway_is_an_error(tmp_path: Path, tracker: PerformanceTracker) -> None:
    service, cache = make_service(tmp_path, tracker)
    req = request()
    key = service.cache_key(req, stream=True)
    assert key is not None
    cache.set(key, {"kind": "stream", "data": ["a", None], "usage": [1, 1]}, namespace="llm")

    class Strict(ChunkCodec):
        def decode(self, data: Any) -> str:
            if not isinstance(data, str):
                raise TypeError("not a chunk")
            return data

    got: list[str] = []
    with pytest.raises(TypeError):
        for chunk in service.stream(req, Provider().chunks, Strict()):
            got.append(chunk)
    assert got == ["a"]
    assert tracker.get_metrics("llm.stream")["errors"] == 1


def test_caching_off(tmp_path: Path, tracker: PerformanceTracker) -> None:
    config = PerformanceConfig(cache_dir=str(tmp_path / "c"), enable_caching=False)
    service = LLMService(config=config, tracker=tracker)
    provider = Provider()
    req = request()
    for _ in range(2):
        service.generate(req, lambda: provider.answer(req), Codec())
    assert provider.calls == 2 and service.cache is None
    assert tracker.get_metrics("llm")["cache_hits"] == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="model must be a non-empty str"):
        LLMRequest(model="", messages=[])
    with pytest.raises(ValueError, match="operation"):
        LLMService(operation="")


async def test_a_miss_read_before_the_leader_stored_makes_no_second_call(
    tmp_path: Path, tracker: PerformanceTracker
) -> None:
    """The window between a caller's lookup and its claim: the leader stored meanwhile."""
    import threading

    from rag_perf_plugins.cache import DiskTier, MemoryTier

    class SlowDisk(DiskTier):
        block_next = False
        entered = threading.Event()
        release = threading.Event()

        def get_many(self, keys: Any) -> dict[str, bytes]:
            found = super().get_many(keys)
            if SlowDisk.block_next:
                SlowDisk.block_next = False
                SlowDisk.entered.set()
                SlowDisk.release.wait(10)
            return found

    config = PerformanceConfig(cache_dir=str(tmp_path / "c"))
    cache = CacheManager(
        config, tiers=[MemoryTier(max_items=100, max_bytes=2**20), SlowDisk(tmp_path / "c")]
    )
    service = LLMService(config=config, cache=cache, tracker=tracker)
    provider, go = Provider(), asyncio.Event()
    req = request()

    calling = asyncio.Event()

    async def slow_answer() -> Answer:
        calling.set()
        await go.wait()
        return provider.answer(req)

    async def fast_answer() -> Answer:
        return provider.answer(req)

    leader = asyncio.create_task(service.agenerate(req, slow_answer, Codec()))

    # Wait (in time, not loop turns: the leader's own disk lookup runs in a thread, slow on
    # a loaded machine) until the leader is inside the provider call, past its lookup.
    await asyncio.wait_for(calling.wait(), 30)
    SlowDisk.block_next = True
    late = asyncio.create_task(service.agenerate(req, fast_answer, Codec()))
    await asyncio.get_running_loop().run_in_executor(None, SlowDisk.entered.wait, 10)
    go.set()
    first = await leader
    SlowDisk.release.set()
    second = await late
    assert provider.calls == 1
    assert second["text"] == first["text"] and second.get("cache_hit") is True
    await cache.aclose()
