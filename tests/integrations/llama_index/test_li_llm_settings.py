"""configure_settings() also wraps Settings.llm (never resolving the default); handlers."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from llama_index.core import Settings
from llama_index.core.llms import MockLLM
from llama_index_instrumentation import get_dispatcher
from rag_perf_plugins.llama_index import (
    PerfFunctionCallingLLM,
    PerfLLM,
    PerfSpanHandler,
    configure_settings,
    pooled_openai_llm,
    restore_settings,
    wrap_llm,
)

from rag_perf_plugins.config import PerformanceConfig


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    saved = (Settings._llm, Settings._embed_model)
    Settings._llm, Settings._embed_model = None, None
    yield
    restore_settings()
    Settings._llm, Settings._embed_model = saved


def _ours_installed() -> bool:
    return any(isinstance(h, PerfSpanHandler) for h in get_dispatcher().span_handlers)


def test_wraps_the_llm_in_place_and_restores_it() -> None:
    inner = MockLLM()
    Settings.llm = inner
    state = configure_settings(PerformanceConfig(enable_caching=False))
    assert isinstance(Settings.llm, PerfLLM)
    assert Settings.llm is state.llm
    assert state.original_llm is inner
    assert state.llm_wrapped
    assert state.instrumentation is not None and _ours_installed()
    assert configure_settings(PerformanceConfig(enable_caching=False)).llm is state.llm
    assert restore_settings() is True
    assert Settings.llm is inner
    assert not _ours_installed()


def test_a_function_calling_llm_stays_one() -> None:
    Settings.llm = pooled_openai_llm(api_base="http://127.0.0.1:9/v1", api_key="sk-test")
    configure_settings(PerformanceConfig(enable_caching=False))
    assert isinstance(Settings.llm, PerfFunctionCallingLLM)
    assert Settings.llm.metadata.is_function_calling_model


def test_unset_llm_is_not_resolved(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        state = configure_settings(PerformanceConfig(enable_caching=False))
    assert state.llm is None and not state.llm_wrapped
    assert Settings._llm is None  # the OpenAI default was never built
    assert "Settings.llm is not set" in caplog.text


def test_a_wrapper_the_user_built_is_kept_and_metrics_off_installs_nothing() -> None:
    mine = wrap_llm(MockLLM(), PerformanceConfig(enable_caching=False))
    Settings.llm = mine
    state = configure_settings(PerformanceConfig(enable_caching=False, enable_metrics=False))
    assert state.llm is mine and Settings.llm is mine
    assert state.instrumentation is None and not _ours_installed()
    assert restore_settings() is False
