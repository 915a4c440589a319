"""One timed call: the handle behind ``track("op")`` and the tracked generators.

Example::

    with tracker.track("llm") as call:       # or track("llm") on the process tracker
        reply = client.chat(...)
        call.tokens_in = reply.usage.prompt_tokens
        call.first_token()                     # streams: time to first token, seconds

A handle records into anything with a ``clock`` and a ``record(...)`` method (the tracker,
or :class:`~rag_perf_plugins.tracking.tracker.NullTracker`); this module imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Protocol

__all__ = ["Recorder", "TrackedCall"]


class Recorder(Protocol):
    """What a :class:`TrackedCall` records into."""

    @property
    def clock(self) -> Callable[[], float]:
        """Seconds, monotonic."""
        ...

    def record(
        self,
        operation: str,
        latency_s: float,
        *,
        error: bool = ...,
        tokens_in: int = ...,
        tokens_out: int = ...,
        cache_hit: bool | None = ...,
        queue_wait_s: float | None = ...,
        batch_size: int | None = ...,
        retries: int = ...,
        tokens_saved: int = ...,
        ttft_s: float | None = ...,
        abandoned: bool = ...,
    ) -> None:
        """Record one call."""
        ...


class TrackedCall:
    """One timed call; a sync and async context manager. Get one from ``track("op")``.

    Example::

        with track("llm") as call:
            reply = client.chat(...)
            call.tokens_in = reply.usage.prompt_tokens
            call.cache_hit = False
            call.first_token()          # for streams: stamps time to first token now

    Set any of ``tokens_in``, ``tokens_out``, ``cache_hit``, ``queue_wait_s`` (seconds),
    ``batch_size``, ``retries``, ``tokens_saved``, ``ttft_s`` (seconds) or ``error``
    before the block ends; they go into one ``record`` call when it ends. An exception
    leaving the block sets ``error``. Not reusable: one handle, one call.
    """

    __slots__ = (
        "_done",
        "_start",
        "_tracker",
        "batch_size",
        "cache_hit",
        "error",
        "operation",
        "queue_wait_s",
        "retries",
        "tokens_in",
        "tokens_out",
        "tokens_saved",
        "ttft_s",
    )

    def __init__(self, tracker: Recorder, operation: str) -> None:
        self._tracker = tracker
        self.operation = operation
        self._start = 0.0
        self._done = False
        self.tokens_in = 0
        self.tokens_out = 0
        self.cache_hit: bool | None = None
        self.queue_wait_s: float | None = None
        self.batch_size: int | None = None
        self.retries = 0
        self.tokens_saved = 0
        self.ttft_s: float | None = None
        self.error = False

    def start(self) -> TrackedCall:
        """Start the timer (``__enter__`` does this)."""
        self._start = self._tracker.clock()
        return self

    def first_token(self) -> None:
        """Stamp the time to first token as now (only the first stamp counts)."""
        if self.ttft_s is None:
            self.ttft_s = self._tracker.clock() - self._start

    def finish(self, *, error: bool | None = None, abandoned: bool = False) -> None:
        """Record the call (``__exit__`` does this); later calls do nothing."""
        if self._done:
            return
        self._done = True
        if error is not None:
            self.error = self.error or error
        self._tracker.record(
            self.operation,
            self._tracker.clock() - self._start,
            error=self.error,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            cache_hit=self.cache_hit,
            queue_wait_s=self.queue_wait_s,
            batch_size=self.batch_size,
            retries=self.retries,
            tokens_saved=self.tokens_saved,
            ttft_s=self.ttft_s,
            abandoned=abandoned,
        )

    def __enter__(self) -> TrackedCall:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(error=exc_type is not None)

    async def __aenter__(self) -> TrackedCall:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(error=exc_type is not None)

    def __repr__(self) -> str:
        state = "done" if self._done else "running"
        return f"<TrackedCall {self.operation!r} [{state}, error: {self.error}]>"
