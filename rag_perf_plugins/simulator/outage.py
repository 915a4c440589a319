"""Scheduled outages of the simulator: a model or a route failing for a while, then back.

Example::

    Outage(model="gpt-4o-mini", start_s=0.0, duration_s=10.0)               # 100 % 503s
    Outage(model="gpt-4o-mini", start_s=5.0, duration_s=20.0, status=429, rate=0.5)
    Outage.parse("model=gpt-4o-mini,start=0,duration=10,status=503,rate=1")  # the CLI form

Times are seconds on the simulator's clock since the simulator was built (a ``FakeClock``
in tests). During the window, each request to the model (or route) fails with ``status``
with probability ``rate`` (a separate seeded generator: the other fault rolls are not
shifted). A 429 carries ``Retry-After: retry_after_s``. ``model=None`` matches every
model; ``route=None`` every route (``/v1/chat/completions``, ``/v1/embeddings``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Outage"]

_STATUSES = (429, 500, 502, 503, 504)


@dataclass(frozen=True, kw_only=True)
class Outage:
    """One outage window.

    Attributes:
        start_s: When it starts, seconds after the simulator was built.
        duration_s: How long it lasts (seconds).
        model: The model it hits (``None``: every model).
        route: The route it hits (``None``: every route).
        status: The HTTP status sent: 429, 500, 502, 503 or 504.
        rate: Share of matching requests that fail, 0..1 (1: all; 0.5: a brown-out).
        retry_after_s: ``Retry-After`` of a 429 (seconds).
    """

    start_s: float = 0.0
    duration_s: float = 10.0
    model: str | None = None
    route: str | None = None
    status: int = 503
    rate: float = 1.0
    retry_after_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("start_s", "duration_s", "retry_after_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                msg = f"outage {name} must be a number >= 0 (seconds), got {value!r}"
                raise ValueError(msg)
        if self.status not in _STATUSES:
            allowed = ", ".join(map(str, _STATUSES))
            msg = f"outage status must be one of {allowed}, got {self.status!r}"
            raise ValueError(msg)
        if not (isinstance(self.rate, int | float) and 0 <= self.rate <= 1):
            msg = f"outage rate must be a number in [0, 1], got {self.rate!r}"
            raise ValueError(msg)

    def active(self, elapsed: float, route: str, model: str | None) -> bool:
        """Whether this outage covers a request to ``route``/``model`` at ``elapsed`` seconds."""
        if not self.start_s <= elapsed < self.start_s + self.duration_s:
            return False
        if self.route is not None and self.route != route:
            return False
        return self.model is None or self.model == model

    @classmethod
    def parse(cls, text: str) -> Outage:
        """``"model=m,start=0,duration=10,status=503,rate=1,route=/v1/embeddings"``."""
        names = {
            "model": "model",
            "route": "route",
            "start": "start_s",
            "duration": "duration_s",
            "status": "status",
            "rate": "rate",
            "retry_after": "retry_after_s",
        }
        values: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, raw = part.partition("=")
            if not sep or name not in names:
                allowed = ", ".join(names)
                msg = f"outage part {part!r} is not name=value with a name among {allowed}"
                raise ValueError(msg)
            field = names[name]
            try:
                if field == "status":
                    values[field] = int(raw)
                elif field in ("model", "route"):
                    values[field] = raw
                else:
                    values[field] = float(raw)
            except ValueError:
                msg = f"outage {name} must be a number, got {raw!r}"
                raise ValueError(msg) from None
        return cls(**values)  # type: ignore[arg-type]
