"""The provider an example or a smoke test talks to: a real one if configured, else the simulator.

Example::

    from rag_perf_plugins.simulator import provider_url

    with provider_url(latency_ms=20.0, seed=1) as url:     # RAG_PERF_BASE_URL wins if set
        client = openai.OpenAI(base_url=url, api_key=os.environ.get("OPENAI_API_KEY", "sk-x"))
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from .server import Simulator

__all__ = ["BASE_URL_ENV", "provider_url"]

BASE_URL_ENV = "RAG_PERF_BASE_URL"


@contextlib.contextmanager
def provider_url(*, env: str = BASE_URL_ENV, **options: Any) -> Iterator[str]:
    """Yield the base URL in ``$RAG_PERF_BASE_URL``, else start a simulator for the block.

    ``options`` are :class:`~rag_perf_plugins.simulator.SimulatorOptions` fields
    (``latency_ms`` in milliseconds, ``rpm`` per minute, ``seed``...); they apply only to the
    simulator. The simulator runs on loopback in a background thread and stops when the block
    ends; a configured URL is yielded as it is (e.g. ``https://api.openai.com/v1``).
    """
    url = os.environ.get(env)
    if url:
        yield url
        return
    with Simulator(**options).in_thread() as sim:
        yield sim.base_url
