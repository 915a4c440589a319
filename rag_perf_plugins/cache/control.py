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


def _check(mode: str, ttl: float | None) -> CacheControl:
    if mode not in _MODES:
        msg = f"mode must be one of {', '.join(_MODES)}; got {mode!r}"
        raise ValueError(msg)
    if ttl is not None and not ttl > 0:
        msg = f"ttl must be > 0 seconds or None, got {ttl!r}"
        raise ValueError(msg)
    return CacheControl(mode, None if ttl is None else float(ttl))  # type: ignore[arg-type]


@contextlib.contextmanager
def cache_control(
    mode: CacheMode = "default", *, ttl: float | None = None
) -> Iterator[CacheControl]:
    """Apply ``mode`` and ``ttl`` (seconds) to cache calls inside the block; blocks nest."""
    token = _CONTROL.set(_check(mode, ttl))
    try:
        yield _CONTROL.get()
    finally:
        _CONTROL.reset(token)


def parse_control(options: Mapping[str, Any] | str | None) -> CacheControl | None:
    """Read a control from adapter options: ``"bypass"`` or ``{"mode": "refresh", "ttl": 60}``.

    Returns ``None`` for ``None``; raises ``ValueError`` naming the bad mode or TTL.
    """
    if options is None:
        return None
    if isinstance(options, str):
        return _check(options, None)
    unknown = set(options) - {"mode", "ttl"}
    if unknown:
        msg = f"unknown cache control option(s) {sorted(unknown)}; allowed: mode, ttl"
        raise ValueError(msg)
    return _check(str(options.get("mode", "default")), options.get("ttl"))


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
