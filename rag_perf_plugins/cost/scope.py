"""The spending scope of the calls made in a block: ``cost_scope("tenant-42")``.

Example::

    with cost_scope("tenant-42"):
        llm.invoke("What is RAG?")      # counted against tenant-42's dollar budgets
    current_cost_scope()                # None again

The scope (a tenant or user name) is a context variable, so it follows the code into
``await`` and into tasks created inside the block, and never leaks between concurrent
requests. The LangChain wrappers also read ``config={"metadata": {"rag_perf":
{"cost_scope": "tenant-42"}}}`` and the LlamaIndex ones a ``cost_scope="tenant-42"``
keyword; both set this variable for the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["cost_scope", "current_cost_scope"]

_SCOPE: ContextVar[str | None] = ContextVar("rag_perf_cost_scope", default=None)


@contextlib.contextmanager
def cost_scope(name: str | None) -> Iterator[None]:
    """Charge the calls made inside the block to ``name`` (``None``: no tenant scope).

    Raises:
        ValueError: ``name`` is not a non-empty string (or ``None``).
    """
    if name is not None and (not isinstance(name, str) or not name):
        msg = f"cost_scope: the scope must be a non-empty string or None, got {name!r}"
        raise ValueError(msg)
    token = _SCOPE.set(name)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_cost_scope() -> str | None:
    """The scope set by the innermost :func:`cost_scope`, or ``None``."""
    return _SCOPE.get()
