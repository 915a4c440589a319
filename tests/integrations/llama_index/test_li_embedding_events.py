"""PerfEmbedding's batch calls against LlamaIndex's own, side by side: the same spans, events
and callback payloads in the same order (events built without re-validating our floats)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.callbacks import CallbackManager
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.callbacks.schema import CBEventType
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.events.embedding import (
    EmbeddingEndEvent,
    EmbeddingStartEvent,
)
from llama_index.core.instrumentation.span import SimpleSpan
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.storage.kvstore import SimpleKVStore
from llama_index_instrumentation import get_dispatcher
from rag_perf_plugins.llama_index import PerfEmbedding
from rag_perf_plugins.llama_index import embeddings as li_embeddings

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import EmbeddingService
from tests.integrations.llama_index.li_models import CountingEmbedding, vector_of

_SPAN_ID = re.compile(r"^(.*)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ExactEmbedding(CountingEmbedding):
    """Vectors that float32 holds exactly, so our rounding leaves them equal to the inner's."""

    @classmethod
    def class_name(cls) -> str:
        return "ExactEmbedding"

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        self._count("_get_text_embeddings")
        return [[round(x * 256) / 256 for x in vector_of(t, self.dim)] for t in texts]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._get_text_embeddings(["query: " + query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._get_text_embeddings(texts)


class _Trace:
    """Everything a consumer of one call could see, in order, with run-specific ids removed."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, ...]] = []
        self.events: list[BaseEvent] = []
        self.span_names: dict[str, str] = {}


class _EventRecorder(BaseEventHandler):
    trace: Any = None

    @classmethod
    def class_name(cls) -> str:
        return "_EventRecorder"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        if isinstance(event, EmbeddingStartEvent | EmbeddingEndEvent):
            self.trace.events.append(event)
            self.trace.items.append(("event", type(event).__name__, event.span_id))


class _SpanRecorder(SimpleSpanHandler):
    trace: Any = None

    def new_span(
        self,
        id_: str,
        bound_args: inspect.BoundArguments,
        instance: Any = None,
        parent_span_id: str | None = None,
        tags: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SimpleSpan:
        self.trace.items.append(("span", id_, parent_span_id, tuple(bound_args.arguments)))
        return super().new_span(id_, bound_args, instance, parent_span_id, tags, **kwargs)


class _CallbackRecorder(BaseCallbackHandler):
    def __init__(self, trace: _Trace) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.trace = trace

    def on_event_start(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        parent_id: str = "",
        **kwargs: Any,
    ) -> str:
        self.trace.items.append(("callback start", event_type, payload))
        return event_id

    def on_event_end(
        self,
        event_type: CBEventType,
        payload: dict[str, Any] | None = None,
        event_id: str = "",
        **kwargs: Any,
    ) -> None:
        self.trace.items.append(("callback end", event_type, payload))

    def start_trace(self, trace_id: str | None = None) -> None:
        return None

    def end_trace(
        self, trace_id: str | None = None, trace_map: dict[str, list[str]] | None = None
    ) -> None:
        return None


@pytest.fixture
def trace() -> Iterator[_Trace]:
    """A trace fed by an event handler and a span handler on LlamaIndex's root dispatcher."""
    root = get_dispatcher()
    found = _Trace()
    events = _EventRecorder(trace=found)
    spans = _SpanRecorder()
    spans.trace = found
    root.add_event_handler(events)
    root.add_span_handler(spans)
    try:
        yield found
    finally:
        root.event_handlers.remove(events)
        root.span_handlers.remove(spans)


def _normalized(
    trace: _Trace, model: BaseEmbedding, *, top_spans: bool = False
) -> list[tuple[Any, ...]]:
    """The trace with uuids and the model's class name taken out, payloads made comparable.

    ``top_spans``: only the spans of the public call (the inner model's own spans below it
    depend on which of its private methods answer, not on the wrapper's events).
    """
    names: dict[str | None, str | None] = {None: None}
    own = type(model).__name__

    def name(span_id: str | None) -> str | None:
        if span_id not in names:
            match = _SPAN_ID.match(span_id or "")
            base = match.group(1) if match else str(span_id)
            names[span_id] = base.replace(own, "MODEL")
        return names[span_id]

    payload_of = model.to_payload()
    out: list[tuple[Any, ...]] = []
    events = iter(trace.events)
    for item in trace.items:
        if item[0] == "span":
            if not (top_spans and item[2] is not None):
                out.append(("span", name(item[1]), name(item[2]), item[3]))
        elif item[0] == "event":
            event = next(events)
            fields: dict[str, Any] = {"span": name(event.span_id), "tags": event.tags}
            fields["set"] = sorted(event.model_fields_set)
            if isinstance(event, EmbeddingStartEvent):
                assert event.model_dict == payload_of
            else:
                assert isinstance(event, EmbeddingEndEvent)
                fields["chunks"] = event.chunks
                fields["embeddings"] = event.embeddings
                fields["types"] = {type(x) for v in event.embeddings for x in v}
            out.append(("event", type(event).__name__, fields))
        else:
            kind, event_type, payload = item
            shown = dict(payload or {})
            if "serialized" in shown:
                assert shown.pop("serialized") == payload_of
                shown["serialized"] = "MODEL"
            out.append((kind, event_type, shown))
    return out


CONFIGS = {
    "uncached": lambda tmp: PerformanceConfig(enable_caching=False, enable_metrics=False),
    "memory": lambda tmp: PerformanceConfig(cache_dir=str(tmp), enable_metrics=False),
    "disk": lambda tmp: PerformanceConfig(cache_dir=str(tmp), cache_size=0, enable_metrics=False),
}


def _pair(config: PerformanceConfig, dim: int = 8) -> tuple[PerfEmbedding, ExactEmbedding]:
    bare = ExactEmbedding(model_name="exact", dim=dim, embed_batch_size=2048)
    bare.callback_manager = CallbackManager([])
    inner = ExactEmbedding(model_name="exact", dim=dim)
    inner.callback_manager = CallbackManager([])
    return PerfEmbedding(inner, config), bare


async def _side_by_side(
    trace: _Trace, wrapped: BaseEmbedding, bare: BaseEmbedding, texts: list[str], mode: str
) -> None:
    seen = []
    for model in (wrapped, bare):
        trace.items.clear()
        trace.events.clear()
        model.callback_manager.set_handlers([_CallbackRecorder(trace)])
        if mode == "sync":
            result = model.get_text_embedding_batch(texts, rag_perf_cache=None)
        else:
            result = await model.aget_text_embedding_batch(texts, rag_perf_cache=None)
        ends = [e for e in trace.events if isinstance(e, EmbeddingEndEvent)]
        # The event's lists are its own (validation copies them), never the caller's.
        returned = {id(v) for v in result}
        assert all(id(v) not in returned for e in ends for v in e.embeddings)
        seen.append((result, _normalized(trace, model)))
    (ours, our_trace), (theirs, their_trace) = seen
    assert ours == theirs
    assert our_trace == their_trace


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("n", [3, 2050])  # one chunk; two chunks of embed_batch_size 2048
async def test_batch_calls_show_consumers_what_llamaindex_shows(
    trace: _Trace, tmp_path: Path, config: str, mode: str, n: int
) -> None:
    wrapped, bare = _pair(CONFIGS[config](tmp_path))
    texts = [f"text {i % 1500}" for i in range(n)]  # repeated texts past 1500
    await _side_by_side(trace, wrapped, bare, texts, mode)  # cold
    await _side_by_side(trace, wrapped, bare, texts, mode)  # warm: hits where cached


async def test_batch_calls_on_redis_show_what_llamaindex_shows(
    trace: _Trace, tmp_path: Path, redis_url: str
) -> None:
    config = PerformanceConfig(
        cache_dir=str(tmp_path), cache_size=0, redis_url=redis_url, enable_metrics=False
    )
    wrapped, bare = _pair(config)
    texts = [f"text {i}" for i in range(20)]
    for mode in ("sync", "async", "sync"):
        await _side_by_side(trace, wrapped, bare, texts, mode)
    wrapped.service.store.cache.close()  # type: ignore[union-attr]


@pytest.mark.parametrize("show_progress", [False, True])
async def test_async_batch_with_workers_matches(
    trace: _Trace, tmp_path: Path, show_progress: bool
) -> None:
    # num_workers > 1: LlamaIndex awaits the chunks as jobs (run_jobs), in order.
    wrapped, bare = _pair(CONFIGS["memory"](tmp_path))
    wrapped.num_workers = bare.num_workers = 2
    texts = [f"text {i}" for i in range(2050)]
    seen = []
    for model in (wrapped, bare):
        trace.items.clear()
        trace.events.clear()
        result = await model.aget_text_embedding_batch(texts, show_progress=show_progress)
        seen.append((result, _normalized(trace, model)))
    assert seen[0] == seen[1]


@pytest.fixture
def quiet_trace() -> Iterator[_Trace]:
    """A trace fed by a span handler only: no event handler listens."""
    root = get_dispatcher()
    found = _Trace()
    spans = _SpanRecorder()
    spans.trace = found
    root.add_span_handler(spans)
    try:
        yield found
    finally:
        root.span_handlers.remove(spans)


ONE_TEXT = [
    "get_query_embedding",
    "aget_query_embedding",
    "get_text_embedding",
    "aget_text_embedding",
]


async def _one_text_side_by_side(
    trace: _Trace, wrapped: BaseEmbedding, bare: BaseEmbedding, method: str, text: str
) -> None:
    seen = []
    for model in (wrapped, bare):
        trace.items.clear()
        trace.events.clear()
        model.callback_manager.set_handlers([_CallbackRecorder(trace)])
        result = getattr(model, method)(text)
        if method.startswith("a"):
            result = await result
        seen.append((result, _normalized(trace, model, top_spans=True)))
    assert seen[0] == seen[1]


@pytest.mark.parametrize("method", ONE_TEXT)
@pytest.mark.parametrize("config", sorted(CONFIGS))
async def test_one_text_calls_show_consumers_what_llamaindex_shows(
    trace: _Trace, tmp_path: Path, config: str, method: str
) -> None:
    wrapped, bare = _pair(CONFIGS[config](tmp_path))
    for _ in range(2):  # cold, warm
        await _one_text_side_by_side(trace, wrapped, bare, method, "what is rag?")
    assert [type(e).__name__ for e in trace.events] == ["EmbeddingStartEvent", "EmbeddingEndEvent"]


@pytest.mark.parametrize("method", ONE_TEXT)
async def test_one_text_calls_without_a_listener_keep_spans_and_callbacks(
    quiet_trace: _Trace, tmp_path: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not li_embeddings._listening(li_embeddings._dispatcher)
    built: list[str] = []
    monkeypatch.setattr(li_embeddings, "_BASE_QUERY", lambda *a: built.append("base"))
    monkeypatch.setattr(li_embeddings, "_BASE_TEXT", lambda *a: built.append("base"))
    wrapped, bare = _pair(CONFIGS["memory"](tmp_path))
    for _ in range(2):
        await _one_text_side_by_side(quiet_trace, wrapped, bare, method, "what is rag?")
    assert built == []  # LlamaIndex's body (which builds the events) was not taken
    kinds = [item[0] for item in quiet_trace.items]
    assert kinds[0] == "span" and "callback start" in kinds and "callback end" in kinds


async def test_one_text_calls_with_embeddings_cache_take_llamaindex_body(
    quiet_trace: _Trace, tmp_path: Path
) -> None:
    wrapped, bare = _pair(CONFIGS["memory"](tmp_path))
    wrapped.embeddings_cache = SimpleKVStore()
    bare.embeddings_cache = SimpleKVStore()
    for method in ONE_TEXT:
        for _ in range(2):
            await _one_text_side_by_side(quiet_trace, wrapped, bare, method, "cached")


def test_progress_bar_and_empty_input_match(trace: _Trace, tmp_path: Path) -> None:
    pytest.importorskip("tqdm")
    wrapped, bare = _pair(CONFIGS["memory"](tmp_path))
    for texts in (["a", "b"], []):
        seen = []
        for model in (wrapped, bare):
            trace.items.clear()
            trace.events.clear()
            result = model.get_text_embedding_batch(texts, show_progress=True)
            seen.append((result, _normalized(trace, model)))
        assert seen[0] == seen[1]


def test_no_event_is_built_when_no_handler_would_see_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    real_construct = EmbeddingEndEvent.model_construct

    def construct(*args: Any, **kwargs: Any) -> Any:
        built.append("end")
        return real_construct(*args, **kwargs)

    monkeypatch.setattr(EmbeddingEndEvent, "model_construct", construct)
    wrapped, bare = _pair(CONFIGS["memory"](tmp_path))
    root = get_dispatcher()
    assert not li_embeddings._listening(li_embeddings._dispatcher)  # only NullEventHandler
    assert wrapped.get_text_embedding_batch(["a", "b"]) == bare.get_text_embedding_batch(["a", "b"])
    assert built == []
    # A handler on any dispatcher of the chain is seen at the next call.
    handler = _EventRecorder(trace=_Trace())
    child = get_dispatcher(BaseEmbedding.__module__)
    child.add_event_handler(handler)
    try:
        assert li_embeddings._listening(li_embeddings._dispatcher)
        wrapped.get_text_embedding_batch(["a", "b"])
        assert built == ["end"]
        assert [type(e).__name__ for e in handler.trace.events] == [
            "EmbeddingStartEvent",
            "EmbeddingEndEvent",
        ]
    finally:
        child.event_handlers.remove(handler)
    assert root.event_handlers and not li_embeddings._listening(li_embeddings._dispatcher)


class _OddStore:
    """An EmbeddingStore of our protocol that hands vectors back as it likes (ints here)."""

    dtype = "float32"

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def embedding_key(
        self, provider: str, model: str, dimensions: int | None, role: str, text: str
    ) -> str:
        return f"{provider}/{model}/{role}/{text}"

    def get_many(self, keys: list[str]) -> list[Any]:
        return [self.data.get(k) for k in keys]

    def set_many(self, items: dict[str, Any], *, ttl: float | None = None) -> None:
        self.data.update({k: [int(x * 256) for x in v] for k, v in items.items()})

    async def aget_many(self, keys: list[str]) -> list[Any]:
        return self.get_many(keys)

    async def aset_many(self, items: dict[str, Any], *, ttl: float | None = None) -> None:
        self.set_many(items)


def test_vectors_nobody_vouches_for_are_validated_as_llamaindex_does(trace: _Trace) -> None:
    config = PerformanceConfig(enable_metrics=False)
    store = _OddStore()
    wrapped = PerfEmbedding(ExactEmbedding(model_name="exact"), config, store=store)  # type: ignore[arg-type]
    assert not wrapped.service.plain_floats
    assert not li_embeddings._plain(wrapped)
    wrapped.get_text_embedding_batch(["a"])
    trace.events.clear()
    hit = wrapped.get_text_embedding_batch(["a"])
    assert all(type(x) is int for x in hit[0])  # as the store gave them
    (end,) = [e for e in trace.events if isinstance(e, EmbeddingEndEvent)]
    assert end.embeddings == [[float(x) for x in hit[0]]]
    assert all(type(x) is float for x in end.embeddings[0])  # pydantic's coercion


def test_plain_floats_only_when_the_service_answers() -> None:
    config = PerformanceConfig(enable_caching=False, enable_metrics=False)
    wrapped = PerfEmbedding(ExactEmbedding(model_name="exact"), config)
    assert wrapped.service.plain_floats and li_embeddings._plain(wrapped)
    wrapped.embeddings_cache = SimpleKVStore()  # LlamaIndex's cache answers first
    assert not li_embeddings._plain(wrapped)

    class Custom(PerfEmbedding):
        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return [[1.0] for _ in texts]

    custom = Custom(ExactEmbedding(model_name="exact"), config)  # type: ignore[call-arg]
    assert not li_embeddings._plain(custom)


def test_service_vectors_are_plain_floats_on_every_path(tmp_path: Path) -> None:
    # What plain_floats promises, checked on a miss, a memory hit and a disk hit.
    def odd(texts: list[str]) -> list[list[Any]]:
        return [[1, True, 0.5] for _ in texts]  # ints and bools: rounded to floats

    for config in (
        PerformanceConfig(enable_caching=False, enable_metrics=False),
        PerformanceConfig(cache_dir=str(tmp_path / "m"), enable_metrics=False),
        PerformanceConfig(cache_dir=str(tmp_path / "d"), cache_size=0, enable_metrics=False),
    ):
        from rag_perf_plugins.services.defaults import default_embedding_store

        service = EmbeddingService(
            odd,
            provider="p",
            model="m",
            symmetric=True,
            config=config,
            store=default_embedding_store(config),
            batching=False,
        )
        assert service.plain_floats
        for _ in range(2):  # miss, then hit
            vectors = service.embed_documents(["a", "b", "a"])
            assert vectors == [[1.0, 1.0, 0.5]] * 3
            assert all(type(v) is list for v in vectors)
            assert all(type(x) is float for v in vectors for x in v)
            assert len({id(v) for v in vectors}) == 3
