"""A real admission gate that keeps its tickets, so a test can read what was reconciled.

Example::

    gate = SeenGate(config, key="test/claude")
    wrap_llm(inner, config, gate=gate).chat(messages)
    gate.tickets[0].tokens        # the provider's actual usage, after reconcile
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rag_perf_plugins.admission.gate import AdmissionGate, Ticket


class SeenGate(AdmissionGate):
    """``AdmissionGate`` that records each admitted ticket (sync and async paths)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tickets: list[Ticket] = []

    def acquire(self, **kwargs: Any) -> Any:
        return _Seen(self.tickets, super().acquire(**kwargs))

    def aacquire(self, **kwargs: Any) -> Any:
        return _Seen(self.tickets, super().aacquire(**kwargs))


class _Seen:
    def __init__(self, tickets: list[Ticket], admission: Any) -> None:
        self._tickets = tickets
        self._admission = admission

    def __enter__(self) -> Ticket:
        ticket: Ticket = self._admission.__enter__()
        self._tickets.append(ticket)
        return ticket

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        return self._admission.__exit__(kind, exc, tb)

    async def __aenter__(self) -> Ticket:
        ticket: Ticket = await self._admission.__aenter__()
        self._tickets.append(ticket)
        return ticket

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> Any:
        return await self._admission.__aexit__(kind, exc, tb)
