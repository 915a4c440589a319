"""Half-open probes bounded in time (``breaker_probe_timeout``), for every fallback chain.

Example::

    target = "openai/gpt-4o-mini/k-3f9a~e1"
    value = run_probe(lambda: send(request), target, timeout=30.0, breakers=breakers)
    value = await arun_probe(lambda: asend(request), target, timeout=30.0)   # seconds

A probe to a target that accepts the request and never answers would hold its caller for
the request's whole timeout (600 s in the OpenAI SDK). Past ``timeout`` seconds these
raise ``TimeoutError`` instead, which the chain counts against the target's breaker (it
opens again) before it moves the call to the next target. The LLM chain
(:mod:`rag_perf_plugins.services.llm`) and the embedding chain
(:mod:`rag_perf_plugins.services.embeddings`) both call them.

- async (:func:`arun_probe`): the probe is cancelled at the bound. A blocking call it
  runs through :func:`in_thread` (a model without an async client) cannot be cancelled:
  its thread is counted and bounded like a blocking probe's worker (below), given
  ``breakers``.
- blocking (:func:`run_probe`): the probe runs in a worker thread (with the caller's
  context variables); past the bound the caller moves on and the worker's late answer,
  if any, is dropped (``discard`` closes it, e.g. an opened stream). Python cannot stop a
  thread, so the worker lives until the target answers or the request's own timeout ends
  (and keeps its gate slot until then). What bounds those threads: while an abandoned
  probe of a target still runs, the next probe of that target is not sent
  (:class:`~.chain.ProbeStillRunning`, counted as a timeout: the breaker opens again for
  the next cool-down), so each target has at most ``breaker_probes`` (default 1) of them
  at once; ``Breakers.stats()`` counts them (``probes_abandoned``, ``probes_late``).
  A late worker must not act for its caller: it gets a :class:`ProbeWatch`, and anything
  it would do on the caller's behalf (tell the breaker of a failure, write the caller's
  call state) it does only ``while watch.in_time()`` says so; the LLM chain gives the
  worker its own copy of the call state and takes it back only when the probe ended in time.

Not done here: deciding which call is a probe (the breaker's :class:`~.breaker.Admission`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

from .chain import ProbeStillRunning

if TYPE_CHECKING:
    from .breakers import Breakers

__all__ = ["ProbeWatch", "arun_probe", "in_thread", "run_probe"]

R = TypeVar("R")


class ProbeWatch:
    """Whether a blocking probe's caller still waits for it, or left it (``late``).

    Example::

        watch = ProbeWatch()
        value = run_probe(send, target, timeout=30.0, breakers=breakers, watch=watch)
        # in the worker, before acting for the caller:
        with watch.in_time() as in_time:
            if in_time:
                breakers.record(target, "failure", probe=True)   # still the caller's probe

    While a block under :meth:`in_time` runs, the caller cannot leave the probe: past its
    bound it waits for the block to end (keep the block short: one breaker record). After
    the caller left, ``in_time`` yields ``False`` and ``late`` is true. Not done here:
    undoing what the worker did before the bound.
    """

    __slots__ = ("_lock", "late")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.late = False  # set once, by run_probe, when the caller leaves

    @contextlib.contextmanager
    def in_time(self) -> Iterator[bool]:
        """Hold off the caller's leaving; yield whether it still waits for the probe."""
        with self._lock:
            yield not self.late


def run_probe(
    fn: Callable[[], R],
    target: str,
    *,
    timeout: float,
    breakers: Breakers,
    discard: Callable[[R], None] | None = None,
    watch: ProbeWatch | None = None,
) -> R:
    """``fn()`` in a worker thread, waited for at most ``timeout`` seconds.

    Example: ``run_probe(send, "openai/m/k-1~e1", timeout=30.0, breakers=breakers)``.

    Raises ``TimeoutError`` naming ``target`` past the bound (``fn``'s own error, or its
    value, when it ends in time); the worker is then counted in ``breakers`` until it ends,
    and a value it gets after the bound goes to ``discard``. Raises
    :class:`~.chain.ProbeStillRunning` without calling ``fn`` while an abandoned probe of
    ``target`` still runs. ``watch``: marked ``late`` when the caller leaves (``fn`` asks
    it before acting for the caller).
    """
    if breakers.late_probes(target):
        raise ProbeStillRunning(target, timeout)
    context = contextvars.copy_context()
    box: dict[str, Any] = {}
    watch = watch if watch is not None else ProbeWatch()
    lock = watch._lock
    done = threading.Event()

    def run() -> None:
        late = False
        try:
            try:
                value = context.run(fn)
            except BaseException as exc:
                with lock:
                    late = watch.late
                    box["error"] = exc
            else:
                with lock:
                    late = watch.late
                    box["value"] = value
                if late and discard is not None:
                    discard(value)
        finally:
            done.set()
            if late:
                breakers.late_probe_ended(target)

    threading.Thread(target=run, name="rag-perf-probe", daemon=True).start()
    if not done.wait(timeout):
        with lock:
            late = "value" not in box and "error" not in box
            if late:
                watch.late = True
                breakers.probe_abandoned(target)  # counted before the worker can end
        if late:
            raise _too_long(target, timeout)
    if "error" in box:
        raise box["error"]
    return cast(R, box["value"])


async def arun_probe(
    fn: Callable[[], Awaitable[R]],
    target: str,
    *,
    timeout: float,
    breakers: Breakers | None = None,
) -> R:
    """Async twin of :func:`run_probe`: ``await fn()``, cancelled past ``timeout`` seconds.

    Example: ``await arun_probe(lambda: asend(texts), "openai/m/k-1~e1", timeout=30.0,
    breakers=breakers)``.

    With ``breakers``: the threads ``fn`` starts through :func:`in_thread` outlive the
    cancellation, so each one still running at the bound is counted as an abandoned probe
    of ``target`` until it ends, and while one runs the next probe is not sent
    (:class:`~.chain.ProbeStillRunning`, as in :func:`run_probe`). Without: not counted.
    """
    if breakers is not None and breakers.late_probes(target):
        raise ProbeStillRunning(target, timeout)
    threads = None if breakers is None else _Threads(target, breakers)
    token = _THREADS.set(threads)
    try:
        return await asyncio.wait_for(fn(), timeout)
    except TimeoutError:
        if threads is not None:
            threads.leave()
        raise _too_long(target, timeout) from None
    finally:
        _THREADS.reset(token)


async def in_thread(fn: Callable[..., R], /, *args: Any) -> R:
    """``asyncio.to_thread(fn, *args)``, counted when it runs inside :func:`arun_probe`.

    Example: ``vectors = await in_thread(model.embed_documents, texts)`` (a model without
    an async client; the loop keeps serving).

    Inside a probe, cancelling the caller does not cancel the job (Python cannot stop its
    thread; the job always runs, so it is always counted out when it ends): a thread still
    running when the probe is left at its bound is an abandoned probe of the target until
    it ends. Elsewhere: plain ``asyncio.to_thread``.
    """
    threads = _THREADS.get()
    if threads is None:
        return await asyncio.to_thread(fn, *args)
    threads.started()

    def run() -> R:
        try:
            return fn(*args)
        finally:
            threads.ended()

    job = asyncio.ensure_future(asyncio.to_thread(run))
    job.add_done_callback(_retrieved)  # a late failure is nobody's: no "never retrieved"
    return await asyncio.shield(job)


def _retrieved(job: asyncio.Future[Any]) -> None:
    if not job.cancelled():
        job.exception()


class _Threads:
    """The worker threads of one async probe, and whether its caller left it at the bound."""

    __slots__ = ("breakers", "left", "lock", "running", "target")

    def __init__(self, target: str, breakers: Breakers) -> None:
        self.target, self.breakers = target, breakers
        self.lock = threading.Lock()
        self.running = 0
        self.left = False

    def started(self) -> None:
        with self.lock:
            self.running += 1

    def ended(self) -> None:
        with self.lock:
            self.running -= 1
            if self.left:
                self.breakers.late_probe_ended(self.target)

    def leave(self) -> None:
        """The caller left at the bound: each thread still running is an abandoned probe."""
        with self.lock:
            self.left = True
            for _ in range(self.running):
                self.breakers.probe_abandoned(self.target)


_THREADS: contextvars.ContextVar[_Threads | None] = contextvars.ContextVar(
    "rag_perf_probe_threads", default=None
)


def _too_long(target: str, timeout: float) -> TimeoutError:
    return TimeoutError(f"probe of {target} took longer than {timeout:g} s")
