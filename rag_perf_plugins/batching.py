"""Micro-batching: merge concurrent callers' items into provider batches.

Many callers each submit one item; the batcher gathers them and calls ``processor_func``
once per batch, then hands every caller the result at its own position::

    def embed_many(texts: list[str]) -> list[list[float]]:
        return client.embeddings.create(model=MODEL, input=texts).data ...

    batcher = BatchProcessor(64, 0.005, embed_many, profile="openai")
    vector = batcher.submit("What is machine learning?")     # blocks this thread only

    async_batcher = AsyncBatchProcessor(64, 0.005, aembed_many)
    vector = await async_batcher.submit("What is machine learning?")

A batch is sent when it holds ``batch_size`` distinct items, when adding an item would
pass the token cap (``max_batch_tokens`` or the provider profile's), or ``max_wait_time``
seconds after its first item arrived, whichever comes first. Identical items within one
batch are sent once. Results are matched to callers strictly by index; a processor that
returns the wrong number of results fails that batch's callers with
:class:`BatchResultMismatch`. An error reaches exactly the callers of the failing batch.

The bookkeeping (what goes into which batch, de-duplication, who gets which result) is one
pure, I/O-free class, ``_BatchCore``; :class:`BatchProcessor` (threads) and
:class:`AsyncBatchProcessor` (one event loop) are thin shells around it.

Not done here: caching and single-flight across batches (that is the cache's job, in front
of the batcher), retries (the retry policy wraps ``processor_func``), and splitting one
item that alone exceeds the token cap (it is sent alone; the provider decides).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from ._clock import Clock, monotonic
from ._signature import checked_kwargs
from .config import PerformanceConfig
from .errors import RagPerfError
from .tokens import estimate_tokens
from .tracking import PerformanceTracker, resolve_tracker

__all__ = [
    "PROFILES",
    "AsyncBatchProcessor",
    "BatchProcessor",
    "BatchResultMismatch",
    "BatchStats",
    "BatcherClosed",
    "ProviderProfile",
    "is_batch_too_large",
    "split_batches",
]

T = TypeVar("T")
R = TypeVar("R")
W = TypeVar("W")

P = TypeVar("P", bound=Callable[..., Any])  # the shell's processor_func type

SyncProcessor = Callable[[list[Any]], Sequence[Any]]
AsyncProcessor = Callable[[list[Any]], Awaitable[Sequence[Any]]]
SyncFunc = Callable[[list[T]], Sequence[R]]
AnyFunc = Callable[[list[T]], Sequence[R] | Awaitable[Sequence[R]]]


class BatchResultMismatch(RagPerfError, ValueError):
    """``processor_func`` returned a different number of results than items it was given."""


class BatcherClosed(RagPerfError, RuntimeError):
    """``submit`` was called after ``close()``/``aclose()``."""


@dataclass(frozen=True)
class ProviderProfile:
    """Per-request limits of an embedding provider.

    Example: ``PROFILES["cohere"].max_inputs == 96``;
    ``ProviderProfile("mine", max_inputs=500, max_tokens=50_000)`` for a custom service.

    Attributes:
        name: Profile name, as in the config's ``provider_profile``.
        max_inputs: Most items in one request, or ``None`` for no provider limit.
        max_tokens: Most estimated tokens in one request, or ``None`` for no limit.
    """

    name: str
    max_inputs: int | None = None
    max_tokens: int | None = None

    def limits(self, batch_size: int, max_batch_tokens: int | None) -> tuple[int, int | None]:
        """(most items, most estimated tokens) of one request: ours within the provider's.

        Example: ``PROFILES["cohere"].limits(200, None) == (96, None)``.
        """
        items = batch_size if self.max_inputs is None else min(batch_size, self.max_inputs)
        tokens = max_batch_tokens
        if self.max_tokens is not None:
            tokens = self.max_tokens if tokens is None else min(tokens, self.max_tokens)
        return items, tokens


def split_batches(texts: list[str], *, max_items: int, max_tokens: int | None) -> list[list[str]]:
    """``texts`` cut in order into requests of ``max_items`` texts and ``max_tokens`` tokens.

    Example: with ``items, tokens = PROFILES["cohere"].limits(200, None)``,
    ``split_batches(texts, max_items=items, max_tokens=tokens)`` cuts 200 texts into
    requests of 96, 96 and 8. Tokens are estimated; a text over the token cap goes alone.
    The micro-batcher applies the same limits to the batches it forms; this is for callers
    that send their texts themselves.
    """
    if len(texts) <= max_items and max_tokens is None:
        return [texts]
    batches: list[list[str]] = []
    current: list[str] = []
    used = 0
    for text in texts:
        tokens = estimate_tokens(text) if max_tokens is not None else 0
        full = len(current) >= max_items or (
            max_tokens is not None and current and used + tokens > max_tokens
        )
        if full:
            batches.append(current)
            current, used = [], 0
        current.append(text)
        used += tokens
    if current:
        batches.append(current)
    return batches


# Documented provider limits on one embeddings request. Cohere's embed endpoint takes at
# most 96 texts and Voyage's 128; both cap tokens per text rather than per request, so no
# request token cap is set for them here ("custom" leaves everything to the caller).
PROFILES: dict[str, ProviderProfile] = {
    "openai": ProviderProfile("openai", max_inputs=2048, max_tokens=300_000),
    "cohere": ProviderProfile("cohere", max_inputs=96),
    "voyage": ProviderProfile("voyage", max_inputs=128),
    "custom": ProviderProfile("custom"),
}


def is_batch_too_large(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a provider's 400 "too many inputs/tokens" answer.

    Example: pass ``split_when=is_batch_too_large`` to split such a batch in half and retry.
    Looks at a ``status_code`` (or ``status``) of 400/413 and at the message; it does not
    parse provider-specific error bodies.
    """
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    text = str(exc).lower()
    too_big = any(
        word in text
        for word in ("too many", "too large", "maximum", "max_tokens", "exceeds", "too long")
    )
    return status in (400, 413) and too_big


class BatchStats:
    """Counters of one batcher; read them with :meth:`as_dict`.

    Example: ``batcher.stats.as_dict()["dedup_saved"]`` is how many items were not sent
    because an identical item was already in the same batch.
    """

    __slots__ = (
        "batches",
        "callers",
        "dedup_saved",
        "errors",
        "flush_reasons",
        "items_sent",
        "max_wait_s",
        "sizes",
        "splits",
        "total_wait_s",
    )

    def __init__(self) -> None:
        self.batches = 0
        self.callers = 0
        self.items_sent = 0
        self.dedup_saved = 0
        self.errors = 0
        self.splits = 0
        self.total_wait_s = 0.0
        self.max_wait_s = 0.0
        self.sizes: Counter[int] = Counter()
        self.flush_reasons: Counter[str] = Counter()

    def as_dict(self) -> dict[str, Any]:
        """A plain snapshot: counts, wait time of the first item (seconds), size histogram."""
        return {
            "batches": self.batches,
            "callers": self.callers,
            "items_sent": self.items_sent,
            "dedup_saved": self.dedup_saved,
            "errors": self.errors,
            "splits": self.splits,
            "mean_batch_size": self.items_sent / self.batches if self.batches else 0.0,
            "batch_sizes": dict(sorted(self.sizes.items())),
            "flush_reasons": dict(self.flush_reasons),
            "mean_wait_s": self.total_wait_s / self.batches if self.batches else 0.0,
            "max_wait_s": self.max_wait_s,
        }

    def __repr__(self) -> str:
        return (
            f"<BatchStats batches={self.batches} callers={self.callers} "
            f"items_sent={self.items_sent} dedup_saved={self.dedup_saved} errors={self.errors}>"
        )


class _Batch(Generic[T, W]):
    """One cut batch: the distinct items to send and, per caller, the index of its item."""

    __slots__ = ("items", "opened_at", "reason", "tokens", "waiters")

    def __init__(
        self,
        items: list[T],
        waiters: list[tuple[W, int, object]],
        tokens: int,
        opened_at: float,
        reason: str,
    ) -> None:
        self.items = items
        self.waiters = waiters  # (waiter, index into items, item_id)
        self.tokens = tokens
        self.opened_at = opened_at
        self.reason = reason

    def match(self, results: Sequence[R]) -> list[tuple[W, R]]:
        """Pair each caller with its result, strictly by index.

        Raises:
            BatchResultMismatch: ``results`` does not have one entry per item sent.
        """
        try:
            n = len(results)
        except TypeError:
            msg = (
                f"processor_func must return a sequence of {len(self.items)} results, "
                f"got {type(results).__name__}"
            )
            raise BatchResultMismatch(msg) from None
        if n != len(self.items):
            ids = [item_id for _, _, item_id in self.waiters if item_id is not None][:5]
            named = f" (item ids {ids}...)" if ids else ""
            msg = (
                f"processor_func returned {n} results for a batch of {len(self.items)} "
                f"items{named}; it must return exactly one result per item, in order"
            )
            raise BatchResultMismatch(msg)
        return [(waiter, results[index]) for waiter, index, _ in self.waiters]

    def split(self) -> tuple[_Batch[T, W], _Batch[T, W]]:
        """Two halves of this batch (for a provider that refused it as too large)."""
        half = len(self.items) // 2
        first: list[tuple[W, int, object]] = []
        second: list[tuple[W, int, object]] = []
        for waiter, index, item_id in self.waiters:
            if index < half:
                first.append((waiter, index, item_id))
            else:
                second.append((waiter, index - half, item_id))
        return (
            _Batch(self.items[:half], first, 0, self.opened_at, self.reason),
            _Batch(self.items[half:], second, 0, self.opened_at, self.reason),
        )


class _BatchCore(Generic[T, W]):
    """The pure batching state machine shared by both shells; no I/O, no locking, no waiting.

    ``add`` puts a caller's item into the pending batch and returns the batches that must be
    sent now; ``cut`` takes the pending batch (on timer or close). Waiters are opaque: a
    ``threading`` slot or an ``asyncio.Future``; ``live(waiter)`` says whether its caller still
    wants the result, so a cancelled caller's item is dropped if nobody else shares it.
    """

    __slots__ = (
        "_index",
        "_items",
        "_key",
        "_live",
        "_opened_at",
        "_tokens",
        "_waiters",
        "generation",
        "max_items",
        "max_tokens",
    )

    def __init__(
        self,
        *,
        max_items: int,
        max_tokens: int | None,
        key: Callable[[T], Hashable] | None,
        live: Callable[[W], bool],
    ) -> None:
        self.max_items = max_items
        self.max_tokens = max_tokens
        self._key = key
        self._live = live
        self._items: list[T] = []
        self._index: dict[Hashable, int] = {}
        self._tokens: list[int] = []
        self._waiters: list[tuple[W, int, object]] = []
        self._opened_at = 0.0
        # Bumped at every cut, so a timer armed for an earlier batch knows it is stale.
        self.generation = 0

    @property
    def pending_callers(self) -> int:
        return len(self._waiters)

    @property
    def opened_at(self) -> float:
        return self._opened_at

    def add(
        self, item: T, waiter: W, *, tokens: int, now: float, item_id: object = None
    ) -> tuple[list[_Batch[T, W]], bool]:
        """Queue one caller's item; returns (batches to send now, whether a batch was opened)."""
        ready: list[_Batch[T, W]] = []
        dedup_key = self._dedup_key(item)
        if dedup_key is not None:
            index = self._index.get(dedup_key)
            if index is not None:
                # An identical item is already pending: this caller shares its result and
                # adds neither an input nor tokens to the request.
                self._waiters.append((waiter, index, item_id))
                return ready, False
        if (
            self._items
            and self.max_tokens is not None
            and sum(self._tokens) + tokens > self.max_tokens
        ):
            batch = self.cut("tokens")
            if batch is not None:
                ready.append(batch)
        opened = not self._waiters
        if opened:
            self._opened_at = now
        if dedup_key is not None:
            self._index[dedup_key] = len(self._items)
        self._waiters.append((waiter, len(self._items), item_id))
        self._items.append(item)
        self._tokens.append(tokens)
        if len(self._items) >= self.max_items:
            batch = self.cut("size")
        elif self.max_tokens is not None and sum(self._tokens) >= self.max_tokens:
            batch = self.cut("tokens")
        else:
            batch = None
        if batch is not None:
            ready.append(batch)
        return ready, opened and batch is None

    def cut(self, reason: str) -> _Batch[T, W] | None:
        """Take the pending batch, without cancelled callers; ``None`` when nothing is left."""
        if not self._waiters:
            return None
        items, tokens, waiters, opened_at = (
            self._items,
            self._tokens,
            self._waiters,
            self._opened_at,
        )
        self._items, self._tokens, self._waiters, self._index = [], [], [], {}
        self.generation += 1
        live = [(w, i, item_id) for w, i, item_id in waiters if self._live(w)]
        used = sorted({i for _, i, _ in live})
        if len(used) != len(items):
            remap = {old: new for new, old in enumerate(used)}
            items = [items[i] for i in used]
            tokens = [tokens[i] for i in used]
            live = [(w, remap[i], item_id) for w, i, item_id in live]
        if not live:
            return None
        return _Batch(items, live, sum(tokens), opened_at, reason)

    def _dedup_key(self, item: T) -> Hashable | None:
        if self._key is not None:
            return self._key(item)
        try:
            hash(item)
        except TypeError:
            return None  # unhashable items are sent as they are, one per caller
        # Tag with the type so 1, 1.0 and True stay distinct items.
        return (type(item), item)


def _config_options(
    config: PerformanceConfig, options: dict[str, Any]
) -> tuple[int, float, dict[str, Any]]:
    """``from_config``'s arguments: batch size, max wait (seconds) and keyword options."""
    tracker = resolve_tracker(options.pop("tracker", None), config)
    return (
        config.batch_size,
        config.max_wait_time,
        {
            "max_batch_tokens": options.pop("max_batch_tokens", config.batch_max_tokens),
            "profile": options.pop("profile", config.provider_profile),
            "tracker": tracker,
            **options,
        },
    )


class _Shell(Generic[T, W, P]):
    """What both shells share: the constructor and its checks, token counting, stats, repr.

    A shell supplies three hooks: ``_check_func`` (refuse a ``processor_func`` it cannot
    run), ``_live`` (whether a waiter's caller still wants its result) and ``_init_shell``
    (its own lock or event-loop state).
    """

    @checked_kwargs
    def __init__(
        self,
        batch_size: int,
        max_wait_time: float,
        processor_func: P,
        *,
        max_batch_tokens: int | None = None,
        token_counter: Callable[[T], int] | None = None,
        profile: ProviderProfile | str | None = None,
        key: Callable[[T], Hashable] | None = None,
        split_when: Callable[[BaseException], bool] | None = None,
        operation: str = "batch",
        tracker: PerformanceTracker | None = None,
        clock: Clock = monotonic,
    ) -> None:
        if not callable(processor_func):
            msg = f"processor_func must be callable, got {processor_func!r}"
            raise TypeError(msg)
        self._check_func(processor_func)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            msg = f"batch_size must be an int >= 1 (items per batch), got {batch_size!r}"
            raise ValueError(msg)
        if not isinstance(max_wait_time, (int, float)) or max_wait_time < 0:
            msg = f"max_wait_time must be a number of seconds >= 0, got {max_wait_time!r}"
            raise ValueError(msg)
        if max_batch_tokens is not None and (
            not isinstance(max_batch_tokens, int) or max_batch_tokens < 1
        ):
            msg = f"max_batch_tokens must be an int >= 1 (tokens) or None, got {max_batch_tokens!r}"
            raise ValueError(msg)
        if isinstance(profile, str):
            if profile not in PROFILES:
                allowed = ", ".join(sorted(PROFILES))
                msg = f"profile must be one of {allowed} or a ProviderProfile, got {profile!r}"
                raise ValueError(msg)
            profile = PROFILES[profile]
        self.profile = profile
        max_items, max_tokens = (
            (batch_size, max_batch_tokens)
            if profile is None
            else profile.limits(batch_size, max_batch_tokens)
        )
        self.batch_size = max_items
        self.max_batch_tokens = max_tokens
        self.max_wait_time = float(max_wait_time)
        self._token_counter = token_counter
        self._split_when = split_when
        self._operation = operation
        self._tracker = resolve_tracker(tracker)
        self._clock = clock
        self._func = processor_func
        self._core: _BatchCore[T, W] = _BatchCore(
            max_items=max_items, max_tokens=max_tokens, key=key, live=self._live
        )
        self._in_flight = 0
        self._closed = False
        self.stats = BatchStats()
        self._init_shell()

    @staticmethod
    def _check_func(processor_func: P) -> None:
        """Raise ``TypeError`` for a ``processor_func`` this shell cannot run."""

    @staticmethod
    def _live(waiter: W) -> bool:
        raise NotImplementedError

    def _init_shell(self) -> None:
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Callers whose item waits in the open batch."""
        return self._core.pending_callers

    @property
    def in_flight(self) -> int:
        """Batches handed to ``processor_func`` and not finished yet."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        """Whether ``close()``/``aclose()`` was called."""
        return self._closed

    def _tokens_of(self, item: T) -> int:
        if self.max_batch_tokens is None:
            return 0
        if self._token_counter is not None:
            return int(self._token_counter(item))
        if isinstance(item, str):
            return estimate_tokens(item)
        msg = (
            f"a token cap is set (max_batch_tokens={self.max_batch_tokens}) and the item is a "
            f"{type(item).__name__}, not a str: pass token_counter= to count its tokens"
        )
        raise TypeError(msg)

    def _check_open(self) -> None:
        if self._closed:
            msg = f"{type(self).__name__} is closed; submit() is refused after close()"
            raise BatcherClosed(msg)

    def _count_sent(self, batch: _Batch[T, W], now: float) -> None:
        stats = self.stats
        wait = max(0.0, now - batch.opened_at)
        dedup = len(batch.waiters) - len(batch.items)
        stats.batches += 1
        stats.callers += len(batch.waiters)
        stats.items_sent += len(batch.items)
        stats.dedup_saved += dedup
        stats.sizes[len(batch.items)] += 1
        stats.flush_reasons[batch.reason] += 1
        stats.total_wait_s += wait
        stats.max_wait_s = max(stats.max_wait_s, wait)
        if dedup:
            self._tracker.incr("batch.dedup_saved", dedup, operation=self._operation)

    def _count_done(self, batch: _Batch[T, W], started: float, error: bool) -> None:
        if error:
            self.stats.errors += 1
        if self._tracker.enabled:
            self._tracker.record(
                self._operation,
                max(0.0, self._clock() - started),
                error=error,
                batch_size=len(batch.items),
                queue_wait_s=max(0.0, started - batch.opened_at),
            )

    def _should_split(self, batch: _Batch[T, W], exc: BaseException) -> bool:
        if self._split_when is None or len(batch.items) < 2 or not isinstance(exc, Exception):
            return False
        if self._split_when(exc):
            self.stats.splits += 1
            return True
        return False

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pending: {self.pending}"
        return (
            f"<{type(self).__name__} [{state}, in flight: {self._in_flight} | "
            f"batch_size={self.batch_size}, max_wait_time={self.max_wait_time:g}]>"
        )


class _Slot:
    """Where a blocked thread's result lands."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class BatchProcessor(_Shell[T, _Slot, "SyncFunc[T, R]"], Generic[T, R]):
    """Thread-safe micro-batcher: ``submit`` blocks the calling thread until its batch ran.

    Example::

        processor = BatchProcessor(batch_size=10, max_wait_time=1.0,
                                   processor_func=lambda items: [f"processed_{i}" for i in items])
        processor.submit("item1", "id1")       # "processed_item1", after up to 1 s
        with ThreadPoolExecutor(32) as pool:   # 32 concurrent callers -> 4 batches of 8..10
            results = list(pool.map(processor.submit, items))
        processor.close()

    No background thread: the caller that opens a batch waits up to ``max_wait_time`` for
    company and then runs it; the caller whose item fills a batch runs it at once. So
    ``processor_func`` runs in one of the callers' threads, several batches at a time when
    several are full.

    Args:
        batch_size: Most distinct items per call of ``processor_func``.
        max_wait_time: Seconds the first item of a batch waits for more (real time).
        processor_func: ``list[item] -> sequence of results``, one per item, in order.
        max_batch_tokens: Cap on the batch's estimated tokens, or ``None``.
        token_counter: Tokens of one item; defaults to :func:`~rag_perf_plugins.tokens.
            estimate_tokens` for strings.
        profile: A :class:`ProviderProfile` or a name in :data:`PROFILES`; its caps apply on
            top of ``batch_size`` and ``max_batch_tokens``.
        key: De-duplication key of an item; defaults to the item itself when hashable
            (unhashable items are never merged).
        split_when: Predicate on a processor error; when true the batch is split in half
            and each half retried (e.g. :func:`is_batch_too_large`).
        operation: Operation name in the tracker.
        tracker: Where to record batch latency/size/wait; ``None`` (default): the process
            tracker; ``NullTracker()``: none. ``from_config`` uses none when
            ``enable_metrics`` is off.
        clock: Time source for the wait and latency statistics (seconds).

    Raises:
        ValueError: an option is out of range.
    """

    @staticmethod
    def _check_func(processor_func: SyncFunc[T, R]) -> None:
        if inspect.iscoroutinefunction(processor_func):
            msg = "processor_func is async: use AsyncBatchProcessor for coroutine functions"
            raise TypeError(msg)

    @staticmethod
    def _live(waiter: _Slot) -> bool:
        return True  # a blocked thread cannot stop waiting

    def _init_shell(self) -> None:
        self._cond = threading.Condition()

    @classmethod
    def from_config(
        cls,
        config: PerformanceConfig,
        processor_func: SyncFunc[T, R],
        **options: Any,
    ) -> BatchProcessor[T, R]:
        """Use ``batch_size``, ``max_wait_time``, ``batch_max_tokens``, ``provider_profile``.

        Also ``enable_metrics``; other keyword ``options`` go to the constructor.
        """
        batch_size, max_wait_time, kwargs = _config_options(config, options)
        return cls(batch_size, max_wait_time, processor_func, **kwargs)

    def submit(self, item: T, item_id: object = None) -> R:
        """Queue ``item`` and block until its batch ran; returns this item's result.

        ``item_id`` is a label for error messages (it does not affect batching).

        Raises:
            BatcherClosed: after :meth:`close`.
            BatchResultMismatch: ``processor_func`` returned the wrong number of results.
            Exception: whatever ``processor_func`` raised for this item's batch.
        """
        slot = _Slot()
        tokens = self._tokens_of(item)
        with self._cond:
            self._check_open()
            ready, opened = self._core.add(
                item, slot, tokens=tokens, now=self._clock(), item_id=item_id
            )
            generation = self._core.generation
            if ready:
                self._in_flight += len(ready)
                self._cond.notify_all()  # a waiting leader's batch may have been cut
        for batch in ready:
            self._run(batch)
        if opened:
            self._lead(generation)
        slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return cast(R, slot.value)

    def submit_many(self, items: Sequence[T]) -> list[R]:
        """Submit several items from this thread as one group; results in order.

        The items join the open batch together (so they are cut by size and tokens like any
        others) and this call waits for all of them. Raises the first error among them.
        """
        slots: list[_Slot] = []
        ready: list[_Batch[T, _Slot]] = []
        opened_gen: int | None = None
        tokens = [self._tokens_of(item) for item in items]
        with self._cond:
            self._check_open()
            for item, n in zip(items, tokens, strict=True):
                slot = _Slot()
                slots.append(slot)
                batches, opened = self._core.add(item, slot, tokens=n, now=self._clock())
                ready.extend(batches)
                if opened:
                    opened_gen = self._core.generation
            if ready:
                self._in_flight += len(ready)
                self._cond.notify_all()
        for batch in ready:
            self._run(batch)
        if opened_gen is not None:
            self._lead(opened_gen)
        for slot in slots:
            slot.done.wait()
        for slot in slots:
            if slot.error is not None:
                raise slot.error
        return [cast(R, slot.value) for slot in slots]

    def close(self) -> None:
        """Send what is pending, wait for batches in flight, then refuse new submits."""
        with self._cond:
            self._closed = True
            batch = self._core.cut("close")
            if batch is not None:
                self._in_flight += 1
            self._cond.notify_all()
        if batch is not None:
            self._run(batch)
        with self._cond:
            while self._in_flight:
                self._cond.wait()

    def __enter__(self) -> BatchProcessor[T, R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _lead(self, generation: int) -> None:
        """Wait for company up to ``max_wait_time``, then send the batch this caller opened."""
        deadline = time.monotonic() + self.max_wait_time
        with self._cond:
            while self._core.generation == generation:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._core.generation != generation:
                return  # cut by size, tokens or close; someone else runs it
            batch = self._core.cut("time")
            if batch is None:
                return
            self._in_flight += 1
        self._run(batch)

    def _run(self, batch: _Batch[T, _Slot]) -> None:
        try:
            self._send(batch)
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()

    def _send(self, batch: _Batch[T, _Slot]) -> None:
        started = self._clock()
        self._count_sent(batch, started)
        try:
            pairs = batch.match(self._func(list(batch.items)))
        except BaseException as exc:
            self._count_done(batch, started, error=True)
            if self._should_split(batch, exc):
                for half in batch.split():
                    self._send(half)
                return
            for slot, _, _ in batch.waiters:
                slot.error = exc
                slot.done.set()
            if not isinstance(exc, Exception):
                raise
            return
        self._count_done(batch, started, error=False)
        for slot, value in pairs:
            slot.value = value
            slot.done.set()


class AsyncBatchProcessor(_Shell[T, "asyncio.Future[Any]", "AnyFunc[T, R]"], Generic[T, R]):
    """Micro-batcher for one event loop: ``await submit(item)`` returns that item's result.

    Example::

        async def embed_many(texts: list[str]) -> list[list[float]]: ...

        async with AsyncBatchProcessor(64, 0.005, embed_many, profile="openai") as batcher:
            vectors = await asyncio.gather(*(batcher.submit(t) for t in texts))
            # len(texts) == 200 -> embed_many called 4 times (64, 64, 64, 8)

    ``processor_func`` may be a coroutine function (awaited on the loop) or a plain function
    (run in a worker thread with :func:`asyncio.to_thread`, so the loop never blocks). Each
    batch runs in its own task: a caller that is cancelled only stops waiting; the batch
    still runs for the others, and its item is dropped if it was not sent yet and nobody
    else shares it. Bound to the event loop of the first ``submit``.

    Arguments are those of :class:`BatchProcessor`; ``max_wait_time`` is measured on the
    event loop's clock.
    """

    @staticmethod
    def _live(waiter: asyncio.Future[Any]) -> bool:
        return not waiter.done()  # a cancelled caller's item is dropped if nobody shares it

    def _init_shell(self) -> None:
        func = self._func
        self._is_async = inspect.iscoroutinefunction(func) or (
            inspect.iscoroutinefunction(getattr(func, "__call__", None))  # noqa: B004
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @classmethod
    def from_config(
        cls,
        config: PerformanceConfig,
        processor_func: AnyFunc[T, R],
        **options: Any,
    ) -> AsyncBatchProcessor[T, R]:
        """Use ``batch_size``, ``max_wait_time``, ``batch_max_tokens``, ``provider_profile``.

        Also ``enable_metrics``; other keyword ``options`` go to the constructor.
        """
        batch_size, max_wait_time, kwargs = _config_options(config, options)
        return cls(batch_size, max_wait_time, processor_func, **kwargs)

    async def submit(self, item: T, item_id: object = None) -> R:
        """Queue ``item`` and wait for its batch; returns this item's result.

        Raises:
            BatcherClosed: after :meth:`aclose`.
            BatchResultMismatch: ``processor_func`` returned the wrong number of results.
            Exception: whatever ``processor_func`` raised for this item's batch.
        """
        loop = self._bind()
        self._check_open()
        fut: asyncio.Future[Any] = loop.create_future()
        ready, opened = self._core.add(
            item, fut, tokens=self._tokens_of(item), now=self._clock(), item_id=item_id
        )
        self._dispatch(ready, opened)
        return cast(R, await fut)

    async def submit_many(self, items: Sequence[T]) -> list[R]:
        """Submit several items as one group; results in order; raises the first error."""
        loop = self._bind()
        self._check_open()
        futs: list[asyncio.Future[Any]] = []
        for item in items:
            fut: asyncio.Future[Any] = loop.create_future()
            futs.append(fut)
            ready, opened = self._core.add(
                item, fut, tokens=self._tokens_of(item), now=self._clock()
            )
            self._dispatch(ready, opened)
        try:
            return [cast(R, v) for v in await asyncio.gather(*futs)]
        except BaseException:
            for fut in futs:
                fut.cancel()  # the others stop waiting; gather already reported the first
            raise

    async def aclose(self) -> None:
        """Send what is pending, wait for batches in flight, then refuse new submits."""
        self._closed = True
        self._flush("close")
        await self._idle.wait()

    async def __aenter__(self) -> AsyncBatchProcessor[T, R]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            msg = (
                "this AsyncBatchProcessor is bound to another event loop; "
                "make one per loop (or use BatchProcessor from threads)"
            )
            raise RuntimeError(msg)
        return loop

    def _dispatch(self, ready: list[_Batch[T, asyncio.Future[Any]]], opened: bool) -> None:
        for batch in ready:
            self._start(batch)
        if ready and self._timer is not None and not opened:
            self._timer.cancel()
            self._timer = None
        if opened:
            if self._timer is not None:
                self._timer.cancel()
            assert self._loop is not None
            self._timer = self._loop.call_later(self.max_wait_time, self._flush, "time")

    def _flush(self, reason: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch = self._core.cut(reason)
        if batch is not None:
            self._start(batch)

    def _start(self, batch: _Batch[T, asyncio.Future[Any]]) -> None:
        assert self._loop is not None
        self._in_flight += 1
        self._idle.clear()
        task = self._loop.create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Batch[T, asyncio.Future[Any]]) -> None:
        try:
            await self._send(batch)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _send(self, batch: _Batch[T, asyncio.Future[Any]]) -> None:
        started = self._clock()
        self._count_sent(batch, started)
        try:
            if self._is_async:
                results = await cast(AsyncProcessor, self._func)(list(batch.items))
            else:
                results = await asyncio.to_thread(
                    cast(SyncProcessor, self._func), list(batch.items)
                )
            pairs = batch.match(results)
        except Exception as exc:
            self._count_done(batch, started, error=True)
            if self._should_split(batch, exc):
                for half in batch.split():
                    await self._send(half)
                return
            for fut, _, _ in batch.waiters:
                if not fut.done():
                    fut.set_exception(exc)
            return
        except asyncio.CancelledError:
            # The loop is shutting down under us: release every caller before leaving.
            for fut, _, _ in batch.waiters:
                fut.cancel()
            raise
        self._count_done(batch, started, error=False)
        for fut, value in pairs:
            if not fut.done():
                fut.set_result(value)
