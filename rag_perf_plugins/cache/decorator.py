"""``@cached``: cache a function's results by its qualified name and canonical arguments.

Example::

    @cached(ttl=1800.0)
    def retrieve(query: str, k: int = 4) -> list[str]: ...

    @cached(ttl=60.0, namespace="llm")
    async def answer(prompt: str) -> str: ...

    class Engine:
        def __cache_key__(self) -> str:          # what makes two engines answer the same
            return f"{self.model}@{self.index_version}"

        @cached()
        def query(self, q: str) -> dict[str, str]: ...

Arguments are bound to the signature (defaults applied, so ``f(1)`` and ``f(x=1)`` share a
key) and canonicalized as in :mod:`.keys`. An argument that has no stable form (an open
file, a client, an instance without ``__cache_key__``) raises
:class:`~rag_perf_plugins.errors.UnkeyableArgument` naming it; leave such arguments out with
``ignore=("client",)`` when they do not change the result. Concurrent identical calls
compute once (single-flight). Results are stored as msgpack: tuples come back as lists,
and the first call returns the stored form too, so hits and misses agree. A result msgpack
cannot store is returned uncached (counted as an ``unserializable`` error).

Not done: caching generators or streams.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from ..errors import UnkeyableArgument
from .keys import canonical_json, make_key
from .manager import CacheManager
from .registry import get_cache_manager

__all__ = ["cached"]

F = TypeVar("F", bound=Callable[..., Any])


def _key_value(value: Any) -> Any:
    hook = getattr(value, "__cache_key__", None)
    if hook is not None and callable(hook) and not isinstance(value, type):
        return {"__cache_key__": _key_value(hook())}
    if isinstance(value, type):
        return {"__type__": f"{value.__module__}.{value.__qualname__}"}
    if isinstance(value, list | tuple):
        return [_key_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _key_value(v) for k, v in value.items()}
    return value


def cached(
    ttl: float | None = None,
    *,
    namespace: str = "query",
    ignore: Iterable[str] = (),
    manager: CacheManager | None = None,
    model: str | None = None,
) -> Callable[[F], F]:
    """Cache a sync or async function (or method) for ``ttl`` seconds (``None``: ``cache_ttl``).

    Args:
        ttl: Seconds an entry lives; ``None`` uses the manager's ``cache_ttl``.
        namespace: Where entries go (default ``"query"``); clear or bump it to invalidate.
        ignore: Parameter names left out of the key (clients, loggers, callbacks).
        manager: The cache; default the process-wide :func:`get_cache_manager`, looked up
            at call time.
        model: Tag for :meth:`CacheManager.purge_model`.
    """
    ignored = frozenset(ignore)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        unknown = ignored - set(signature.parameters)
        if unknown:
            msg = f"ignore names parameters {sorted(unknown)} that {fn.__qualname__} does not have"
            raise ValueError(msg)
        name = f"{fn.__module__}.{fn.__qualname__}"

        def key_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            fields: dict[str, Any] = {}
            for param, value in bound.arguments.items():
                if param in ignored:
                    continue
                kind = signature.parameters[param].kind
                if (
                    param in ("self", "cls")
                    and kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                    and not isinstance(value, type)
                    and getattr(value, "__cache_key__", None) is None
                ):
                    msg = (
                        f"argument {param!r} of {fn.__qualname__} cannot be keyed: define "
                        f"{type(value).__name__}.__cache_key__() returning what makes "
                        f"instances give the same results, or pass ignore=({param!r},)"
                    )
                    raise UnkeyableArgument(msg)
                try:
                    fields[param] = _key_value(value)
                    canonical_json(fields[param], path=param)
                except TypeError as exc:
                    msg = (
                        f"argument {param!r} of {fn.__qualname__} cannot be keyed: {exc}. "
                        f"Pass a plain value, give the type a __cache_key__() method, or "
                        f"ignore=({param!r},)"
                    )
                    raise UnkeyableArgument(msg) from exc
            return make_key("fn", {"function": name, "arguments": fields})

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                cache = manager or get_cache_manager()
                key = key_of(args, kwargs)
                return await cache.aget_or_compute(
                    key, lambda: fn(*args, **kwargs), ttl, namespace=namespace, model=model
                )

            async_wrapper.cache_key = key_of  # type: ignore[attr-defined]
            return cast(F, async_wrapper)

        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            msg = f"@cached does not cache generators ({fn.__qualname__})"
            raise TypeError(msg)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cache = manager or get_cache_manager()
            key = key_of(args, kwargs)
            return cache.get_or_compute(
                key, lambda: fn(*args, **kwargs), ttl, namespace=namespace, model=model
            )

        wrapper.cache_key = key_of  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate
