"""Per-call cache control, carried by a context variable.

Example::

    with cache_control(mode="refresh", ttl=60.0):
        answer = chain.invoke(question)     # recompute and overwrite, keep for 60 s

    with cache_control(mode="bypass"):
        answer = await chain.ainvoke(question)   # neither read nor write the cache

Modes:

- ``"default"``: read, and write on a miss.
- ``"bypass"``: neither read nor write.
- ``"refresh"``: do not read; compute and overwrite.
- ``"no-store"``: read; on a miss compute but do not write.

``ttl`` (seconds) overrides the TTL of entries written inside the block.

``semantic`` (``True``/``False``; ``None``: the ``semantic_cache`` config key) turns the
semantic LLM cache on or off for calls inside the block (see
:mod:`rag_perf_plugins.cache.semantic`). ``scope`` (a tenant or user id) partitions the LLM
cache: with a scope, exact and semantic LLM entries are shared only by calls of the same
scope. :func:`cache_scope` sets the scope alone. A nested :func:`cache_control` keeps the
outer block's ``semantic`` and ``scope`` unless it sets them::

    with cache_scope("tenant-42"), cache_control(semantic=True):
        answer = llm.invoke("How do I reset my password?")   # may match a paraphrase of tenant-42

The setting lives in a :class:`contextvars.ContextVar`, so it follows ``await``, tasks
created inside the block, ``asyncio.to_thread`` and ``loop.run_in_executor`` with a copied
context. A plain ``threading.Thread`` started inside the block does not see it (Python
does not copy contexts into new threads); run its target with ``contextvars.copy_context().run``.
Adapters map LangChain ``config={"metadata": {"rag_perf_cache": "bypass"}}`` and
LlamaIndex kwargs onto :func:`cache_control` with :func:`parse_control`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "CacheControl",
    "CacheMode",
    "applied",
    "cache_control",
    "cache_scope",
    "current_control",
    "parse_control",
]

CacheMode = Literal["default", "bypass", "refresh", "no-store"]
_MODES: Final = ("default", "bypass", "refresh", "no-store")


@dataclass(frozen=True, slots=True)
class CacheControl:
    """The effective per-call settings; see the module docstring for the modes."""

    mode: CacheMode = "default"
    ttl: float | None = None
    semantic: bool | None = None
    scope: str | None = None

    @property
    def read(self) -> bool:
        """Whether lookups may be answered from the cache."""
        return self.mode in ("default", "no-store")

    @property
    def write(self) -> bool:
        """Whether computed values may be stored."""
        return self.mode in ("default", "refresh")


DEFAULT_CONTROL: Final = CacheControl()
_CONTROL: ContextVar[CacheControl] = ContextVar("rag_perf_cache_control", default=DEFAULT_CONTROL)


def current_control() -> CacheControl:
    """The control in effect here: ``current_control().mode``."""
    return _CONTROL.get()


def _check(mode: str, ttl: float | None, semantic: Any = None, scope: Any = None) -> CacheControl:
    if mode not in _MODES:
        msg = f"mode must be one of {', '.join(_MODES)}; got {mode!r}"
        raise ValueError(msg)
    if ttl is not None and not ttl > 0:
        msg = f"ttl must be > 0 seconds or None, got {ttl!r}"
        raise ValueError(msg)
    if semantic is not None and not isinstance(semantic, bool):
        msg = f"semantic must be true, false or None, got {semantic!r}"
        raise ValueError(msg)
    if scope is not None and (not isinstance(scope, str) or not scope):
        msg = f"scope must be a non-empty str (a tenant or user id) or None, got {scope!r}"
        raise ValueError(msg)
    outer = _CONTROL.get()
    return CacheControl(
        mode,  # type: ignore[arg-type]
        None if ttl is None else float(ttl),
        outer.semantic if semantic is None else semantic,
        outer.scope if scope is None else scope,
    )


@contextlib.contextmanager
def cache_control(
    mode: CacheMode = "default",
    *,
    ttl: float | None = None,
    semantic: bool | None = None,
    scope: str | None = None,
) -> Iterator[CacheControl]:
    """Apply ``mode``, ``ttl`` (seconds), ``semantic`` and ``scope`` inside the block; blocks nest.

    ``semantic`` and ``scope`` left at ``None`` keep the enclosing block's.
    """
    token = _CONTROL.set(_check(mode, ttl, semantic, scope))
    try:
        yield _CONTROL.get()
    finally:
        _CONTROL.reset(token)


@contextlib.contextmanager
def cache_scope(scope: str) -> Iterator[CacheControl]:
    """Partition the LLM cache by ``scope`` (a tenant or user id) inside the block.

    Example: ``with cache_scope("tenant-42"): llm.invoke(q)`` — exact and semantic LLM
    entries written here answer only calls made under ``cache_scope("tenant-42")``. The
    other settings of the enclosing :func:`cache_control` stay.
    """
    outer = _CONTROL.get()
    token = _CONTROL.set(_check(outer.mode, outer.ttl, outer.semantic, scope))
    try:
        yield _CONTROL.get()
    finally:
        _CONTROL.reset(token)


def parse_control(options: Mapping[str, Any] | str | None) -> CacheControl | None:
    """Read a control from adapter options: ``"bypass"`` or ``{"mode": "refresh", "ttl": 60}``.

    Also ``{"semantic": True, "scope": "tenant-42"}``. ``semantic`` and ``scope`` not given
    keep those of the :func:`cache_control` / :func:`cache_scope` in effect. Returns
    ``None`` for ``None``; raises ``ValueError`` naming the bad option and what is allowed.
    """
    if options is None:
        return None
    if isinstance(options, str):
        return _check(options, None)
    unknown = set(options) - {"mode", "ttl", "semantic", "scope"}
    if unknown:
        msg = (
            f"unknown cache control option(s) {sorted(unknown)}; "
            "allowed: mode, ttl, semantic, scope"
        )
        raise ValueError(msg)
    return _check(
        str(options.get("mode", "default")),
        options.get("ttl"),
        options.get("semantic"),
        options.get("scope"),
    )


class _Applied:
    """The context manager :func:`applied` returns (a class: no generator frame per use)."""

    __slots__ = ("_control", "_token")

    def __init__(self, control: CacheControl | None) -> None:
        self._control = control
        self._token: contextvars.Token[CacheControl] | None = None

    def __enter__(self) -> None:
        control = self._control
        # Already in effect (every cache read of a call that set none): nothing to set.
        if control is not None and control is not _CONTROL.get():
            self._token = _CONTROL.set(control)

    def __exit__(self, *exc: object) -> None:
        token = self._token
        if token is not None:
            self._token = None
            _CONTROL.reset(token)


def applied(control: CacheControl | None) -> contextlib.AbstractContextManager[None]:
    """Enter ``control`` if given (adapters use this with :func:`parse_control`).

    Example: ``with applied(parse_control("bypass")): cache.get(key)``; ``None`` or the
    control already in effect changes nothing.
    """
    return _Applied(control)
