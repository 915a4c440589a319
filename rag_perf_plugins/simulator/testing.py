"""Pytest fixtures for the simulator: ``simulator`` and ``simulator_factory``.

Example (in a test module, once ``pytest_plugins = ["rag_perf_plugins.simulator.testing"]``
is in ``conftest.py``, or through the ``pytest11`` entry point)::

    def test_counts_calls(simulator):
        client = OpenAI(base_url=simulator.base_url, api_key="sk-test", max_retries=0)
        client.models.list()
        assert simulator.stats()["requests_total"] == 1

    def test_429(simulator_factory):
        sim = simulator_factory(rpm=60, burst_seconds=1.0)
        ...

Both run the server in thread mode (its own loop in a background thread), so sync and
async clients alike can use it, and stop it when the test ends. Imports pytest only when
the fixtures are loaded as a plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .server import Simulator, ThreadedSimulator

__all__ = ["simulator", "simulator_factory"]

SimulatorFactory = Callable[..., Simulator]


@pytest.fixture
def simulator_factory() -> Iterator[SimulatorFactory]:
    """Call it with :class:`~rag_perf_plugins.simulator.Simulator` options; get a running one.

    Every simulator it started is stopped at teardown.
    """
    started: list[ThreadedSimulator] = []

    def make(**options: Any) -> Simulator:
        threaded = Simulator(**options).in_thread()
        started.append(threaded)
        return threaded.start()

    yield make
    for threaded in reversed(started):
        threaded.stop()


@pytest.fixture
def simulator(simulator_factory: SimulatorFactory) -> Simulator:
    """A running simulator with default options (no latency, no limits, no faults)."""
    return simulator_factory()
