"""A wrapped LLM whose fields change after wrapping asks the provider again (both frameworks).

The identity of the inner model is taken at wrapping and watched on every call
(rag_perf_plugins.services.identity.IdentityGuard): a changed field, even one nested in a
dict the caller shares with the wrapper, re-keys the next call instead of serving the
answer the old settings produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_index.core.llms import ChatMessage
from llama_index.llms.openai import OpenAI
from rag_perf_plugins.langchain import PerfChatModel, pooled_chat_openai
from rag_perf_plugins.llama_index import wrap_llm

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator


def _chat_requests(sim: Simulator) -> int:
    by_endpoint: dict[str, int] = sim.stats()["requests_by_endpoint"]
    return sum(n for path, n in by_endpoint.items() if path.endswith("/chat/completions"))


def _config(tmp_path: Path) -> PerformanceConfig:
    return PerformanceConfig(cache_dir=str(tmp_path / "cache"), enable_metrics=False)


def test_langchain_chat_model_rekeys_after_a_change(simulator: Simulator, tmp_path: Path) -> None:
    inner = pooled_chat_openai(
        base_url=simulator.base_url, model="gpt-4o-mini", api_key="sk-test", temperature=0.0,
        model_kwargs={"user": "alice"},
    )  # fmt: skip
    llm = PerfChatModel(inner, _config(tmp_path))
    llm.invoke("hi")
    llm.invoke("hi")
    assert _chat_requests(simulator) == 1
    inner.model_kwargs["user"] = "bob"  # a dict the wrapper's copy shares with `inner`
    llm.invoke("hi")
    assert _chat_requests(simulator) == 2
    wrapped_copy: Any = llm.inner  # the wrapper's own copy of the model
    wrapped_copy.max_tokens = 7
    llm.invoke("hi")
    llm.invoke("hi")
    assert _chat_requests(simulator) == 3


def test_llama_index_llm_rekeys_after_a_change(simulator: Simulator, tmp_path: Path) -> None:
    inner = OpenAI(
        model="gpt-4o-mini", api_base=simulator.base_url, api_key="sk-test", max_retries=0,
        temperature=0.0,
    )  # fmt: skip
    llm = wrap_llm(inner, _config(tmp_path))
    messages = [ChatMessage(role="user", content="hi")]
    llm.chat(messages)
    llm.chat(messages)
    assert _chat_requests(simulator) == 1
    inner.max_tokens = 5
    llm.chat(messages)
    llm.chat(messages)
    assert _chat_requests(simulator) == 2
    inner.additional_kwargs["top_p"] = 0.5
    llm.chat(messages)
    assert _chat_requests(simulator) == 3
