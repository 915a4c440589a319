"""PerfCallbackHandler: LangChain run statistics into the tracker, without thread hops.

Example::

    handler = PerfCallbackHandler()
    chain.invoke(question, config={"callbacks": [handler]})     # one call
    install_callback_handler()                                  # every run in the process
    get_performance_tracker().get_operation_stats("langchain.chat_model").latency_p95_s

Per run it records latency under ``langchain.llm``, ``langchain.chat_model``,
``langchain.chain`` (outermost chains only: one per request, not one per step),
``langchain.retriever`` and ``langchain.tool``; errors; input and output tokens (from the
provider's usage, ``llm_output["token_usage"]`` or the message's ``usage_metadata``); time
to first token on streams (the first ``on_llm_new_token``); and for ``PerfChatModel`` runs
the cache result, hits and misses both (the wrapper tells the handler through
:func:`note_cache_result`; a hit is also ``response_metadata["cache_hit"]``). Runs of
models we do not wrap report no cache result.

``run_inline = True``: LangChain calls a plain (sync) handler from async code through the
default thread pool, once per event (+0.3 ms per chat call measured); inline, it is called
directly. Every method is short, does no I/O and takes no lock but the tracker's.

Not done here: embedding and vector-store runs (LangChain has no callbacks for them; our
wrappers record those directly) and per-run names as operations (names are unbounded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import ChatGeneration, LLMResult
from langchain_core.tracers import context as tracer_context
from typing_extensions import override

from rag_perf_plugins._clock import Clock, monotonic
from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.tracking import PerformanceTracker, get_performance_tracker

__all__ = [
    "PerfCallbackHandler",
    "install_callback_handler",
    "note_cache_result",
    "uninstall_callback_handler",
]


class _Run:
    __slots__ = ("cache_hit", "first_token", "operation", "started")

    def __init__(self, operation: str, started: float) -> None:
        self.operation = operation
        self.started = started
        self.first_token: float | None = None
        self.cache_hit: bool | None = None  # told by our chat wrapper (note_cache_result)


def _usage(response: LLMResult) -> tuple[int, int, bool | None]:
    """(input tokens, output tokens, cache hit) of an LLM result, 0/None when unknown."""
    tokens_in = tokens_out = 0
    hit: bool | None = None
    for generations in response.generations:
        for gen in generations:
            if isinstance(gen, ChatGeneration):
                usage = getattr(gen.message, "usage_metadata", None)
                if usage:
                    tokens_in += int(usage.get("input_tokens", 0))
                    tokens_out += int(usage.get("output_tokens", 0))
                meta = gen.message.response_metadata
                if "cache_hit" in meta:
                    hit = bool(meta["cache_hit"])
    if not (tokens_in or tokens_out) and response.llm_output:
        usage = response.llm_output.get("token_usage") or {}
        tokens_in = int(usage.get("prompt_tokens", 0) or 0)
        tokens_out = int(usage.get("completion_tokens", 0) or 0)
    return tokens_in, tokens_out, hit


class PerfCallbackHandler(BaseCallbackHandler):
    """Record LangChain runs in the tracker: latency, errors, tokens, time to first token.

    Example: ``chain.invoke(q, config={"callbacks": [PerfCallbackHandler()]})``.

    Args:
        tracker: Where runs go; ``None`` means the process-wide tracker (read per run, so
            ``set_performance_tracker`` takes effect).
        prefix: Prefix of the operation names (``"langchain"``).
        clock: Seconds, monotonic; inject a ``FakeClock`` in tests.

    A run that starts but never ends (a stream abandoned midway) stays in :attr:`open_runs`
    until :meth:`reset`; nothing else is kept per run.
    """

    run_inline = True
    raise_error = False

    @checked_kwargs
    def __init__(
        self,
        tracker: PerformanceTracker | None = None,
        *,
        prefix: str = "langchain",
        clock: Clock = monotonic,
    ) -> None:
        self._tracker = tracker
        self.prefix = prefix
        self._clock = clock
        self._runs: dict[UUID, _Run] = {}

    @property
    def tracker(self) -> PerformanceTracker:
        """The tracker runs are recorded in."""
        return self._tracker if self._tracker is not None else get_performance_tracker()

    @property
    def open_runs(self) -> int:
        """Runs started and not finished."""
        return len(self._runs)

    def reset(self) -> None:
        """Forget runs that never finished."""
        self._runs.clear()

    # --- the shared core ------------------------------------------------------------
    def _start(self, run_id: UUID, kind: str) -> None:
        self._runs[run_id] = _Run(f"{self.prefix}.{kind}", self._clock())

    def _end(
        self,
        run_id: UUID,
        *,
        error: bool = False,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cache_hit: bool | None = None,
    ) -> None:
        run = self._runs.pop(run_id, None)
        if run is None:
            return  # started before this handler was attached
        ttft = None if run.first_token is None else run.first_token - run.started
        self.tracker.record(
            run.operation,
            self._clock() - run.started,
            error=error,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            cache_hit=run.cache_hit if cache_hit is None else cache_hit,
            ttft_s=ttft,
        )

    def note_cache_result(self, run_id: UUID, hit: bool) -> None:
        """Mark run ``run_id`` as a cache hit or miss (``PerfChatModel`` calls this).

        A miss is never visible in the answer (it is the provider's, unchanged), so the
        wrapper says it here; a hit is also marked in ``response_metadata["cache_hit"]``.
        """
        run = self._runs.get(run_id)
        if run is not None:
            run.cache_hit = hit

    # --- LLM and chat model runs ----------------------------------------------------
    @override
    def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._start(run_id, "llm")

    @override
    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[Any]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._start(run_id, "chat_model")

    @override
    def on_llm_new_token(
        self, token: str | list[str | dict[str, Any]], *, run_id: UUID, **kwargs: Any
    ) -> None:
        run = self._runs.get(run_id)
        if run is not None and run.first_token is None:
            run.first_token = self._clock()

    @override
    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        tokens_in, tokens_out, hit = _usage(response)
        self._end(run_id, tokens_in=tokens_in, tokens_out=tokens_out, cache_hit=hit)

    @override
    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error=True)

    # --- chains, retrievers, tools --------------------------------------------------
    @override
    def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        # Only the outermost chain is a request: every step of a chain (a prompt, a
        # parallel map, a parser, the sequence inside a sequence) is a chain run too, and
        # counting them made 9,611 "chains" of 1,373 requests.
        if parent_run_id is None:
            self._start(run_id, "chain")

    @override
    def on_chain_end(self, outputs: dict[str, Any], *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    @override
    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error=True)

    @override
    def on_retriever_start(
        self, serialized: dict[str, Any], query: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._start(run_id, "retriever")

    @override
    def on_retriever_end(self, documents: Sequence[Any], *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    @override
    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error=True)

    @override
    def on_tool_start(
        self, serialized: dict[str, Any], input_str: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._start(run_id, "tool")

    @override
    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    @override
    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id, error=True)

    def __repr__(self) -> str:
        return f"<PerfCallbackHandler prefix={self.prefix!r} [open runs: {len(self._runs)}]>"


_installed: list[tuple[Any, ...]] = []


def install_callback_handler(handler: PerfCallbackHandler | None = None) -> PerfCallbackHandler:
    """Attach ``handler`` to every LangChain run in the process, in every thread and task.

    Example: ``install_callback_handler()`` once at start-up; undo with
    :func:`uninstall_callback_handler`. Uses LangChain's configure hook
    (``langchain_core.tracers.context.register_configure_hook``), the mechanism its own
    tracers use. Installing again replaces the previous handler (never two at once).
    """
    handler = handler if handler is not None else PerfCallbackHandler()
    uninstall_callback_handler()
    # A ContextVar whose *default* is the handler: every context (new threads included)
    # sees it, which a set() in the installing context would not give.
    var: ContextVar[PerfCallbackHandler | None] = ContextVar(
        "rag_perf_callback_handler", default=handler
    )
    tracer_context.register_configure_hook(var, True)
    _installed.append(tracer_context._configure_hooks[-1])
    return handler


def uninstall_callback_handler() -> None:
    """Detach the handler installed by :func:`install_callback_handler` (no-op if none)."""
    hooks = tracer_context._configure_hooks
    while _installed:
        entry = _installed.pop()
        if entry in hooks:
            hooks.remove(entry)


def cache_listener(run_manager: Any) -> Callable[[bool], None] | None:
    """What ``PerfChatModel`` passes as ``on_cache``: tells our handlers of this run, or None.

    ``None`` (no closure, no work) when no :class:`PerfCallbackHandler` is attached to the
    run, which is the common case.
    """
    if run_manager is None:
        return None
    handlers = [h for h in run_manager.handlers if isinstance(h, PerfCallbackHandler)]
    if not handlers:
        return None
    run_id = run_manager.run_id

    def note(hit: bool) -> None:
        for handler in handlers:
            handler.note_cache_result(run_id, hit)

    return note


def note_cache_result(run_manager: Any, hit: bool) -> None:
    """Tell every :class:`PerfCallbackHandler` of ``run_manager``'s run its cache result."""
    note = cache_listener(run_manager)
    if note is not None:
        note(hit)
