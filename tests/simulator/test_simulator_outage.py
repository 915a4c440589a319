"""Scheduled outages: a model or route fails for a while (or browns out), then recovers."""

from __future__ import annotations

import openai
import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.simulator import Outage, Simulator
from rag_perf_plugins.simulator.cli import register
from rag_perf_plugins.simulator.testing import SimulatorFactory


def client(sim: Simulator) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)


def ask(sim: Simulator, model: str) -> int:
    try:
        client(sim).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_an_outage_hits_its_model_for_its_window_then_recovers(
    simulator_factory: SimulatorFactory,
) -> None:
    clock = FakeClock()
    sim = simulator_factory(clock=clock, outages=(Outage(model="a", start_s=5.0, duration_s=10.0),))
    assert ask(sim, "a") == 200
    clock.advance(5.0)
    assert [ask(sim, "a"), ask(sim, "b")] == [503, 200]
    clock.advance(10.0)
    assert ask(sim, "a") == 200
    stats = sim.stats()
    assert stats["requests_by_model"] == {"a": 3, "b": 1}
    assert stats["faults_by_kind"]["outage"] == 1


def test_a_brown_out_of_429s_with_retry_after(simulator_factory: SimulatorFactory) -> None:
    sim = simulator_factory(seed=3)
    sim.add_outage(model="a", duration_s=3600.0, status=429, rate=0.5, retry_after_s=2.0)
    statuses = [ask(sim, "a") for _ in range(40)]
    assert 10 < statuses.count(429) < 30
    assert set(statuses) == {200, 429}
    assert sim.stats()["rate_limited_by_reason"]["outage"] == statuses.count(429)
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(40):
            client(sim).chat.completions.create(
                model="a", messages=[{"role": "user", "content": "hi"}]
            )
    assert caught.value.response.headers["retry-after"] == "2"


def test_a_route_outage_leaves_other_routes_alone(simulator_factory: SimulatorFactory) -> None:
    sim = simulator_factory()
    sim.add_outage(route="/v1/embeddings", duration_s=3600.0, status=500)
    assert ask(sim, "a") == 200
    with pytest.raises(openai.InternalServerError):
        client(sim).embeddings.create(model="text-embedding-3-small", input=["x"])


def test_bad_outages_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="outage status must be one of 429, 500"):
        Outage(status=404)
    with pytest.raises(ValueError, match="outage rate must be a number in"):
        Outage(rate=2.0)
    with pytest.raises(ValueError, match="'colour=red' is not name=value with a name among"):
        Outage.parse("colour=red")
    assert Outage.parse("model=m,start=5,duration=10,status=429,rate=0.5") == Outage(
        model="m", start_s=5.0, duration_s=10.0, status=429, rate=0.5
    )


def test_the_cli_takes_repeated_outages() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(
        ["simulate", "--outage", "model=a,duration=5", "--outage", "route=/v1/embeddings"]
    )
    assert args.outages == [Outage(model="a", duration_s=5.0), Outage(route="/v1/embeddings")]
