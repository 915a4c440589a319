"""The benchmark registry: categories register functions that yield results.

A suite module lives in ``rag_perf_plugins/bench/suites/`` (framework-free) or
``rag_perf_plugins/bench/peers/`` (may import LangChain / LlamaIndex, lazily, inside the
function). Every module in those packages is imported by :func:`load_all`, so adding a
benchmark never means editing a shared file::

    from rag_perf_plugins.bench.registry import BenchContext, Result, Target, benchmark

    @benchmark("cache", "warm disk hit, 384-d vector")
    def warm_hit(ctx: BenchContext) -> Iterator[Result]:
        ours = measure_ours(n=ctx.scale(100_000, quick=5_000))
        theirs = measure_baseline(...)
        yield Result.compare(
            "cache_warm_hit_us_per_vector", ours, "us",
            baseline=("CacheBackedEmbeddings+LocalFileStore", theirs),
            better="lower", target=Target.ratio_at_least(5.0),
        )

``ratio`` always compares with a baseline measured in the same run and is oriented so
that above 1 means better than the baseline: ``baseline / value`` when lower is better
(a speed-up), ``value / baseline`` when higher is better. A :class:`Target` applies to the
value or to the ratio. Benchmarks report figures; tests never assert wall-clock time.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import PerformanceConfig

__all__ = [
    "BENCHMARKS",
    "BenchContext",
    "Benchmark",
    "Result",
    "Target",
    "benchmark",
    "curve",
    "load_all",
]

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Target:
    """A goal for a result: ``value`` or ``ratio`` compared with ``op`` against ``threshold``.

    Example: ``Target.value_below(500.0)`` for p95 under 500 ms; ``Target.ratio_at_least(5)``
    for "at least 5x better than the baseline".
    """

    on: Literal["value", "ratio"]
    op: Literal["<", "<=", ">", ">="]
    threshold: float

    @classmethod
    def value_below(cls, threshold: float) -> Target:
        """Value strictly below ``threshold``."""
        return cls("value", "<", threshold)

    @classmethod
    def value_at_most(cls, threshold: float) -> Target:
        """Value at most ``threshold``."""
        return cls("value", "<=", threshold)

    @classmethod
    def value_above(cls, threshold: float) -> Target:
        """Value strictly above ``threshold``."""
        return cls("value", ">", threshold)

    @classmethod
    def value_at_least(cls, threshold: float) -> Target:
        """Value at least ``threshold``."""
        return cls("value", ">=", threshold)

    @classmethod
    def ratio_at_least(cls, threshold: float) -> Target:
        """Ratio (oriented: above 1 is better than the baseline) at least ``threshold``."""
        return cls("ratio", ">=", threshold)

    def met(self, value: float, ratio: float | None) -> bool | None:
        """Whether the target is met; ``None`` when the needed number is missing or NaN."""
        x = value if self.on == "value" else ratio
        if x is None or math.isnan(x):
            return None
        return {
            "<": x < self.threshold,
            "<=": x <= self.threshold,
            ">": x > self.threshold,
            ">=": x >= self.threshold,
        }[self.op]

    def describe(self) -> str:
        """E.g. ``value < 500`` or ``ratio >= 5``."""
        return f"{self.on} {self.op} {self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> Target:
        """The inverse of :meth:`describe`: ``Target.parse("ratio >= 5")``.

        Raises:
            ValueError: ``text`` is not ``value|ratio <|<=|>|>= number``.
        """
        parts = text.split()
        if len(parts) != 3 or parts[0] not in ("value", "ratio") or parts[1] not in _OPS:
            msg = f"not a target: {text!r} (expected e.g. 'value < 500' or 'ratio >= 5')"
            raise ValueError(msg)
        on: Literal["value", "ratio"] = "value" if parts[0] == "value" else "ratio"
        return cls(on, _OPS[parts[1]], float(parts[2]))


@dataclass
class Result:
    """One measured figure, in the JSON schema's shape (see :meth:`to_json`)."""

    name: str
    value: float
    unit: str
    category: str = ""
    baseline_name: str | None = None
    baseline_value: float | None = None
    better: Better = "lower"
    target: Target | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Set by the runner when the benchmark raised: the row reports the error, never a figure.
    error: str | None = None

    @classmethod
    def compare(
        cls,
        name: str,
        value: float,
        unit: str,
        *,
        baseline: tuple[str, float] | None = None,
        better: Better = "lower",
        target: Target | None = None,
        notes: str = "",
        **extra: Any,
    ) -> Result:
        """A result with an optional same-run baseline ``(name, value)``."""
        return cls(
            name=name,
            value=float(value),
            unit=unit,
            baseline_name=baseline[0] if baseline else None,
            baseline_value=float(baseline[1]) if baseline else None,
            better=better,
            target=target,
            notes=notes,
            extra=dict(extra),
        )

    @property
    def ratio(self) -> float | None:
        """Above 1 means better than the baseline; ``None`` without a baseline."""
        if self.baseline_value is None:
            return None
        num, den = (
            (self.baseline_value, self.value)
            if self.better == "lower"
            else (self.value, self.baseline_value)
        )
        if den == 0:
            return math.inf if num > 0 else None
        return num / den

    @property
    def passed(self) -> bool | None:
        """Whether the target is met; ``None`` when there is no target; ``False`` on error."""
        if self.error is not None:
            return False
        return None if self.target is None else self.target.met(self.value, self.ratio)

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Result:
        """A row of a results document back as a :class:`Result` (``--render``, ``--plots``).

        Example: ``[Result.from_json(r) for r in json.load(f)["results"]]``. Null values
        (error rows, non-finite figures) come back as NaN.
        """
        baseline = row.get("baseline") or None
        value = row.get("value")
        base_value = baseline.get("value") if baseline else None
        return cls(
            name=str(row["name"]),
            value=math.nan if value is None else float(value),
            unit=str(row.get("unit", "")),
            category=str(row.get("category", "")),
            baseline_name=str(baseline["name"]) if baseline else None,
            baseline_value=(
                None if not baseline else math.nan if base_value is None else float(base_value)
            ),
            better="higher" if row.get("better") == "higher" else "lower",
            target=Target.parse(row["target"]) if row.get("target") else None,
            notes=str(row.get("notes", "")),
            extra=dict(row.get("extra") or {}),
            error=row.get("error"),
        )

    def to_json(self) -> dict[str, Any]:
        """One row of the documented schema (see docs/benchmarks.md).

        Keys: category, name, value, unit, baseline, ratio, better, target, passed, notes,
        extra, error.
        """
        ratio = self.ratio
        return {
            "category": self.category,
            "name": self.name,
            "value": _finite(self.value),
            "unit": self.unit,
            "baseline": (
                None
                if self.baseline_name is None
                else {"name": self.baseline_name, "value": _finite(self.baseline_value)}
            ),
            "ratio": None if ratio is None else _finite(ratio),
            "better": self.better,
            "target": None if self.target is None else self.target.describe(),
            "passed": self.passed,
            "notes": self.notes,
            "extra": self.extra,
            "error": self.error,
        }


def curve(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    *,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    log_y: bool = False,
) -> dict[str, Any]:
    """Curve data for ``Result.compare(..., curve=curve(...))``; ``--plots`` draws it.

    Example: ``curve([1, 10, 100], {"ours": [2.0, 2.1, 2.3]}, x_label="names",
    y_label="µs")``. Every series must have one y per x.
    """
    xs = [float(v) for v in x]
    out: dict[str, list[float]] = {}
    for label, ys in series.items():
        if len(ys) != len(xs):
            msg = f"curve series {label!r} has {len(ys)} points for {len(xs)} x values"
            raise ValueError(msg)
        out[str(label)] = [float(v) for v in ys]
    return {
        "x": xs,
        "series": out,
        "x_label": x_label,
        "y_label": y_label,
        "log_x": log_x,
        "log_y": log_y,
    }


_OPS: dict[str, Literal["<", "<=", ">", ">="]] = {"<": "<", "<=": "<=", ">": ">", ">=": ">="}


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else x


@dataclass
class BenchContext:
    """What a benchmark gets: the config, quick mode, a scratch directory, a progress hook."""

    config: PerformanceConfig
    quick: bool
    workdir: Path
    progress: Callable[[str], None] = lambda _message: None

    def scale(self, full: int, *, quick: int) -> int:
        """``quick`` in quick mode, else ``full``: sizes of workloads."""
        return quick if self.quick else full


BenchFn = Callable[[BenchContext], Iterable[Result]]


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark function in a category."""

    category: str
    title: str
    fn: BenchFn


BENCHMARKS: list[Benchmark] = []


def benchmark(category: str, title: str) -> Callable[[BenchFn], BenchFn]:
    """Register ``fn`` under ``category`` (the name ``--only`` selects)."""

    def register(fn: BenchFn) -> BenchFn:
        BENCHMARKS.append(Benchmark(category, title, fn))
        return fn

    return register


def load_all(*, peers: bool = True) -> list[Benchmark]:
    """Import every suite (and peer) module so they register; returns the registry."""
    packages = ["rag_perf_plugins.bench.suites"] + (
        ["rag_perf_plugins.bench.peers"] if peers else []
    )
    for package_name in packages:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__, package_name + "."):
            importlib.import_module(info.name)
    return BENCHMARKS
