"""The simulator over real HTTP, driven by the official openai client (sync and async) and httpx."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.simulator import Simulator, SimulatorOptions
from rag_perf_plugins.simulator.testing import SimulatorFactory
from rag_perf_plugins.tokens import estimate_tokens

SMALL = "text-embedding-3-small"
CHAT = "gpt-4o-mini"
CONTEXT = "Paris is the capital of France.\n\nBerlin is the capital of Germany."
QUESTION: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": CONTEXT},
    {"role": "user", "content": "What is the capital of France?"},
]


def client(sim: Simulator, **kwargs: Any) -> openai.OpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=sim.base_url, api_key="sk-test", **kwargs)


def aclient(sim: Simulator, **kwargs: Any) -> openai.AsyncOpenAI:
    kwargs.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test", **kwargs)


class Recorder:
    """An async sleep that only records what it was asked (seconds)."""

    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


async def eventually(condition: Callable[[], bool], *, polls: int = 2000) -> None:
    """Yield to the loop until ``condition()`` holds (a bounded number of 5 ms polls)."""
    for _ in range(polls):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


# ---- embeddings --------------------------------------------------------------------------


def test_embeddings_float_and_base64_agree_and_are_counted(simulator: Simulator) -> None:
    with client(simulator) as c:
        texts = ["Paris is in France", "Berlin is in Germany", "cats"]
        floats = c.embeddings.create(model=SMALL, input=texts, encoding_format="float")
        b64 = c.embeddings.create(model=SMALL, input=texts)  # the SDK asks for base64
        short = c.embeddings.create(model=SMALL, input="cats", dimensions=64)
    a = np.array([d.embedding for d in floats.data], dtype=np.float32)
    b = np.array([d.embedding for d in b64.data], dtype=np.float32)
    assert a.shape == (3, 1536)
    assert np.allclose(a, b, atol=1e-7)
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert len(short.data[0].embedding) == 64
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0
    stats = simulator.stats()
    assert stats["requests_by_endpoint"] == {"/v1/embeddings": 3}
    assert stats["embedding_inputs_total"] == 7
    assert (
        stats["tokens_total"]
        == stats["embedding_tokens_total"]
        == (2 * floats.usage.total_tokens + short.usage.total_tokens)
    )


def test_raw_embedding_payload_and_token_arrays(simulator: Simulator) -> None:
    with httpx.Client() as http:
        url = simulator.base_url + "/embeddings"
        body = {"model": SMALL, "input": [[1, 2, 3], [4, 5]], "encoding_format": "base64"}
        data = http.post(url, json=body).json()
        assert data["object"] == "list" and data["model"] == SMALL
        assert data["usage"] == {"prompt_tokens": 5, "total_tokens": 5}
        vector = np.frombuffer(base64.b64decode(data["data"][0]["embedding"]), dtype="<f4")
        assert vector.shape == (1536,)
        bad = http.post(
            url, json={"model": "text-embedding-ada-002", "input": "x", "dimensions": 8}
        )
        assert bad.status_code == 400
        assert "does not support specifying dimensions" in bad.json()["error"]["message"]
        assert http.post(url, json={"model": SMALL, "input": 5}).status_code == 400
        assert http.post(url, content=b"{not json").status_code == 400
        assert http.get(simulator.base_url + "/nowhere").status_code == 404
        assert http.get(url).status_code == 405
    assert simulator.stats()["responses_by_status"] == {"200": 1, "400": 3, "404": 1, "405": 1}


# ---- chat --------------------------------------------------------------------------------


def test_chat_is_grounded_deterministic_and_counted(simulator: Simulator) -> None:
    with client(simulator) as c:
        first = c.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0)
        second = c.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0)
    answer = first.choices[0].message.content
    assert answer == 'Based on the context: "Paris is the capital of France."'
    assert second.choices[0].message.content == answer
    assert first.id != second.id and first.choices[0].finish_reason == "stop"
    usage = first.usage
    assert usage is not None
    stats = simulator.stats()
    assert stats["prompt_tokens_total"] == 2 * usage.prompt_tokens
    assert stats["completion_tokens_total"] == 2 * usage.completion_tokens
    assert stats["tokens_total"] == 2 * usage.total_tokens


def test_sync_stream_with_usage(simulator: Simulator) -> None:
    with client(simulator) as c:
        stream = c.chat.completions.create(
            model=CHAT,
            messages=QUESTION,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == 'Based on the context: "Paris is the capital of France."'
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert simulator.stats()["streams_total"] == 1


async def test_async_client_chat_stream_tools_and_embeddings(simulator: Simulator) -> None:
    async with aclient(simulator) as c:
        reply = await c.chat.completions.create(model=CHAT, messages=QUESTION, seed=3)
        stream = await c.chat.completions.create(model=CHAT, messages=QUESTION, seed=3, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream])
        tool: ChatCompletionToolParam = {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
        called = await c.chat.completions.create(model=CHAT, messages=QUESTION, tools=[tool])
        vectors = await c.embeddings.create(model=SMALL, input=["a", "b"])
    assert text == reply.choices[0].message.content and "Paris" in text
    (call,) = called.choices[0].message.tool_calls or []
    assert call.function.name == "lookup"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"q": "What is the capital of France?"}  # type: ignore[union-attr]
    assert called.choices[0].finish_reason == "tool_calls"
    assert len(vectors.data) == 2
    assert simulator.stats()["requests_total"] == 4


def test_models_and_http_stats_endpoints(simulator: Simulator) -> None:
    with client(simulator) as c:
        ids = {m.id for m in c.models.list()}
        assert {"gpt-4o-mini", SMALL, "text-embedding-3-large"} <= ids
        assert c.models.retrieve("gpt-4o").id == "gpt-4o"
    root = simulator.base_url.removesuffix("/v1")
    with httpx.Client() as http:
        stats = http.get(root + "/stats").json()
        assert stats["requests_by_endpoint"] == {"/v1/models": 2}
        assert http.post(root + "/stats/reset").json() == {"reset": True}
        assert http.get(root + "/stats").json()["requests_total"] == 0  # control calls uncounted
        assert http.post(root + "/stats").status_code == 405
    simulator.reset_stats()
    assert simulator.stats()["requests_total"] == 0


# ---- limits ------------------------------------------------------------------------------


def test_rpm_answers_429_with_retry_after_and_headers(
    simulator_factory: SimulatorFactory, fake_clock: FakeClock
) -> None:
    sim = simulator_factory(rpm=120, burst_seconds=1.0, clock=fake_clock)  # 2/s, hold 2
    with client(sim) as c:
        ok = c.embeddings.with_raw_response.create(model=SMALL, input="x")
        assert ok.headers["x-ratelimit-limit-requests"] == "120"
        assert ok.headers["x-ratelimit-remaining-requests"] == "1"
        assert ok.headers["x-ratelimit-reset-requests"] == "500ms"
        c.embeddings.create(model=SMALL, input="x")
        with pytest.raises(openai.RateLimitError) as caught:
            c.embeddings.create(model=SMALL, input="x")
        headers = caught.value.response.headers
        assert headers["retry-after"] == "0.5" and headers["retry-after-ms"] == "500"
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert caught.value.code == "rate_limit_exceeded"
        fake_clock.advance(0.5)
        c.embeddings.create(model=SMALL, input="x")
    stats = sim.stats()
    assert stats["rate_limited_total"] == 1 and stats["rate_limited_by_reason"] == {"rpm": 1}
    assert stats["responses_by_status"] == {"200": 3, "429": 1}


def test_tpm_counts_prompt_and_completion_tokens(
    simulator_factory: SimulatorFactory, fake_clock: FakeClock
) -> None:
    sim = simulator_factory(tpm=4800, burst_seconds=1.0, clock=fake_clock)  # 80 tokens/s
    with client(sim) as c:
        first = c.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0)
        used = first.usage.total_tokens  # type: ignore[union-attr]
        assert 40 < used < 80
        with pytest.raises(openai.RateLimitError) as caught:
            c.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0)
        wait = float(caught.value.response.headers["retry-after"])
        assert wait == pytest.approx((used - (80 - used)) / 80, abs=0.002)
        assert caught.value.response.headers["x-ratelimit-limit-tokens"] == "4800"
        fake_clock.advance(wait)
        c.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0)
    assert sim.stats()["rate_limited_by_reason"] == {"tpm": 1}


async def test_max_concurrency_refuses_the_excess_at_once() -> None:
    gate = asyncio.Event()

    async def held(_seconds: float) -> None:
        await gate.wait()

    async with Simulator(latency_ms=1.0, max_concurrency=2, sleep=held) as sim:
        async with aclient(sim) as c:

            async def one() -> str:
                try:
                    await c.embeddings.create(model=SMALL, input="x")
                except openai.RateLimitError as exc:
                    return exc.response.headers["retry-after"]
                return "ok"

            tasks = [asyncio.create_task(one()) for _ in range(5)]
            await eventually(lambda: sim.stats()["requests_total"] == 5)
            gate.set()
            results = await asyncio.gather(*tasks)
        stats = sim.stats()
    assert sorted(results) == ["1", "1", "1", "ok", "ok"]
    assert stats["rate_limited_by_reason"] == {"concurrency": 3}
    assert stats["peak_inflight"] >= 3  # 2 held + at least 1 being refused


def test_injected_429_uses_retry_after_and_the_sdk_honours_it(
    simulator_factory: SimulatorFactory,
) -> None:
    sim = simulator_factory(rate_limit_rate=1.0, retry_after_s=0.05)
    with client(sim) as c, pytest.raises(openai.RateLimitError) as caught:
        c.embeddings.create(model=SMALL, input="x")
    assert caught.value.response.headers["retry-after"] == "0.05"
    with client(sim, max_retries=2) as c, pytest.raises(openai.RateLimitError):
        c.embeddings.create(model=SMALL, input="x")
    stats = sim.stats()
    assert stats["requests_total"] == 4  # 1 + (1 try + 2 retries)
    assert stats["rate_limited_by_reason"] == {"injected": 4}
    assert stats["tokens_total"] == 0


# ---- faults ------------------------------------------------------------------------------


def test_error_rate_gives_500_and_503(simulator_factory: SimulatorFactory) -> None:
    sim = simulator_factory(error_rate=1.0, seed=1)
    statuses = []
    with client(sim) as c:
        for _ in range(20):
            with pytest.raises(openai.InternalServerError) as caught:
                c.embeddings.create(model=SMALL, input="x")
            statuses.append(caught.value.status_code)
    assert set(statuses) == {500, 503}
    stats = sim.stats()
    assert stats["errors_injected_total"] == 20
    assert stats["faults_by_kind"] == {"500": statuses.count(500), "503": statuses.count(503)}
    assert stats["tokens_total"] == 0


def test_seeded_error_rate_is_reproducible(simulator_factory: SimulatorFactory) -> None:
    def outcomes(sim: Simulator) -> list[int]:
        with httpx.Client() as http:
            return [
                http.post(
                    sim.base_url + "/embeddings", json={"model": SMALL, "input": "x"}
                ).status_code
                for _ in range(40)
            ]

    a = outcomes(simulator_factory(error_rate=0.3, seed=11))
    b = outcomes(simulator_factory(error_rate=0.3, seed=11))
    assert a == b and 200 in a and (500 in a or 503 in a)


def test_dropped_connections_get_no_answer(simulator_factory: SimulatorFactory) -> None:
    sim = simulator_factory(drop_rate=1.0)
    with client(sim) as c:
        for _ in range(3):
            with pytest.raises(openai.APIConnectionError):
                c.embeddings.create(model=SMALL, input="x")
    stats = sim.stats()
    assert stats["faults_by_kind"] == {"drop": 3}
    assert stats["responses_by_status"] == {}
    assert stats["connections_opened"] == 3  # each drop costs the client its connection


def test_truncated_json_body_is_cut_short(simulator_factory: SimulatorFactory) -> None:
    sim = simulator_factory(truncate_rate=1.0)
    with (
        httpx.Client() as http,
        pytest.raises(httpx.RemoteProtocolError, match=r"incomplete|peer closed"),
    ):
        http.post(sim.base_url + "/embeddings", json={"model": SMALL, "input": "x"})
    with client(sim) as c, pytest.raises(openai.APIConnectionError):
        c.embeddings.create(model=SMALL, input="x")
    assert sim.stats()["faults_by_kind"] == {"truncate": 2}


def test_truncated_stream_stops_midway_without_done(simulator_factory: SimulatorFactory) -> None:
    sim = simulator_factory(truncate_rate=1.0)
    received: list[str] = []
    with client(sim) as c:
        stream = c.chat.completions.create(model=CHAT, messages=QUESTION, stream=True)
        with pytest.raises(httpx.RemoteProtocolError):
            for chunk in stream:
                received.append(chunk.choices[0].delta.content or "")
    full = 'Based on the context: "Paris is the capital of France."'
    assert received and len("".join(received)) < len(full)
    assert sim.stats()["faults_by_kind"] == {"truncate": 1}


def test_slow_rate_adds_slow_ms(simulator_factory: SimulatorFactory) -> None:
    recorder = Recorder()
    sim = simulator_factory(slow_rate=1.0, slow_ms=750.0, latency_ms=10.0, sleep=recorder)
    with client(sim) as c:
        c.embeddings.create(model=SMALL, input="x")
    assert recorder.slept == [pytest.approx(0.76)]
    stats = sim.stats()
    assert stats["faults_by_kind"] == {"slow": 1} and stats["errors_injected_total"] == 0


# ---- latency model -----------------------------------------------------------------------


def test_latency_model_non_streaming(simulator_factory: SimulatorFactory) -> None:
    recorder = Recorder()
    sim = simulator_factory(
        latency_ms=100.0,
        latency_per_token_ms=10.0,
        chunk_latency_ms=1.0,
        embedding_latency_per_token_ms=0.5,
        sleep=recorder,
    )
    with client(sim) as c:
        reply = c.chat.completions.create(model=CHAT, messages=QUESTION, temperature=0)
        vectors = c.embeddings.create(model=SMALL, input=["one two three"] * 4)
    tokens = reply.usage.completion_tokens  # type: ignore[union-attr]
    pieces = len((reply.choices[0].message.content or "").split())
    assert recorder.slept[0] == pytest.approx(0.1 + tokens * 0.010 + (pieces - 1) * 0.001)
    assert recorder.slept[1] == pytest.approx(0.1 + vectors.usage.total_tokens * 0.0005)


def test_latency_model_streaming(simulator_factory: SimulatorFactory) -> None:
    recorder = Recorder()
    sim = simulator_factory(
        latency_ms=200.0, latency_per_token_ms=5.0, chunk_latency_ms=2.0, sleep=recorder
    )
    with client(sim) as c:
        stream = c.chat.completions.create(
            model=CHAT, messages=QUESTION, temperature=0, stream=True
        )
        pieces = [
            ch.choices[0].delta.content
            for ch in stream
            if ch.choices and ch.choices[0].delta.content
        ]
    assert recorder.slept[0] == pytest.approx(0.2)  # time to first token
    gaps = recorder.slept[1:]
    assert len(gaps) == len(pieces)
    # Each piece costs its tokens; pieces after the first add the chunk latency.
    expected = [
        estimate_tokens(p or "") * 0.005 + (0.002 if i else 0.0) for i, p in enumerate(pieces)
    ]
    assert gaps == pytest.approx(expected)


def test_jitter_is_seeded(simulator_factory: SimulatorFactory) -> None:
    def sleeps(seed: int) -> list[float]:
        recorder = Recorder()
        sim = simulator_factory(latency_ms=10.0, jitter_ms=50.0, seed=seed, sleep=recorder)
        with client(sim) as c:
            for _ in range(10):
                c.models.list()
        return recorder.slept

    a, b, other = sleeps(4), sleeps(4), sleeps(5)
    assert a == b != other
    assert all(0.010 <= s < 0.060 for s in a) and len(set(a)) == 10


# ---- connections -------------------------------------------------------------------------


async def test_connections_opened_equals_the_pool_size_of_a_client() -> None:
    gate = asyncio.Event()

    async def held(_seconds: float) -> None:
        await gate.wait()

    async with Simulator(latency_ms=1.0, sleep=held) as sim:
        limits = httpx.Limits(max_connections=3, max_keepalive_connections=3)
        async with httpx.AsyncClient(limits=limits) as http:
            url = sim.base_url + "/embeddings"
            tasks = [
                asyncio.create_task(http.post(url, json={"model": SMALL, "input": f"t{i}"}))
                for i in range(50)
            ]
            await eventually(lambda: sim.stats()["inflight"] == 3)
            gate.set()
            responses = await asyncio.gather(*tasks)
        stats = sim.stats()
    assert {r.status_code for r in responses} == {200}
    assert stats["connections_opened"] == 3
    assert stats["peak_inflight"] == 3
    assert stats["requests_total"] == 50


def test_a_client_without_keep_alive_opens_one_connection_per_request(
    simulator: Simulator,
) -> None:
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(limits=no_keepalive) as http:
        for _ in range(7):
            http.get(simulator.base_url + "/models")
    assert simulator.stats()["connections_opened"] == 7
    simulator.reset_stats()
    with client(simulator) as c:  # the SDK's pooled client: one connection, reused
        for _ in range(7):
            c.embeddings.create(model=SMALL, input="x")
    stats = simulator.stats()
    assert stats["connections_opened"] == 1 and stats["requests_total"] == 7


# ---- lifecycle ---------------------------------------------------------------------------


def test_thread_mode_starts_and_stops_cleanly() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        threaded = Simulator(SimulatorOptions(latency_ms=0.0)).in_thread()
        with threaded as sim:
            assert sim.running and sim.base_url.startswith("http://127.0.0.1:")
            assert sim.base_url.endswith("/v1")
            with client(sim) as c:
                c.models.list()
            assert "running" in repr(threaded)
        assert not sim.running
        assert "stopped" in repr(threaded)
        with pytest.raises(RuntimeError, match="cannot be restarted"):
            threaded.start()
        threaded.stop()  # idempotent
        gc.collect()


def test_stop_with_a_request_in_flight_and_an_idle_keepalive_connection() -> None:
    never = asyncio.Event()  # never set: the second request stays in flight
    calls = 0

    async def second_call_hangs(_seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls > 1:
            await never.wait()

    threaded = Simulator(latency_ms=1.0, sleep=second_call_hangs).in_thread()
    sim = threaded.start()
    errors: list[BaseException] = []

    def hanging_request() -> None:
        with httpx.Client(timeout=30.0) as other:
            try:
                other.get(sim.base_url + "/models")
            except httpx.HTTPError as exc:
                errors.append(exc)

    with httpx.Client(timeout=30.0) as http:
        http.get(sim.base_url + "/models/x")  # leaves an idle keep-alive connection
        worker = threading.Thread(target=hanging_request)
        worker.start()
        while sim.stats()["inflight"] < 1:
            time.sleep(0.005)
        threaded.stop()  # in-flight requests get the shutdown grace, then are cancelled
        worker.join(30.0)
    assert not sim.running and not worker.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], httpx.RemoteProtocolError)
    assert sim.stats()["connections_active"] == 0


async def test_async_mode_and_its_errors() -> None:
    sim = Simulator()
    with pytest.raises(RuntimeError, match="not started"):
        _ = sim.base_url
    async with sim:
        assert await sim.start() is sim  # idempotent while running
        async with aclient(sim) as c:
            await c.models.list()
        assert "requests=1" in repr(sim)
    assert "stopped" in repr(sim)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"latency": 5}, "unknown simulator option"),
        ({"port": 70000}, "port must be"),
        ({"error_rate": 2}, "error_rate"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Simulator(**kwargs)


def test_factory_and_fixture_give_independent_servers(
    simulator: Simulator, simulator_factory: Callable[..., Simulator]
) -> None:
    other = simulator_factory(embedding_dim=8)
    assert other.port != simulator.port
    with client(other) as c:
        assert len(c.embeddings.create(model="local", input="x").data[0].embedding) == 8
    assert simulator.stats()["requests_total"] == 0
