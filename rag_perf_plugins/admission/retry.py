"""RetryPolicy: the single retry owner, with Retry-After, full jitter, a budget and a deadline.

Example::

    policy = RetryPolicy(PerformanceConfig(retry_max_attempts=4, retry_budget_ratio=0.2))
    reply = await policy.acall(lambda: client.chat.completions.create(...))
    reply = policy.call(lambda: client.embeddings.create(...))           # the blocking twin

    # the admission gate inside each attempt: the deadline covers queue, attempts, back-off
    reply = await policy.acall(send, gate=get_gate("openai", model, key), tokens=900,
                               usage=lambda r: r.usage.total_tokens)

Retried: HTTP 408, 429 and 5xx answers (Anthropic's 529 ``overloaded_error`` included,
classified ``overloaded``), timeouts and connection errors, recognised on
``httpx`` errors, on the OpenAI SDK's errors (``RateLimitError``, ``APIStatusError``,
``APITimeoutError``, ``APIConnectionError``, matched by their ``status_code``/``response``
and, when ``openai`` is already imported, by class; this module never imports it; the
Anthropic SDK's classes of the same names alike), on
aiohttp's ``ClientResponseError`` (its ``.status`` and ``.headers``; any exception with an
int ``.status`` from 100 to 599 is read the same way; aiohttp is never imported here either)
and on :class:`~rag_perf_plugins.errors.ProviderError`. Never retried: other 4xx (400, 401, 403,
404, 422, ...), validation errors, our own errors (``Overloaded``, ``DeadlineExceeded``,
...), cancellation, and anything else.

Between attempts the policy waits the larger of a full-jitter back-off
(``uniform(0, min(retry_max_backoff, retry_initial_backoff * 2**n))``) and the provider's
``Retry-After`` / ``retry-after-ms`` (seconds or an HTTP date). A ``Retry-After`` longer
than ``retry_after_cap`` fails the call at once with the original error. A retry must also
fit the retry budget: retries may be at most ``retry_budget_ratio`` times the calls begun
in the last ``retry_budget_window`` seconds (plus a small floor, ``budget_floor``, so a
quiet client's first failure can be retried); past it the call fails fast with the
original error, so a 429 storm turns into quick failures rather than multiplied load.
``request_deadline`` bounds a whole logical call; a wait that would end past it raises
:class:`~rag_perf_plugins.errors.DeadlineExceeded` at once, and an async attempt still
running at the deadline is cancelled.

Not done here: retrying a stream after its first chunk, hedging, circuit breaking. Turn the
SDK's own retries off (``max_retries=0``) so this policy is the only one.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, TypeVar

import httpx

from .._clock import AsyncSleep, Clock, Sleep, monotonic
from ..config import PerformanceConfig, resolve_config
from ..errors import DeadlineExceeded, ProviderError, RagPerfError
from ..tracking.tracker import PerformanceTracker, resolve_tracker
from .headers import parse_retry_after

if TYPE_CHECKING:
    from .gate import AdmissionGate

__all__ = [
    "Failure",
    "RetryBudget",
    "RetryPolicy",
    "aobserve_failure",
    "areconcile_ticket",
    "classify",
    "observe_failure",
    "reconcile_ticket",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

FailureKind = Literal[
    "rate_limited",
    "overloaded",
    "server_error",
    "timeout",
    "connection",
    "client_error",
    "not_retryable",
]

# Anthropic's "overloaded_error": the service as a whole is busy, not this key's budget. It
# is retried with back-off like a 5xx and does not pause the gate (a 429 does).
_OVERLOADED = 529


@dataclass(frozen=True, slots=True)
class Failure:
    """How the policy sees one error.

    Attributes:
        retryable: Whether another attempt may help.
        kind: ``rate_limited`` (429), ``overloaded`` (529, Anthropic's
            ``overloaded_error``), ``server_error``, ``timeout``, ``connection``,
            ``client_error`` or ``not_retryable``.
        status: The HTTP status, when there was one.
        retry_after: Seconds the provider asked us to wait, when it said.
        headers: The response headers, when there was a response.
    """

    retryable: bool
    kind: FailureKind
    status: int | None = None
    retry_after: float | None = None
    headers: Mapping[str, str] | None = None


_NOT_RETRYABLE = Failure(False, "not_retryable")


def classify(exc: BaseException) -> Failure:
    """Decide whether ``exc`` is worth another attempt, and what the provider said.

    Example: ``classify(openai.RateLimitError(...))`` gives
    ``Failure(retryable=True, kind="rate_limited", status=429, retry_after=2.0, ...)``.
    """
    if isinstance(exc, RagPerfError) and not isinstance(exc, ProviderError):
        return _NOT_RETRYABLE  # our own refusals (Overloaded, DeadlineExceeded, ...)
    if not isinstance(exc, Exception):
        return _NOT_RETRYABLE  # cancellation, KeyboardInterrupt, SystemExit
    response = getattr(exc, "response", None)
    status = getattr(exc, "status_code", None)
    if not isinstance(status, int) and response is not None:
        status = getattr(response, "status_code", None)
    raw_headers = getattr(response, "headers", None)
    if not _is_int(status):
        # aiohttp's ClientResponseError (and its subclasses) carries ``.status`` and
        # ``.headers`` on the exception itself and has no response object. Duck-typed so
        # this module never imports aiohttp; the range check keeps out unrelated ``.status``
        # attributes (aiohttp uses 0 when it has no status).
        status = getattr(exc, "status", None)
        if _is_int(status) and 100 <= status <= 599:
            raw_headers = getattr(exc, "headers", None)
        else:
            status = None
    if _is_int(status):
        headers = raw_headers if isinstance(raw_headers, Mapping) else None
        retry_after = parse_retry_after(headers)
        if retry_after is None and isinstance(exc, ProviderError):
            retry_after = exc.retry_after
        if status == 429:
            return Failure(True, "rate_limited", status, retry_after, headers)
        if status == _OVERLOADED:
            return Failure(True, "overloaded", status, retry_after, headers)
        if status >= 500 or status == 408:
            return Failure(True, "server_error", status, retry_after, headers)
        return Failure(False, "client_error", status, None, headers)
    if isinstance(exc, (TimeoutError, httpx.TimeoutException)):
        return Failure(True, "timeout")
    if isinstance(exc, httpx.UnsupportedProtocol):
        return _NOT_RETRYABLE  # a bad URL stays bad
    if isinstance(exc, (ConnectionError, httpx.TransportError)):
        return Failure(True, "connection")
    # The SDKs' own classes, only if the caller already imported the SDK (we never do).
    for name in ("openai", "anthropic"):
        sdk: Any = sys.modules.get(name)
        if sdk is None:
            continue
        if isinstance(exc, sdk.APITimeoutError):
            return Failure(True, "timeout")
        if isinstance(exc, sdk.APIConnectionError):
            return Failure(True, "connection")
    aiohttp: Any = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(exc, aiohttp.ClientConnectionError):
        return Failure(True, "connection")
    return _NOT_RETRYABLE


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def observe_failure(gate: object, exc: BaseException) -> None:
    """Tell ``gate`` what the provider said in a failed answer: a 429 pauses it, for everyone.

    Example: ``except Exception as exc: observe_failure(gate, exc); raise`` inside the
    ``gate.acquire()`` (or ``aacquire()``) block of one attempt. Reads the status and headers
    the way :func:`classify` does; errors without an HTTP status (timeouts, refused connections)
    and gates without ``observe_response`` are ignored. From async code use
    :func:`aobserve_failure`.
    """
    _observe(gate, classify(exc))


async def aobserve_failure(gate: object, exc: BaseException) -> None:
    """Async :func:`observe_failure`: awaits ``gate.aobserve_response`` when the gate has it."""
    await _aobserve(gate, classify(exc))


def _observe(gate: object, failure: Failure) -> None:
    observe = getattr(gate, "observe_response", None)
    if failure.status is not None and observe is not None:
        observe(failure.status, failure.headers)


async def _aobserve(gate: object, failure: Failure) -> None:
    aobserve = getattr(gate, "aobserve_response", None)
    if failure.status is None or aobserve is None:
        _observe(gate, failure)  # nothing to say, or a gate without async twins
        return
    await aobserve(failure.status, failure.headers)


def reconcile_ticket(ticket: object, actual: int | None) -> None:
    """Tell an admission ticket the tokens a call really used (``None``: unknown, no change).

    Example: ``reconcile_ticket(ticket, response.usage.total_tokens)``. Tickets without
    ``reconcile`` are left alone. From async code use :func:`areconcile_ticket`.
    """
    reconcile = getattr(ticket, "reconcile", None)
    if actual is not None and callable(reconcile):
        reconcile(actual)


async def areconcile_ticket(ticket: object, actual: int | None) -> None:
    """Async :func:`reconcile_ticket`: awaits ``ticket.areconcile`` when the ticket has it."""
    areconcile = getattr(ticket, "areconcile", None)
    if actual is None or not callable(areconcile):
        reconcile_ticket(ticket, actual)
        return
    await areconcile(actual)


class RetryBudget:
    """Retries allowed as a fraction of calls in a sliding window, shared by threads.

    Example::

        budget = RetryBudget(ratio=0.2, window=60.0, floor=0)
        for _ in range(10):
            budget.record_call(now)
        budget.try_spend(now), budget.try_spend(now), budget.try_spend(now)  # True, True, False

    The window is kept as ten rolling buckets, so memory is constant and calls age out in
    steps of a tenth of the window. ``floor`` retries per window are allowed on top of the
    ratio (when the ratio is above 0), so the first failure of a quiet client is not refused.
    """

    __slots__ = ("_buckets", "_floor", "_last_now", "_lock", "_ratio", "_step")

    _SLOTS = 10

    def __init__(self, *, ratio: float, window: float, floor: int = 10) -> None:
        if not ratio >= 0:
            msg = f"ratio must be >= 0 (retries per call), got {ratio!r}"
            raise ValueError(msg)
        if not window > 0:
            msg = f"window must be > 0 (seconds), got {window!r}"
            raise ValueError(msg)
        if floor < 0:
            msg = f"floor must be >= 0 (retries per window), got {floor!r}"
            raise ValueError(msg)
        self._ratio = ratio
        self._floor = floor if ratio > 0 else 0
        self._step = window / self._SLOTS
        self._last_now = 0.0  # the caller's clock, for the repr
        self._lock = threading.Lock()
        # [bucket index, calls, retries] per slot; a stale index means an empty bucket.
        self._buckets = [[-1, 0, 0] for _ in range(self._SLOTS)]

    def _bucket(self, now: float) -> list[int]:
        self._last_now = now
        index = math.floor(now / self._step)
        bucket = self._buckets[index % self._SLOTS]
        if bucket[0] != index:
            bucket[0], bucket[1], bucket[2] = index, 0, 0
        return bucket

    def _totals(self, now: float) -> tuple[int, int]:
        oldest = math.floor(now / self._step) - self._SLOTS
        calls = retries = 0
        for index, c, r in self._buckets:
            if index > oldest:
                calls += c
                retries += r
        return calls, retries

    def record_call(self, now: float) -> None:
        """Count one logical call begun at ``now`` (seconds)."""
        index = math.floor(now / self._step)
        with self._lock:  # _bucket(now)[1] += 1, inlined: every call of the policy does it
            self._last_now = now
            bucket = self._buckets[index % self._SLOTS]
            if bucket[0] != index:
                bucket[0], bucket[1], bucket[2] = index, 1, 0
            else:
                bucket[1] += 1

    def try_spend(self, now: float) -> bool:
        """Take one retry if the window allows it; False (nothing taken) when exhausted."""
        with self._lock:
            calls, retries = self._totals(now)
            if retries + 1 > self._ratio * calls + self._floor:
                return False
            self._bucket(now)[2] += 1
            return True

    def __repr__(self) -> str:
        calls, retries = self._totals(self._last_now)
        return (
            f"<RetryBudget ratio={self._ratio:g} floor={self._floor} "
            f"[calls: {calls}, retries: {retries}]>"
        )


class _CallState:
    __slots__ = ("attempts", "deadline_at")

    def __init__(self, deadline_at: float | None, attempts: int = 0) -> None:
        self.attempts = attempts
        self.deadline_at = deadline_at


class RetryPolicy:
    """The one retry owner: which errors, how long to wait, how many, within what budget.

    Example::

        policy = RetryPolicy(retry_max_attempts=4, retry_budget_ratio=0.5, request_deadline=30.0)
        answer = await policy.acall(lambda: llm_call(prompt))
        policy.stats()    # {"calls": 1, "retries": 0, "attempts_per_call": 1.0, ...}

    Args:
        config: ``retry_max_attempts``, ``retry_initial_backoff``, ``retry_max_backoff``,
            ``retry_after_cap``, ``retry_budget_ratio``, ``retry_budget_window``,
            ``request_deadline`` (all seconds or counts, see PerformanceConfig).
        clock: Monotonic seconds. ``sleep`` / ``async_sleep``: how back-off waits.
        rng: Source of jitter (a ``random.Random``; seed it for repeatable tests).
        budget: A shared :class:`RetryBudget`; by default one per policy.
        budget_floor: Retries per window allowed beyond the ratio (see :class:`RetryBudget`).
        tracker: Where counters go (``retry.retries``, ``retry.budget_exhausted``,
            ``retry.deadline_exceeded``); ``None``: the process-wide tracker when
            ``enable_metrics`` is on; ``NullTracker()``: none.
        operation: Operation name for those counters.
        **overrides: Config keys that replace those of ``config``.

    Does not: interrupt a blocking attempt at the deadline (sync calls; set the client's
    own timeout), or retry an error raised by ``usage``.
    """

    __slots__ = (
        "_async_sleep",
        "_attempt_counts",
        "_budget",
        "_clock",
        "_counts",
        "_lock",
        "_operation",
        "_rng",
        "_sleep",
        "_tracker",
        "_warned_at",
        "config",
    )

    def __init__(
        self,
        config: PerformanceConfig | None = None,
        *,
        clock: Clock = monotonic,
        sleep: Sleep = time.sleep,
        async_sleep: AsyncSleep = asyncio.sleep,
        rng: random.Random | None = None,
        budget: RetryBudget | None = None,
        budget_floor: int = 10,
        tracker: PerformanceTracker | None = None,
        operation: str = "retry",
        **overrides: Any,
    ) -> None:
        config = resolve_config(config)
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self._async_sleep = async_sleep
        self._rng = rng if rng is not None else random.Random()
        self._budget = (
            budget
            if budget is not None
            else RetryBudget(
                ratio=config.retry_budget_ratio,
                window=config.retry_budget_window,
                floor=budget_floor,
            )
        )
        self._tracker = resolve_tracker(tracker, config)
        self._operation = operation
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            (
                "calls",
                "succeeded",
                "failed",
                "attempts",
                "retries",
                "budget_exhausted",
                "deadline_exceeded",
                "retry_after_too_long",
            ),
            0,
        )
        self._attempt_counts = [0] * (config.retry_max_attempts + 1)
        self._warned_at: float | None = None  # the last budget-exhausted warning

    # --- public API -------------------------------------------------------------------
    def call(
        self,
        fn: Callable[[], T],
        *,
        gate: AdmissionGate | None = None,
        tokens: int = 0,
        usage: Callable[[T], int | None] | None = None,
        deadline: float | None = None,
    ) -> T:
        """Run ``fn()`` with retries; the blocking twin of :meth:`acall`.

        Args:
            fn: The attempt; called once per attempt with no arguments.
            gate: Admission gate taken around each attempt (``acquire``).
            tokens: Estimated tokens, reserved on ``gate`` for each attempt.
            usage: Reads actual tokens from the result, to reconcile the gate.
            deadline: Seconds for the whole call; defaults to ``request_deadline``.

        Raises:
            DeadlineExceeded: The deadline passed, or a wait would end past it.
            Exception: The last error, unchanged, when it is not retryable, the attempts or
                the budget are used up, or ``Retry-After`` is above ``retry_after_cap``.
        """
        deadline_at = self._begin(deadline)
        if gate is None and usage is None:
            # The services' form (their gate is inside fn): the first attempt needs no loop
            # and no call state until it fails. Its deadline is still checked: a clock can
            # move, and a tiny deadline pass, before it starts.
            if deadline_at is not None and self._clock() >= deadline_at:
                self._check_deadline(_CallState(deadline_at, attempts=1))  # raises
            try:
                result = fn()
            except Exception as exc:
                state = _CallState(deadline_at, attempts=1)
                self._sleep(self._after_failure(state, exc, classify(exc)))
            else:
                with self._lock:  # _finish(1, ok=True), inlined (attempt_counts has 2+ slots)
                    counts = self._counts
                    counts["succeeded"] += 1
                    counts["attempts"] += 1
                    self._attempt_counts[1] += 1
                return result
        else:
            state = _CallState(deadline_at)
        while True:
            state.attempts += 1
            self._check_deadline(state)
            try:
                if gate is None:
                    result = fn()
                else:
                    with gate.acquire(tokens=tokens, timeout=self._remaining(state)) as t:
                        result = fn()
                        if usage is not None:
                            reconcile_ticket(t, usage(result))
            except Exception as exc:
                failure = classify(exc)
                if gate is not None:
                    _observe(gate, failure)
                delay = self._after_failure(state, exc, failure)
                self._sleep(delay)
                continue
            self._finish(state.attempts, ok=True)
            return result

    async def acall(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        gate: AdmissionGate | None = None,
        tokens: int = 0,
        usage: Callable[[T], int | None] | None = None,
        deadline: float | None = None,
    ) -> T:
        """``await fn()`` with retries, the gate inside each attempt, within one deadline.

        Same arguments and errors as :meth:`call`; an attempt still running at the deadline
        is cancelled and the call raises :class:`~rag_perf_plugins.errors.DeadlineExceeded`.
        """
        state = _CallState(self._begin(deadline))
        while True:
            state.attempts += 1
            self._check_deadline(state)
            try:
                if gate is None:
                    result = await self._attempt(fn, state)
                else:
                    async with gate.aacquire(tokens=tokens, timeout=self._remaining(state)) as t:
                        result = await self._attempt(fn, state)
                        if usage is not None:
                            await areconcile_ticket(t, usage(result))
            except Exception as exc:
                failure = classify(exc)
                if gate is not None:
                    await _aobserve(gate, failure)
                delay = self._after_failure(state, exc, failure)
                await self._async_sleep(delay)
                continue
            self._finish(state.attempts, ok=True)
            return result

    def stats(self) -> dict[str, Any]:
        """Counters: calls, succeeded, failed, attempts, retries, budget exhaustions, deadlines.

        ``attempts_per_call`` is attempts / finished calls; ``attempts_histogram[n]`` counts
        finished calls that took ``n`` attempts.
        """
        with self._lock:
            snapshot: dict[str, Any] = dict(self._counts)
            histogram = {n: c for n, c in enumerate(self._attempt_counts) if c}
        finished = snapshot["succeeded"] + snapshot["failed"]
        snapshot["attempts_per_call"] = snapshot["attempts"] / finished if finished else None
        snapshot["attempts_histogram"] = histogram
        return snapshot

    def __repr__(self) -> str:
        c = self._counts
        return (
            f"<RetryPolicy [calls: {c['calls']}, retries: {c['retries']}, budget exhausted: "
            f"{c['budget_exhausted']}, deadlines: {c['deadline_exceeded']} | "
            f"max_attempts={self.config.retry_max_attempts}, "
            f"budget={self.config.retry_budget_ratio:g}/{self.config.retry_budget_window:g}s]>"
        )

    # --- the pure core shared by both twins -------------------------------------------
    def _begin(self, deadline: float | None) -> float | None:
        """Count a call begun now; its deadline on the policy's clock (``None``: none)."""
        if deadline is None:
            seconds = self.config.request_deadline
        elif not deadline > 0:
            msg = f"deadline must be > 0 (seconds) or None, got {deadline!r}"
            raise ValueError(msg)
        else:
            seconds = deadline
        now = self._clock()
        self._budget.record_call(now)
        with self._lock:
            self._counts["calls"] += 1
        return None if seconds is None else now + seconds

    def _remaining(self, state: _CallState) -> float | None:
        if state.deadline_at is None:
            return None
        return max(0.0, state.deadline_at - self._clock())

    def _check_deadline(self, state: _CallState) -> None:
        if state.deadline_at is not None and self._clock() >= state.deadline_at:
            self._count("deadline_exceeded")
            self._finish(state.attempts, ok=False)
            raise DeadlineExceeded("the call's deadline passed before the next attempt")

    def _after_failure(self, state: _CallState, exc: Exception, failure: Failure) -> float:
        """Seconds to back off before the next attempt, or raise (the error or a deadline).

        ``failure`` is ``classify(exc)``.
        """
        if isinstance(exc, DeadlineExceeded):
            self._count("deadline_exceeded")
        if not failure.retryable or state.attempts >= self.config.retry_max_attempts:
            self._finish(state.attempts, ok=False)
            raise exc
        retry_after = failure.retry_after
        if retry_after is not None and retry_after > self.config.retry_after_cap:
            self._count("retry_after_too_long")
            self._finish(state.attempts, ok=False)
            raise exc
        ceiling = self.config.retry_initial_backoff * 2.0 ** (state.attempts - 1)
        delay = self._rng.uniform(0.0, min(self.config.retry_max_backoff, ceiling))
        if retry_after is not None:
            delay = max(delay, retry_after)
        now = self._clock()
        if state.deadline_at is not None and now + delay >= state.deadline_at:
            self._count("deadline_exceeded")
            self._finish(state.attempts, ok=False)
            msg = (
                f"the deadline passes during the {delay:.3f}s back-off "
                f"after attempt {state.attempts}"
            )
            raise DeadlineExceeded(msg) from exc
        if not self._budget.try_spend(now):
            self._count("budget_exhausted")
            self._warn_exhausted(now)
            self._finish(state.attempts, ok=False)
            raise exc
        self._count("retries")
        return delay

    def _warn_exhausted(self, now: float) -> None:
        """One warning per budget window while retries are refused, not one per call."""
        window = self.config.retry_budget_window
        with self._lock:
            if self._warned_at is not None and now - self._warned_at < window:
                return
            self._warned_at = now
        log.warning(
            "retry budget exhausted (retries above %g of calls in %g s): failing calls fast "
            "without retrying; %d refused so far",
            self.config.retry_budget_ratio,
            window,
            self._counts["budget_exhausted"],
        )

    def _finish(self, attempts: int, *, ok: bool) -> None:
        """Count a call ended (``ok``: it succeeded) after ``attempts`` attempts."""
        with self._lock:
            counts = self._counts
            counts["succeeded" if ok else "failed"] += 1
            counts["attempts"] += attempts
            histogram = self._attempt_counts
            histogram[min(attempts, len(histogram) - 1)] += 1

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1
        self._tracker.incr(f"retry.{name}", operation=self._operation)

    # --- the async attempt, cut at the deadline ---------------------------------------
    async def _attempt(self, fn: Callable[[], Awaitable[T]], state: _CallState) -> T:
        deadline_at = state.deadline_at
        if deadline_at is None:
            return await fn()
        remaining = max(0.0, deadline_at - self._clock())
        try:
            if sys.version_info >= (3, 11):
                # A timer on the current task: no extra task per attempt (wait_for makes one).
                async with asyncio.timeout(remaining):
                    return await fn()
            return await asyncio.wait_for(fn(), remaining)  # pragma: no cover - Python 3.10
        except asyncio.TimeoutError:
            if self._clock() < deadline_at - 1e-3:
                raise  # the attempt's own timeout, not ours: a retryable timeout
            msg = f"the deadline passed during attempt {state.attempts}"
            raise DeadlineExceeded(msg) from None
