"""PerLoop: one resource per event loop, closed on its loop at shutdown."""

from __future__ import annotations

import asyncio
import threading
from typing import ClassVar

import pytest

from rag_perf_plugins._loops import PerLoop


class Resource:
    """A stand-in for a loop-bound client: it records the loop it was closed on."""

    made: ClassVar[list[Resource]] = []

    def __init__(self) -> None:
        self.closed_on: asyncio.AbstractEventLoop | None = None
        Resource.made.append(self)

    async def aclose(self) -> None:
        self.closed_on = asyncio.get_running_loop()


def _per_loop() -> PerLoop[Resource]:
    Resource.made = []

    async def close(resource: Resource) -> None:
        await resource.aclose()

    return PerLoop(Resource, close)


def test_each_asyncio_run_gets_its_own_resource_closed_on_its_loop() -> None:
    per_loop = _per_loop()

    async def use() -> tuple[Resource, asyncio.AbstractEventLoop]:
        first = await per_loop.get()
        assert await per_loop.get() is first and per_loop.current() is first
        return first, asyncio.get_running_loop()

    one, loop_one = asyncio.run(use())
    two, loop_two = asyncio.run(use())
    assert one is not two and len(Resource.made) == 2
    assert one.closed_on is loop_one and two.closed_on is loop_two
    assert len(per_loop) == 0


def test_a_bare_loop_close_drops_the_resource_without_touching_the_dead_loop() -> None:
    per_loop = _per_loop()
    loop = asyncio.new_event_loop()
    leaked = loop.run_until_complete(per_loop.get())
    loop.close()  # no shutdown_asyncgens(): the resource cannot be closed on it
    fresh = asyncio.run(per_loop.get())
    assert leaked.closed_on is None and fresh is not leaked
    assert len(per_loop) == 0


def test_close_from_sync_closes_a_loop_running_in_another_thread() -> None:
    per_loop = _per_loop()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    try:
        resource = asyncio.run_coroutine_threadsafe(per_loop.get(), loop).result(5)
        per_loop.close_from_sync(timeout=5)
        assert resource.closed_on is loop
        with pytest.raises(RuntimeError, match="closed"):
            asyncio.run_coroutine_threadsafe(per_loop.get(), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


async def test_aclose_current_and_reopen() -> None:
    per_loop = _per_loop()
    first = await per_loop.get()
    await per_loop.aclose_current()
    assert first.closed_on is asyncio.get_running_loop()
    assert await per_loop.get() is not first
    per_loop.forget()  # after fork(): the parent's entries are kept but never closed
    assert len(per_loop) == 0 and per_loop.current() is None
