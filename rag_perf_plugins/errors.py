"""One exception hierarchy for rag_perf_plugins.

Every error the library raises on purpose derives from :class:`RagPerfError`, so
``except RagPerfError`` catches ours and nothing else::

    try:
        async with gate.aacquire(tokens=500):
            ...
    except Overloaded as exc:
        return fallback_answer(exc)

Config errors also derive from :class:`ValueError`, and timeouts from
:class:`TimeoutError`, so code written against the built-ins keeps working.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BudgetExceeded",
    "CacheError",
    "ConfigError",
    "DeadlineExceeded",
    "Overloaded",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ProviderError",
    "ProviderUnavailable",
    "RagPerfError",
    "RetryBudgetExhausted",
    "UnkeyableArgument",
]


class RagPerfError(Exception):
    """Base class of every error raised on purpose by rag_perf_plugins."""


class ConfigError(RagPerfError, ValueError):
    """A configuration value, key, type or file is invalid.

    The message names the key, the bad value and what is allowed, for example
    ``cache_szie: unknown key; did you mean cache_size?``.

    Attributes:
        key: The offending key, or ``None`` for errors about a whole file.
        value: The offending value, when there is one.
    """

    def __init__(self, message: str, *, key: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.key = key
        self.value = value


class CacheError(RagPerfError):
    """A cache operation failed. Raised only by explicit cache calls, never on the user's path."""


class UnkeyableArgument(CacheError, TypeError):
    """An argument of a ``@cached`` function cannot be turned into a stable cache key."""


class Overloaded(RagPerfError):
    """The admission queue is full or would wait too long; the call was refused at once."""


class BudgetExceeded(RagPerfError):
    """A dollar budget would be passed: the call was refused at once, before the provider.

    Example::

        try:
            with cost_scope("tenant-42"):
                llm.invoke(question)
        except BudgetExceeded as exc:
            retry_in = exc.frees_in_s        # seconds until the window starts over

    Attributes:
        scope: The budget's scope: ``tenant:<name>``, ``key:<gate key>`` or ``model:<name>``.
        limit_usd: The limit, in US dollars per ``window``.
        window: ``"minute"``, ``"hour"`` or ``"day"`` (clock windows, UTC).
        spent_usd: Dollars spent (and reserved by calls in flight) in this window, or
            ``None`` when unknown.
        asked_usd: The refused call's estimated cost, or ``None`` when unknown.
        frees_in_s: Seconds until the window ends and the budget frees, or ``None``.
        unavailable: The shared budget store could not be reached (fail closed).
        unknown_model: The model whose price is unknown, when that is why (a budget
            cannot be kept for a call of unknown cost).
    """

    def __init__(
        self,
        *,
        scope: str,
        limit_usd: float,
        window: str,
        spent_usd: float | None,
        asked_usd: float | None,
        frees_in_s: float | None,
        unavailable: bool = False,
        unknown_model: str | None = None,
    ) -> None:
        self.scope = scope
        self.limit_usd = limit_usd
        self.window = window
        self.spent_usd = spent_usd
        self.asked_usd = asked_usd
        self.frees_in_s = frees_in_s
        self.unavailable = unavailable
        self.unknown_model = unknown_model
        budget = f"{scope}: budget ${limit_usd:,.4f} per {window}"
        if unknown_model is not None:
            message = (
                f"{budget}: the price of {unknown_model!r} is unknown, so the call's cost "
                "cannot be kept within the budget; add it with register_price() or "
                "price_table_path (see rag-perf prices)"
            )
        elif unavailable:
            message = (
                f"{budget}: the shared budget store (Redis) is unreachable; refusing "
                "(fail closed; with worker_count > 1 each process would use its share)"
            )
        else:
            message = (
                f"{budget} reached: ${spent_usd or 0.0:,.6f} spent or reserved, this call "
                f"needs ${asked_usd or 0.0:,.6f}; frees in {frees_in_s or 0.0:.1f} s"
            )
        super().__init__(message)


class DeadlineExceeded(RagPerfError, TimeoutError):
    """The deadline of a logical call passed while it was queued, running or backing off."""


class RetryBudgetExhausted(RagPerfError):
    """A retry was refused because retries used up their share of calls in the window."""


class ProviderError(RagPerfError):
    """A provider answered with an error that our retry policy gave up on.

    Attributes:
        status_code: The HTTP status, when there was one.
        retry_after: Seconds the provider asked us to wait, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after


class ProviderUnavailable(RagPerfError):
    """No target of a call could take it: every breaker open, or every target failed.

    The message names each target with its state and when it may be tried again, e.g.
    ``no provider can take the call: openai/gpt-4o-mini/k-3f9a open (retry in 3.2 s);
    azure/gpt-4o-mini/k-77c1 half_open (probe in flight, retry in 1.0 s)``; a target that
    failed says how: ``azure/gpt-4o-mini/k-77c1 closed (failed: InternalServerError: ...)``.

    When every target failed (rather than every breaker refusing), the error raised is
    :meth:`after_failures`: a ``ProviderUnavailable`` that is *also* an instance of the
    last provider error's class (``except openai.InternalServerError`` still catches it,
    with that error's attributes such as ``status_code``), chained from it (``__cause__``).

    Attributes:
        targets: ``(name, state, retry_in seconds)`` of each target, in chain order.
        retry_in: The shortest ``retry_in`` (seconds).
        errors: ``{name: "Type: message"}`` of the targets that failed on this call.
    """

    def __init__(
        self,
        targets: Sequence[tuple[str, str, float]],
        *,
        reason: str = "",
        errors: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(_unavailable_message(targets, reason, errors or {}))
        self.targets = list(targets)
        self.retry_in = min((t[2] for t in targets), default=0.0)
        self.errors = dict(errors or {})

    @classmethod
    def after_failures(
        cls,
        targets: Sequence[tuple[str, str, float]],
        errors: Mapping[str, str],
        last: BaseException,
    ) -> ProviderUnavailable:
        """The error of a call whose every target failed: also a ``type(last)``.

        Example: ``raise ProviderUnavailable.after_failures(targets, errors, exc) from exc``.
        ``last``'s attributes are copied; a class that cannot be mixed in (a layout
        conflict) gives a plain ``ProviderUnavailable``. Picklable (see :meth:`__reduce__`).
        """
        message = _unavailable_message(targets, "every target failed", errors)
        made: ProviderUnavailable
        try:
            mixed = _mixed_class(type(last))
            made = mixed.__new__(mixed)
            made.__dict__.update(getattr(last, "__dict__", {}))
        except TypeError:
            made = cls.__new__(cls)
        made.args = (message,)
        made.targets = list(targets)
        made.retry_in = min((t[2] for t in targets), default=0.0)
        made.errors = dict(errors)
        return made

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle support (process pools, multiprocessing, Celery pickle exceptions).

        Example: ``pickle.loads(pickle.dumps(exc))`` has the same message, ``targets``,
        ``retry_in`` and ``errors``, and, when ``exc`` came from :meth:`after_failures`,
        is again also an instance of the provider error's class, with its attributes
        (``status_code``...). Rebuilt without calling any ``__init__`` (the SDKs' error
        classes require arguments the pickle does not hold). The provider class travels
        by name: where it cannot be imported or mixed in on the reading side, the error
        comes back as a plain ``ProviderUnavailable`` with the same attributes.
        Attributes that cannot be pickled are left out; the cause (``__cause__``) and the
        traceback are not carried, as for any pickled exception.
        """
        kind = _KIND_OF.get(type(self))
        kind_name = None if kind is None else (kind.__module__, kind.__qualname__)
        own = None if kind is not None else type(self)
        extra = {
            name: value
            for name, value in self.__dict__.items()
            if name not in ("targets", "retry_in", "errors") and _picklable(value)
        }
        state = (self.args, list(self.targets), self.retry_in, dict(self.errors), extra)
        return (_rebuild_unavailable, (own, kind_name, state))


_MIXED: dict[type[BaseException], type[ProviderUnavailable]] = {}
_KIND_OF: dict[type[ProviderUnavailable], type[BaseException]] = {}  # mixed class -> kind


def _mixed_class(kind: type[BaseException]) -> type[ProviderUnavailable]:
    """``ProviderUnavailable`` and ``kind`` in one class (made once per ``kind``)."""
    if issubclass(kind, ProviderUnavailable):
        return kind
    found = _MIXED.get(kind)
    if found is None:
        found = type(
            "ProviderUnavailable",
            (ProviderUnavailable, kind),
            {"__module__": __name__, "__str__": BaseException.__str__},
        )
        _MIXED[kind] = found
        _KIND_OF[found] = kind
    return found


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _rebuild_unavailable(
    own: type[ProviderUnavailable] | None,
    kind_name: tuple[str, str] | None,
    state: tuple[
        tuple[Any, ...], list[tuple[str, str, float]], float, dict[str, str], dict[str, Any]
    ],
) -> ProviderUnavailable:
    """Unpickle a :class:`ProviderUnavailable` (see its ``__reduce__``)."""
    args, targets, retry_in, errors, extra = state
    made: ProviderUnavailable | None = None
    if kind_name is not None:
        try:
            found: Any = importlib.import_module(kind_name[0])
            for part in kind_name[1].split("."):
                found = getattr(found, part)
            if isinstance(found, type) and issubclass(found, BaseException):
                mixed = _mixed_class(found)
                made = mixed.__new__(mixed)
        except Exception:  # gone, renamed or not mixable here: a plain one, same attributes
            made = None
    if made is None:
        cls = own if own is not None else ProviderUnavailable
        made = cls.__new__(cls)
    made.__dict__.update(extra)
    made.args = args
    made.targets = targets
    made.retry_in = retry_in
    made.errors = errors
    return made


def _unavailable_message(
    targets: Sequence[tuple[str, str, float]], reason: str, errors: Mapping[str, str]
) -> str:
    parts = []
    for name, state, retry_in in targets:
        failed = errors.get(name)
        if failed is not None:
            parts.append(f"{name} {state} (failed: {failed})")
            continue
        note = "probe in flight, " if state == "half_open" else ""
        parts.append(f"{name} {state} ({note}retry in {retry_in:.1f} s)")
    message = "no provider can take the call: " + "; ".join(parts)
    if reason:
        message += f" ({reason})"
    return message


class PoolError(RagPerfError):
    """Misuse of a connection pool: a double return, or a connection from another pool."""


class PoolTimeout(PoolError, TimeoutError):
    """No connection became free within ``connection_timeout``."""


class PoolClosed(PoolError):
    """The pool was closed; no more connections can be borrowed."""
