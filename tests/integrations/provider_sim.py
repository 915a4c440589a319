"""Simulator scaffolding of the provider tests (Anthropic and Azure routes), both frameworks.

Example::

    from tests.integrations.provider_sim import provider_config, recorded_bodies, root

    config = provider_config(tmp_path)
    with recorded_bodies(simulator, config) as bodies:   # JSON bodies the provider got
        pooled_chat_anthropic(base_url=root(simulator), config=config, ...).invoke("hi")

Used by tests/integrations/{langchain,llama_index}/test_*_providers.py and
test_*_success_headers.py; each keeps its own framework-specific model factories.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.pool.http import get_http_client
from rag_perf_plugins.simulator import Simulator

CLAUDE = "claude-sonnet-4-5-20250929"
API_VERSION = "2024-10-21"
CONTEXT = "Paris is the capital of France.\n\nBerlin is the capital of Germany."
PROVIDER_PATHS = ("/v1/messages", "/chat/completions", "/embeddings")
_scopes = itertools.count()


def root(sim: Simulator) -> str:
    """The simulator's address without ``/v1``: Anthropic's ``base_url``, Azure's endpoint."""
    return sim.base_url.removesuffix("/v1")


def requests(sim: Simulator) -> int:
    """Requests the simulator has received so far."""
    return int(sim.stats()["requests_total"])


def provider_config(tmp_path: Path) -> PerformanceConfig:
    """A private cache directory and short retry back-offs (5 ms, at most 50 ms)."""
    return PerformanceConfig(
        cache_dir=str(tmp_path / "cache"),
        retry_initial_backoff=0.005,
        retry_max_backoff=0.05,
        enable_metrics=False,
    )


def headers_config(tmp_path: Path, prefix: str) -> tuple[PerformanceConfig, str]:
    """Config and a fresh rate-limit scope for the success-header tests: only headers bind.

    Caching off, one attempt (a 429 would be an error), and a gate budget (6,000 RPM)
    that never binds, so only the rate-limit headers of answers can pause the gate.
    """
    scope = f"{prefix}-{next(_scopes)}"
    config = PerformanceConfig(
        cache_dir=str(tmp_path / "cache"),
        enable_caching=False,
        enable_metrics=False,
        requests_per_minute=6000,  # the gate's own budget never binds: only headers do
        rate_limit_scope=scope,
        retry_max_attempts=1,
    )
    return config, scope


@contextlib.contextmanager
def recorded_bodies(sim: Simulator, config: PerformanceConfig) -> Iterator[list[Any]]:
    """The JSON bodies the provider receives through the shared (sync) client."""
    recorded: list[Any] = []

    def hook(request: Any) -> None:
        if request.url.path.endswith(PROVIDER_PATHS):
            recorded.append(json.loads(request.content))

    client = get_http_client(root(sim), config=config)
    client.event_hooks["request"].append(hook)
    try:
        yield recorded
    finally:
        client.event_hooks["request"].remove(hook)
