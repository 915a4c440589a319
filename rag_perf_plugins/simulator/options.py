"""The simulator's options: one frozen, validated record shared by the server and the CLI.

Example::

    options = SimulatorOptions(latency_ms=50.0, rpm=600, error_rate=0.05, seed=7)
    options.replace(rpm=None)            # a new record; the old one is unchanged

Every option is keyword-only and carries its unit in its name or its doc; bad values raise
``ValueError`` naming the option, the value and what is allowed. ``rag-perf simulate``
builds its command-line flags from :data:`OPTION_DOCS`, so the two never drift apart.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .outage import Outage

__all__ = ["OPTION_DOCS", "SimulatorOptions"]

# name -> one-line meaning with unit; the CLI's --help and the class docstring read this.
OPTION_DOCS: dict[str, str] = {
    "latency_ms": "base latency of every answer (time to first token for streams), ms",
    "latency_per_token_ms": "extra latency per generated (completion) token, ms",
    "embedding_latency_per_token_ms": "extra latency per embedded input token, ms",
    "jitter_ms": "seeded uniform jitter in [0, jitter_ms) added to the base latency, ms",
    "chunk_latency_ms": "pause before each streamed content chunk after the first, ms",
    "rpm": "requests per minute (token bucket); None = unlimited",
    "tpm": "tokens per minute (token bucket over each answer's total tokens); None = unlimited",
    "burst_seconds": "bucket capacity, in seconds of the RPM/TPM rate",
    "max_concurrency": "requests handled at once; more get 429 at once; None = unlimited",
    "error_rate": "share of requests answered 500 or 503 (seeded), 0..1",
    "rate_limit_rate": "share of requests answered 429 with Retry-After (seeded), 0..1",
    "retry_after_s": "Retry-After sent with injected 429s, seconds",
    "slow_rate": "share of requests delayed by slow_ms extra (seeded), 0..1",
    "slow_ms": "extra delay of a slow request, ms",
    "truncate_rate": "share of answers cut off midway, connection closed (seeded), 0..1",
    "drop_rate": "share of requests whose connection is closed unanswered (seeded), 0..1",
    "seed": "seed of every random decision (faults, jitter, sampled answers)",
    "embedding_dim": "vector size of embedding models the simulator does not know",
    "outages": "scheduled outages (repeatable --outage model=M,start=S,duration=D,status=503,"
    "rate=1): the model or route fails with status for duration seconds",
}

_RATES = ("error_rate", "rate_limit_rate", "slow_rate", "truncate_rate", "drop_rate")
_NON_NEGATIVE = (
    "latency_ms",
    "latency_per_token_ms",
    "embedding_latency_per_token_ms",
    "jitter_ms",
    "chunk_latency_ms",
    "retry_after_s",
    "slow_ms",
)


@dataclass(frozen=True, kw_only=True)
class SimulatorOptions:
    """How the simulated provider behaves: latency, limits, faults, determinism.

    Example::

        SimulatorOptions(latency_ms=20.0, jitter_ms=5.0, rpm=3_000, tpm=200_000)

    Latency (milliseconds): an answer starts after ``latency_ms`` plus seeded jitter plus,
    for embeddings, ``embedding_latency_per_token_ms`` per input token. A chat answer then
    takes ``latency_per_token_ms`` per generated token and ``chunk_latency_ms`` per streamed
    chunk after the first; a non-streaming answer waits for the whole sum before replying.
    Limits: ``rpm`` and ``tpm`` are token buckets refilled continuously at rate/60 per
    second holding at most ``burst_seconds`` of budget (they start full). A request costs
    one request and its answer's total tokens (prompt + completion for chat, input for
    embeddings; the simulator knows the answer before it admits the request). Rates (``*_rate``)
    are probabilities in [0, 1] drawn from one generator seeded with ``seed``, in the order
    requests arrive. The options do not model per-key or per-organisation limits: every
    client shares one budget.
    """

    latency_ms: float = 0.0
    latency_per_token_ms: float = 0.0
    embedding_latency_per_token_ms: float = 0.0
    jitter_ms: float = 0.0
    chunk_latency_ms: float = 0.0
    rpm: float | None = None
    tpm: float | None = None
    burst_seconds: float = 1.0
    max_concurrency: int | None = None
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    slow_rate: float = 0.0
    slow_ms: float = 1000.0
    truncate_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int = 0
    embedding_dim: int = 1536
    outages: tuple[Outage, ...] = ()

    def __post_init__(self) -> None:
        for name in _NON_NEGATIVE:
            _check_number(name, getattr(self, name), low=0.0)
        for name in _RATES:
            _check_number(name, getattr(self, name), low=0.0, high=1.0)
        for name in ("rpm", "tpm"):
            value = getattr(self, name)
            if value is not None:
                _check_number(name, value, low=0.0, strict=True, none_hint=True)
        _check_number("burst_seconds", self.burst_seconds, low=0.0, strict=True)
        if self.max_concurrency is not None:
            _check_int("max_concurrency", self.max_concurrency, low=1, none_hint=True)
        _check_int("seed", self.seed, low=None)
        _check_int("embedding_dim", self.embedding_dim, low=1)
        if not isinstance(self.outages, tuple) or not all(
            isinstance(o, Outage) for o in self.outages
        ):
            msg = f"outages must be a tuple of Outage, got {self.outages!r}"
            raise ValueError(msg)

    def replace(self, **changes: Any) -> SimulatorOptions:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every option name, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))


def _check_number(
    name: str,
    value: object,
    *,
    low: float,
    high: float | None = None,
    strict: bool = False,
    none_hint: bool = False,
) -> None:
    allowed = f"a number {'>' if strict else '>='} {low:g}"
    if high is not None:
        allowed = f"a number in [{low:g}, {high:g}]"
    if none_hint:
        allowed += " or None (no limit)"
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if strict else value >= low)
        and (high is None or value <= high)
    )
    if not ok:
        msg = f"{name} must be {allowed}, got {value!r}"
        raise ValueError(msg)


def _check_int(name: str, value: object, *, low: int | None, none_hint: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (low is None or value >= low)
    if not ok:
        allowed = "an integer" if low is None else f"an integer >= {low}"
        if none_hint:
            allowed += " or None (no limit)"
        msg = f"{name} must be {allowed}, got {value!r}"
        raise ValueError(msg)
