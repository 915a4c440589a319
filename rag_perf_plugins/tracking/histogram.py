"""A bounded-memory, mergeable log-bucket histogram with a relative-error guarantee.

Example::

    h = LogHistogram()              # 0.5 % relative accuracy by default
    for seconds in (0.010, 0.012, 0.250):
        h.add(seconds)
    h.quantile(0.5)                 # ~0.012 (within 0.5 % of the true median sample)
    h.merge(other)                  # add another histogram's counts (same accuracy only)

Positive values fall in bucket ``i = ceil(log(v) / log(gamma))`` with
``gamma = (1 + a) / (1 - a)``; the bucket covers ``(gamma**(i-1), gamma**i]`` and reports
``2 * gamma**i / (gamma + 1)``, which is within ``a`` (relative) of every value in it. This
is the DDSketch layout (Masson et al., VLDB 2019), written here because the few dozen lines
are cheaper on the hot path than a dependency's general machinery.

Memory is bounded by the range of values, not by how many were added: at ``a = 0.005`` one
bucket per ~1 % step, so 1 ns to 1 hour needs at most ~2,900 buckets; values outside
``[min_value, max_value]`` are clamped to the edge buckets (the exact min and max are kept
separately). Zero and negative values share one "zero" bucket. Not thread-safe on its own:
the tracker holds a per-operation lock around :meth:`add`.
"""

from __future__ import annotations

import math
from array import array
from typing import Any

__all__ = ["LogHistogram"]


class LogHistogram:
    """Counts of values in logarithmic buckets; quantiles within ``relative_accuracy``.

    Example: ``h = LogHistogram(relative_accuracy=0.005); h.add(0.2); h.quantile(0.99)``.

    Args:
        relative_accuracy: Largest relative error of any quantile, e.g. 0.005 for 0.5 %.
        min_value: Smallest positive value told apart (same unit as the values; smaller
            positive values are clamped up to it).
        max_value: Largest value told apart (larger values are clamped down to it for
            bucketing; :attr:`max` stays exact).

    Does not: interpolate between samples, weight samples, or forget old samples (use a
    fresh histogram per window if you need that).
    """

    __slots__ = (
        "_counts",
        "_gamma",
        "_inv_log_gamma",
        "_max_index",
        "_min_index",
        "_offset",
        "count",
        "max",
        "min",
        "relative_accuracy",
        "sum",
        "zero_count",
    )

    def __init__(
        self,
        *,
        relative_accuracy: float = 0.005,
        min_value: float = 1e-9,
        max_value: float = 1e6,
    ) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            msg = f"relative_accuracy must be between 0 and 1 (exclusive), got {relative_accuracy}"
            raise ValueError(msg)
        if not 0.0 < min_value < max_value:
            msg = (
                f"need 0 < min_value < max_value, got min_value={min_value}, max_value={max_value}"
            )
            raise ValueError(msg)
        self.relative_accuracy = relative_accuracy
        self._gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._inv_log_gamma = 1.0 / math.log(self._gamma)
        self._min_index = math.ceil(math.log(min_value) * self._inv_log_gamma)
        self._max_index = math.ceil(math.log(max_value) * self._inv_log_gamma)
        # Counts of buckets _offset, _offset + 1, ... as raw 64-bit integers. An array, not a
        # dict of ints: a count above 256 is a heap object in CPython, so a dict would keep
        # allocating (one int per bucket) long after the buckets are known. The array spans
        # only the indices seen so far and grows when a new extreme value arrives.
        self._counts = array("q")
        self._offset = 0
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        """Count one value (seconds, items, ... in one unit per histogram)."""
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value <= 0.0:
            self.zero_count += 1
            return
        index = math.ceil(math.log(value) * self._inv_log_gamma)
        if index < self._min_index:
            index = self._min_index
        elif index > self._max_index:
            index = self._max_index
        pos = index - self._offset
        if 0 <= pos < len(self._counts):
            self._counts[pos] += 1
        else:
            self._count_new(index, 1)

    def _count_new(self, index: int, n: int) -> None:
        """Add ``n`` at bucket ``index``, widening the array to reach it first."""
        counts = self._counts
        if not counts:
            self._offset = index
            counts.append(0)
        elif index < self._offset:
            counts[0:0] = array("q", bytes(8 * (self._offset - index)))
            self._offset = index
        elif index >= self._offset + len(counts):
            counts.extend(array("q", bytes(8 * (index - self._offset - len(counts) + 1))))
        counts[index - self._offset] += n

    def _buckets(self) -> list[tuple[int, int]]:
        """(index, count) of every non-empty bucket, in increasing index order."""
        offset = self._offset
        return [(offset + pos, n) for pos, n in enumerate(self._counts) if n]

    def quantile(self, q: float) -> float:
        """The value at quantile ``q`` in [0, 1] (NaN when empty).

        Returns an estimate within ``relative_accuracy`` of the sample of rank
        ``floor(q * (count - 1))`` (0-based, i.e. numpy's ``method="lower"``); ``q == 0``
        and ``q == 1`` return the exact min and max.
        """
        if not 0.0 <= q <= 1.0:
            msg = f"q must be in [0, 1], got {q}"
            raise ValueError(msg)
        if self.count == 0:
            return math.nan
        if q == 0.0:
            return self.min
        if q == 1.0:
            return self.max
        rank = int(q * (self.count - 1))
        if rank < self.zero_count:
            return 0.0 if self.min >= 0.0 else self.min
        seen = self.zero_count
        for index, n in self._buckets():
            seen += n
            if seen > rank:
                estimate = 2.0 * self._gamma**index / (self._gamma + 1.0)
                # Clamping can only make the estimate worse; the exact extremes are known.
                return min(max(estimate, self.min), self.max)
        return self.max  # pragma: no cover - counts always add up to count

    @property
    def mean(self) -> float:
        """Exact arithmetic mean (NaN when empty)."""
        return self.sum / self.count if self.count else math.nan

    @property
    def bucket_count(self) -> int:
        """How many buckets hold at least one value (the memory in use)."""
        return sum(1 for n in self._counts if n) + (1 if self.zero_count else 0)

    @property
    def nbytes(self) -> int:
        """Bytes held by the bucket counts (8 per bucket between the extremes seen)."""
        return self._counts.itemsize * len(self._counts)

    def merge(self, other: LogHistogram) -> None:
        """Add ``other``'s counts into this histogram (same relative accuracy required)."""
        if other._gamma != self._gamma:
            msg = (
                "cannot merge histograms of different relative_accuracy: "
                f"{self.relative_accuracy} and {other.relative_accuracy}"
            )
            raise ValueError(msg)
        for index, n in other._buckets():
            self._count_new(index, n)
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> LogHistogram:
        """An independent copy (used for consistent snapshots outside the lock)."""
        new = LogHistogram.__new__(LogHistogram)
        for name in LogHistogram.__slots__:
            setattr(new, name, getattr(self, name))
        new._counts = array("q", self._counts)
        return new

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form that :meth:`from_dict` reads back (and can be merged)."""
        return {
            "relative_accuracy": self.relative_accuracy,
            "count": self.count,
            "sum": self.sum,
            "min": None if self.count == 0 else self.min,
            "max": None if self.count == 0 else self.max,
            "zero_count": self.zero_count,
            "buckets": {str(k): v for k, v in self._buckets()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogHistogram:
        """Rebuild a histogram exported by :meth:`to_dict`."""
        h = cls(relative_accuracy=float(data["relative_accuracy"]))
        h.count = int(data["count"])
        h.sum = float(data["sum"])
        h.min = math.inf if data["min"] is None else float(data["min"])
        h.max = -math.inf if data["max"] is None else float(data["max"])
        h.zero_count = int(data["zero_count"])
        for index, n in sorted((int(k), int(v)) for k, v in data["buckets"].items()):
            h._count_new(index, n)
        return h

    def __repr__(self) -> str:
        if not self.count:
            return f"<LogHistogram [empty | relative_accuracy={self.relative_accuracy}]>"
        return (
            f"<LogHistogram [count: {self.count}, p50: {self.quantile(0.5):.6g}, "
            f"max: {self.max:.6g}, buckets: {self.bucket_count} | "
            f"relative_accuracy={self.relative_accuracy}]>"
        )
