"""Keys: canonical, versioned, complete (must-miss) and blind to non-output params."""

from __future__ import annotations

from typing import Any

import pytest

from rag_perf_plugins.cache import (
    assert_key_complete,
    assert_key_ignores,
    canonical_json,
    embedding_fields,
    embedding_key,
    explain_key,
    is_sampled,
    llm_key,
    query_key,
    retrieval_key,
)

EMB: dict[str, Any] = {
    "provider": "openai",
    "model": "text-embedding-3-small",
    "dimensions": 384,
    "role": "document",
    "text": "What is RAG?",
}
LLM: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hi"}],
    "params": {"temperature": 0.0, "max_tokens": 256, "top_p": 1.0, "timeout": 30},
    "tools": [{"type": "function", "function": {"name": "search"}}],
    "seed": 1,
}


def test_embedding_keys_must_miss() -> None:
    assert_key_complete(
        embedding_key,
        EMB,
        {
            "provider": ["azure"],
            "model": ["text-embedding-3-large"],
            "dimensions": [256, None],
            "role": ["query"],
            "text": ["What is RAG? ", "what is rag?"],
        },
    )


def test_llm_keys_must_miss() -> None:
    assert_key_complete(
        llm_key,
        LLM,
        {
            "model": ["gpt-4o"],
            "messages": [[{"role": "user", "content": "hi!"}]],
            "params.temperature": [0.7],
            "params.max_tokens": [255],
            "params.top_p": [0.9],
            "params.stop": [["\n"]],
            "params.frequency_penalty": [0.1],
            "params.logit_bias": [{"50256": -100}],
            "tools": [[], None, [{"type": "function", "function": {"name": "lookup"}}]],
            "tool_choice": ["required"],
            "response_format": [{"type": "json_object"}],
            "seed": [2, None],
        },
    )


def test_llm_keys_ignore_timeouts_and_retries() -> None:
    assert_key_ignores(
        llm_key,
        LLM,
        {
            "params.timeout": [5, None],
            "params.request_timeout": [120],
            "params.max_retries": [0, 6],
            "params.stream": [True],
            "params.api_key": ["sk-other"],
        },
    )
    explained = explain_key(
        "llm", {"model": "m", "params": {"temperature": 0}}, excluded=["timeout"]
    )
    assert "excluded (do not change output): timeout" in str(explained)


def test_helper_catches_an_incomplete_key() -> None:
    def bad_key(*, model: str, text: str, dimensions: int) -> str:
        return embedding_key(provider="p", model=model, dimensions=None, role="document", text=text)

    with pytest.raises(AssertionError, match="'dimensions'"):
        assert_key_complete(
            bad_key, {"model": "m", "text": "t", "dimensions": 384}, {"dimensions": [256]}
        )


def test_canonical_form() -> None:
    assert canonical_json({"b": 1, "a": 2.0, "c": [True, None]}) == '{"a":2,"b":1,"c":[true,null]}'
    assert canonical_json({"t": 1}) == canonical_json({"t": 1.0})
    assert canonical_json({"t": True}) != canonical_json({"t": 1})
    with pytest.raises(TypeError, match=r"key\.x: a set cannot be part of a cache key"):
        canonical_json({"x": {1, 2}})
    with pytest.raises(TypeError, match="nan"):
        canonical_json({"x": float("nan")})
    key = embedding_key(**EMB)
    assert key.startswith("emb:v1:") and len(key) == len("emb:v1:") + 40
    assert explain_key("emb", embedding_fields(**EMB)).key == key


def test_other_keys_and_policy() -> None:
    base = retrieval_key(store="chroma/docs", store_version=3, query="q", k=4)
    assert base != retrieval_key(store="chroma/docs", store_version=4, query="q", k=4)
    assert base != retrieval_key(store="chroma/docs", store_version=3, query="q", k=5)
    assert base != retrieval_key(
        store="chroma/docs", store_version=3, query="q", k=4, filters={"lang": "en"}
    )
    assert query_key(pipeline="rag@1", query="q") != query_key(pipeline="rag@2", query="q")
    assert is_sampled({"temperature": 0.7})
    assert is_sampled({})
    assert not is_sampled({"temperature": 0.7, "seed": 3})
    assert not is_sampled({"temperature": 0})
    with pytest.raises(ValueError, match="role must be"):
        embedding_key(**{**EMB, "role": "passage"})
