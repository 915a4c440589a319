"""An OpenAI-compatible provider simulator on loopback that counts what it sees.

Example::

    from rag_perf_plugins.simulator import Simulator

    with Simulator(latency_ms=20.0, rpm=600, error_rate=0.02).in_thread() as sim:
        embeddings = OpenAIEmbeddings(base_url=sim.base_url, check_embedding_ctx_length=False)
        store = InMemoryVectorStore.from_texts(texts, embeddings)     # sync code is fine
        print(sim.stats()["requests_total"], sim.stats()["connections_opened"])

Also ``async with Simulator(...) as sim:`` on the running loop, the pytest fixtures
``simulator`` / ``simulator_factory`` (:mod:`rag_perf_plugins.simulator.testing`), and
``rag-perf simulate --port 8600`` in the foreground. See :class:`SimulatorOptions` for the
latency, limit and fault options, and :class:`SimulatorStats` for the counters.
"""

from __future__ import annotations

from .embeddings import Embedder
from .options import SimulatorOptions
from .outage import Outage
from .provider import provider_url
from .server import Simulator, ThreadedSimulator
from .stats import SimulatorStats

__all__ = [
    "Outage",
    "Embedder",
    "Simulator",
    "SimulatorOptions",
    "SimulatorStats",
    "ThreadedSimulator",
    "provider_url",
]
