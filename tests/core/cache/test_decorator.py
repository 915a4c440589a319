"""@cached on sync and async functions and methods."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.cache import CacheManager, cached
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import UnkeyableArgument


@pytest.fixture
def cache(cache_dir: Path, fake_clock: FakeClock) -> CacheManager:
    return CacheManager(PerformanceConfig(cache_dir=str(cache_dir)), clock=fake_clock)


def test_sync_function_keyed_by_arguments(cache: CacheManager, fake_clock: FakeClock) -> None:
    calls: list[tuple[str, int]] = []

    @cached(ttl=60.0, manager=cache)
    def retrieve(query: str, k: int = 4) -> list[str]:
        calls.append((query, k))
        return [query] * k

    assert retrieve("q") == ["q"] * 4
    assert retrieve("q", 4) == ["q"] * 4
    assert retrieve(query="q", k=4) == ["q"] * 4
    assert retrieve("q", k=2) == ["q"] * 2
    assert calls == [("q", 4), ("q", 2)]
    fake_clock.advance(61.0)
    retrieve("q")
    assert len(calls) == 3
    cache.close()


async def test_async_function_and_tuple_results(cache: CacheManager) -> None:
    calls: list[int] = []

    @cached(manager=cache, namespace="llm")
    async def answer(prompt: str, options: dict[str, float]) -> tuple[str, int]:
        calls.append(1)
        return (prompt.upper(), 1)

    first = await answer("hi", {"temperature": 0.0})
    second = await answer("hi", {"temperature": 0})
    assert list(first) == list(second) == ["HI", 1]  # the miss returns the stored form too
    assert isinstance(first, list)
    assert calls == [1]
    await cache.aclose()


def test_methods_need_a_cache_key(cache: CacheManager) -> None:
    class Engine:
        def __init__(self, model: str) -> None:
            self.model = model
            self.calls = 0

        def __cache_key__(self) -> str:
            return self.model

        @cached(manager=cache)
        def run(self, q: str) -> str:
            self.calls += 1
            return f"{self.model}:{q}"

    a, a2, b = Engine("a"), Engine("a"), Engine("b")
    assert a.run("x") == "a:x" and a2.run("x") == "a:x" and b.run("x") == "b:x"
    assert (a.calls, a2.calls, b.calls) == (1, 0, 1)

    class Plain:
        @cached(manager=cache)
        def run(self, q: str) -> str:
            return q

    with pytest.raises(UnkeyableArgument, match=r"argument 'self' of .*Plain\.run"):
        Plain().run("x")

    class Ignored:
        @cached(manager=cache, ignore=("self",))
        def run(self, q: str) -> str:
            return q

    assert Ignored().run("y") == "y"
    cache.close()


def test_unkeyable_argument_names_it(cache: CacheManager) -> None:
    @cached(manager=cache)
    def f(query: str, client: object) -> str:
        return query

    with pytest.raises(UnkeyableArgument, match=r"argument 'client' of .*f cannot be keyed"):
        f("q", object())

    @cached(manager=cache, ignore=("client",))
    def g(query: str, client: object) -> str:
        return query

    assert g("q", object()) == "q"
    with pytest.raises(ValueError, match="does not have"):
        cached(ignore=("nope",))(g)
    cache.close()
