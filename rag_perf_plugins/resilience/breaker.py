"""The circuit breaker of one target: closed, open, half-open, as a pure, I/O-free core.

Example::

    settings = BreakerSettings(failure_ratio=0.5, min_calls=10, window=10.0, cooldown=5.0)
    core = BreakerCore()
    admission = core.admit(settings, now=clock())       # Admission(allowed=True, ...)
    core.record(settings, "failure", probe=admission.probe, now=clock())

States:

- **closed**: every call goes through. Outcomes are counted in a sliding window of
  ``window`` seconds (ten buckets). When at least ``min_calls`` outcomes are in the window
  and the failures are at least ``failure_ratio`` of them, the breaker opens; so it does
  after ``consecutive`` failures in a row (no success between), which catches a sudden
  outage of a busy target long before its failures are half of the window. Failures are
  429s, 5xx answers, timeouts and refused connections; 4xx client errors and our own
  refusals are *neutral* (they say nothing about the provider and are not counted).
- **open**: every call is refused for ``cooldown`` seconds (``retry_in`` says how long is
  left). A later opening never shortens the time already set (``max``), so two writers
  that both saw failures keep the longer cool-down.
- **half-open**: after the cool-down, ``probes`` calls are let through as probes; when they
  all succeed the breaker closes, the first failing probe opens it again for another
  cool-down. A probe that never reports back (its process died) expires after one
  cool-down, and new probes are let through.

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
Outcome = Literal["success", "failure", "neutral"]
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
    """

    failure_ratio: float = 0.5
    min_calls: int = 10
    window: float = 10.0
    cooldown: float = 5.0
    probes: int = 1
    consecutive: int | None = 5

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            msg = f"failure_ratio must be in (0, 1], got {self.failure_ratio!r}"
            raise ValueError(msg)
        for name in ("min_calls", "probes", "consecutive"):
            value = getattr(self, name)
            if name == "consecutive" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{name} must be an integer >= 1 (calls), got {value!r}"
                raise ValueError(msg)
        for name in ("window", "cooldown"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                msg = f"{name} must be a number > 0 (seconds), got {value!r}"
                raise ValueError(msg)

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
    """

    allowed: bool
    probe: bool
    state: State
    retry_in: float = 0.0
    transition: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    """A state change caused by a recorded outcome: ``opened``, ``reopened`` or ``closed``.

    ``reopened``: a failing probe opened a half-open breaker again. ``open_s`` is, for
    ``closed``, how long the breaker was not closed (seconds).
    """

    kind: Literal["opened", "reopened", "closed"]
    open_s: float = 0.0


class BreakerCore:
    """One target's breaker state; every method takes ``now`` and does no I/O.

    Not thread-safe on its own: the stores call it under their lock.
    """

    __slots__ = (
        "buckets",
        "in_a_row",
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
        self, settings: BreakerSettings, outcome: Outcome, *, probe: bool, now: float
    ) -> Transition | None:
        """Count one call's ``outcome``; the transition it caused, if any."""
        if probe:
            if self.state != "half_open":
                return None  # the breaker moved on while the probe ran
            if outcome == "failure":
                return self._open(settings, now)
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
        if outcome != "failure":
            self.in_a_row = 0
            return None
        bucket[2] += 1
        self.in_a_row += 1
        if settings.consecutive is not None and self.in_a_row >= settings.consecutive:
            return self._open(settings, now)
        oldest = index - SLOTS
        calls = failures = 0
        for i, c, f in self.buckets:
            if i > oldest:
                calls += c
                failures += f
        if calls >= settings.min_calls and failures >= settings.failure_ratio * calls:
            return self._open(settings, now)
        return None

    def retry_in(self, settings: BreakerSettings, now: float) -> float:
        """Seconds until a call may go (0 when closed or a probe slot is free); no change."""
        if self.state == "open":
            return max(0.0, self.open_until - now)
        if self.state == "half_open" and self.probes_out >= settings.probes:
            return max(0.0, self.probe_at + settings.cooldown - now)
        return 0.0

    def _open(self, settings: BreakerSettings, now: float) -> Transition:
        kind: Literal["opened", "reopened"] = "reopened"
        if self.state == "closed":
            self.opened_at, kind = now, "opened"
        self.state = "open"
        self.open_until = max(self.open_until, now + settings.cooldown)
        self.probes_out = self.probe_ok = self.in_a_row = 0
        self._clear()
        return Transition(kind)

    def _close(self, now: float) -> Transition:
        self.state = "closed"
        self.probes_out = self.probe_ok = self.in_a_row = 0
        self._clear()
        return Transition("closed", max(0.0, now - self.opened_at))

    def _clear(self) -> None:
        for bucket in self.buckets:
            bucket[0], bucket[1], bucket[2] = -1, 0, 0

    def __repr__(self) -> str:
        return f"<BreakerCore {self.state} | probes out: {self.probes_out}>"
