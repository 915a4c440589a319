"""Anthropic's and Azure's rate-limit headers and errors, as the gate and retry policy read them."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from rag_perf_plugins import PerformanceConfig
from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.admission.headers import parse_reset_time, read_limit_headers
from rag_perf_plugins.admission.retry import classify

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def wall() -> float:
    return NOW


def test_anthropic_headers_give_remaining_and_pauses() -> None:
    headers = {
        "anthropic-ratelimit-requests-remaining": "12",
        "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:03Z",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2027-01-15T08:00:02.5Z",
    }
    assert read_limit_headers(200, headers, wall_clock=wall) == ([2.5], (12, None))
    # Only the input-token dimension (older accounts): it stands in for "tokens".
    only_input = {"anthropic-ratelimit-input-tokens-remaining": "900"}
    assert read_limit_headers(200, only_input, wall_clock=wall) == ([], (None, 900))
    limited = {"retry-after": "4", "anthropic-ratelimit-requests-remaining": "0"}
    assert read_limit_headers(429, limited, wall_clock=wall) == ([4.0], None)


def test_reset_time_is_relative_and_never_negative() -> None:
    assert parse_reset_time("2027-01-15T08:00:10Z", wall_clock=wall) == 10.0
    assert parse_reset_time("2027-01-15T07:00:00Z", wall_clock=wall) == 0.0
    assert parse_reset_time("tomorrow", wall_clock=wall) is None
    assert parse_reset_time("", wall_clock=wall) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # Azure's "no quota of this kind known": not exhausted, no pause, no clamp.
        ({"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "60"}, ([], None)),
        # Zero left but the reset is now: nothing to wait for.
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "0"}, ([], None)),
        ({"x-ratelimit-remaining-tokens": "0"}, ([], None)),
        # Azure's reset in plain seconds.
        ({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "3"}, ([3.0], None)),
        (
            {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-remaining-tokens": "4500"},
            ([], (None, 4500)),
        ),
        ({"x-ratelimit-remaining-tokens": "nan"}, ([], None)),
    ],
)
def test_azure_odd_values_are_read_sanely(
    headers: dict[str, str], expected: tuple[list[float], object]
) -> None:
    assert read_limit_headers(200, headers) == expected


def test_gate_is_not_paused_by_azure_minus_one(fake_clock: FakeClock) -> None:
    gate = AdmissionGate(
        PerformanceConfig(requests_per_minute=600),
        key="azure-minus-one",  # its own budget: the process store's "default" key may hold
        clock=fake_clock,  # another test's real-clock times, far ahead of this fake clock
        sleep=fake_clock.sleep,
    )
    gate.observe_response(
        200, {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "60"}
    )
    gate.observe_response(
        200, {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "0"}
    )
    assert gate.stats()["paused_for_s"] == 0.0
    with gate.acquire():
        pass
    assert fake_clock.slept == []


def _status_error(status: int, cls: type[anthropic.APIStatusError], **headers: str) -> Exception:
    request = httpx.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx.Response(status, headers=headers, request=request)
    return cls("boom", response=response, body=None)


def test_anthropic_529_is_retried_as_overload_and_429_as_rate_limit() -> None:
    overloaded = classify(_status_error(529, anthropic.InternalServerError))
    assert overloaded.retryable and overloaded.kind == "overloaded" and overloaded.status == 529
    limited = classify(_status_error(429, anthropic.RateLimitError, **{"retry-after": "2"}))
    assert limited.kind == "rate_limited" and limited.retry_after == 2.0
    request = httpx.Request("POST", "http://127.0.0.1/v1/messages")
    assert classify(anthropic.APITimeoutError(request)).kind == "timeout"
    assert classify(anthropic.APIConnectionError(request=request)).kind == "connection"
    assert not classify(_status_error(400, anthropic.BadRequestError)).retryable
