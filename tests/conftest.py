"""Shared fixtures: a fake clock, a private cache directory, and the real Redis server."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_perf_plugins._clock import FakeClock

pytest_plugins = ["rag_perf_plugins.simulator.testing", "ha_redis"]

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
# The database the Redis tests use and flush; two test runs at once need two databases.
REDIS_DB = int(os.environ.get("RAG_PERF_TEST_REDIS_DB", "15"))
REQUIRE_REDIS = os.environ.get("RAG_PERF_REQUIRE_REDIS", "") not in ("", "0", "false")


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the user's cache directory and RAG_PERF_* settings."""
    for name in list(os.environ):
        if name.startswith("RAG_PERF_") and name not in (
            "RAG_PERF_REQUIRE_REDIS",
            "RAG_PERF_TEST_REDIS_DB",
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("RAG_PERF_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")


@pytest.fixture
def fake_clock() -> FakeClock:
    """A manual clock starting at 1000.0 s."""
    return FakeClock(start=1000.0)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """A fresh, real directory for a disk cache tier."""
    path = tmp_path / "cache"
    return path


def redis_available(host: str = REDIS_HOST, port: int = REDIS_PORT) -> bool:
    """True when a Redis server answers PING at host:port."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of the real Redis at 127.0.0.1:6379 (database 15, or ``RAG_PERF_TEST_REDIS_DB``,
    flushed around the test).

    Skips when Redis is not answering, unless RAG_PERF_REQUIRE_REDIS=1 (as in CI), in which
    case the test fails.
    """
    if not redis_available():
        message = f"Redis is not answering at {REDIS_HOST}:{REDIS_PORT}"
        if REQUIRE_REDIS:
            pytest.fail(message + " and RAG_PERF_REQUIRE_REDIS=1")
        pytest.skip(message)
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    _flush(url)
    yield url
    _flush(url)


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def pytest_report_header(config: pytest.Config) -> str:
    state = "available" if redis_available() else "NOT available (Redis tests will skip)"
    if REQUIRE_REDIS and not redis_available():
        state = "NOT available and required: Redis tests will fail"
    return f"redis at {REDIS_HOST}:{REDIS_PORT}: {state}"
