"""The simulator's pure parts: options, buckets, dice, embeddings, chat planning, schemas."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest

from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.simulator import Embedder, SimulatorOptions
from rag_perf_plugins.simulator import chat as chat_module
from rag_perf_plugins.simulator.chat import (
    ChatInputError,
    ChatRequest,
    Message,
    completion_body,
    plan_chat,
    stream_events,
    text_pieces,
)
from rag_perf_plugins.simulator.embeddings import content_words
from rag_perf_plugins.simulator.limits import FaultDice, TokenBucket, format_reset
from rag_perf_plugins.simulator.schema import example_for_schema
from rag_perf_plugins.simulator.stats import SimulatorStats
from rag_perf_plugins.tokens import estimate_tokens

# ---- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("latency_ms", -1.0, "latency_ms must be a number >= 0"),
        ("error_rate", 1.5, "error_rate must be a number in [0, 1]"),
        ("rpm", 0, "rpm must be a number > 0 or None"),
        ("burst_seconds", 0.0, "burst_seconds must be a number > 0"),
        ("max_concurrency", 0, "max_concurrency must be an integer >= 1 or None"),
        ("embedding_dim", 2.5, "embedding_dim must be an integer >= 1"),
        ("seed", "x", "seed must be an integer"),
        ("slow_ms", float("nan"), "slow_ms must be a number >= 0"),
    ],
)
def test_bad_options_are_named(name: str, value: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        SimulatorOptions(**{name: value})


def test_options_replace_validates_again() -> None:
    options = SimulatorOptions(rpm=60)
    assert options.replace(rpm=None).rpm is None
    assert options.rpm == 60
    with pytest.raises(ValueError, match="drop_rate"):
        options.replace(drop_rate=-0.1)


# ---- token bucket ------------------------------------------------------------------------


def test_bucket_admits_burst_then_refuses_with_the_exact_wait() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_minute=120, burst_seconds=1.5, clock=clock)  # 2/s, hold 3
    assert bucket.capacity == 3.0
    assert [bucket.try_take(1.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take(1.0) == pytest.approx(0.5)
    clock.advance(0.25)
    assert bucket.try_take(1.0) == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.try_take(1.0) == 0.0
    assert bucket.remaining() == 0
    clock.advance(10.0)
    assert bucket.remaining() == 3  # never above capacity
    assert bucket.reset_after() == 0.0


def test_bucket_admits_an_oversized_cost_when_full_and_goes_into_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_minute=600, burst_seconds=1.0, clock=clock)  # 10/s, hold 10
    assert bucket.try_take(25.0) == 0.0  # full: admitted, level -15
    assert bucket.try_take(1.0) == pytest.approx(1.6)  # (1 - -15) / 10
    assert bucket.wait_for(25.0) == pytest.approx(2.5)  # needs a full bucket: 25 / 10


def test_bucket_capacity_is_at_least_one_request() -> None:
    bucket = TokenBucket(rate_per_minute=6, burst_seconds=1.0, clock=FakeClock())
    assert bucket.capacity == 1.0
    assert bucket.try_take(1.0) == 0.0
    assert bucket.try_take(1.0) == pytest.approx(10.0)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.0201, "21ms"), (1.5, "1.5s"), (59.0, "59s"), (360.0, "6m0s")]
)
def test_reset_durations_read_like_openai(seconds: float, text: str) -> None:
    assert format_reset(seconds) == text


# ---- dice --------------------------------------------------------------------------------


def test_dice_are_seeded_and_hit_their_rates() -> None:
    options = SimulatorOptions(error_rate=0.2, drop_rate=0.1, jitter_ms=10.0, seed=5)
    first = [FaultDice(options).roll() for _ in range(1)]
    dice_a, dice_b = FaultDice(options), FaultDice(options)
    rolls_a = [dice_a.roll() for _ in range(5000)]
    rolls_b = [dice_b.roll() for _ in range(5000)]
    assert rolls_a == rolls_b
    assert first[0] == rolls_a[0]
    errors = sum(1 for r in rolls_a if r.error)
    assert 850 < errors < 1150
    assert {r.error for r in rolls_a} == {0, 500, 503}
    assert 380 < sum(r.drop for r in rolls_a) < 620
    assert all(0.0 <= r.jitter_s < 0.010 for r in rolls_a)
    other = FaultDice(options.replace(seed=6))
    assert [other.roll() for _ in range(50)] != rolls_a[:50]


def test_dice_without_faults_inject_nothing_but_still_vary_samples() -> None:
    dice = FaultDice(SimulatorOptions())
    rolls = [dice.roll() for _ in range(100)]
    assert not any(r.drop or r.error or r.rate_limit or r.slow or r.truncate for r in rolls)
    assert len({r.sample for r in rolls}) > 90


# ---- stats -------------------------------------------------------------------------------


def test_stats_count_and_reset() -> None:
    stats = SimulatorStats()
    stats.connection_opened()
    assert stats.request_started("/v1/embeddings") == 1
    assert stats.request_started("/v1/embeddings") == 2
    stats.rate_limited("rpm")
    stats.request_finished(429)
    stats.fault("slow")
    stats.fault("503")
    stats.tokens(embedding=7, inputs=3)
    snap = stats.snapshot()
    assert snap["requests_by_endpoint"] == {"/v1/embeddings": 2}
    assert snap["peak_inflight"] == 2 and snap["inflight"] == 1
    assert snap["rate_limited_by_reason"] == {"rpm": 1}
    assert snap["errors_injected_total"] == 1  # slow is a fault, not an error
    assert snap["faults_by_kind"] == {"slow": 1, "503": 1}
    assert snap["tokens_total"] == 7 and snap["embedding_inputs_total"] == 3
    assert snap["responses_by_status"] == {"429": 1}
    assert "requests=2" in repr(stats)
    stats.reset()
    snap = stats.snapshot()
    assert snap["requests_total"] == 0 and snap["tokens_total"] == 0
    assert snap["peak_inflight"] == 1  # the one still in flight
    assert snap["connections_active"] == 1
    json.dumps(snap)


# ---- embeddings --------------------------------------------------------------------------


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_embeddings_are_deterministic_unit_vectors() -> None:
    texts = ["The cat sat on the mat.", "Quantum chromodynamics", ""]
    a = Embedder().embed("text-embedding-3-small", texts)
    b = Embedder().embed("text-embedding-3-small", texts)
    assert a.dtype == np.float32 and a.shape == (3, 1536)
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_texts_sharing_words_are_close_and_others_far() -> None:
    e = Embedder()
    docs = [
        "Paris is the capital of France.",
        "Berlin is the capital of Germany.",
        "Cats purr when they are content.",
        "The stock market fell sharply today.",
    ]
    query = "What is the capital of France?"
    vectors = e.embed("text-embedding-3-small", [*docs, query])
    scores = [cosine(vectors[-1], v) for v in vectors[:-1]]
    assert int(np.argmax(scores)) == 0
    assert scores[0] > 0.7
    assert abs(scores[2]) < 0.2 and abs(scores[3]) < 0.2
    # Plural and case do not matter; common words barely do.
    cats, cat = e.embed("text-embedding-3-small", ["CATS purr", "a cat purrs"])
    assert cosine(cats, cat) > 0.95


def test_models_differ_and_dimensions_are_normalised_prefixes() -> None:
    e = Embedder()
    small, ada = (
        e.embed(m, ["hello world"])[0] for m in ("text-embedding-3-small", "text-embedding-ada-002")
    )
    assert abs(cosine(small, ada)) < 0.2
    large = e.embed("text-embedding-3-large", ["hello world"])[0]
    assert large.shape == (3072,)
    short = e.embed("text-embedding-3-large", ["hello world"], dimensions=256)[0]
    assert short.shape == (256,)
    prefix = large[:256] / np.linalg.norm(large[:256])
    assert np.allclose(short, prefix, atol=1e-5)


def test_dimension_rules() -> None:
    e = Embedder(default_dim=8)
    assert e.dimension_for("my-local-model", None) == 8
    assert e.embed("my-local-model", ["x"]).shape == (1, 8)
    with pytest.raises(ValueError, match="does not support specifying dimensions"):
        e.dimension_for("text-embedding-ada-002", 256)
    with pytest.raises(ValueError, match="between 1 and 1536"):
        e.dimension_for("text-embedding-3-small", 4096)
    with pytest.raises(ValueError, match="must be an integer"):
        e.dimension_for("text-embedding-3-small", "256")  # type: ignore[arg-type]


def test_usage_counts_tokens_and_token_arrays() -> None:
    e = Embedder()
    _, tokens = e.embed_with_usage("text-embedding-3-small", ["hello world", [1, 2, 3, 4]])
    assert tokens == estimate_tokens("hello world") + 4
    v1, v2 = e.embed("text-embedding-3-small", [[1, 2, 3], [1, 2, 3]])
    assert np.array_equal(v1, v2)


# ---- chat --------------------------------------------------------------------------------


def chat(messages: list[dict[str, Any]], **fields: Any) -> ChatRequest:
    return ChatRequest.parse({"model": "gpt-4o-mini", "messages": messages, **fields})


CONTEXT = (
    "Paris is the capital of France. It has the Louvre.\n\n"
    "Berlin is the capital of Germany.\n\n"
    "Cats are small domesticated carnivores."
)


def test_answer_quotes_the_passage_that_matches_the_question() -> None:
    request = chat(
        [
            {"role": "system", "content": "Answer from the context below.\n\n" + CONTEXT},
            {"role": "user", "content": "What is the capital of Germany?"},
        ],
        temperature=0,
    )
    choice = plan_chat(request, sample=0).choices[0]
    assert choice.content == 'Based on the context: "Berlin is the capital of Germany."'
    assert choice.finish_reason == "stop"


def test_llama_index_and_langchain_prompt_shapes_are_understood() -> None:
    llama = (
        "Context information is below.\n---------------------\n"
        "file_path: a.txt\n\nCats are small domesticated carnivores.\n\n"
        "file_path: b.txt\n\nParis is the capital of France.\n"
        "---------------------\nGiven the context information and not prior knowledge, "
        "answer the query.\nQuery: Which city is the capital of France?\nAnswer: "
    )
    plan = plan_chat(chat([{"role": "user", "content": llama}], temperature=0), sample=0)
    assert plan.choices[0].content == 'Based on the context: "Paris is the capital of France."'
    langchain = (
        "You are an assistant for question-answering tasks. Use the following pieces of "
        "retrieved context to answer the question.\nQuestion: what do cats eat? \n"
        "Context: Cats are small domesticated carnivores.\n\nBerlin is in Germany. \nAnswer:"
    )
    plan = plan_chat(chat([{"role": "user", "content": langchain}], temperature=0), sample=0)
    assert "Cats are small domesticated carnivores." in str(plan.choices[0].content)


def test_without_context_or_match_the_answer_says_so() -> None:
    plain = plan_chat(chat([{"role": "user", "content": "Hello there"}]), sample=0)
    assert plain.choices[0].content == "This is a simulated answer to: Hello there"
    nomatch = chat(
        [{"role": "system", "content": CONTEXT}, {"role": "user", "content": "Who wrote Hamlet?"}]
    )
    assert "does not answer" in str(plan_chat(nomatch, sample=0).choices[0].content)


def test_long_passages_are_quoted_around_the_best_sentence() -> None:
    filler = " ".join(f"Sentence number {i} talks about weather." for i in range(40))
    passage = filler + " The secret password is swordfish. Then more text follows."
    request = chat(
        [{"role": "system", "content": passage}, {"role": "user", "content": "What password?"}]
    )
    content = str(plan_chat(request, sample=0).choices[0].content)
    assert "The secret password is swordfish." in content
    assert len(content.split()) < 100


def test_temperature_and_seed_decide_variation() -> None:
    messages = [{"role": "system", "content": CONTEXT}, {"role": "user", "content": "Cats?"}]

    def answers(**fields: Any) -> set[str]:
        return {
            str(plan_chat(chat(messages, **fields), sample=s).choices[0].content) for s in range(20)
        }

    assert len(answers(temperature=0)) == 1
    assert len(answers(temperature=0.7, seed=42)) == 1
    assert answers(temperature=0.7, seed=42) == answers(temperature=1.2, seed=42)
    assert len(answers(temperature=0.7)) > 1
    assert len(answers()) > 1  # OpenAI's default temperature is 1


def test_stop_and_max_tokens_cut_the_answer() -> None:
    messages = [{"role": "system", "content": CONTEXT}, {"role": "user", "content": "Germany?"}]
    stopped = plan_chat(chat(messages, temperature=0, stop=["capital"]), sample=0).choices[0]
    assert stopped.content == 'Based on the context: "Berlin is the '
    assert stopped.finish_reason == "stop"
    cut = plan_chat(chat(messages, temperature=0, max_tokens=3), sample=0).choices[0]
    assert cut.finish_reason == "length"
    assert cut.completion_tokens <= 3 and cut.content
    assert "Based on the context".startswith(str(cut.content).strip())
    newer = plan_chat(chat(messages, max_completion_tokens=3), sample=0).choices[0]
    assert newer.finish_reason == "length"


def test_n_choices_and_usage() -> None:
    plan = plan_chat(chat([{"role": "user", "content": "hi"}], n=3), sample=0)
    assert len(plan.choices) == 3
    body = completion_body(plan, "chatcmpl-x", created=1)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["total_tokens"] == plan.prompt_tokens + plan.completion_tokens
    assert plan.prompt_tokens == 3 + 3 + estimate_tokens("user") + estimate_tokens("hi")


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    },
}


def test_tools_give_a_deterministic_call_to_the_first_or_chosen_tool() -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    plan = plan_chat(chat(messages, tools=[WEATHER_TOOL, SEARCH_TOOL]), sample=0)
    choice = plan.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.content is None
    (call,) = choice.tool_calls
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Weather in Paris?", "unit": "celsius", "days": 1}
    again = plan_chat(chat(messages, tools=[WEATHER_TOOL, SEARCH_TOOL]), sample=9)
    assert again.choices[0].tool_calls == choice.tool_calls
    chosen = chat(
        messages,
        tools=[WEATHER_TOOL, SEARCH_TOOL],
        tool_choice={"type": "function", "function": {"name": "search"}},
    )
    assert plan_chat(chosen, sample=0).choices[0].tool_calls[0].name == "search"
    none = plan_chat(chat(messages, tools=[WEATHER_TOOL], tool_choice="none"), sample=0)
    assert none.choices[0].tool_calls == () and none.choices[0].content
    with pytest.raises(ChatInputError, match="'nope'"):
        plan_chat(
            chat(
                messages,
                tools=[WEATHER_TOOL],
                tool_choice={"type": "function", "function": {"name": "nope"}},
            ),
            sample=0,
        )


def test_a_tool_result_is_answered_with_text() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"},
    ]
    choice = plan_chat(chat(messages, tools=[WEATHER_TOOL], temperature=0), sample=0).choices[0]
    assert choice.tool_calls == ()
    assert choice.content == "Based on the context: the tool returned 18 C and sunny"


def test_response_formats_give_json_that_fits() -> None:
    messages = [{"role": "system", "content": CONTEXT}, {"role": "user", "content": "France?"}]
    obj = plan_chat(chat(messages, response_format={"type": "json_object"}), sample=0)
    assert "Paris" in json.loads(str(obj.choices[0].content))["answer"]
    schema = {
        "type": "object",
        "properties": {
            "answer": {"type": "string"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "sources": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["answer", "confidence", "sources"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "A", "schema": schema, "strict": True}}
    value = json.loads(
        str(plan_chat(chat(messages, response_format=fmt), sample=0).choices[0].content)
    )
    assert set(value) == {"answer", "confidence", "sources"}
    assert "Paris" in value["answer"] and value["confidence"] == 1.0
    assert isinstance(value["sources"], list) and len(value["sources"]) == 1


def test_stream_events_carry_the_same_answer_and_usage() -> None:
    request = chat(
        [{"role": "system", "content": CONTEXT}, {"role": "user", "content": "France?"}],
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
    )
    plan = plan_chat(request, sample=0)
    events = stream_events(plan, "chatcmpl-1", created=0)
    assert events[-1] == (b"data: [DONE]\n\n", 0)
    chunks = [json.loads(data[len(b"data: ") :]) for data, _ in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == plan.choices[0].content
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plan.usage()
    assert all(c["usage"] is None for c in chunks[:-1])
    assert sum(tokens for _, tokens in events) == plan.completion_tokens


def test_stream_events_of_a_tool_call() -> None:
    request = chat([{"role": "user", "content": "Paris"}], tools=[WEATHER_TOOL], stream=True)
    plan = plan_chat(request, sample=0)
    chunks = [json.loads(d[6:]) for d, _ in stream_events(plan, "c", created=0)[:-1]]
    first = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert first["function"] == {"name": "get_weather", "arguments": ""} and first["id"]
    args = chunks[1]["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
    assert args == plan.choices[0].tool_calls[0].arguments
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_text_pieces_rebuild_the_text() -> None:
    for text in ["", "one", " two  words ", "a\nb\tc  "]:
        assert "".join(text_pieces(text)) == text


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ([], "JSON object"),
        ({"messages": [{"role": "user", "content": "x"}]}, "'model'"),
        ({"model": "m", "messages": []}, "'messages'"),
        ({"model": "m", "messages": [{"content": "x"}]}, "messages\\[0\\]"),
        ({"model": "m", "messages": [{"role": "user", "content": 3}]}, "content"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
            "temperature",
        ),
        (
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0},
            "max_tokens",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{}]}, "tools"),
    ],
)
def test_bad_chat_requests_are_refused_with_the_field_named(body: Any, needle: str) -> None:
    with pytest.raises(ChatInputError, match=needle):
        ChatRequest.parse(body)


# ---- schemas -----------------------------------------------------------------------------


def test_schema_examples_follow_refs_unions_and_bounds() -> None:
    schema = {
        "type": "object",
        "properties": {
            "when": {"type": "string", "format": "date"},
            "code": {"type": "string", "minLength": 12, "maxLength": 14},
            "maybe": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/Item"}]},
            "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}, "minItems": 2},
            "score": {"type": "number", "exclusiveMinimum": 5},
            "low": {"type": "integer", "exclusiveMaximum": 0},
            "fixed": {"const": "k"},
            "flag": {"type": ["boolean", "null"]},
        },
        "$defs": {
            "Item": {"type": "object", "properties": {"n": {"type": "integer", "default": 4}}}
        },
    }
    value = example_for_schema(schema, text="hello")
    assert value == {
        "when": "2024-01-01",
        "code": "helloxxxxxxx",
        "maybe": {"n": 4},
        "items": [{"n": 4}, {"n": 4}],
        "score": 6.0,
        "low": -1,
        "fixed": "k",
        "flag": True,
    }


def test_provider_url_prefers_the_configured_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    from rag_perf_plugins.simulator import provider_url

    monkeypatch.setenv("RAG_PERF_BASE_URL", "http://provider.invalid/v1")
    with provider_url(latency_ms=5.0) as url:
        assert url == "http://provider.invalid/v1"  # no simulator started for it
    monkeypatch.delenv("RAG_PERF_BASE_URL")
    with provider_url(latency_ms=0.0, seed=1) as url:
        assert url.startswith("http://127.0.0.1:")
        models = httpx.get(url + "/models", timeout=10.0)
        assert models.status_code == 200 and models.json()["data"]
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/models", timeout=2.0)  # stopped with the block


def test_passage_word_sets_are_the_content_words_short_or_long() -> None:
    # The grounded answer scores passages by their word sets; the remembered set of a
    # short passage and the computed one of a long passage are both set(content_words()).
    short = "Paris is the capital of France, and Paris has museums."
    long = " ".join(["Vectors stores keep embeddings of passages."] * 200)
    assert len(long) > chat_module._KEPT_PASSAGE_CHARS
    for passage in (short, short, long):
        assert chat_module._passage_words(passage) == set(content_words(passage))
    messages = [
        Message("system", "Answer from this context.\n\n" + short + "\n\n" + long),
        Message("user", "Question: What is the capital of France?"),
    ]
    first = chat_module.grounded_answer(messages, "Based on the context")
    assert first == chat_module.grounded_answer(messages, "Based on the context")
    assert "Paris is the capital of France" in first
