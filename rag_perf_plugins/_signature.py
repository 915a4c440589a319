"""Keyword arguments checked by name: a misspelt option is an error that names it.

Example::

    class PerfThing:
        @checked_kwargs
        def __init__(self, inner, *, ttl=None): ...

    PerfThing(inner, tll=5)
    # TypeError: PerfThing() got an unexpected keyword argument 'tll'; did you mean 'ttl'?

Python already refuses an unknown keyword, but without the close match; and a constructor
that takes ``**kwargs`` to pass on (a pydantic model's fields) accepts anything unless told
which names are valid. :func:`checked_kwargs` covers both: the explicit parameters, plus the
names ``extra(cls)`` allows for the ``**kwargs``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ParamSpec, TypeVar, overload

__all__ = ["accepted_keywords", "check_options", "checked_kwargs", "unknown_keyword"]

P = ParamSpec("P")
R = TypeVar("R")


def unknown_keyword(owner: str, name: str, allowed: Iterable[str]) -> TypeError:
    """The error for one unknown keyword: its name, the close matches, what is allowed."""
    choices = sorted(set(allowed))
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listed = ", ".join(c for c in choices if not c.startswith("_"))
    return TypeError(
        f"{owner}() got an unexpected keyword argument {name!r}{hint} (accepted: {listed})"
    )


@overload
def checked_kwargs(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def checked_kwargs(
    *, extra: Callable[[Any], Iterable[str]]
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def checked_kwargs(
    fn: Callable[P, R] | None = None, /, *, extra: Callable[[Any], Iterable[str]] | None = None
) -> Any:
    """Decorate ``__init__`` (or a function) so an unknown keyword names itself and its matches.

    Args:
        fn: The function; its explicit parameters are the accepted keywords.
        extra: For a function with ``**kwargs``: given the class being built (or, for a plain
            function, ``None``), the names ``**kwargs`` may carry (e.g. a pydantic model's
            fields). Without it, ``**kwargs`` accepts any name.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(func)
        params = signature.parameters
        named = {
            n
            for n, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
        }
        absorbs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        is_init = func.__name__ == "__init__"

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            unknown = [k for k in kwargs if k not in named]
            if unknown and (not absorbs or extra is not None):
                owner = type(args[0]) if is_init and args else None
                allowed = set(named)
                if absorbs and extra is not None:
                    allowed |= set(extra(owner))
                for name in unknown:
                    if name not in allowed:
                        title = owner.__name__ if owner is not None else func.__name__
                        raise unknown_keyword(title, name, allowed)
            return func(*args, **kwargs)

        return wrapper

    return decorate(fn) if fn is not None else decorate


@functools.cache
def accepted_keywords(cls: type) -> frozenset[str]:
    """The keywords ``cls(...)`` takes: ``__init__`` parameters, pydantic fields and aliases.

    Example: ``"temperature" in accepted_keywords(ChatOpenAI)``. A pydantic model's fields
    count by name and by alias (``ChatOpenAI``: ``model_name`` and ``model``).
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or not callable(init):
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):  # a C-level __init__ (object's)
            continue
        names |= {
            n
            for n, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"
        }
    fields = getattr(cls, "model_fields", None)
    if isinstance(fields, Mapping):
        for name, info in fields.items():
            names.add(name)
            for alias in (getattr(info, "alias", None), getattr(info, "validation_alias", None)):
                if isinstance(alias, str):
                    names.add(alias)
                for choice in getattr(alias, "choices", ()) or ():
                    if isinstance(choice, str):
                        names.add(choice)
    return frozenset(names)


def check_options(owner: str, options: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """Refuse the first key of ``options`` not in ``allowed``, naming it and the close ones.

    Example: ``check_options("pooled_chat_openai", {"temprature": 0}, names)`` with
    ``names = accepted_keywords(ChatOpenAI)`` raises ``TypeError: pooled_chat_openai() got
    an unexpected keyword argument 'temprature'; did you mean 'temperature'? (accepted:
    ...)``.
    """
    known = set(allowed)
    for name in options:
        if name not in known:
            raise unknown_keyword(owner, name, known)
