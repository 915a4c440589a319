"""The price table: the shipped file, price files, register_price, lookups and rag-perf prices."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag_perf_plugins.cli import main
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.cost import Price, PriceTable, price_table, register_price, unregister_price
from rag_perf_plugins.cost import prices as prices_module
from rag_perf_plugins.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    prices_module._WARNED.clear()
    yield
    for model in list(prices_module._REGISTERED):
        unregister_price(model)


def write(tmp_path: Path, models: object, schema: str = "rag-perf-prices/1") -> str:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"schema": schema, "models": models}))
    return str(path)


def test_every_shipped_entry_has_a_date_and_a_source() -> None:
    table = price_table(PerformanceConfig())
    assert "gpt-4o-mini" in table.models() and "text-embedding-3-small" in table.models()
    for model in table.models():
        price = table.get(model)
        assert price is not None and price.as_of[:2] == "20" and price.source.startswith("https://")


def test_chat_cost_prices_cached_input_and_reasoning_at_their_own_rates() -> None:
    price = Price("m", input=2.0, cached_input=0.5, cache_write=2.5, output=8.0, reasoning=10.0)
    # 1000 in (600 cached, 100 written), 300 out (200 reasoning), USD per 1M tokens:
    cost = price.chat_cost(1000, 300, cached_in=600, reasoning=200, cache_write=100)
    assert cost == pytest.approx((300 * 2.0 + 600 * 0.5 + 100 * 2.5 + 100 * 8.0 + 200 * 10.0) / 1e6)
    # Defaults: cached and written input at the input price, reasoning at the output price.
    plain = Price("m", input=2.0, output=8.0)
    assert plain.chat_cost(1000, 300, cached_in=600, reasoning=200) == pytest.approx(
        (1000 * 2.0 + 300 * 8.0) / 1e6
    )
    assert Price("e", embedding=0.02).chat_cost(10, 10) is None
    assert Price("e", embedding=0.02).embedding_cost(1_000_000) == pytest.approx(0.02)


def test_lookup_falls_back_to_the_undated_name_and_drops_a_provider_prefix() -> None:
    table = price_table(PerformanceConfig())
    assert table.get("gpt-4o-mini-2024-07-18") is table.get("gpt-4o-mini") is not None
    assert table.get("claude-sonnet-4-5-20250929") is table.get("claude-sonnet-4-5") is not None
    assert table.get("openai/gpt-4o") is table.get("gpt-4o") is not None
    assert table.get("gpt-4o-mini-turbo") is None


def test_a_price_file_adds_and_replaces_whole_entries(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "gpt-4o-mini": {"input": 1.0, "output": 2.0, "as_of": "2026-12-01", "source": "quote"},
            "ours": {"embedding": 0.5, "as_of": "2026-12-01", "source": "quote"},
        },
    )
    table = price_table(PerformanceConfig(price_table_path=path))
    replaced = table.get("gpt-4o-mini")
    assert replaced is not None and replaced.cached_input is None  # the whole entry replaced
    assert table.chat_cost("gpt-4o-mini", 1000, 1000, cached_in=500) == pytest.approx(3e-3)
    assert table.embedding_cost("ours", 2_000_000) == pytest.approx(1.0)
    assert table.get("gpt-4o") is not None  # the shipped entries stay
    assert price_table(PerformanceConfig()).chat_cost("gpt-4o-mini", 1000, 0) == pytest.approx(
        1.5e-4
    )


@pytest.mark.parametrize(
    ("models", "named"),
    [
        ({"m": {"input": -1, "output": 1, "as_of": "d", "source": "s"}}, "models.m.input"),
        ({"m": {"input": "1", "output": 1, "as_of": "d", "source": "s"}}, "models.m.input"),
        ({"m": {"input": 1, "output": 1, "as_of": "d"}}, "source is missing"),
        ({"m": {"input": 1, "as_of": "d", "source": "s"}}, "needs both input and output"),
        ({"m": {"inptu": 1, "output": 1, "as_of": "d", "source": "s"}}, "models.m.inptu"),
        ({"m": {"as_of": "d", "source": "s"}}, "no price"),
        ({"m": [1, 2]}, "models.m must be a mapping"),
    ],
)
def test_a_bad_price_file_names_the_model_and_field(
    tmp_path: Path, models: object, named: str
) -> None:
    path = write(tmp_path, models)
    with pytest.raises(ConfigError, match=named) as info:
        PriceTable.from_file(path)
    assert info.value.key == "price_table_path" and path in str(info.value)


def test_missing_file_and_wrong_schema(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        PriceTable.from_file(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="schema 'other/2' is not supported"):
        PriceTable.from_file(write(tmp_path, {}, schema="other/2"))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="is not JSON"):
        PriceTable.from_file(tmp_path / "bad.json")


def test_register_price_wins_over_every_table_and_unregister_restores() -> None:
    table = price_table(PerformanceConfig())
    before = table.chat_cost("gpt-4o-mini", 1_000_000, 0)
    register_price("gpt-4o-mini", input=9.0, output=9.0, as_of="2026-12-01", source="test")
    assert table.chat_cost("gpt-4o-mini", 1_000_000, 0) == pytest.approx(9.0)
    unregister_price("gpt-4o-mini")
    assert table.chat_cost("gpt-4o-mini", 1_000_000, 0) == before
    with pytest.raises(ConfigError, match=r"register_price: models\.x\.output"):
        register_price("x", input=1.0, output=-2.0, as_of="d", source="s")


def test_unknown_model_is_none_and_warned_once(caplog: pytest.LogCaptureFixture) -> None:
    table = price_table(PerformanceConfig())
    with caplog.at_level(logging.WARNING, logger="rag_perf_plugins.cost"):
        assert table.chat_cost("no-such-model", 10, 10) is None
        assert table.chat_cost("no-such-model", 20, 20) is None
        assert table.embedding_cost("gpt-4o-mini", 10) is None  # a chat model: no embedding price
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no-such-model" in m for m in messages) == 1
    assert sum("no embedding price for model 'gpt-4o-mini'" in m for m in messages) == 1


def test_rag_perf_prices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"ours": {"embedding": 0.5, "as_of": "2026-12-01", "source": "q"}})
    config = tmp_path / "perf.yaml"
    config.write_text(f"price_table_path: {path}\n")
    assert main(["prices", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "ours" in out and "gpt-4o-mini" in out and "2026-12-01" in out
    assert main(["prices", "gpt-4o-mini-2024-07-18", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["gpt-4o-mini"]["input"] == 0.15
    assert main(["prices", "no-such-model"]) == 1
    assert "cost unknown" in capsys.readouterr().out
