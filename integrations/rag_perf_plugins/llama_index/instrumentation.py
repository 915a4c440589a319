"""Per-stage statistics from LlamaIndex's instrumentation dispatcher into our tracker.

Example::

    from rag_perf_plugins.llama_index import install_instrumentation

    handle = install_instrumentation()          # on LlamaIndex's root dispatcher
    engine.query("what is rag?")
    get_performance_tracker().get_operation_stats("llama_index.retrieval").latency_p95_s
    handle.uninstall()

What is recorded, per stage (operation ``llama_index.<stage>``; stages ``query``, ``chat``,
``retrieval``, ``embedding``, ``rerank``, ``synthesis``, ``llm``):

- the duration of the stage's outermost span, in seconds (LlamaIndex's events carry no
  durations; its spans do). A stage nested in itself (``LLM.predict`` calling
  ``LLM.chat``, a wrapper calling its inner model) is one call, not two;
- errors: a span that ends in an exception;
- for the LLM stage, prompt and completion tokens read from the response (the usage the
  provider reported; nothing is re-tokenised), cache hits and misses when the response says
  (:class:`~rag_perf_plugins.llama_index.PerfLLM` marks ``cache_hit`` in
  ``additional_kwargs``), and for streams the time to first chunk; a streamed call is
  recorded when its last chunk arrives, so its duration covers the whole stream;
- for the embedding stage, the number of texts per call as the batch size.

Cheap on purpose: no span or event objects are kept, no payload is copied (embedding events
carry every vector; only their count is read), and each span costs two dict operations
and one ``tracker.record``.

Not done: a stream abandoned before its end is counted as ``streams_abandoned`` only when
more than :data:`MAX_OPEN_STREAMS` streams are pending (the oldest is dropped); calls of
components that are not one of the stage classes above are not recorded; vector-store
calls emit no spans (wrap the store in :class:`PerfVectorStore` for their timings); a
streaming method whose generator opens another LLM span only when it is read (LlamaIndex's
``CustomLLM.astream_chat`` calling ``stream_chat``) is counted twice, because that span
starts after the outer one has returned and has no parent; the durations of streamed
retrieval/synthesis spans end when their generator is returned, not when it is drained.
"""

from __future__ import annotations

import inspect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from llama_index_instrumentation import get_dispatcher
from llama_index_instrumentation.base import BaseEvent
from llama_index_instrumentation.dispatcher import Dispatcher
from llama_index_instrumentation.event_handlers import BaseEventHandler
from llama_index_instrumentation.span import BaseSpan
from llama_index_instrumentation.span_handlers import BaseSpanHandler

from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.base import BaseLLM
from llama_index.core.chat_engine.types import BaseChatEngine
from llama_index.core.instrumentation.events.embedding import EmbeddingEndEvent
from llama_index.core.instrumentation.events.llm import (
    LLMChatEndEvent,
    LLMChatInProgressEvent,
    LLMCompletionEndEvent,
    LLMCompletionInProgressEvent,
)
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.response_synthesizers.base import BaseSynthesizer
from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.tracking import PerformanceTracker, get_performance_tracker

__all__ = [
    "MAX_OPEN_STREAMS",
    "Instrumentation",
    "PerfEventHandler",
    "PerfSpanHandler",
    "install_instrumentation",
    "uninstall_instrumentation",
]

# Streams whose end has not been seen yet; past this many the oldest is counted abandoned.
MAX_OPEN_STREAMS: Final = 1024

# Checked in order: a class that is several of these (none in LlamaIndex) gets the first.
_STAGES: Final = (
    (BaseLLM, "llm"),
    (BaseEmbedding, "embedding"),
    (BaseRetriever, "retrieval"),
    (BaseNodePostprocessor, "rerank"),
    (BaseSynthesizer, "synthesis"),
    (BaseChatEngine, "chat"),
    (BaseQueryEngine, "query"),
)
_NO_STAGES: dict[str, _Call] = {}


class _Call:
    """What one outermost stage span gathers until it is recorded."""

    __slots__ = (
        "batch",
        "cache_hit",
        "deferred",
        "done",
        "operation",
        "started",
        "tokens_in",
        "tokens_out",
        "ttft",
    )

    def __init__(self, operation: str, started: float) -> None:
        self.operation = operation
        self.started = started
        self.tokens_in = 0
        self.tokens_out = 0
        self.cache_hit: bool | None = None
        self.ttft: float | None = None
        self.batch: int | None = None
        self.deferred = False
        self.done = False


def _usage(response: Any) -> tuple[int, int]:
    """(prompt, completion) tokens the provider reported for ``response``; 0 when unknown."""
    extra = getattr(response, "additional_kwargs", None) or {}
    prompt, completion = extra.get("prompt_tokens"), extra.get("completion_tokens")
    if prompt is None and completion is None:
        usage = getattr(getattr(response, "raw", None), "usage", None)
        if usage is None and isinstance(getattr(response, "raw", None), dict):
            usage = response.raw.get("usage")
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        elif usage is not None:
            prompt = getattr(usage, "prompt_tokens", None)
            completion = getattr(usage, "completion_tokens", None)
    return (
        prompt if isinstance(prompt, int) else 0,
        completion if isinstance(completion, int) else 0,
    )


def _cache_hit(response: Any) -> bool | None:
    extra = getattr(response, "additional_kwargs", None) or {}
    hit = extra.get("cache_hit")
    return hit if isinstance(hit, bool) else None


class _SpanBook:
    """The handlers' state and logic, in a plain object.

    Reads of a pydantic model's private attributes go through ``__getattr__`` (measured
    40 times slower than a plain attribute), so the handlers keep this object in their
    instance ``__dict__`` (:func:`_attach`) and read only it.
    """

    __slots__ = ("clock", "prefix", "spans", "stage_of", "streams", "streams_lock", "tracker")

    def __init__(
        self, tracker: PerformanceTracker, prefix: str, clock: Callable[[], float]
    ) -> None:
        self.tracker = tracker
        self.prefix = prefix
        self.clock = clock
        # span id -> (the recording call of each stage open around it, its own call or None)
        self.spans: dict[str, tuple[dict[str, _Call], _Call | None]] = {}
        # span id of a stream returned but not finished -> the calls open around it
        self.streams: OrderedDict[str, dict[str, _Call]] = OrderedDict()
        self.stage_of: dict[type, str | None] = {}
        self.streams_lock = threading.Lock()

    def stage(self, instance: Any) -> str | None:
        cls = type(instance)
        try:
            return self.stage_of[cls]
        except KeyError:
            stage = next((s for base, s in _STAGES if isinstance(instance, base)), None)
            self.stage_of[cls] = stage
            return stage

    def enter(self, id_: str, instance: Any, parent_id: str | None) -> None:
        parent = self.spans.get(parent_id) if parent_id is not None else None
        stages = parent[0] if parent is not None else _NO_STAGES
        stage = self.stage(instance) if instance is not None else None
        call = None
        if stage is not None and stage not in stages:
            call = _Call(f"{self.prefix}.{stage}", self.clock())
            stages = {**stages, stage: call}
        self.spans[id_] = (stages, call)

    def exit(self, id_: str, result: Any) -> None:
        entry = self.spans.pop(id_, None)
        if entry is None:
            return
        stages, call = entry
        if "llm" in stages and (inspect.isgenerator(result) or inspect.isasyncgen(result)):
            self.hold_stream(id_, stages)
            if call is not None:
                call.deferred = True
            return
        if call is not None:
            self.finish(call, error=False)

    def drop(self, id_: str) -> None:
        entry = self.spans.pop(id_, None)
        if entry is not None and entry[1] is not None:
            self.finish(entry[1], error=True)

    def calls_of(self, span_id: str | None) -> dict[str, _Call]:
        if span_id is None:
            return _NO_STAGES
        entry = self.spans.get(span_id)
        if entry is not None:
            return entry[0]
        return self.streams.get(span_id, _NO_STAGES)

    def stream_ended(self, span_id: str | None) -> None:
        if span_id is not None:
            with self.streams_lock:
                self.streams.pop(span_id, None)

    def hold_stream(self, id_: str, stages: dict[str, _Call]) -> None:
        with self.streams_lock:
            self.streams[id_] = stages
            dropped = []
            while len(self.streams) > MAX_OPEN_STREAMS:
                dropped.append(self.streams.popitem(last=False)[1])
        for old in dropped:
            call = old.get("llm")
            if call is not None and call.deferred and not call.done:
                call.done = True
                self.tracker.record(call.operation, self.clock() - call.started, abandoned=True)

    def finish(self, call: _Call, *, error: bool) -> None:
        if call.done:
            return
        call.done = True
        self.tracker.record(
            call.operation,
            self.clock() - call.started,
            error=error,
            tokens_in=call.tokens_in,
            tokens_out=call.tokens_out,
            cache_hit=call.cache_hit,
            ttft_s=call.ttft,
            batch_size=call.batch,
        )


def _attach(handler: Any, book: _SpanBook) -> None:
    # A plain instance attribute, past pydantic's __setattr__: reads skip its __getattr__.
    # Not a field, so it is not validated, dumped or compared.
    object.__setattr__(handler, "_perf_book", book)


class PerfSpanHandler(BaseSpanHandler[BaseSpan]):
    """Times each stage's outermost span into the tracker; keeps no span objects.

    Example: ``get_dispatcher().add_span_handler(PerfSpanHandler(tracker=tracker))``, or
    :func:`install_instrumentation`, which also adds the :class:`PerfEventHandler` that
    fills in tokens, cache hits and time to first chunk.

    Args:
        tracker: Where calls go; ``None`` means the process-wide tracker.
        prefix: Operation name prefix (``"llama_index"`` gives ``llama_index.llm`` ...).
        clock: Seconds, monotonic.
    """

    _perf_book: _SpanBook  # in the instance __dict__, see _attach()

    @checked_kwargs
    def __init__(
        self,
        *,
        tracker: PerformanceTracker | None = None,
        prefix: str = "llama_index",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            msg = f"prefix must be a non-empty str, got {prefix!r}"
            raise ValueError(msg)
        super().__init__()
        tracker = tracker if tracker is not None else get_performance_tracker()
        _attach(self, _SpanBook(tracker, prefix, clock))

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "PerfSpanHandler"

    @property
    def tracker(self) -> PerformanceTracker:
        """The tracker calls are recorded in."""
        return self._perf_book.tracker

    @property
    def prefix(self) -> str:
        """The operation name prefix."""
        return self._perf_book.prefix

    # --- the three dispatcher hooks (overridden whole: no BaseSpan objects) -------------
    def span_enter(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        parent_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """Open a span; a stage not already open around it starts a call."""
        self._perf_book.enter(id_, instance, parent_id)

    def span_exit(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        result: Any | None = None,
        **kwargs: Any,
    ) -> None:
        """Close a span; record its call, or wait for the end of the stream it returned."""
        self._perf_book.exit(id_, result)

    def span_drop(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any | None = None,
        err: BaseException | None = None,
        **kwargs: Any,
    ) -> None:
        """Close a span that raised; its call is recorded as an error."""
        self._perf_book.drop(id_)

    # --- abstract hooks of BaseSpanHandler: unused, since the three above are overridden --
    def new_span(self, *args: Any, **kwargs: Any) -> BaseSpan | None:
        """Not used (no span objects are built)."""
        return None

    def prepare_to_exit_span(self, *args: Any, **kwargs: Any) -> BaseSpan | None:
        """Not used."""
        return None

    def prepare_to_drop_span(self, *args: Any, **kwargs: Any) -> BaseSpan | None:
        """Not used."""
        return None


class PerfEventHandler(BaseEventHandler):
    """Adds tokens, cache hits, time to first chunk and batch sizes to the span handler's calls.

    Example: ``get_dispatcher().add_event_handler(PerfEventHandler(spans=span_handler))``.
    Reads only counts and the provider's usage from events; never copies vectors.
    """

    _perf_book: _SpanBook  # in the instance __dict__, see _attach()

    @checked_kwargs
    def __init__(self, *, spans: PerfSpanHandler) -> None:
        super().__init__()
        _attach(self, spans._perf_book)

    @classmethod
    def class_name(cls) -> str:
        """Class name."""
        return "PerfEventHandler"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        """Fold one event into the call of its stage."""
        cls = type(event)
        if cls is LLMChatEndEvent or cls is LLMCompletionEndEvent:
            self._llm_end(event)
        elif cls is LLMChatInProgressEvent or cls is LLMCompletionInProgressEvent:
            book = self._perf_book
            call = book.calls_of(event.span_id).get("llm")
            if call is not None and call.ttft is None:
                call.ttft = book.clock() - call.started
        elif cls is EmbeddingEndEvent:
            call = self._perf_book.calls_of(event.span_id).get("embedding")
            if call is not None:
                n = len(event.chunks)  # type: ignore[attr-defined]
                call.batch = n if call.batch is None else call.batch + n

    def _llm_end(self, event: Any) -> None:
        book = self._perf_book
        span_id = event.span_id
        call = book.calls_of(span_id).get("llm")
        if call is None:
            return
        response = event.response
        if response is not None:
            tokens_in, tokens_out = _usage(response)
            call.tokens_in += tokens_in
            call.tokens_out += tokens_out
            hit = _cache_hit(response)
            if hit is not None:
                call.cache_hit = hit if call.cache_hit is None else call.cache_hit and hit
        if call.deferred:
            book.stream_ended(span_id)
            book.finish(call, error=False)


@dataclass(frozen=True)
class Instrumentation:
    """The handlers :func:`install_instrumentation` put on a dispatcher."""

    dispatcher: Dispatcher
    span_handler: PerfSpanHandler
    event_handler: PerfEventHandler

    def uninstall(self) -> bool:
        """Take both handlers off the dispatcher; ``True`` when they were on it."""
        return _remove(self)


_lock = threading.Lock()
_installed: Instrumentation | None = None


def install_instrumentation(
    tracker: PerformanceTracker | None = None,
    *,
    dispatcher: Dispatcher | None = None,
    prefix: str = "llama_index",
) -> Instrumentation:
    """Put a :class:`PerfSpanHandler` and a :class:`PerfEventHandler` on a dispatcher.

    Example::

        handle = install_instrumentation()        # root dispatcher, process tracker
        ...
        handle.uninstall()

    Idempotent: while one installation is active on the same dispatcher with the same
    tracker and prefix it is returned again; otherwise the old one is replaced.
    ``configure_settings()`` calls this (``restore_settings()`` undoes it).

    Args:
        tracker: Where calls go; ``None`` means the process-wide tracker.
        dispatcher: ``None`` means LlamaIndex's root dispatcher, which every component's
            dispatcher propagates to.
        prefix: Operation name prefix.
    """
    global _installed
    dispatcher = dispatcher if dispatcher is not None else get_dispatcher()
    tracker = tracker if tracker is not None else get_performance_tracker()
    with _lock:
        current = _installed
        if (
            current is not None
            and current.dispatcher is dispatcher
            and current.span_handler.tracker is tracker
            and current.span_handler.prefix == prefix
            and _is_on(current)
        ):
            return current
        if current is not None:
            _detach(current)
        spans = PerfSpanHandler(tracker=tracker, prefix=prefix)
        events = PerfEventHandler(spans=spans)
        dispatcher.add_span_handler(spans)
        dispatcher.add_event_handler(events)
        _installed = Instrumentation(dispatcher, spans, events)
        return _installed


def uninstall_instrumentation() -> bool:
    """Take off what :func:`install_instrumentation` installed; ``True`` if something was."""
    with _lock:
        current = _installed
    return current is not None and _remove(current)


def installed_instrumentation() -> Instrumentation | None:
    """The active installation, if any."""
    return _installed


def _is_on(handle: Instrumentation) -> bool:
    # Identity, not ==: pydantic compares handlers by their (empty) fields.
    return any(h is handle.span_handler for h in handle.dispatcher.span_handlers)


def _detach(handle: Instrumentation) -> bool:
    d = handle.dispatcher
    was_on = _is_on(handle)
    d.span_handlers = [h for h in d.span_handlers if h is not handle.span_handler]
    d.event_handlers = [h for h in d.event_handlers if h is not handle.event_handler]
    return was_on


def _remove(handle: Instrumentation) -> bool:
    global _installed
    with _lock:
        if _installed is handle:
            _installed = None
        return _detach(handle)
