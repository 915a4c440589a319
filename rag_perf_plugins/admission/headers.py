"""What providers say about their limits: ``Retry-After`` and ``x-ratelimit-*`` headers.

Example::

    parse_retry_after({"retry-after": "2"})            # 2.0 (seconds)
    parse_reset("6m0s")                                 # 360.0
    read_limit_headers(429, {"retry-after-ms": "250"})  # ([0.25], None)

Pure functions: no I/O, no clock except ``wall_clock`` for HTTP-date ``Retry-After`` values.
The gate turns them into pauses and budget clamps; the retry policy into back-off.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping

__all__ = ["parse_reset", "parse_retry_after", "read_limit_headers"]


def read_limit_headers(
    status: int, headers: Mapping[str, str] | None
) -> tuple[list[float], tuple[int | None, int | None] | None]:
    """Pauses (seconds) and remaining (requests, tokens) a provider answer asks for."""
    lowered = {k.lower(): v for k, v in headers.items()} if headers else {}
    pauses: list[float] = []
    if status == 429:
        retry_after = parse_retry_after(lowered)
        if retry_after is not None:
            pauses.append(retry_after)
    remaining: dict[str, int | None] = {"requests": None, "tokens": None}
    for dimension in ("requests", "tokens"):
        raw = lowered.get(f"x-ratelimit-remaining-{dimension}")
        if raw is None:
            continue
        try:
            left = int(float(raw))
        except ValueError:
            continue
        if left <= 0:
            reset = parse_reset(lowered.get(f"x-ratelimit-reset-{dimension}", ""))
            if reset:
                pauses.append(reset)
        else:
            remaining[dimension] = left
    if remaining["requests"] is None and remaining["tokens"] is None:
        return pauses, None
    return pauses, (remaining["requests"], remaining["tokens"])


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
