"""Dollar budgets: limits per scope and clock window, reserved before a call, reconciled after.

Example::

    budgets = DollarBudgets.from_config(
        PerformanceConfig(budget_usd_per_minute=1.0, budget_scopes="tenant,key"),
        key="openai/gpt-4o-mini/k-3f9a0c1b22de", store=LocalSpendStore(), wall_clock=time.time)
    held = budgets.reserve(0.004, tenant="tenant-42", model="gpt-4o-mini")   # or BudgetExceeded
    budgets.adjust(held, 0.0031 - 0.004)                                    # the actual cost

A budget is a limit in US dollars per clock window (a minute, an hour, a UTC day: windows
start at multiples of their length since the epoch) and per scope: the tenant (the call's
:func:`~rag_perf_plugins.cost.cost_scope`), the key (provider, model and API-key
fingerprint: one admission gate) or the model. Every scope of ``budget_scopes`` and every
window set has its own counter. A call reserves its estimated cost in each counter at
once, or is refused with :class:`~rag_perf_plugins.errors.BudgetExceeded` (naming the
scope, the limit, the window, what was spent and when the window frees) and reserves
nothing; after the call the reservation is moved to the actual cost. While reservations
are at most the limit, what one window really spends passes the limit by at most the
largest estimate in flight that was too small, which the estimate rule (input tokens plus
``max_tokens`` or the model's output limit, at the model's prices) keeps at zero.

Amounts are counted in whole micro-dollars (estimates rounded up), so any number of
processes add them exactly. The counters live in a :class:`SpendStore`: this process
(:class:`LocalSpendStore`) or Redis (``RedisBudgetStore``'s ``try_spend``), shared by
every process when ``redis_url`` is set.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

from ..config import PerformanceConfig
from ..errors import BudgetExceeded

__all__ = ["DollarBudgets", "LocalSpendStore", "Spend", "SpendStore", "micro_usd"]

# Windows: (seconds, the name used in messages and keys).
WINDOWS: tuple[tuple[str, int, str], ...] = (
    ("budget_usd_per_minute", 60, "minute"),
    ("budget_usd_per_hour", 3600, "hour"),
    ("budget_usd_per_day", 86400, "day"),
)


def micro_usd(usd: float, *, up: bool = False) -> int:
    """``usd`` in whole micro-dollars (rounded to nearest, or up for estimates)."""
    scaled = usd * 1e6
    return math.ceil(scaled - 1e-9) if up else round(scaled)


class Spend(NamedTuple):
    """A store's answer to :meth:`SpendStore.try_spend`.

    ``granted``: the amount was added. ``spent``: micro-dollars spent in the window before
    this amount. ``window``: the window's index (``floor(now / window_s)``). ``frees_in``:
    seconds until the window ends. ``unavailable``: the store could not decide (Redis down
    with one worker: fail closed).
    """

    granted: bool
    spent: int
    window: int
    frees_in: float
    unavailable: bool = False


@runtime_checkable
class SpendStore(Protocol):
    """Where dollar counters live; atomic per key, thread-safe; async twins with ``a``.

    ``now`` is wall-clock seconds since the epoch (windows are clock minutes, hours, days).
    """

    def try_spend(self, key: str, *, window_s: int, limit: int, amount: int, now: float) -> Spend:
        """Add ``amount`` (micro-USD) to ``key``'s current window if it stays within ``limit``."""
        ...

    def adjust_spend(self, key: str, *, window_s: int, window: int, amount: int) -> None:
        """Add ``amount`` (negative: refund) to window ``window`` of ``key``; never below 0."""
        ...

    async def atry_spend(
        self, key: str, *, window_s: int, limit: int, amount: int, now: float
    ) -> Spend:
        """Async :meth:`try_spend`."""
        ...

    async def aadjust_spend(self, key: str, *, window_s: int, window: int, amount: int) -> None:
        """Async :meth:`adjust_spend`."""
        ...


class LocalSpendStore:
    """The in-process :class:`SpendStore`: one counter per key for its current window.

    Example: ``LocalSpendStore().try_spend("tenant:a|60", window_s=60, limit=1_000_000,
    amount=4_000, now=time.time())``. Not shared between processes.
    """

    __slots__ = ("_counters", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, list[int]] = {}  # key -> [window, spent]

    def try_spend(self, key: str, *, window_s: int, limit: int, amount: int, now: float) -> Spend:
        """See :meth:`SpendStore.try_spend`."""
        window = int(now // window_s)
        frees_in = (window + 1) * window_s - now
        with self._lock:
            counter = self._counters.get(key)
            if counter is None or counter[0] != window:
                counter = self._counters[key] = [window, 0]
            spent = counter[1]
            if spent + amount > limit:
                return Spend(False, spent, window, frees_in)
            counter[1] = spent + amount
        return Spend(True, spent, window, frees_in)

    def adjust_spend(self, key: str, *, window_s: int, window: int, amount: int) -> None:
        """See :meth:`SpendStore.adjust_spend` (a window already over is left alone)."""
        with self._lock:
            counter = self._counters.get(key)
            if counter is not None and counter[0] == window:
                counter[1] = max(0, counter[1] + amount)

    def spent(self, key: str, *, window_s: int, now: float) -> int:
        """Micro-dollars spent in ``key``'s current window."""
        with self._lock:
            counter = self._counters.get(key)
            return counter[1] if counter is not None and counter[0] == int(now // window_s) else 0

    async def atry_spend(
        self, key: str, *, window_s: int, limit: int, amount: int, now: float
    ) -> Spend:
        """Async :meth:`try_spend` (no I/O: answers at once)."""
        return self.try_spend(key, window_s=window_s, limit=limit, amount=amount, now=now)

    async def aadjust_spend(self, key: str, *, window_s: int, window: int, amount: int) -> None:
        """Async :meth:`adjust_spend`."""
        self.adjust_spend(key, window_s=window_s, window=window, amount=amount)


@dataclass(frozen=True, slots=True)
class _Limit:
    scope: str  # e.g. "tenant:tenant-42"
    window_s: int
    window_name: str
    limit: int  # micro-USD


class Held(NamedTuple):
    """Reservations of one call: (store key, window seconds, window index) each, and amount."""

    counters: tuple[tuple[str, int, int], ...]
    amount: int


NOTHING_HELD = Held((), 0)


class DollarBudgets:
    """The dollar budgets of one admission gate: which counters a call reserves in.

    Example: see the module docstring. Built by the gate from its config when any of
    ``budget_usd_per_minute``, ``budget_usd_per_hour``, ``budget_usd_per_day`` is set.

    Args:
        key: The gate's key (the ``key`` scope).
        scopes: Scope kinds, a subset of ``tenant``, ``key``, ``model``.
        limits: ``(window seconds, window name, limit USD)`` for each window set.
        store: Where the counters live.
        prefix: Prepended to every counter key (the store adds its own).
        wall_clock: Seconds since the epoch (``time.time``); tests pass a fake one.
    """

    __slots__ = ("_limits", "_scopes", "key", "store", "wall_clock")

    def __init__(
        self,
        *,
        key: str,
        scopes: Sequence[str],
        limits: Sequence[tuple[int, str, float]],
        store: SpendStore,
        wall_clock: Callable[[], float],
    ) -> None:
        self.key = key
        self._scopes = tuple(scopes)
        self._limits = tuple((s, n, micro_usd(usd)) for s, n, usd in limits)
        self.store = store
        self.wall_clock = wall_clock

    @classmethod
    def from_config(
        cls,
        config: PerformanceConfig,
        *,
        key: str,
        store: SpendStore,
        wall_clock: Callable[[], float],
    ) -> DollarBudgets | None:
        """The budgets ``config`` sets for the gate ``key``; ``None`` when it sets none."""
        limits = [
            (seconds, name, getattr(config, option))
            for option, seconds, name in WINDOWS
            if getattr(config, option) is not None
        ]
        if not limits:
            return None
        scopes = [part.strip() for part in config.budget_scopes.split(",")]
        return cls(key=key, scopes=scopes, limits=limits, store=store, wall_clock=wall_clock)

    def _applicable(self, tenant: str | None, model: str | None) -> list[_Limit]:
        out: list[_Limit] = []
        for kind in self._scopes:
            if kind == "tenant":
                if tenant is None:
                    continue
                scope = f"tenant:{tenant}"
            elif kind == "model":
                scope = f"model:{model or self.key}"
            else:
                scope = f"key:{self.key}"
            out.extend(_Limit(scope, s, n, limit) for s, n, limit in self._limits)
        return out

    def _now(self) -> float:
        return float(self.wall_clock())

    def _refuse(
        self, limit: _Limit, answer: Spend, amount: int, cost: float | None
    ) -> BudgetExceeded:
        return BudgetExceeded(
            scope=limit.scope,
            limit_usd=limit.limit / 1e6,
            window=limit.window_name,
            spent_usd=answer.spent / 1e6,
            asked_usd=amount / 1e6 if cost is not None else None,
            frees_in_s=answer.frees_in,
            unavailable=answer.unavailable,
        )

    def _unknown(self, limits: list[_Limit], model: str | None) -> BudgetExceeded:
        first = limits[0]
        return BudgetExceeded(
            scope=first.scope,
            limit_usd=first.limit / 1e6,
            window=first.window_name,
            spent_usd=None,
            asked_usd=None,
            frees_in_s=None,
            unknown_model=model or self.key,
        )

    @staticmethod
    def _counter(limit: _Limit) -> str:
        return f"{limit.scope}|{limit.window_name}"

    def reserve(self, cost_usd: float | None, *, tenant: str | None, model: str | None) -> Held:
        """Reserve ``cost_usd`` in every applicable counter, or raise and reserve nothing.

        Raises:
            BudgetExceeded: a counter would pass its limit, the store is unreachable with
                one worker, or ``cost_usd`` is ``None`` (unknown price) while a budget applies.
        """
        limits = self._applicable(tenant, model)
        if not limits:
            return NOTHING_HELD
        if cost_usd is None:
            raise self._unknown(limits, model)
        amount, now = micro_usd(cost_usd, up=True), self._now()
        taken: list[tuple[str, int, int]] = []
        for limit in limits:
            key = self._counter(limit)
            answer = self.store.try_spend(
                key, window_s=limit.window_s, limit=limit.limit, amount=amount, now=now
            )
            if not answer.granted:
                self.adjust(Held(tuple(taken), amount), -amount)
                raise self._refuse(limit, answer, amount, cost_usd)
            taken.append((key, limit.window_s, answer.window))
        return Held(tuple(taken), amount)

    async def areserve(
        self, cost_usd: float | None, *, tenant: str | None, model: str | None
    ) -> Held:
        """Async :meth:`reserve` (a Redis store's round trips do not block the loop)."""
        limits = self._applicable(tenant, model)
        if not limits:
            return NOTHING_HELD
        if cost_usd is None:
            raise self._unknown(limits, model)
        amount, now = micro_usd(cost_usd, up=True), self._now()
        taken: list[tuple[str, int, int]] = []
        for limit in limits:
            key = self._counter(limit)
            answer = await self.store.atry_spend(
                key, window_s=limit.window_s, limit=limit.limit, amount=amount, now=now
            )
            if not answer.granted:
                await self.aadjust(Held(tuple(taken), amount), -amount)
                raise self._refuse(limit, answer, amount, cost_usd)
            taken.append((key, limit.window_s, answer.window))
        return Held(tuple(taken), amount)

    def adjust(self, held: Held, delta: int) -> None:
        """Add ``delta`` micro-dollars to every counter ``held`` reserved in."""
        if delta:
            for key, window_s, window in held.counters:
                self.store.adjust_spend(key, window_s=window_s, window=window, amount=delta)

    async def aadjust(self, held: Held, delta: int) -> None:
        """Async :meth:`adjust`."""
        if delta:
            for key, window_s, window in held.counters:
                await self.store.aadjust_spend(key, window_s=window_s, window=window, amount=delta)

    def __repr__(self) -> str:
        windows = ", ".join(f"${limit / 1e6:g}/{name}" for _, name, limit in self._limits)
        return f"<DollarBudgets {self.key} [{windows}] scopes={','.join(self._scopes)}>"
