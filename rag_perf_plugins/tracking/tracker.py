"""Per-operation statistics: the :class:`PerformanceTracker` and its snapshots.

Example::

    tracker = get_performance_tracker()
    tracker.record("embed", 0.042, tokens_in=120, batch_size=16)
    tracker.incr("cache.errors")
    tracker.get_operation_stats("embed").latency_p95_s

Components (cache, admission gate, batcher, adapters) call :meth:`PerformanceTracker.record`
once per finished call and :meth:`PerformanceTracker.incr` for named events. Reading is
done from snapshots (:class:`OperationStats`), never from live state.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from array import array
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

from .._signature import checked_kwargs
from ..config import PerformanceConfig
from .call import TrackedCall
from .histogram import LogHistogram

__all__ = [
    "NULL_TRACKER",
    "STATS_SCHEMA",
    "NullTracker",
    "OperationStats",
    "PerformanceTracker",
    "get_performance_tracker",
    "resolve_tracker",
    "set_performance_tracker",
]

STATS_SCHEMA = "rag-perf-stats/1"

_ceil, _log = math.ceil, math.log
_ZERO: Any = object()  # bucket marker for latencies <= 0

# Throughput is counted in this many slots across the sliding window: memory stays fixed
# and the estimate is off by at most one slot (1/60 of the window) at the window's edge.
_WINDOW_SLOTS = 60
SEMANTIC_HITS_KEPT: Final = 100  # latest semantic-cache hits a tracker keeps


class _Window:
    """Event counts in a ring of time slots covering the last ``window_s`` seconds."""

    __slots__ = ("_counts", "_ids", "_slot_s", "window_s")

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._slot_s = window_s / _WINDOW_SLOTS
        # Raw integer arrays: the ring is rewritten for ever, and list slots would hold a
        # fresh heap int per slot id and per count above 256.
        self._ids = array("q", [-1] * _WINDOW_SLOTS)
        self._counts = array("q", bytes(8 * _WINDOW_SLOTS))

    def add(self, now: float) -> None:
        slot = int(now / self._slot_s)
        i = slot % _WINDOW_SLOTS
        if self._ids[i] != slot:
            self._ids[i] = slot
            self._counts[i] = 0
        self._counts[i] += 1

    def rate(self, now: float, since: float) -> float:
        """Events per second over the window (or since ``since`` when that is shorter)."""
        current = int(now / self._slot_s)
        oldest = current - _WINDOW_SLOTS + 1
        total = sum(
            c for s, c in zip(self._ids, self._counts, strict=True) if oldest <= s <= current
        )
        span = min(self.window_s, max(now - since, self._slot_s))
        return total / span


class _OpState:
    """Live, mutable statistics of one operation; every field is guarded by ``lock``."""

    __slots__ = (
        "abandoned",
        "batch",
        "cache_hits",
        "cache_misses",
        "cost_saved_usd",
        "cost_unknown",
        "cost_usd",
        "count",
        "counters",
        "errors",
        "first_seen",
        "latency",
        "latency_hit",
        "latency_miss",
        "lock",
        "models",
        "queue_wait",
        "retries",
        "tokens_in",
        "tokens_out",
        "tokens_saved",
        "ttft",
        "window",
    )

    def __init__(self, window_s: float, now: float) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.errors = 0
        self.abandoned = 0
        self.latency = LogHistogram()
        # The same calls split by cache result (calls that reported none are only in
        # ``latency``): a cache makes the overall p95 look better than what a miss costs.
        self.latency_hit = LogHistogram()
        self.latency_miss = LogHistogram()
        self.queue_wait = LogHistogram()
        self.ttft = LogHistogram()
        self.batch = LogHistogram(min_value=1.0)
        self.tokens_in = 0
        self.tokens_out = 0
        self.tokens_saved = 0
        self.cost_usd = 0.0
        self.cost_saved_usd = 0.0
        self.cost_unknown = 0
        self.cache_hits = 0
        self.cache_misses = 0
        self.retries = 0
        self.counters: dict[str, int] = {}
        self.models: dict[str, list[float]] = {}  # model -> [calls, cost, saved, unknown]
        self.window = _Window(window_s)
        self.first_seen = now


@dataclass(frozen=True)
class OperationStats:
    """A consistent snapshot of one operation's statistics (times in seconds).

    Example: ``stats = tracker.get_operation_stats("llm"); stats.latency_p99_s``.

    Percentiles are NaN when nothing was recorded for them (``to_dict`` turns NaN into
    ``None``). ``cache_hit_rate`` counts only calls that reported a hit or a miss.
    ``latency_hit_*`` and ``latency_miss_*`` are the percentiles of those calls alone: the
    overall ones mix cheap hits with misses, so ``latency_miss_p95_s`` is what a miss costs.
    ``cost_usd`` is what the provider calls cost (USD, at the price table's prices),
    ``cost_saved_usd`` what cache hits and coalesced calls did not spend, and
    ``cost_unknown_calls`` the calls whose cost is unknown (no price for the model, or no
    usage reported): they are not in ``cost_usd``.
    """

    operation: str
    count: int
    errors: int
    success_rate: float
    latency_p50_s: float
    latency_p95_s: float
    latency_p99_s: float
    latency_max_s: float
    latency_mean_s: float
    latency_hit_p50_s: float
    latency_hit_p95_s: float
    latency_miss_p50_s: float
    latency_miss_p95_s: float
    latency_miss_p99_s: float
    throughput_per_s: float
    tokens_in: int
    tokens_out: int
    cache_hits: int
    cache_misses: int
    cache_hit_rate: float
    tokens_saved: int
    queue_wait_p50_s: float
    queue_wait_p95_s: float
    retries: int
    batches: int
    batch_size_mean: float
    batch_size_max: float
    ttft_p50_s: float
    ttft_p95_s: float
    streams_abandoned: int
    cost_usd: float = 0.0
    cost_saved_usd: float = 0.0
    cost_unknown_calls: int = 0
    counters: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN and infinities become ``None``."""
        return {k: _json_number(v) for k, v in asdict(self).items()}


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


class PerformanceTracker:
    """Thread- and task-safe statistics per operation name, cheap enough for every call.

    Example::

        tracker = PerformanceTracker(window_s=60.0)
        tracker.record("llm", 0.84, tokens_in=900, tokens_out=120, cache_hit=False)
        with tracker.track("retrieve") as call:
            call.cache_hit = True
        tracker.get_metrics("llm")["latency_p95_s"]

    ``record`` takes one lock per operation (never a global one) and does O(1) work without
    I/O, so it is safe to call from event-loop code. Latencies, queue waits, batch sizes
    and time-to-first-token go into :class:`LogHistogram` s (±0.5 % on any percentile,
    memory bounded by the value range, not the call count).

    Args:
        enabled: When ``False``, ``record``/``incr`` return at once and decorators call
            straight through (``enable_metrics`` in the config).
        window_s: Sliding window for throughput, in seconds (``metrics_window_seconds``).
        clock: Seconds, monotonic; used by ``track``/``track_performance`` to time calls
            and for the throughput window. Tests pass a ``FakeClock``.

    Does not: persist anything, aggregate across processes (export and merge the JSON
    histograms for that), or sample; every call is counted.
    """

    __slots__ = (
        "_clock",
        "_counters",
        "_lock",
        "_ops",
        "_process",
        "_semantic",
        "_sinks",
        "_started",
        "enabled",
        "window_s",
    )

    @checked_kwargs
    def __init__(
        self,
        *,
        enabled: bool = True,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if not (isinstance(window_s, (int, float)) and window_s > 0):
            msg = f"window_s must be a number of seconds > 0, got {window_s!r}"
            raise ValueError(msg)
        self.enabled = bool(enabled)
        self.window_s = float(window_s)
        self._clock = clock
        self._lock = threading.Lock()  # guards creating operations and the global counters
        self._ops: dict[str, _OpState] = {}
        self._counters: dict[str, int] = {}
        self._sinks: tuple[Callable[..., None], ...] = ()
        self._process: Any = None
        self._started = clock()
        # The latest semantic-cache hits: (operation, similarity, matched prompt), bounded.
        self._semantic: collections.deque[tuple[str, float, str]] = collections.deque(
            maxlen=SEMANTIC_HITS_KEPT
        )

    @classmethod
    def from_config(
        cls, config: PerformanceConfig, *, clock: Callable[[], float] = time.perf_counter
    ) -> PerformanceTracker:
        """Use ``enable_metrics`` and ``metrics_window_seconds`` from a config."""
        return cls(
            enabled=config.enable_metrics, window_s=config.metrics_window_seconds, clock=clock
        )

    @property
    def clock(self) -> Callable[[], float]:
        """The clock (seconds) that times tracked calls."""
        return self._clock

    # --- recording (hot path) ---------------------------------------------------------
    def _state(self, operation: str) -> _OpState:
        state = self._ops.get(operation)
        if state is None:
            if not isinstance(operation, str) or not operation:
                msg = f"operation must be a non-empty str, got {operation!r}"
                raise ValueError(msg)
            with self._lock:
                state = self._ops.get(operation)
                if state is None:
                    state = self._ops[operation] = _OpState(self.window_s, self._clock())
        return state

    def record(
        self,
        operation: str,
        latency_s: float,
        *,
        error: bool = False,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cache_hit: bool | None = None,
        queue_wait_s: float | None = None,
        batch_size: int | None = None,
        retries: int = 0,
        tokens_saved: int = 0,
        ttft_s: float | None = None,
        abandoned: bool = False,
        cost_usd: float = 0.0,
        cost_saved_usd: float = 0.0,
        cost_unknown: bool = False,
        model: str | None = None,
        counters: Mapping[str, int] | None = None,
    ) -> None:
        """Record one finished call of ``operation`` that took ``latency_s`` seconds.

        Example: ``tracker.record("embed", 0.031, tokens_in=512, batch_size=32)``.

        Args:
            operation: Name of the operation, e.g. ``"llm.chat"`` or ``"cache.get"``.
            latency_s: Wall time of the call, in seconds.
            error: The call raised or failed.
            tokens_in: Prompt/input tokens sent to the provider.
            tokens_out: Completion/output tokens received.
            cache_hit: ``True``/``False`` when the call consulted a cache, else ``None``.
            queue_wait_s: Seconds spent waiting for admission, a pool slot or a batch.
            batch_size: Items in the batch this call sent, if it batched.
            retries: Extra attempts made after the first.
            tokens_saved: Provider tokens not spent thanks to a cache hit or de-duplication.
            ttft_s: Time to first token/chunk of a stream, in seconds.
            abandoned: A stream the consumer stopped reading before its end.
            cost_usd: What the provider call cost, in USD (0 for a hit).
            cost_saved_usd: What a cache hit or a coalesced call did not spend, in USD.
            cost_unknown: The call's cost is unknown (no price for its model, or no usage).
            model: The model called; with it the costs are also kept per model
                (:meth:`cost_by_model`).
            counters: Named counters of ``operation`` to add to in the same step, e.g.
                ``{"cache.hits": 3}``: what :meth:`incr` with ``operation`` adds, without
                a second lookup and lock.
        """
        if not self.enabled:
            return
        state = self._ops.get(operation) or self._state(operation)
        # The two updates every call makes (LogHistogram.add and _Window.add) are inlined
        # here: in CPython 3.11 the two method calls were about a third of record()'s
        # cost. Bucket and slot are computed before taking the lock, to keep it short.
        lat = state.latency
        if latency_s > 0.0:
            index = _ceil(_log(latency_s) * lat._inv_log_gamma)
            if index < lat._min_index:
                index = lat._min_index
            elif index > lat._max_index:
                index = lat._max_index
        else:
            index = _ZERO
        window = state.window
        slot = int(self._clock() / window._slot_s)
        ring = slot % _WINDOW_SLOTS
        sinks = self._sinks
        with state.lock:
            state.count += 1
            lat.count += 1
            lat.sum += latency_s
            if latency_s < lat.min:
                lat.min = latency_s
            if latency_s > lat.max:
                lat.max = latency_s
            if index is _ZERO:
                lat.zero_count += 1
            else:
                pos = index - lat._offset
                if 0 <= pos < len(lat._counts):
                    lat._counts[pos] += 1
                else:
                    lat._count_new(index, 1)
            if window._ids[ring] != slot:
                window._ids[ring] = slot
                window._counts[ring] = 1
            else:
                window._counts[ring] += 1
            if error:
                state.errors += 1
            if tokens_in:
                state.tokens_in += tokens_in
            if tokens_out:
                state.tokens_out += tokens_out
            if cache_hit is not None:
                # The same bucket in the hit or the miss histogram (same layout, inlined).
                if cache_hit:
                    state.cache_hits += 1
                    split = state.latency_hit
                else:
                    state.cache_misses += 1
                    split = state.latency_miss
                split.count += 1
                split.sum += latency_s
                if latency_s < split.min:
                    split.min = latency_s
                if latency_s > split.max:
                    split.max = latency_s
                if index is _ZERO:
                    split.zero_count += 1
                else:
                    pos = index - split._offset
                    if 0 <= pos < len(split._counts):
                        split._counts[pos] += 1
                    else:
                        split._count_new(index, 1)
            if queue_wait_s is not None:
                state.queue_wait.add(queue_wait_s)
            if batch_size is not None:
                state.batch.add(batch_size)
            if retries:
                state.retries += retries
            if tokens_saved:
                state.tokens_saved += tokens_saved
            if ttft_s is not None:
                state.ttft.add(ttft_s)
            if abandoned:
                state.abandoned += 1
            if cost_usd:
                state.cost_usd += cost_usd
            if cost_saved_usd:
                state.cost_saved_usd += cost_saved_usd
            if cost_unknown:
                state.cost_unknown += 1
            if counters:
                named = state.counters
                for counter, n in counters.items():
                    named[counter] = named.get(counter, 0) + n
            if model is not None:  # summed over the operations by cost_by_model()
                entry = state.models.get(model)
                if entry is None:
                    entry = state.models[model] = [0, 0.0, 0.0, 0]
                entry[0] += 1
                entry[1] += cost_usd
                entry[2] += cost_saved_usd
                entry[3] += cost_unknown
        if sinks:
            # Outside the lock: a sink (e.g. OpenTelemetry) may be slow or take its own locks.
            for sink in sinks:
                sink(operation, latency_s, error, tokens_in, tokens_out, ttft_s)

    def incr(self, counter: str, n: int = 1, *, operation: str | None = None) -> None:
        """Add ``n`` to a named counter, e.g. ``tracker.incr("cache.errors")``.

        With ``operation`` the counter belongs to that operation's stats; without, it is
        process-wide (``get_metrics()["counters"]``).
        """
        if not self.enabled:
            return
        if operation is None:
            with self._lock:
                self._counters[counter] = self._counters.get(counter, 0) + n
            return
        state = self._ops.get(operation) or self._state(operation)
        with state.lock:
            state.counters[counter] = state.counters.get(counter, 0) + n

    def track(self, operation: str) -> TrackedCall:
        """Time a block: ``with tracker.track("op") as call:`` (or ``async with``).

        The handle takes per-call details before the block ends::

            async with tracker.track("llm") as call:
                reply = await client.chat(...)
                call.tokens_in, call.tokens_out = reply.usage.prompt, reply.usage.completion
                call.cache_hit = False

        An exception leaving the block records the call as an error and propagates.
        """
        return TrackedCall(self, operation)

    def record_semantic_hit(self, operation: str, similarity: float, prompt: str) -> None:
        """Keep one semantic-cache hit: its cosine similarity and the prompt it matched.

        Example: ``tracker.record_semantic_hit("llm.chat", 0.94, "How do I reset...?")``.
        The latest :data:`SEMANTIC_HITS_KEPT` are kept (:meth:`semantic_hits`); the count
        is the ``cache.semantic_hits`` counter of the operation.
        """
        if self.enabled:
            self._semantic.append((operation, float(similarity), prompt))

    def semantic_hits(self) -> list[dict[str, Any]]:
        """The latest semantic hits, oldest first: operation, similarity, matched prompt."""
        return [
            {"operation": op, "similarity": sim, "matched_prompt": prompt}
            for op, sim, prompt in list(self._semantic)
        ]

    def add_sink(self, sink: Callable[..., None]) -> None:
        """Also send every recorded call to ``sink``.

        The sink is called as ``sink(op, latency_s, error, tokens_in, tokens_out, ttft_s)``.
        Used by the OpenTelemetry exporter; a sink runs on the recording thread, outside
        the tracker's locks, so keep it fast.
        """
        with self._lock:
            self._sinks = (*self._sinks, sink)

    def has_sink(self, sink: Callable[..., None]) -> bool:
        """Whether ``sink`` is attached (see :meth:`add_sink`)."""
        return sink in self._sinks

    def remove_sink(self, sink: Callable[..., None]) -> None:
        """Stop sending calls to ``sink`` (no error if it was not added)."""
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)

    # --- reading ----------------------------------------------------------------------
    @property
    def operations(self) -> list[str]:
        """Names of operations recorded so far, sorted."""
        return sorted(self._ops)

    def get_operation_stats(self, operation: str) -> OperationStats:
        """A snapshot of ``operation`` (all zeros and NaN when it was never recorded)."""
        state = self._ops.get(operation)
        now = self._clock()
        if state is None:
            return _snapshot(operation, _OpState(self.window_s, now), now)
        with state.lock:
            frozen = _copy_state(state)
        return _snapshot(operation, frozen, now)

    def get_metrics(self, operation: str | None = None) -> dict[str, Any]:
        """Plain-dict statistics: one operation's, or everything when ``operation`` is None.

        Everything means ``{"operations": {name: stats}, "counters": {...},
        "process": {"rss_bytes", "cpu_percent", "cpu_user_s", "cpu_system_s", ...},
        "uptime_s", "enabled", "window_s"}``.
        """
        if operation is not None:
            return self.get_operation_stats(operation).to_dict()
        return self.to_dict(histograms=False)

    def cost_by_model(self) -> dict[str, dict[str, Any]]:
        """Calls and dollars per model (USD), for the calls recorded with ``model=``.

        Example: ``tracker.cost_by_model()["gpt-4o-mini"]`` is ``{"calls": 12,
        "cost_usd": 0.0021, "cost_saved_usd": 0.0009, "cost_unknown_calls": 0}``.
        """
        totals: dict[str, list[float]] = {}
        for state in list(self._ops.values()):
            with state.lock:
                items = [(m, list(v)) for m, v in state.models.items()]
            for model, v in items:
                total = totals.setdefault(model, [0, 0.0, 0.0, 0])
                for i in range(4):
                    total[i] += v[i]
        return {
            model: {
                "calls": int(v[0]),
                "cost_usd": v[1],
                "cost_saved_usd": v[2],
                "cost_unknown_calls": int(v[3]),
            }
            for model, v in sorted(totals.items())
        }

    def counters(self) -> dict[str, int]:
        """Process-wide named counters (a copy)."""
        with self._lock:
            return dict(self._counters)

    def histograms(self, operation: str) -> dict[str, LogHistogram]:
        """Copies of ``operation``'s histograms.

        Keys: ``latency``, ``latency_hit``, ``latency_miss`` (seconds; the calls that
        reported a cache hit or miss), ``queue_wait``, ``ttft`` (seconds), ``batch_size``.
        """
        state = self._ops.get(operation)
        if state is None:
            return {}
        with state.lock:
            return {
                "latency": state.latency.copy(),
                "latency_hit": state.latency_hit.copy(),
                "latency_miss": state.latency_miss.copy(),
                "queue_wait": state.queue_wait.copy(),
                "ttft": state.ttft.copy(),
                "batch_size": state.batch.copy(),
            }

    def process_stats(self) -> dict[str, Any]:
        """This process's resource use via psutil: RSS bytes, CPU % since last call, CPU s."""
        import psutil

        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(interval=None)  # primes the "since last call" reading
        proc = self._process
        with proc.oneshot():
            times = proc.cpu_times()
            return {
                "pid": proc.pid,
                "rss_bytes": proc.memory_info().rss,
                "cpu_percent": proc.cpu_percent(interval=None),
                "cpu_user_s": times.user,
                "cpu_system_s": times.system,
                "num_threads": proc.num_threads(),
            }

    def to_dict(self, *, histograms: bool = True) -> dict[str, Any]:
        """JSON-ready export (schema ``rag-perf-stats/1``, read by ``rag-perf stats FILE``).

        With ``histograms`` each operation also carries its raw histograms, so exports from
        several processes can be merged with :meth:`LogHistogram.from_dict` / ``merge``.
        """
        operations: dict[str, Any] = {}
        for name in self.operations:
            entry = self.get_operation_stats(name).to_dict()
            if histograms:
                entry["histograms"] = {k: h.to_dict() for k, h in self.histograms(name).items()}
            operations[name] = entry
        return {
            "schema": STATS_SCHEMA,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "enabled": self.enabled,
            "window_s": self.window_s,
            "uptime_s": self._clock() - self._started,
            "operations": operations,
            "models": self.cost_by_model(),
            "counters": self.counters(),
            "process": self.process_stats(),
        }

    def reset(self) -> None:
        """Forget every operation and counter (sinks stay attached)."""
        with self._lock:
            self._ops = {}
            self._counters = {}
            self._semantic.clear()
            self._started = self._clock()

    def __repr__(self) -> str:
        calls = sum(s.count for s in list(self._ops.values()))
        state = "enabled" if self.enabled else "disabled"
        return (
            f"<PerformanceTracker [{state}, operations: {len(self._ops)}, calls: {calls}, "
            f"counters: {len(self._counters)} | window_s={self.window_s:g}]>"
        )


def _copy_state(state: _OpState) -> _OpState:
    """A detached copy taken under the lock, so percentiles are computed outside it."""
    copy = _OpState.__new__(_OpState)
    for name in _OpState.__slots__:
        setattr(copy, name, getattr(state, name))
    copy.latency = state.latency.copy()
    copy.latency_hit = state.latency_hit.copy()
    copy.latency_miss = state.latency_miss.copy()
    copy.queue_wait = state.queue_wait.copy()
    copy.ttft = state.ttft.copy()
    copy.batch = state.batch.copy()
    copy.counters = dict(state.counters)
    window = _Window(state.window.window_s)
    window._ids = array("q", state.window._ids)
    window._counts = array("q", state.window._counts)
    copy.window = window
    return copy


def _snapshot(operation: str, s: _OpState, now: float) -> OperationStats:
    looked_up = s.cache_hits + s.cache_misses
    return OperationStats(
        operation=operation,
        count=s.count,
        errors=s.errors,
        success_rate=(s.count - s.errors) / s.count if s.count else math.nan,
        latency_p50_s=s.latency.quantile(0.5),
        latency_p95_s=s.latency.quantile(0.95),
        latency_p99_s=s.latency.quantile(0.99),
        latency_max_s=s.latency.max if s.count else math.nan,
        latency_mean_s=s.latency.mean,
        latency_hit_p50_s=s.latency_hit.quantile(0.5),
        latency_hit_p95_s=s.latency_hit.quantile(0.95),
        latency_miss_p50_s=s.latency_miss.quantile(0.5),
        latency_miss_p95_s=s.latency_miss.quantile(0.95),
        latency_miss_p99_s=s.latency_miss.quantile(0.99),
        throughput_per_s=s.window.rate(now, s.first_seen) if s.count else 0.0,
        tokens_in=s.tokens_in,
        tokens_out=s.tokens_out,
        cache_hits=s.cache_hits,
        cache_misses=s.cache_misses,
        cache_hit_rate=s.cache_hits / looked_up if looked_up else math.nan,
        tokens_saved=s.tokens_saved,
        queue_wait_p50_s=s.queue_wait.quantile(0.5),
        queue_wait_p95_s=s.queue_wait.quantile(0.95),
        retries=s.retries,
        batches=s.batch.count,
        batch_size_mean=s.batch.mean,
        batch_size_max=s.batch.max if s.batch.count else math.nan,
        ttft_p50_s=s.ttft.quantile(0.5),
        ttft_p95_s=s.ttft.quantile(0.95),
        streams_abandoned=s.abandoned,
        cost_usd=s.cost_usd,
        cost_saved_usd=s.cost_saved_usd,
        cost_unknown_calls=s.cost_unknown,
        counters=dict(s.counters),
    )


_GLOBAL: PerformanceTracker | None = None
_GLOBAL_LOCK = threading.Lock()


def get_performance_tracker() -> PerformanceTracker:
    """The process-wide tracker, built on first use from ``PerformanceConfig.load()``.

    Example: ``get_performance_tracker().get_metrics()``. Its ``enable_metrics`` and
    ``metrics_window_seconds`` come from the config file and ``RAG_PERF_*`` variables, as
    the process-wide cache manager's settings do (``RAG_PERF_ENABLE_METRICS=false`` makes
    it record nothing). Replace it with :func:`set_performance_tracker`.

    Raises:
        ConfigError: the config file or environment holds a bad key or value (nothing is
            kept; the next call tries again).
    """
    global _GLOBAL
    tracker = _GLOBAL
    if tracker is None:
        with _GLOBAL_LOCK:
            if _GLOBAL is None:
                _GLOBAL = PerformanceTracker.from_config(PerformanceConfig.load())
            tracker = _GLOBAL
    return tracker


def set_performance_tracker(tracker: PerformanceTracker | None) -> PerformanceTracker | None:
    """Make ``tracker`` the process-wide one; returns the previous one (for tests to restore).

    ``None`` drops the process-wide tracker: the next :func:`get_performance_tracker`
    builds a new one from ``PerformanceConfig.load()``. Components keep the tracker they
    resolved when they were built.
    """
    global _GLOBAL
    if tracker is not None and not isinstance(tracker, PerformanceTracker):
        msg = f"tracker must be a PerformanceTracker or None, got {type(tracker).__name__}"
        raise TypeError(msg)
    with _GLOBAL_LOCK:
        previous, _GLOBAL = _GLOBAL, tracker
    return previous


class NullTracker(PerformanceTracker):
    """A tracker that records nothing: pass it to turn a component's statistics off.

    Example::

        service = EmbeddingService(embed, provider="p", model="m", symmetric=True,
                                   tracker=NullTracker())
        NullTracker().get_metrics()          # {} : nothing is ever recorded

    Components built with ``enable_metrics: false`` get :data:`NULL_TRACKER`. It is a
    :class:`PerformanceTracker` whose ``enabled`` is always ``False``, so every reader
    (``get_metrics``, ``to_dict``, exporters) works and sees no operations.
    """

    __slots__ = ()

    def __init__(self, *, clock: Callable[[], float] = time.perf_counter) -> None:
        super().__init__(enabled=False, clock=clock)

    def record(self, operation: str, latency_s: float, **details: Any) -> None:
        """Do nothing."""

    def incr(self, counter: str, n: int = 1, *, operation: str | None = None) -> None:
        """Do nothing."""

    def __repr__(self) -> str:
        return "<NullTracker>"


NULL_TRACKER: Final = NullTracker()
"""The shared tracker of components whose config turns metrics off."""


def resolve_tracker(
    tracker: PerformanceTracker | None, config: PerformanceConfig | None = None
) -> PerformanceTracker:
    """The tracker a component records into, decided once when the component is built.

    Example: ``self._tracker = resolve_tracker(tracker, config)``.

    ``tracker`` when given (a :class:`NullTracker` turns statistics off); else
    :data:`NULL_TRACKER` when ``config.enable_metrics`` is off; else the process-wide
    :func:`get_performance_tracker` as it is now. Set the process tracker before building
    components: a component keeps the one it resolved. (Decorated functions are the
    exception: ``track_performance`` looks the process tracker up at each call.)
    """
    if tracker is not None:
        return tracker
    if config is not None and not config.enable_metrics:
        return NULL_TRACKER
    return get_performance_tracker()
