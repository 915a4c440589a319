"""Fixtures of the LlamaIndex adapter tests."""

from __future__ import annotations

import pytest

from tests.integrations.llama_index.li_models import CountingEmbedding


@pytest.fixture
def counting() -> CountingEmbedding:
    return CountingEmbedding(model_name="counting-8", dim=8)
