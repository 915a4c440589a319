"""What providers say about their limits: ``Retry-After`` and the rate-limit headers.

OpenAI's and Azure's ``x-ratelimit-*``, Anthropic's ``anthropic-ratelimit-*``.

Example::

    parse_retry_after({"retry-after": "2"})            # 2.0 (seconds)
    parse_reset("6m0s")                                 # 360.0
    read_limit_headers(429, {"retry-after-ms": "250"})  # ([0.25], None)

Pure functions: no I/O, no clock except ``wall_clock`` for HTTP-date ``Retry-After`` values.
The gate turns them into pauses and budget clamps; the retry policy into back-off.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping

__all__ = ["parse_reset", "parse_reset_time", "parse_retry_after", "read_limit_headers"]


def read_limit_headers(
    status: int,
    headers: Mapping[str, str] | None,
    *,
    wall_clock: Callable[[], float] = time.time,
) -> tuple[list[float], tuple[int | None, int | None] | None]:
    """Pauses (seconds) and remaining (requests, tokens) a provider answer asks for.

    Example::

        read_limit_headers(200, {"x-ratelimit-remaining-tokens": "0",
                                 "x-ratelimit-reset-tokens": "1.5s"})    # ([1.5], None)
        read_limit_headers(200, {"anthropic-ratelimit-requests-remaining": "12"})
        # ([], (12, None))

    Reads OpenAI's and Azure's ``x-ratelimit-remaining-{requests,tokens}`` with
    ``x-ratelimit-reset-{requests,tokens}`` (a duration: ``"20ms"``, ``"6m0s"``, or seconds),
    and Anthropic's ``anthropic-ratelimit-{requests,tokens}-remaining`` with ``-reset`` (an
    RFC 3339 time, relative to ``wall_clock()``; ``input-tokens`` stands in when the combined
    ``tokens`` header is absent). A 429's ``retry-after`` / ``retry-after-ms`` is a pause.

    Odd values, as Azure sends them: a negative remaining (``-1``: no quota of that kind
    known) is ignored, not read as "exhausted"; a remaining of ``0`` pauses only for a
    positive reset (``0`` or a missing reset means the budget refills now, so no pause and
    no clamp); unparseable values are ignored.
    """
    lowered = {k.lower(): v for k, v in headers.items()} if headers else {}
    pauses: list[float] = []
    if status == 429:
        retry_after = parse_retry_after(lowered, wall_clock=wall_clock)
        if retry_after is not None:
            pauses.append(retry_after)
    remaining: dict[str, int | None] = {"requests": None, "tokens": None}
    for dimension in ("requests", "tokens"):
        found = _remaining_and_reset(lowered, dimension, wall_clock)
        if found is None:
            continue
        left, reset = found
        if left < 0:
            continue  # Azure's -1: unknown, not exhausted
        if left == 0:
            if reset:
                pauses.append(reset)
        else:
            remaining[dimension] = left
    if remaining["requests"] is None and remaining["tokens"] is None:
        return pauses, None
    return pauses, (remaining["requests"], remaining["tokens"])


def _remaining_and_reset(
    lowered: Mapping[str, str], dimension: str, wall_clock: Callable[[], float]
) -> tuple[int, float | None] | None:
    """``(remaining, reset seconds)`` of one dimension, OpenAI/Azure first, then Anthropic."""
    raw = lowered.get(f"x-ratelimit-remaining-{dimension}")
    if raw is not None:
        left = _int(raw)
        if left is not None:
            return left, parse_reset(lowered.get(f"x-ratelimit-reset-{dimension}", ""))
    names = [dimension] if dimension == "requests" else ["tokens", "input-tokens"]
    for name in names:
        raw = lowered.get(f"anthropic-ratelimit-{name}-remaining")
        left = _int(raw) if raw is not None else None
        if left is not None:
            reset = parse_reset_time(
                lowered.get(f"anthropic-ratelimit-{name}-reset", ""), wall_clock=wall_clock
            )
            return left, reset
    return None


def _int(raw: str) -> int | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if math.isfinite(value) else None


def parse_reset_time(text: str, *, wall_clock: Callable[[], float] = time.time) -> float | None:
    """Seconds until an RFC 3339 time (``"2026-01-01T00:00:05Z"``), Anthropic's reset form.

    Never negative; ``None`` for an empty or malformed value.
    """
    text = text.strip()
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - wall_clock())


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


_DURATION_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_reset(text: str) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` value: ``"20ms"``, ``"1.5s"``, ``"6m0s"``, ``"2"``.

    Returns ``None`` for an empty or malformed value.
    """
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _DURATION_SECONDS[u] for n, u in parts)


def parse_retry_after(
    headers: Mapping[str, str] | None, *, wall_clock: Callable[[], float] = time.time
) -> float | None:
    """Seconds a provider asked us to wait: ``retry-after-ms``, else ``retry-after``.

    ``retry-after`` may be seconds (``"2"``, ``"0.5"``) or an HTTP date (then relative to
    ``wall_clock()``, seconds since the epoch). Header names are matched case-insensitively.
    Returns ``None`` when neither header is present or parseable; never negative.
    """
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(0.0, value)
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - wall_clock())
    return max(0.0, seconds) if math.isfinite(seconds) else None
