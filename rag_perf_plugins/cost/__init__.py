"""Dollars: the price table, the cost of each call, and the tenant scope of budgets.

Example::

    from rag_perf_plugins.cost import cost_scope, price_table, register_price

    price_table().chat_cost("gpt-4o-mini", tokens_in=900, tokens_out=120)   # USD
    register_price("my-model", input=1.0, output=2.0, as_of="2026-01-05", source="quote")
    with cost_scope("tenant-42"):
        ...                                   # calls here count against tenant-42's budgets

The tracker records ``cost_usd``, ``cost_saved_usd`` and ``cost_unknown_calls`` per
operation and per model; the admission gate enforces dollar budgets
(``budget_usd_per_minute`` ...); see docs/components/cost.md.
"""

from __future__ import annotations

from .prices import PRICES_SCHEMA, Price, PriceTable, price_table, register_price, unregister_price
from .scope import cost_scope, current_cost_scope

__all__ = [
    "PRICES_SCHEMA",
    "Price",
    "PriceTable",
    "cost_scope",
    "current_cost_scope",
    "price_table",
    "register_price",
    "unregister_price",
]
