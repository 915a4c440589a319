"""The circuit breaker of one target: closed, open, half-open, as a pure, I/O-free core.

Example::

    settings = BreakerSettings(failure_ratio=0.5, min_calls=10, window=10.0, cooldown=5.0)
    core = BreakerCore()
    admission = core.admit(settings, now=clock())       # Admission(allowed=True, ...)
    core.record(settings, "down", probe=admission.probe, now=clock())   # a 503: open

States:

- **closed**: every call goes through. Outcomes are counted in a sliding window of
  ``window`` seconds (ten buckets). When at least ``min_calls`` outcomes are in the window
  and the failures are at least ``failure_ratio`` of them, the breaker opens; so it does
  after ``consecutive`` failures in a row, which catches a sudden outage of a busy target
  long before its failures are half of the window; and after ``down_failures`` failures in
  a row of the kind that means "down" (outcome ``"down"``: a refused or dropped
  connection, a timeout, 502/503/504, 529 overloaded), by default the first one. Only a
  success of a call admitted after the latest failure ends a run: calls in flight when an
  outage began are old news. Failures are 429s, 5xx answers, timeouts and refused
  connections; 4xx client errors and our own refusals are *neutral* (they say nothing
  about the provider and are not counted).
- **open**: every call is refused for a cool-down (``retry_in`` says how long is left).
  The first opening lasts ``cooldown`` seconds; each failed probe opens it again for
  ``cooldown_growth`` times longer than the last, capped at ``cooldown_max`` seconds,
  plus up to ``cooldown_jitter`` of it at random (so local breakers of many processes do
  not probe in step). A later opening never shortens the time already set (``max``), so
  two writers that both saw failures keep the longer cool-down.
- **half-open**: after the cool-down, ``probes`` calls are let through as probes; when they
  all succeed the breaker closes (and the next opening starts again at ``cooldown``),
  the first failing probe opens it again for the next, longer cool-down. A probe that
  never reports back (its process died) expires after ``cooldown`` seconds, and new
  probes are let through.

The same rules run as one Lua script in Redis (:mod:`.redis_store`) so every process
shares one breaker per target; the contract suite (``tests/contracts``) runs both.
Time is the caller's ``now`` (seconds); the local store uses a monotonic clock, the
Redis store wall-clock seconds (hosts sharing a breaker need clocks in step, NTP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from ..config import PerformanceConfig

__all__ = [
    "SLOTS",
    "Admission",
    "BreakerCore",
    "BreakerSettings",
    "Outcome",
    "State",
    "Transition",
]

State = Literal["closed", "open", "half_open"]
Outcome = Literal["success", "failure", "down", "neutral"]
"""``down``: a failure that says the target is down (refused connection, timeout, 503...)."""
SLOTS: Final = 10  # buckets of the sliding window


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker opens and for how long: ``BreakerSettings.from_config(config)``.

    Attributes:
        failure_ratio: Failures / outcomes in the window that open the breaker (0..1].
        min_calls: Outcomes needed in the window before it may open (calls).
        window: Length of the sliding window (seconds).
        cooldown: How long it stays open before probing (seconds).
        probes: Probe calls let through when half-open (calls).
        consecutive: Failures in a row that open it at once (calls); ``None``: only the ratio.
        down_failures: "Down" failures in a row that open it at once (calls); ``None``:
            they count as any failure.
        cooldown_growth: Factor by which each failed probe lengthens the next cool-down
            (1: every cool-down is ``cooldown``).
        cooldown_max: Longest cool-down after failed probes (seconds); below ``cooldown``:
            no growth.
        cooldown_jitter: Random share added to each cool-down, 0..1 (ratio; 0.1: up to
            10 % longer).
    """

    failure_ratio: float = 0.5
    min_calls: int = 10
    window: float = 10.0
    cooldown: float = 5.0
    probes: int = 1
    consecutive: int | None = 5
    down_failures: int | None = 1
    cooldown_growth: float = 2.0
    cooldown_max: float = 30.0
    cooldown_jitter: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            msg = f"failure_ratio must be in (0, 1], got {self.failure_ratio!r}"
            raise ValueError(msg)
        for name in ("min_calls", "probes", "consecutive", "down_failures"):
            value = getattr(self, name)
            if name in ("consecutive", "down_failures") and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{name} must be an integer >= 1 (calls), got {value!r}"
                raise ValueError(msg)
        for name in ("window", "cooldown", "cooldown_max"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                msg = f"{name} must be a number > 0 (seconds), got {value!r}"
                raise ValueError(msg)
        growth = self.cooldown_growth
        if not (isinstance(growth, int | float) and math.isfinite(growth) and growth >= 1):
            msg = f"cooldown_growth must be a number >= 1 (factor), got {growth!r}"
            raise ValueError(msg)
        jitter = self.cooldown_jitter
        if not (isinstance(jitter, int | float) and 0 <= jitter <= 1):
            msg = f"cooldown_jitter must be a number in [0, 1] (ratio), got {jitter!r}"
            raise ValueError(msg)

    def cooldown_at(self, level: int, rand: float = 0.0) -> float:
        """Seconds of the cool-down after ``level`` failed probes, with ``rand`` in [0, 1).

        Example: ``BreakerSettings(cooldown=2.0).cooldown_at(2)`` is 8.0 (2 x 2 x 2), never
        more than ``cooldown_max`` (nor less than ``cooldown``), then lengthened by
        ``cooldown_jitter * rand`` of itself.
        """
        grown = self.cooldown * self.cooldown_growth ** min(level, 64)
        base = max(self.cooldown, min(self.cooldown_max, grown))
        return base * (1.0 + self.cooldown_jitter * min(max(rand, 0.0), 1.0))

    @classmethod
    def from_config(cls, config: PerformanceConfig) -> BreakerSettings:
        """The ``breaker_*`` keys of ``config``."""
        return cls(
            failure_ratio=config.breaker_failure_ratio,
            min_calls=config.breaker_min_calls,
            window=config.breaker_window,
            cooldown=config.breaker_cooldown,
            probes=config.breaker_probes,
            consecutive=config.breaker_consecutive_failures,
            down_failures=config.breaker_down_failures,
            cooldown_growth=config.breaker_cooldown_growth,
            cooldown_max=config.breaker_cooldown_max,
            cooldown_jitter=config.breaker_cooldown_jitter,
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether one call may go to the target now.

    Attributes:
        allowed: The call may go.
        probe: It goes as a half-open probe (report its outcome with ``probe=True``).
        state: The breaker's state after this decision.
        retry_in: Refused: seconds until a call may be let through again (0 when allowed).
        transition: ``"half_open"`` when this decision moved an open breaker to half-open.
        at: The store's ``now`` of this decision (seconds); pass it back as ``since`` when
            recording the call's outcome.
    """

    allowed: bool
    probe: bool
    state: State
    retry_in: float = 0.0
    transition: str | None = None
    at: float | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change caused by a recorded outcome: ``opened``, ``reopened`` or ``closed``.

    ``reopened``: a failing probe opened a half-open breaker again. ``open_s`` is, for
    ``closed``, how long the breaker was not closed (seconds); ``cooldown_s``, for
    ``opened`` and ``reopened``, how long this opening lasts (seconds).
    """

    kind: Literal["opened", "reopened", "closed"]
    open_s: float = 0.0
    cooldown_s: float = 0.0


class BreakerCore:
    """One target's breaker state; every method takes ``now`` and does no I/O.

    Not thread-safe on its own: the stores call it under their lock.
    """

    __slots__ = (
        "buckets",
        "down_in_a_row",
        "failed_at",
        "in_a_row",
        "level",
        "open_until",
        "opened_at",
        "probe_at",
        "probe_ok",
        "probes_out",
        "state",
    )

    def __init__(self) -> None:
        self.state: State = "closed"
        self.open_until = 0.0
        self.opened_at = 0.0
        self.probes_out = 0
        self.probe_ok = 0
        self.probe_at = 0.0
        self.in_a_row = 0  # failures since the last success (closed state)
        self.down_in_a_row = 0  # "down" failures since the last success (closed state)
        self.level = 0  # failed probes since the breaker last closed (cool-down growth)
        self.failed_at = -math.inf  # when the last failure was recorded (closed state)
        # [bucket index, outcomes, failures] per slot; a stale index is an empty bucket.
        self.buckets = [[-1, 0, 0] for _ in range(SLOTS)]

    def admit(self, settings: BreakerSettings, now: float) -> Admission:
        """May a call go now? Moves an open breaker whose cool-down ended to half-open."""
        transition = None
        if self.state == "open":
            if now < self.open_until:
                return Admission(False, False, "open", self.open_until - now)
            self.state, self.probes_out, self.probe_ok = "half_open", 0, 0
            transition = "half_open"
        if self.state == "half_open":
            if self.probes_out >= settings.probes and now - self.probe_at >= settings.cooldown:
                self.probes_out, self.probe_ok = 0, 0  # probes that never reported expire
            if self.probes_out < settings.probes:
                self.probes_out += 1
                self.probe_at = now
                return Admission(True, True, "half_open", 0.0, transition)
            wait = max(0.0, self.probe_at + settings.cooldown - now)
            return Admission(False, False, "half_open", wait, transition)
        return Admission(True, False, "closed")

    def record(
        self,
        settings: BreakerSettings,
        outcome: Outcome,
        *,
        probe: bool,
        now: float,
        since: float | None = None,
        rand: float = 0.0,
    ) -> Transition | None:
        """Count one call's ``outcome``; the transition it caused, if any.

        ``rand``: a number in [0, 1) for the cool-down's jitter (the shells draw it).

        ``since``: when the call was admitted (``Admission.at``). A success of a call
        admitted before the last failure was recorded is old news: it counts in the window
        but does not end the run of failures in a row (calls that were in flight when an
        outage began must not hold the breaker closed while new calls fail).
        """
        if probe:
            if self.state != "half_open":
                return None  # the breaker moved on while the probe ran
            if outcome in ("failure", "down"):
                return self._open(settings, now, rand)
            if outcome == "neutral":
                self.probes_out = max(0, self.probes_out - 1)  # said nothing: free the slot
                return None
            self.probe_ok += 1
            if self.probe_ok >= settings.probes:
                return self._close(now)
            return None
        if self.state != "closed" or outcome == "neutral":
            return None  # admitted before the breaker opened: its news is old
        step = settings.window / SLOTS
        index = math.floor(now / step)
        bucket = self.buckets[index % SLOTS]
        if bucket[0] != index:
            bucket[0], bucket[1], bucket[2] = index, 0, 0
        bucket[1] += 1
        if outcome == "success":
            if since is None or since >= self.failed_at:
                self.in_a_row = self.down_in_a_row = 0
            return None
        bucket[2] += 1
        self.in_a_row += 1
        self.failed_at = now
        if outcome == "down":
            self.down_in_a_row += 1
            down = settings.down_failures
            if down is not None and self.down_in_a_row >= down:
                return self._open(settings, now, rand)
        if settings.consecutive is not None and self.in_a_row >= settings.consecutive:
            return self._open(settings, now, rand)
        oldest = index - SLOTS
        calls = failures = 0
        for i, c, f in self.buckets:
            if i > oldest:
                calls += c
                failures += f
        if calls >= settings.min_calls and failures >= settings.failure_ratio * calls:
            return self._open(settings, now, rand)
        return None

    def retry_in(self, settings: BreakerSettings, now: float) -> float:
        """Seconds until a call may go (0 when closed or a probe slot is free); no change."""
        if self.state == "open":
            return max(0.0, self.open_until - now)
        if self.state == "half_open" and self.probes_out >= settings.probes:
            return max(0.0, self.probe_at + settings.cooldown - now)
        return 0.0

    def _open(self, settings: BreakerSettings, now: float, rand: float) -> Transition:
        kind: Literal["opened", "reopened"] = "reopened"
        if self.state == "closed":
            self.opened_at, kind, self.level = now, "opened", 0
        else:
            self.level += 1  # a failed probe: the next cool-down is longer
        self.state = "open"
        cooldown = settings.cooldown_at(self.level, rand)
        self.open_until = max(self.open_until, now + cooldown)
        self.probes_out = self.probe_ok = self.in_a_row = self.down_in_a_row = 0
        self.failed_at = -math.inf
        self._clear()
        return Transition(kind, 0.0, self.open_until - now)

    def _close(self, now: float) -> Transition:
        self.state = "closed"
        self.level = 0
        self.probes_out = self.probe_ok = self.in_a_row = self.down_in_a_row = 0
        self.failed_at = -math.inf
        self._clear()
        return Transition("closed", max(0.0, now - self.opened_at))

    def _clear(self) -> None:
        for bucket in self.buckets:
            bucket[0], bucket[1], bucket[2] = -1, 0, 0

    def __repr__(self) -> str:
        return f"<BreakerCore {self.state} | probes out: {self.probes_out}>"
