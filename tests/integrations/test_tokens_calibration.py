"""The offline estimate stays close to tiktoken's cl100k_base (shipped by llama-index-core)."""

from __future__ import annotations

import os
from pathlib import Path

import llama_index.core
import pytest

from rag_perf_plugins.tokens import estimate_tokens

ROOT = Path(__file__).resolve().parents[2]


def test_estimate_within_band_of_cl100k(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    tiktoken = pytest.importorskip("tiktoken")
    enc = tiktoken.get_encoding("cl100k_base")
    texts = [p.read_text() for p in sorted((ROOT / "rag_perf_plugins").glob("*.py"))]
    texts += [(ROOT / "README.md").read_text()]
    for text in texts:
        ratio = estimate_tokens(text) / len(enc.encode(text))
        assert 0.85 <= ratio <= 1.35, ratio
    assert os.environ["TIKTOKEN_CACHE_DIR"] == str(cache)
