"""configure_settings() / restore_settings(): wrap Settings' embedding model in place."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from llama_index.core import Settings
from llama_index.core.base.embeddings.base import BaseEmbedding
from rag_perf_plugins.llama_index import PerfEmbedding, configure_settings, restore_settings

from rag_perf_plugins.config import PerformanceConfig
from tests.integrations.llama_index.li_models import CountingEmbedding


@pytest.fixture(autouse=True)
def _clean_settings() -> Iterator[None]:
    saved = Settings._embed_model
    Settings._embed_model = None
    yield
    restore_settings()
    Settings._embed_model = saved


def test_wraps_in_place_and_restores_the_original(counting: CountingEmbedding) -> None:
    Settings.embed_model = counting
    state = configure_settings(PerformanceConfig(enable_caching=False))
    wrapper = Settings.embed_model
    assert isinstance(wrapper, PerfEmbedding)
    assert wrapper is state.embed_model
    assert wrapper.inner is counting
    assert state.original_embed_model is counting
    assert state.llm_wrapped is False
    assert restore_settings() is True
    assert Settings.embed_model is counting
    assert restore_settings() is False


def test_is_idempotent_and_never_wraps_a_wrapper(counting: CountingEmbedding) -> None:
    Settings.embed_model = counting
    config = PerformanceConfig(enable_caching=False)
    first = configure_settings(config).embed_model
    again = configure_settings(config).embed_model
    assert again is first
    other = configure_settings(config.replace(batch_size=7)).embed_model
    assert other is not first and other is not None
    assert other.inner is counting  # re-wrapped the original, not the old wrapper
    assert other.config.batch_size == 7
    assert restore_settings() is True
    assert Settings.embed_model is counting


def test_unset_model_is_not_resolved_even_without_an_api_key(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with caplog.at_level(logging.WARNING):
        state = configure_settings()
    assert state.embed_model is None
    assert Settings._embed_model is None  # LlamaIndex's OpenAI default was not built
    assert "not set" in caplog.text
    assert restore_settings() is False


def test_a_model_set_after_configure_is_left_alone(counting: CountingEmbedding) -> None:
    Settings.embed_model = counting
    configure_settings(PerformanceConfig(enable_caching=False))
    theirs = CountingEmbedding(model_name="theirs")
    Settings.embed_model = theirs
    assert restore_settings() is False
    assert Settings.embed_model is theirs


def test_a_new_model_set_after_configure_is_wrapped_next_time(
    counting: CountingEmbedding,
) -> None:
    Settings.embed_model = counting
    configure_settings(PerformanceConfig(enable_caching=False))
    theirs = CountingEmbedding(model_name="theirs")
    Settings.embed_model = theirs
    state = configure_settings(PerformanceConfig(enable_caching=False))
    assert state.embed_model is not None and state.embed_model.inner is theirs
    assert restore_settings() is True
    assert Settings.embed_model is theirs


def test_a_wrapper_the_user_built_is_kept(counting: CountingEmbedding) -> None:
    mine = PerfEmbedding(counting, PerformanceConfig(enable_caching=False))
    Settings.embed_model = mine
    state = configure_settings()
    assert state.embed_model is mine
    assert Settings.embed_model is mine
    assert restore_settings() is False


def test_the_getter_hands_out_a_base_embedding(counting: CountingEmbedding) -> None:
    Settings.embed_model = counting
    configure_settings(PerformanceConfig(enable_caching=False))
    model = Settings.embed_model
    assert isinstance(model, BaseEmbedding)
    assert model.get_text_embedding("hello") == pytest.approx(counting._get_text_embedding("hello"))
