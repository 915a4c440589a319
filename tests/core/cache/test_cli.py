"""``rag-perf cache info|clear|verify`` on a real directory with a planted bad row."""

from __future__ import annotations

import pickle
import sqlite3
from pathlib import Path

import pytest

from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.cli import main
from rag_perf_plugins.config import PerformanceConfig


def _fill(cache_dir: Path) -> None:
    manager = CacheManager(PerformanceConfig(cache_dir=str(cache_dir)), tracker=None)
    manager.set("a", "x", namespace="llm", model="gpt")
    manager.set("b", "y", namespace="llm", model="other")
    manager.set_vectors({"v": [0.5, 0.25]}, model="emb")
    manager.bump_namespace("query")
    manager.close()


def _plant(cache_dir: Path) -> None:
    with sqlite3.connect(cache_dir / "000" / "cache.db") as con:
        con.execute(
            "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count,"
            " tag, size, mode, filename, value) VALUES (?, 1, 0, NULL, 0, 0, NULL, 0, 4, NULL, ?)",
            ("llm:1:planted", sqlite3.Binary(pickle.dumps({"evil": True}))),
        )
    con.close()


def test_info_clear_verify(cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(cache_dir)
    assert main(["cache", "info", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "llm" in out and "embeddings" in out and "(versions)" in out and "v1" in out

    assert main(["cache", "verify", str(cache_dir)]) == 0
    assert "4 entries read back, 0 corrupt" in capsys.readouterr().out

    _plant(cache_dir)
    assert main(["cache", "verify", str(cache_dir), "--delete"]) == 1
    out = capsys.readouterr().out
    assert "CORRUPT 'llm:1:planted': refusing a row in mode 4" in out
    assert main(["cache", "verify", str(cache_dir)]) == 0
    capsys.readouterr()

    assert main(["cache", "clear", str(cache_dir), "--model", "gpt"]) == 0
    assert "removed 1 entries (model 'gpt')" in capsys.readouterr().out
    assert main(["cache", "clear", str(cache_dir), "--namespace", "embeddings"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out
    assert main(["cache", "clear", str(cache_dir)]) == 0
    assert "removed 2 entries (everything)" in capsys.readouterr().out
    assert main(["cache", "info", str(cache_dir / "missing")]) == 2


def test_info_takes_a_config_file(
    cache_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAG_PERF_CACHE_DIR")  # the environment would win over the file
    _fill(cache_dir)
    config = tmp_path / "perf.yaml"
    config.write_text(f"cache_dir: {cache_dir}\n")
    assert main(["cache", "info", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"directory: {cache_dir}" in out and "llm" in out
