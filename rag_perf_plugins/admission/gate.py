"""AdmissionGate: one in-flight cap, request budget and token budget per provider key.

Example::

    gate = get_gate("openai", "gpt-4o-mini", api_key)       # one gate per key, process-wide
    async with gate.aacquire(tokens=estimate_tokens(prompt)) as ticket:
        reply = await client.chat.completions.create(...)
        await ticket.areconcile(reply.usage.total_tokens)    # refund or debit the difference

    with gate.acquire(tokens=300) as ticket:                 # the same budget, from a thread
        ...

A caller first takes an in-flight slot (``max_concurrent_requests``, first come first
served), then reserves its requests and tokens from the key's rate budget
(``requests_per_minute``, ``tokens_per_minute``, with ``rate_burst_seconds`` of burst) and
sleeps until the budget allows it to send. Slot first, budget second: the budget is then
spent at the moment the request leaves, so the provider never sees more than the budget in
any window, even when slow calls held every slot for a while.

The budget is a GCRA ("virtual scheduling") bucket per dimension, kept by a
:class:`BudgetStore`. Reserving moves the bucket's theoretical arrival time forward, so
each caller learns at once the exact time it may send: waits are FIFO (a request for many
tokens is scheduled in arrival order, never starved by small ones), a request larger than
the whole burst waits for an empty bucket and leaves it in debt, and a caller whose wait
would pass ``max_queue_wait`` (or its deadline) is refused before it waits. A
:class:`LocalBudgetStore` (the default, one per process) is shared by every event loop and
thread; :class:`~rag_perf_plugins.admission.redis_store.RedisBudgetStore` shares it between
processes. Every store method has an async twin; the async path (``aacquire``,
``Ticket.areconcile``, ``apause``, ``aobserve_response``) awaits them and never calls the
store while holding the gate's thread lock, so a Redis round trip never blocks the loop.

Why not aiolimiter for the budget: an ``AsyncLimiter`` belongs to one event loop and wakes
waiters with that loop's timers, refuses ``acquire(amount)`` above ``max_rate``, has no
refunds, and wakes the smallest waiter first. One shared budget across loops and threads,
FIFO order, large requests and refunds are exactly what the gate needs, so the bucket
arithmetic here is our own (about forty lines, in :class:`LocalBudgetStore`), and waiting
is a plain ``sleep`` on the caller's own loop or thread.

Not done here: estimating tokens (use :func:`rag_perf_plugins.tokens.estimate_tokens`),
retrying (use :class:`rag_perf_plugins.admission.retry.RetryPolicy`, which can run the gate inside
each attempt), priorities, or sharing the budget between processes (that is the Redis
store's job).
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal

from .._clock import AsyncSleep, Clock, Sleep, monotonic
from ..config import PerformanceConfig, resolve_config
from ..cost import current_cost_scope
from ..errors import ConfigError, DeadlineExceeded, Overloaded
from ..tracking.tracker import PerformanceTracker, resolve_tracker
from .budget import BudgetStore, LocalBudgetStore, RateLimits
from .headers import read_limit_headers
from .spend import NOTHING_HELD, DollarBudgets, Held, LocalSpendStore, SpendStore, micro_usd

__all__ = ["AdmissionGate", "Ticket", "counts_tokens"]

# How many recent queue waits the p50/p95 stats are computed over.
_RECENT_WAITS = 2048
# Waits shorter than this are rounding noise in the interval sums (seconds).
_EPSILON = 1e-9
# Weight of the newest call in the moving average of how long a slot is held.
_HOLD_EWMA = 0.1


class _Waiter:
    """One caller waiting for an in-flight slot, on an event loop or a thread."""

    __slots__ = ("event", "future", "granted", "loop", "tokens")

    def __init__(
        self,
        tokens: int,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.tokens = tokens
        self.loop = loop
        self.future = future
        self.event = threading.Event() if future is None else None
        self.granted = False

    def wake(self) -> bool:
        """Hand the slot over; False when the waiter's loop is gone (the slot is not taken)."""
        if self.event is not None:
            self.event.set()
            return True
        assert self.loop is not None and self.future is not None
        try:
            self.loop.call_soon_threadsafe(_resolve, self.future)
        except RuntimeError:  # the loop was closed: nobody will ever take this slot
            return False
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


Rejection = Literal["queue_full", "wait_too_long", "deadline"]


class Ticket:
    """Proof of admission, yielded by :meth:`AdmissionGate.aacquire` and ``acquire``.

    Example: ``ticket.reconcile(response.usage.total_tokens)`` refunds the tokens reserved
    but not used (or debits the extra) on the key's budget.

    ``ticket.reconcile_cost(0.0031)`` moves the call's dollar reservation (its estimate)
    to its actual cost, in every dollar budget it was counted in.

    Attributes:
        tokens: Tokens currently charged for this call.
        queue_wait_s: Seconds spent waiting for a slot and for the budget (clock seconds).
        held: The dollar reservations of this call (empty without dollar budgets).
        cost_reconciled: ``reconcile_cost`` was called; otherwise the estimate stays
            charged when the call ends well, and is refunded when it fails.
    """

    __slots__ = ("_gate", "admitted_at", "cost_reconciled", "held", "queue_wait_s", "tokens")

    def __init__(self, gate: AdmissionGate, tokens: int, queue_wait_s: float, admitted_at: float):
        self._gate = gate
        self.tokens = tokens
        self.queue_wait_s = queue_wait_s
        self.admitted_at = admitted_at
        self.held: Held = NOTHING_HELD
        self.cost_reconciled = False

    def reconcile_cost(self, actual_usd: float) -> None:
        """Charge ``actual_usd`` (US dollars) instead of the estimate in the dollar budgets."""
        budgets, delta = self._cost_delta(actual_usd)
        if budgets is not None:
            budgets.adjust(self.held, delta)

    async def areconcile_cost(self, actual_usd: float) -> None:
        """Async :meth:`reconcile_cost`: with a Redis store, the event loop is not blocked."""
        budgets, delta = self._cost_delta(actual_usd)
        if budgets is not None:
            await budgets.aadjust(self.held, delta)

    def _cost_delta(self, actual_usd: float) -> tuple[DollarBudgets | None, int]:
        if not actual_usd >= 0:
            msg = f"actual_usd must be >= 0 (US dollars), got {actual_usd!r}"
            raise ValueError(msg)
        budgets = self._gate._dollars
        if budgets is None or self.cost_reconciled or not self.held.counters:
            self.cost_reconciled = True
            return None, 0
        self.cost_reconciled = True
        return budgets, micro_usd(actual_usd) - self.held.amount

    def reconcile(self, actual_tokens: int) -> None:
        """Charge ``actual_tokens`` instead of the estimate (refund or debit the difference)."""
        delta = self._delta(actual_tokens)
        if delta:
            gate = self._gate
            gate._store.adjust(gate.key, gate.limits, requests=0, tokens=delta, now=gate._clock())

    async def areconcile(self, actual_tokens: int) -> None:
        """Async :meth:`reconcile`: with a Redis store, the event loop is not blocked."""
        delta = self._delta(actual_tokens)
        if delta:
            gate = self._gate
            await gate._store.aadjust(
                gate.key, gate.limits, requests=0, tokens=delta, now=gate._clock()
            )

    def _delta(self, actual_tokens: int) -> int:
        """Tokens to debit (refund if negative); ``tokens`` becomes ``actual_tokens``."""
        if actual_tokens < 0:
            msg = f"actual_tokens must be >= 0 (tokens), got {actual_tokens}"
            raise ValueError(msg)
        delta = actual_tokens - self.tokens
        self.tokens = actual_tokens
        return delta

    def __repr__(self) -> str:
        return f"<Ticket {self._gate.key} tokens={self.tokens} waited={self.queue_wait_s:.6f}s>"


class AdmissionGate:
    """In-flight cap, request rate and token rate for one provider key, FIFO, bounded queue.

    Example::

        gate = AdmissionGate(PerformanceConfig(requests_per_minute=600, tokens_per_minute=90_000))
        async with gate.aacquire(tokens=1200) as ticket:
            reply = await call_provider()
            ticket.reconcile(reply.usage.total_tokens)
        gate.stats()["queue_wait_p95_s"]

    Admission: a caller takes an in-flight slot (at most ``max_concurrent_requests``
    held), then reserves one request and ``tokens`` tokens and sleeps until the budget
    lets it send. Both waits are first come, first served. A caller is refused with
    :class:`~rag_perf_plugins.errors.Overloaded` *before* waiting when ``max_queue``
    callers already wait, or when its expected wait passes ``max_queue_wait`` seconds; the
    expected wait is exact for the budget and estimated for slots (callers ahead divided by
    the cap, times the average time a slot is held). If a slot wait still runs past
    ``max_queue_wait`` the caller gets ``Overloaded`` then. With ``timeout=`` (seconds), a
    caller whose wait would pass it gets
    :class:`~rag_perf_plugins.errors.DeadlineExceeded`, at once when the wait is known, or
    when the time is up while waiting for a slot.

    :meth:`pause` (and :meth:`observe_response` on a 429 with ``Retry-After``) stops every
    caller on the key, including those already scheduled; afterwards the key resumes at the
    configured rate without a burst. ``x-ratelimit-remaining-*`` headers lower the local
    budget to what the provider says is left.

    Args:
        config: Limits and queue bounds (``max_concurrent_requests``,
            ``requests_per_minute``, ``tokens_per_minute``, ``rate_burst_seconds``,
            ``max_queue``, ``max_queue_wait``, ``retry_after_cap``, ``enable_metrics``).
        key: The budget key, e.g. ``"openai/gpt-4o-mini/k-3f9a0c1b22de"``; gates with the
            same key and store share one budget (slots are per gate: use :func:`get_gate`).
        store: Where budgets live; defaults to the process-wide :class:`LocalBudgetStore`,
            or with ``shared_rate_limit`` and ``redis_url`` to the shared
            :class:`~rag_perf_plugins.admission.redis_store.RedisBudgetStore`.
        clock: Seconds, monotonic. ``sleep``/``async_sleep``: how budget waits and slot
            timeouts wait (a thread's slot wait uses real time).
        tracker: Where admissions are recorded (queue wait separate from hold time);
            ``None``: the process-wide tracker when ``enable_metrics`` is on (see
            :func:`~rag_perf_plugins.tracking.resolve_tracker`); ``NullTracker()``: none.
        operation: Operation name in the tracker.
        jitter_allowance: Seconds of burst held back (at most half the burst) so requests
            that reach the provider later and closer together than they were admitted
            still fit its bucket. The long-run rate is the configured one.
        spend_store: Where dollar budgets are counted (``budget_usd_per_minute`` ...):
            defaults to the Redis budget store when ``redis_url`` is set (shared by every
            process), else a process-wide :class:`~.spend.LocalSpendStore`.
        wall_clock: Seconds since the epoch, for the dollar budgets' clock windows.
        **overrides: Config keys that replace those of ``config``.

    Does not: retry, estimate tokens, or order callers by priority. The slot cap is per
    gate object, the rate budget per key and store.
    """

    __slots__ = (
        "_admitted",
        "_ahead_tokens",
        "_async_sleep",
        "_clock",
        "_dollars",
        "_hold_avg",
        "_in_use",
        "_lock",
        "_max_in_flight",
        "_max_queue",
        "_max_queue_wait",
        "_open",
        "_operation",
        "_pauses",
        "_queued",
        "_recent_waits",
        "_rejected",
        "_retry_after_cap",
        "_sleep",
        "_store",
        "_tracker",
        "_waiters",
        "config",
        "key",
        "limits",
    )

    def __init__(
        self,
        config: PerformanceConfig | None = None,
        *,
        key: str = "default",
        store: BudgetStore | None = None,
        clock: Clock = monotonic,
        sleep: Sleep = time.sleep,
        async_sleep: AsyncSleep = asyncio.sleep,
        tracker: PerformanceTracker | None = None,
        operation: str = "admission",
        jitter_allowance: float = 0.05,
        spend_store: SpendStore | None = None,
        wall_clock: Clock = time.time,
        **overrides: Any,
    ) -> None:
        config = resolve_config(config)
        if overrides:
            config = config.replace(**overrides)
        if not isinstance(key, str) or not key:
            msg = f"key must be a non-empty string, got {key!r}"
            raise ValueError(msg)
        if not isinstance(operation, str) or not operation:
            msg = f"operation must be a non-empty string, got {operation!r}"
            raise ValueError(msg)
        if not jitter_allowance >= 0:
            msg = f"jitter_allowance must be >= 0 (seconds), got {jitter_allowance!r}"
            raise ValueError(msg)
        self.config = config
        self.key = key
        burst = config.rate_burst_seconds
        # Requests admitted on time can reach the provider late and bunched (a busy loop, a
        # stalled thread); holding back this much burst absorbs that. The rate is unchanged.
        burst -= min(jitter_allowance, burst / 2)
        self.limits = RateLimits(config.requests_per_minute, config.tokens_per_minute, burst)
        self._store: BudgetStore = store if store is not None else _store_for(config)
        self._dollars = DollarBudgets.from_config(
            config,
            key=key,
            store=spend_store if spend_store is not None else _spend_store_for(config, self._store),
            wall_clock=wall_clock,
        )
        self._clock = clock
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._operation = operation
        self._tracker = resolve_tracker(tracker, config)
        self._max_in_flight = config.max_concurrent_requests
        self._max_queue = config.max_queue
        self._max_queue_wait = config.max_queue_wait
        self._retry_after_cap = config.retry_after_cap
        self._lock = threading.Lock()
        self._in_use = 0
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._ahead_tokens = 0
        self._queued = 0
        self._admitted = 0
        self._rejected: dict[Rejection, int] = {"queue_full": 0, "wait_too_long": 0, "deadline": 0}
        self._pauses = 0
        self._hold_avg = 0.0
        self._recent_waits: collections.deque[float] = collections.deque(maxlen=_RECENT_WAITS)
        # No rate budget to debit in this process's store: a caller with a free slot on a
        # key that is not paused is admitted at once, in one lock section (_admit_open).
        self._open = (
            type(self._store) is LocalBudgetStore
            and self.limits.requests_per_minute is None
            and self.limits.tokens_per_minute is None
            and self._dollars is None
        )

    # --- public API -------------------------------------------------------------------
    def aacquire(
        self,
        *,
        tokens: int = 0,
        timeout: float | None = None,
        cost_usd: float | None = 0.0,
        model: str | None = None,
        tenant: str | None = None,
    ) -> _AsyncAdmission:
        """``async with gate.aacquire(tokens=n) as ticket:``: wait for a slot and the budget.

        Args:
            tokens: Estimated tokens of the call (prompt plus expected completion).
            timeout: Seconds this caller may wait at most; past it
                :class:`~rag_perf_plugins.errors.DeadlineExceeded`. ``None``: only
                ``max_queue_wait`` bounds the wait.
            cost_usd: Estimated cost of the call in US dollars, reserved in the dollar
                budgets before anything else (``None``: unknown, refused while a dollar
                budget applies). Move it to the actual cost with ``ticket.reconcile_cost``.
            model: The model called (the ``model`` budget scope).
            tenant: The tenant or user charged (the ``tenant`` scope); ``None``: the
                :func:`~rag_perf_plugins.cost.cost_scope` in effect.

        Raises:
            BudgetExceeded: A dollar budget would be passed (at once, nothing reserved).
            Overloaded: The queue is full or the expected wait is too long (at once).
            DeadlineExceeded: The wait would pass ``timeout``.
        """
        spend = _Spend(cost_usd, model, tenant) if self._dollars is not None else None
        if type(tokens) is not int or tokens < 0:  # the checks, off the common path
            _check_tokens(tokens)
        if timeout is not None:
            _check_timeout(timeout)
        return _AsyncAdmission(self, tokens, timeout, spend)

    def acquire(
        self,
        *,
        tokens: int = 0,
        timeout: float | None = None,
        cost_usd: float | None = 0.0,
        model: str | None = None,
        tenant: str | None = None,
    ) -> _SyncAdmission:
        """``with gate.acquire(tokens=n) as ticket:``: the blocking twin of :meth:`aacquire`."""
        spend = _Spend(cost_usd, model, tenant) if self._dollars is not None else None
        if type(tokens) is not int or tokens < 0:  # the checks, off the common path
            _check_tokens(tokens)
        if timeout is not None:
            _check_timeout(timeout)
        return _SyncAdmission(self, tokens, timeout, spend)

    def admit_now(self, *, tokens: int = 0) -> Ticket | None:
        """A ticket at once when nothing can make this caller wait; ``None``: use ``acquire``.

        Example (the hot path of a provider call; ``leave`` ends what ``admit_now`` began)::

            ticket = gate.admit_now()
            if ticket is None:
                with gate.acquire():
                    answer = call()
            else:
                try:
                    answer = call()
                except BaseException:
                    gate.leave(ticket, error=True)
                    raise
                gate.leave(ticket, error=False)

        Only a gate with no rate budget in this process's store and no dollar budgets
        admits here, and only while a slot is free and the key is not paused: what
        ``acquire`` would decide at once, without its context manager (about 2 us less
        per call in a loop). Anything else returns ``None``, and ``acquire`` waits,
        queues or refuses as usual. ``tokens``: estimated tokens (spent on no budget here).
        """
        if not self._open:
            return None
        if type(tokens) is not int or tokens < 0:
            _check_tokens(tokens)
        return self._admit_open(tokens, self._clock())

    def leave(self, ticket: Ticket, *, error: bool) -> None:
        """End an admission of :meth:`admit_now`: free the slot and record the call.

        ``error``: the call raised. The same record as the end of an ``acquire`` block:
        the time the slot was held (seconds) and the queue wait (0.0 here).
        """
        self._leave(ticket, error)

    @property
    def dollar_budgets(self) -> DollarBudgets | None:
        """The dollar budgets this gate enforces, or ``None`` when the config sets none."""
        return self._dollars

    def pause(self, seconds: float) -> None:
        """Stop every caller on this key for ``seconds`` (capped by ``retry_after_cap``)."""
        if seconds > 0:
            seconds = self._count_pause(seconds)
            self._store.pause(self.key, self.limits, seconds=seconds, now=self._clock())

    async def apause(self, seconds: float) -> None:
        """Async :meth:`pause`: with a Redis store, the event loop is not blocked."""
        if seconds > 0:
            seconds = self._count_pause(seconds)
            await self._store.apause(self.key, self.limits, seconds=seconds, now=self._clock())

    def paused_for(self) -> float:
        """Seconds this key stays paused by a provider's ``Retry-After`` (0 when not paused)."""
        return self._store.paused_for(self.key, now=self._clock())

    async def apaused_for(self) -> float:
        """Async :meth:`paused_for` (a Redis store is not waited on from the event loop)."""
        return await self._store.apaused_for(self.key, now=self._clock())

    def observe_response(self, status: int, headers: Mapping[str, str] | None) -> None:
        """Learn from a provider answer: pause on 429 + Retry-After, follow remaining budgets.

        Reads ``retry-after`` / ``retry-after-ms`` on a 429, and
        ``x-ratelimit-remaining-{requests,tokens}`` with ``x-ratelimit-reset-{requests,tokens}``
        on any answer: a remaining budget of 0 pauses the key until the reset, a positive
        one caps how much the key may send right now. Unknown or malformed headers are
        ignored. From async code use :meth:`aobserve_response`, which does not block the
        event loop on a Redis store.
        """
        pauses, remaining = read_limit_headers(status, headers)
        for seconds in pauses:
            self.pause(seconds)
        if remaining is not None:
            requests, tokens = remaining
            self._store.clamp(
                self.key, self.limits, requests=requests, tokens=tokens, now=self._clock()
            )

    async def aobserve_response(self, status: int, headers: Mapping[str, str] | None) -> None:
        """Async :meth:`observe_response` (same headers, same effect)."""
        pauses, remaining = read_limit_headers(status, headers)
        for seconds in pauses:
            await self.apause(seconds)
        if remaining is not None:
            requests, tokens = remaining
            await self._store.aclamp(
                self.key, self.limits, requests=requests, tokens=tokens, now=self._clock()
            )

    def stats(self) -> dict[str, Any]:
        """Counters and queue-wait percentiles (seconds, over the last 2,048 admissions)."""
        with self._lock:
            waits = sorted(self._recent_waits)
            rejected = dict(self._rejected)
            snapshot: dict[str, Any] = {
                "key": self.key,
                "admitted": self._admitted,
                "rejected": sum(rejected.values()),
                "rejected_by_reason": rejected,
                "queued_now": self._queued,
                "in_flight": self._in_use,
                "pauses": self._pauses,
            }
        snapshot["queue_wait_p50_s"] = _quantile(waits, 0.50)
        snapshot["queue_wait_p95_s"] = _quantile(waits, 0.95)
        snapshot["paused_for_s"] = self._store.paused_for(self.key, now=self._clock())
        return snapshot

    def __repr__(self) -> str:
        rpm, tpm = self.limits.requests_per_minute, self.limits.tokens_per_minute
        return (
            f"<AdmissionGate {self.key} [in flight: {self._in_use}/{self._max_in_flight}, "
            f"queued: {self._queued}/{self._max_queue} | admitted: {self._admitted}, "
            f"rejected: {sum(self._rejected.values())} | rpm={_num(rpm)} tpm={_num(tpm)} "
            f"burst={self.limits.burst_seconds:g}s]>"
        )

    # --- the pure core shared by both twins (bookkeeping only, no waiting) -------------
    def _take_free_slot(self, tokens: int) -> tuple[int, int] | None:
        """Take a free slot (returns None), or the (requests, tokens) to peek before queueing.

        The peek itself happens outside the lock: a store may do I/O (Redis).
        """
        with self._lock:
            if self._in_use < self._max_in_flight and not self._waiters:
                # A free slot: the budget check, refusal included, happens atomically in
                # the reservation (one store call on the fast path instead of two).
                self._in_use += 1
                return None
            return 1 + len(self._waiters), tokens + self._ahead_tokens

    def _enter(
        self,
        tokens: int,
        budget_wait: float,
        deadline_at: float | None,
        now: float,
        loop: asyncio.AbstractEventLoop | None,
    ) -> _Waiter | None:
        """Take a slot freed meanwhile (returns None) or join the slot queue; refuse if needed.

        ``budget_wait`` is the store's answer to the peek that :meth:`_take_free_slot` asked
        for (seconds); callers that joined since then are counted in the slot estimate.
        """
        with self._lock:
            if self._in_use < self._max_in_flight and not self._waiters:
                self._in_use += 1
                return None
            ahead = len(self._waiters)
            # Little's law: callers ahead leave at about cap / (average hold time).
            expected = max(budget_wait, (ahead + 1) / self._max_in_flight * self._hold_avg)
            if self._queued >= self._max_queue:
                self._reject("queue_full")
            if expected > self._max_queue_wait:
                self._reject("wait_too_long", expected)
            if deadline_at is not None and now + expected > deadline_at:
                self._reject("deadline", expected)
            waiter = _Waiter(tokens, loop, None if loop is None else loop.create_future())
            self._waiters.append(waiter)
            self._queued += 1
            self._ahead_tokens += tokens
            return waiter

    def _slot_limit(
        self, start: float, deadline_at: float | None, now: float
    ) -> tuple[float, bool]:
        """Seconds a slot waiter may still wait, and whether the deadline is the bound."""
        queue_left = self._max_queue_wait - (now - start)
        if deadline_at is not None and deadline_at - now <= queue_left:
            return max(0.0, deadline_at - now), True
        return max(0.0, queue_left), False

    def _give_up(self, waiter: _Waiter) -> bool:
        """A slot waiter stops waiting: leave the queue (False), or learn it got the slot (True)."""
        with self._lock:
            if waiter.granted:
                return True
            self._waiters.remove(waiter)
            self._queued -= 1
            self._ahead_tokens -= waiter.tokens
            return False

    def _abandon(self, waiter: _Waiter) -> None:
        """A slot waiter is cancelled: leave the queue, or pass on a slot it was just given."""
        if self._give_up(waiter):
            self._release_slot()

    def _slot_timed_out(self, by_deadline: bool) -> None:
        with self._lock:
            self._reject("deadline" if by_deadline else "wait_too_long")

    def _budget_limit(
        self, start: float, deadline_at: float | None, now: float
    ) -> tuple[float, Rejection]:
        """Seconds the caller (slot held) may wait for the budget, and the refusal past it."""
        limit = self._max_queue_wait - (now - start)
        reason: Rejection = "wait_too_long"
        if deadline_at is not None and deadline_at - now < limit:
            limit, reason = deadline_at - now, "deadline"
        if self._queued >= self._max_queue:  # a full queue: admitted only if no wait at all
            limit, reason = 0.0, "queue_full"
        return max(0.0, limit), reason

    def _refuse(self, reason: Rejection, wait: float) -> Any:
        """Count and raise a refusal of a reservation (the caller frees its slot)."""
        with self._lock:
            self._reject(reason, wait)

    def _unreserve(self, tokens: int) -> None:
        self._store.adjust(self.key, self.limits, requests=-1, tokens=-tokens, now=self._clock())

    async def _aunreserve(self, tokens: int) -> None:
        await self._store.aadjust(
            self.key, self.limits, requests=-1, tokens=-tokens, now=self._clock()
        )

    def _count_pause(self, seconds: float) -> float:
        """Count a pause and cap its length (``retry_after_cap``)."""
        with self._lock:
            self._pauses += 1
        return min(seconds, self._retry_after_cap)

    def _budget_wait_begins(self) -> None:
        with self._lock:
            self._queued += 1

    def _budget_wait_ends(self) -> None:
        with self._lock:
            self._queued -= 1

    def _admit_open(self, tokens: int, start: float) -> Ticket | None:
        """Admission at once on a gate without a rate budget (``_open``); ``None``: queue.

        What the full path decides for such a gate when a slot is free and the key is not
        paused (a reservation of nothing, no wait), in one lock section and one clock
        read; otherwise the caller takes the full path (slot queue, pause wait, refusals).
        """
        if self._store.paused_for(self.key, now=start) > 0:
            return None
        with self._lock:
            if self._in_use >= self._max_in_flight or self._waiters:
                return None
            self._in_use += 1
            self._admitted += 1
            self._recent_waits.append(0.0)
        return Ticket(self, tokens, 0.0, start)

    def _admit(self, tokens: int, start: float) -> Ticket:
        now = self._clock()
        wait = now - start
        with self._lock:
            self._admitted += 1
            self._recent_waits.append(wait)
        return Ticket(self, tokens, wait, now)

    def _leave(self, ticket: Ticket, error: bool) -> None:
        held = self._clock() - ticket.admitted_at
        self._release_slot(held)
        self._tracker.record(self._operation, held, error=error, queue_wait_s=ticket.queue_wait_s)

    def _release_slot(self, held: float | None = None) -> None:
        with self._lock:
            if held is not None:
                self._hold_avg += _HOLD_EWMA * (held - self._hold_avg)
            while self._waiters:
                waiter = self._waiters.popleft()
                self._queued -= 1
                self._ahead_tokens -= waiter.tokens
                waiter.granted = True
                if waiter.wake():
                    return  # the slot passes straight to the next caller in line
            self._in_use -= 1

    def _reject(self, reason: Rejection, expected: float | None = None) -> Any:
        """Count a refusal and raise it (called with the lock held)."""
        self._rejected[reason] += 1
        self._tracker.incr("admission.rejected", operation=self._operation)
        wait = "" if expected is None else f" (expected wait {expected:.3f}s)"
        if reason == "deadline":
            raise DeadlineExceeded(f"{self.key}: the deadline passes before admission{wait}")
        if reason == "queue_full":
            raise Overloaded(f"{self.key}: {self._max_queue} callers already queued (max_queue)")
        raise Overloaded(
            f"{self.key}: admission would take longer than max_queue_wait="
            f"{self._max_queue_wait:g}s{wait}"
        )

    # --- the shells ---------------------------------------------------------------------
    # The two twins differ only in `await` and in how they wait. The store calls of the
    # async twin are awaited outside the gate's thread lock, so a Redis round trip never
    # blocks the event loop nor other threads. Any exception once the slot is held
    # (cancellation, a refusal, a store error) refunds a reservation made and frees the slot.
    async def _aenter(self, tokens: int, timeout: float | None) -> Ticket:
        start = self._clock()
        if self._open:
            ticket = self._admit_open(tokens, start)
            if ticket is not None:
                return ticket
        deadline_at = None if timeout is None else start + timeout
        ahead = self._take_free_slot(tokens)
        if ahead is not None:
            budget_wait = await self._store.apeek(
                self.key, self.limits, requests=ahead[0], tokens=ahead[1], now=start
            )
            loop = asyncio.get_running_loop()
            waiter = self._enter(tokens, budget_wait, deadline_at, start, loop)
            if waiter is not None:
                assert waiter.future is not None
                limit, by_deadline = self._slot_limit(start, deadline_at, start)
                timer = asyncio.ensure_future(self._async_sleep(limit))
                try:
                    await asyncio.wait((waiter.future, timer), return_when=asyncio.FIRST_COMPLETED)
                except BaseException:
                    self._abandon(waiter)
                    raise
                finally:
                    timer.cancel()
                if not waiter.future.done() and not self._give_up(waiter):
                    self._slot_timed_out(by_deadline)
        reserved = False
        try:
            while True:
                now = self._clock()
                limit, reason = self._budget_limit(start, deadline_at, now)
                wait = await self._store.atry_reserve(
                    self.key, self.limits, requests=1, tokens=tokens, now=now, max_wait=limit
                )
                if wait > limit:
                    self._refuse(reason, wait)
                if wait <= 0:
                    break
                reserved = True
                self._budget_wait_begins()
                try:
                    await self._async_sleep(wait)
                finally:
                    self._budget_wait_ends()
                # A pause that began while we slept covers us too: give the budget back
                # and take a new place behind it.
                if await self._store.apaused_for(self.key, now=self._clock()) <= 0:
                    break
                reserved = False
                await self._aunreserve(tokens)
        except BaseException:
            try:
                if reserved:
                    await self._aunreserve(tokens)
            finally:
                self._release_slot()
            raise
        return self._admit(tokens, start)

    def _enter_sync(self, tokens: int, timeout: float | None) -> Ticket:
        start = self._clock()
        if self._open:
            ticket = self._admit_open(tokens, start)
            if ticket is not None:
                return ticket
        deadline_at = None if timeout is None else start + timeout
        ahead = self._take_free_slot(tokens)
        if ahead is not None:
            budget_wait = self._store.peek(
                self.key, self.limits, requests=ahead[0], tokens=ahead[1], now=start
            )
            waiter = self._enter(tokens, budget_wait, deadline_at, start, None)
            if waiter is not None:
                assert waiter.event is not None
                limit, by_deadline = self._slot_limit(start, deadline_at, start)
                try:
                    woken = waiter.event.wait(limit)
                except BaseException:
                    self._abandon(waiter)
                    raise
                if not woken and not self._give_up(waiter):
                    self._slot_timed_out(by_deadline)
        reserved = False
        try:
            while True:
                now = self._clock()
                limit, reason = self._budget_limit(start, deadline_at, now)
                wait = self._store.try_reserve(
                    self.key, self.limits, requests=1, tokens=tokens, now=now, max_wait=limit
                )
                if wait > limit:
                    self._refuse(reason, wait)
                if wait <= 0:
                    break
                reserved = True
                self._budget_wait_begins()
                try:
                    self._sleep(wait)
                finally:
                    self._budget_wait_ends()
                if self._store.paused_for(self.key, now=self._clock()) <= 0:
                    break
                reserved = False
                self._unreserve(tokens)
        except BaseException:
            try:
                if reserved:
                    self._unreserve(tokens)
            finally:
                self._release_slot()
            raise
        return self._admit(tokens, start)


def counts_tokens(gate: object) -> bool:
    """Whether ``gate`` spends the tokens it is told: worth estimating them for it.

    Example: ``tokens = estimate_tokens(q) if counts_tokens(gate) else 0``.
    ``False`` for ``None`` and for a gate whose ``limits`` have no ``tokens_per_minute``
    budget (as an :class:`AdmissionGate` without one: a token costs 0 s of an unlimited
    budget, so the count changes nothing); ``True`` for a budget, and for a gate without
    ``limits`` (unknown: it gets the estimate).
    """
    if gate is None:
        return False
    limits = getattr(gate, "limits", None)
    if limits is None or not hasattr(limits, "tokens_per_minute"):
        return True
    return limits.tokens_per_minute is not None


class _Spend(collections.namedtuple("_Spend", "cost_usd model tenant")):
    """What a call asks of the dollar budgets (only made when the gate has some)."""

    __slots__ = ()


# The dollar reservation comes first, before the slot and the rate budget: a call past a
# dollar budget is refused at once and never waits. It is refunded when admission fails
# or the call raises before ``reconcile_cost``; a call that ends well without reconciling
# keeps its estimate charged (its usage was unknown: the budget errs on the safe side).
class _AsyncAdmission:
    __slots__ = ("_gate", "_spend", "_ticket", "_timeout", "_tokens")

    def __init__(
        self, gate: AdmissionGate, tokens: int, timeout: float | None, spend: _Spend | None
    ) -> None:
        self._gate = gate
        self._tokens = tokens
        self._timeout = timeout
        self._spend = spend
        self._ticket: Ticket | None = None

    async def __aenter__(self) -> Ticket:
        gate, spend, held = self._gate, self._spend, NOTHING_HELD
        if spend is not None and gate._dollars is not None:
            tenant = spend.tenant if spend.tenant is not None else current_cost_scope()
            held = await gate._dollars.areserve(spend.cost_usd, tenant=tenant, model=spend.model)
        try:
            self._ticket = await gate._aenter(self._tokens, self._timeout)
        except BaseException:
            if gate._dollars is not None:
                await gate._dollars.aadjust(held, -held.amount)
            raise
        self._ticket.held = held
        return self._ticket

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket = self._ticket
        assert ticket is not None
        self._gate._leave(ticket, exc_type is not None)
        if exc_type is not None and ticket.held.counters and not ticket.cost_reconciled:
            ticket.cost_reconciled = True
            assert self._gate._dollars is not None
            await self._gate._dollars.aadjust(ticket.held, -ticket.held.amount)


class _SyncAdmission:
    __slots__ = ("_gate", "_spend", "_ticket", "_timeout", "_tokens")

    def __init__(
        self, gate: AdmissionGate, tokens: int, timeout: float | None, spend: _Spend | None
    ) -> None:
        self._gate = gate
        self._tokens = tokens
        self._timeout = timeout
        self._spend = spend
        self._ticket: Ticket | None = None

    def __enter__(self) -> Ticket:
        gate, spend, held = self._gate, self._spend, NOTHING_HELD
        if spend is not None and gate._dollars is not None:
            tenant = spend.tenant if spend.tenant is not None else current_cost_scope()
            held = gate._dollars.reserve(spend.cost_usd, tenant=tenant, model=spend.model)
        try:
            self._ticket = gate._enter_sync(self._tokens, self._timeout)
        except BaseException:
            if gate._dollars is not None:
                gate._dollars.adjust(held, -held.amount)
            raise
        self._ticket.held = held
        return self._ticket

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ticket = self._ticket
        assert ticket is not None
        self._gate._leave(ticket, exc_type is not None)
        if exc_type is not None and ticket.held.counters and not ticket.cost_reconciled:
            ticket.cost_reconciled = True
            assert self._gate._dollars is not None
            self._gate._dollars.adjust(ticket.held, -ticket.held.amount)


def _check_tokens(tokens: int) -> int:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        msg = f"tokens must be an integer >= 0 (estimated tokens), got {tokens!r}"
        raise ValueError(msg)
    return tokens


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not timeout >= 0:
        msg = f"timeout must be >= 0 (seconds) or None, got {timeout!r}"
        raise ValueError(msg)
    return timeout


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


def _num(x: float | None) -> str:
    return "None" if x is None else f"{x:g}"


_DEFAULT_STORE = LocalBudgetStore()
_DEFAULT_SPEND_STORE = LocalSpendStore()


def _spend_store_for(config: PerformanceConfig, store: BudgetStore) -> SpendStore:
    """Where dollar budgets are counted: Redis when ``redis_url`` is set, else this process."""
    budgets = ("budget_usd_per_minute", "budget_usd_per_hour", "budget_usd_per_day")
    if not config.redis_url or all(getattr(config, o) is None for o in budgets):
        return _DEFAULT_SPEND_STORE
    if isinstance(store, SpendStore):  # the gate's shared Redis budget store already
        return store
    # Imported here: redis-py is an optional extra, and redis_store imports this package.
    from .redis_store import shared_budget_store

    return shared_budget_store(config)


def _store_for(config: PerformanceConfig) -> BudgetStore:
    """The process-wide local store, or the shared Redis one when ``shared_rate_limit``."""
    if not config.shared_rate_limit:
        return _DEFAULT_STORE
    if not config.redis_url:
        msg = "shared_rate_limit needs redis_url (e.g. redis://127.0.0.1:6379/0)"
        raise ConfigError(msg, key="redis_url")
    # Imported here: redis-py is an optional extra, and admission_redis imports this module.
    from .redis_store import shared_budget_store

    return shared_budget_store(config)
