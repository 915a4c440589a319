"""The price table: dollars per million tokens for each model, and the cost of one call.

Example::

    table = price_table()                                 # the shipped table, loaded once
    table.get("gpt-4o-mini").input                        # 0.15 (USD per 1M input tokens)
    table.chat_cost("gpt-4o-mini", tokens_in=1200, tokens_out=80, cached_in=1024)
    # 1.3824e-04 (USD): 176 input tokens at 0.15, 1,024 cached at 0.075, 80 output at 0.60
    register_price("my-model", input=1.0, output=2.0, as_of="2026-01-05", source="contract")
    price_table(PerformanceConfig(price_table_path="prices.json"))   # shipped + that file

The shipped table is ``rag_perf_plugins/cost/prices.json``; a price file named by the
``price_table_path`` setting has the same format and adds or replaces whole entries, and
:func:`register_price` adds or replaces entries for the whole process (on top of both).
Prices are USD per 1,000,000 tokens; every entry carries the date its prices were taken
(``as_of``) and where (``source``). A model missing from every table has cost *unknown*:
:meth:`PriceTable.chat_cost` returns ``None``, the call is counted as unknown in the
tracker and one warning is logged per model, never a silent $0.

How a chat call is priced (OpenAI and Anthropic report cached and reasoning tokens inside
the input and output counts): ``(in - cached - cache_write) x input + cached x cached_input
+ cache_write x cache_write + (out - reasoning) x output + reasoning x reasoning``, each
price defaulting to ``input`` (cached, cache write) or ``output`` (reasoning) when the
entry does not give it. An embedding call is ``tokens x embedding``.

Does not: fetch prices from the network, price images or audio, or know tiered prices
(long-context surcharges, batch discounts): put the price you pay in a price file.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any, Final

from ..config import PerformanceConfig, resolve_config
from ..errors import ConfigError

__all__ = [
    "PRICES_SCHEMA",
    "Price",
    "PriceTable",
    "price_table",
    "register_price",
    "unregister_price",
]

log = logging.getLogger("rag_perf_plugins.cost")

PRICES_SCHEMA: Final = "rag-perf-prices/1"
_PER: Final = 1_000_000.0  # prices are per million tokens
_RATES: Final = ("input", "cached_input", "cache_write", "output", "reasoning", "embedding")
_DATED: Final = re.compile(r"-(\d{4}-\d{2}-\d{2}|20\d{6})$")  # OpenAI's and Anthropic's


@dataclass(frozen=True, slots=True)
class Price:
    """The prices of one model, USD per 1,000,000 tokens.

    Example: ``Price("gpt-4o-mini", input=0.15, cached_input=0.075, output=0.6,
    as_of="2025-06-01", source="https://openai.com/api/pricing/")``.

    ``cached_input`` and ``cache_write`` default to ``input``, ``reasoning`` to ``output``
    (``None`` here means "the default", see the ``effective_*`` properties).
    ``max_output_tokens`` is the model's output limit (tokens): the budget reservation of a
    chat call that sets no ``max_tokens``.
    """

    model: str
    input: float | None = None
    cached_input: float | None = None
    cache_write: float | None = None
    output: float | None = None
    reasoning: float | None = None
    embedding: float | None = None
    max_output_tokens: int | None = None
    as_of: str = ""
    source: str = ""

    def chat_cost(
        self,
        tokens_in: int,
        tokens_out: int,
        *,
        cached_in: int = 0,
        reasoning: int = 0,
        cache_write: int = 0,
    ) -> float | None:
        """USD of one chat call from its usage; ``None`` when this entry has no chat prices."""
        if self.input is None or self.output is None:
            return None
        cached_in = min(max(cached_in, 0), tokens_in)
        cache_write = min(max(cache_write, 0), tokens_in - cached_in)
        reasoning = min(max(reasoning, 0), tokens_out)
        plain_in = tokens_in - cached_in - cache_write
        cached_rate = self.input if self.cached_input is None else self.cached_input
        write_rate = self.input if self.cache_write is None else self.cache_write
        reasoning_rate = self.output if self.reasoning is None else self.reasoning
        return (
            plain_in * self.input
            + cached_in * cached_rate
            + cache_write * write_rate
            + (tokens_out - reasoning) * self.output
            + reasoning * reasoning_rate
        ) / _PER

    def embedding_cost(self, tokens: int) -> float | None:
        """USD of embedding ``tokens`` tokens; ``None`` when this entry has no embedding price."""
        rate = self.embedding if self.embedding is not None else None
        return None if rate is None else tokens * rate / _PER

    def to_dict(self) -> dict[str, Any]:
        """The entry as written in a price file (fields left at ``None`` omitted)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return {k: v for k, v in out.items() if v is not None and v != ""}


def _entry(model: str, raw: Any, where: str) -> Price:
    """One checked entry of a price file; the error names the file, the model and the field."""
    if not isinstance(raw, Mapping):
        msg = f"{where}: models.{model} must be a mapping of prices, got {type(raw).__name__}"
        raise ConfigError(msg, key="price_table_path", value=model)
    allowed = (*_RATES, "max_output_tokens", "as_of", "source")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in allowed:
            msg = f"{where}: models.{model}.{name}: unknown field; allowed: {', '.join(allowed)}"
            raise ConfigError(msg, key="price_table_path", value=name)
        if name in _RATES:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0:
                msg = (
                    f"{where}: models.{model}.{name}: {value!r} is not a price; allowed: a "
                    "number >= 0 (USD per 1,000,000 tokens)"
                )
                raise ConfigError(msg, key="price_table_path", value=value)
            values[name] = float(value)
        elif name == "max_output_tokens":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = (
                    f"{where}: models.{model}.max_output_tokens: {value!r}; allowed: an "
                    "integer >= 1 (tokens)"
                )
                raise ConfigError(msg, key="price_table_path", value=value)
            values[name] = value
        else:
            if not isinstance(value, str) or not value:
                msg = f"{where}: models.{model}.{name}: {value!r}; allowed: a non-empty string"
                raise ConfigError(msg, key="price_table_path", value=value)
            values[name] = value
    for needed in ("as_of", "source"):
        if needed not in values:
            msg = (
                f"{where}: models.{model}: {needed} is missing (the date and origin of the prices)"
            )
            raise ConfigError(msg, key="price_table_path", value=model)
    if not any(rate in values for rate in ("input", "output", "embedding")):
        msg = f"{where}: models.{model}: no price; give input and output, or embedding"
        raise ConfigError(msg, key="price_table_path", value=model)
    if ("input" in values) != ("output" in values):
        msg = f"{where}: models.{model}: a chat price needs both input and output"
        raise ConfigError(msg, key="price_table_path", value=model)
    return Price(model, **values)


def _parse(data: Any, where: str) -> dict[str, Price]:
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
        msg = f'{where}: a price file is a JSON object with "models": {{name: prices}}'
        raise ConfigError(msg, key="price_table_path")
    schema = data.get("schema", PRICES_SCHEMA)
    if schema != PRICES_SCHEMA:
        msg = f"{where}: schema {schema!r} is not supported; allowed: {PRICES_SCHEMA!r}"
        raise ConfigError(msg, key="price_table_path", value=schema)
    return {str(m): _entry(str(m), raw, where) for m, raw in data["models"].items()}


class PriceTable:
    """Prices by model: the shipped table, a user's price file, and registered entries.

    Example::

        table = price_table()
        table.get("gpt-4o-mini")                         # a Price, or None
        table.chat_cost("gpt-4o-mini", 900, 120)         # USD, or None when unknown
        table.embedding_cost("text-embedding-3-small", 512)

    Lookups try the exact model name, then the name without a trailing date
    (``gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``, ``claude-sonnet-4-5-20250929`` ->
    ``claude-sonnet-4-5``) and without a ``provider/`` prefix.
    Entries registered with :func:`register_price` win over the files, for every table
    (they are read at each lookup). An unknown model is warned about once per process.
    """

    __slots__ = ("entries", "path")

    def __init__(self, entries: Mapping[str, Price], *, path: str | None = None) -> None:
        self.entries: dict[str, Price] = dict(entries)
        self.path = path

    @classmethod
    def from_file(cls, path: str | Path) -> PriceTable:
        """A table of one price file (JSON, the shipped table's format).

        Raises:
            ConfigError: the file is missing, not JSON, or an entry is malformed (the
                message names the file, the model and the field).
        """
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            msg = f"price_table_path: cannot read {where} ({exc.strerror or exc})"
            raise ConfigError(msg, key="price_table_path", value=where) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            msg = f"price_table_path: {where} is not JSON ({exc})"
            raise ConfigError(msg, key="price_table_path", value=where) from None
        return cls(_parse(data, where), path=where)

    def merged(self, other: PriceTable) -> PriceTable:
        """This table with ``other``'s entries added or replacing these (whole entries)."""
        return PriceTable({**self.entries, **other.entries}, path=other.path or self.path)

    def get(self, model: str) -> Price | None:
        """The price of ``model`` (registered entries first), or ``None`` when unknown."""
        registered = _REGISTERED
        for name in _candidates(model):
            found = registered.get(name) or self.entries.get(name)
            if found is not None:
                return found
        return None

    def models(self) -> list[str]:
        """Every model with a price (files and registered entries), sorted."""
        return sorted({*self.entries, *_REGISTERED})

    def chat_cost(
        self,
        model: str,
        tokens_in: int,
        tokens_out: int,
        *,
        cached_in: int = 0,
        reasoning: int = 0,
        cache_write: int = 0,
    ) -> float | None:
        """USD of one chat call; ``None`` (and one warning per model) when unknown."""
        price = self.get(model)
        cost = (
            None
            if price is None
            else price.chat_cost(
                tokens_in,
                tokens_out,
                cached_in=cached_in,
                reasoning=reasoning,
                cache_write=cache_write,
            )
        )
        if cost is None:
            _warn_unknown(model, "chat")
        return cost

    def embedding_cost(self, model: str, tokens: int) -> float | None:
        """USD of embedding ``tokens`` tokens; ``None`` (and one warning) when unknown."""
        price = self.get(model)
        cost = None if price is None else price.embedding_cost(tokens)
        if cost is None:
            _warn_unknown(model, "embedding")
        return cost

    def __repr__(self) -> str:
        where = f" + {self.path}" if self.path else ""
        return f"<PriceTable [models: {len(self.entries)}, registered: {len(_REGISTERED)}]{where}>"


@functools.lru_cache(maxsize=64)
def _candidates(model: str) -> tuple[str, ...]:
    names = [model]
    if "/" in model:
        names.append(model.rsplit("/", 1)[1])
    for name in list(names):
        undated = _DATED.sub("", name)
        if undated != name:
            names.append(undated)
    return tuple(names)


_REGISTERED: dict[str, Price] = {}
_LOCK = threading.Lock()
_WARNED: set[tuple[str, str]] = set()
_GENERATION = [0]  # bumped by every register_price/unregister_price


def registered_generation() -> int:
    """A number that changes whenever :func:`register_price` or :func:`unregister_price` runs.

    Example: a component that remembers a looked-up price looks it up again when
    ``registered_generation()`` differs from the one it saw then (a price file never
    changes under a :class:`PriceTable`).
    """
    return _GENERATION[0]


def _warn_unknown(model: str, kind: str) -> None:
    if (model, kind) in _WARNED:
        return
    with _LOCK:
        if (model, kind) in _WARNED:
            return
        _WARNED.add((model, kind))
    log.warning(
        "no %s price for model %r: its calls are counted as cost unknown (add it with "
        "register_price() or a price file named by price_table_path; see rag-perf prices)",
        kind,
        model,
    )


def register_price(
    model: str,
    *,
    input: float | None = None,
    cached_input: float | None = None,
    cache_write: float | None = None,
    output: float | None = None,
    reasoning: float | None = None,
    embedding: float | None = None,
    max_output_tokens: int | None = None,
    as_of: str,
    source: str,
) -> Price:
    """Add or replace the price of ``model`` for this process (USD per 1,000,000 tokens).

    Example: ``register_price("ft:gpt-4o-mini:acme", input=0.3, cached_input=0.15,
    output=1.2, as_of="2026-01-05", source="our contract")``.

    Checked like a price-file entry. Returns the entry; :func:`unregister_price` removes it.

    Raises:
        ConfigError: a price is negative or not a number, chat prices lack input or output,
            or ``as_of``/``source`` is empty.
    """
    raw = {
        "input": input,
        "cached_input": cached_input,
        "cache_write": cache_write,
        "output": output,
        "reasoning": reasoning,
        "embedding": embedding,
        "max_output_tokens": max_output_tokens,
        "as_of": as_of,
        "source": source,
    }
    price = _entry(model, {k: v for k, v in raw.items() if v is not None}, "register_price")
    with _LOCK:
        _REGISTERED[model] = price
        _WARNED.difference_update({(model, "chat"), (model, "embedding")})
        _GENERATION[0] += 1
    return price


def unregister_price(model: str) -> None:
    """Remove a price added with :func:`register_price` (no error when there is none)."""
    with _LOCK:
        _REGISTERED.pop(model, None)
        _GENERATION[0] += 1


@functools.lru_cache(maxsize=1)
def _shipped() -> PriceTable:
    text = resources.files(__package__).joinpath("prices.json").read_text(encoding="utf-8")
    return PriceTable(_parse(json.loads(text), "rag_perf_plugins/cost/prices.json"))


@functools.lru_cache(maxsize=16)
def _with_file(path: str) -> PriceTable:
    return _shipped().merged(PriceTable.from_file(path))


def price_table(config: PerformanceConfig | None = None) -> PriceTable:
    """The prices a component uses: the shipped table, plus ``price_table_path`` if set.

    Example: ``price_table().get("gpt-4o")``. Each file is read once per process.
    ``None``: ``PerformanceConfig.load()``.

    Raises:
        ConfigError: the price file cannot be read or holds a malformed entry.
    """
    path = resolve_config(config).price_table_path
    return _with_file(path) if path else _shipped()
