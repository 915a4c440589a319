"""What the simulator saw, counted exactly; written on the server's loop, read from any thread.

Example::

    stats = SimulatorStats()
    stats.connection_opened()
    stats.request_started("/v1/embeddings")
    stats.request_finished()
    stats.snapshot()["requests_total"]       # 1

Every method takes one short lock (no I/O under it), so :meth:`snapshot` from another
thread always sees a consistent set of numbers.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["SimulatorStats"]

_PER_MODEL = ("prompt", "cached", "completion", "reasoning", "embedding")


class SimulatorStats:
    """Counters of one simulator: requests, connections, concurrency, 429s, faults, tokens.

    Example::

        snapshot = stats.snapshot()
        snapshot["connections_opened"], snapshot["peak_inflight"], snapshot["tokens_total"]

    Keys of :meth:`snapshot` (all counts since the last :meth:`reset`):

    - ``requests_total``, ``requests_by_endpoint`` (``/v1/embeddings``,
      ``/v1/chat/completions``, ``/v1/models`` or ``other`` -> count; ``/stats`` itself is
      not counted), ``responses_by_status`` (HTTP status -> count; dropped requests have none).
    - ``connections_opened`` (TCP connections accepted), ``connections_closed``,
      ``connections_active`` (open now; not zeroed by a reset).
    - ``inflight`` (requests being handled now) and ``peak_inflight`` (most at once).
    - ``rate_limited_total`` (every 429 sent), split into ``rate_limited_by_reason``
      (``rpm``, ``tpm``, ``concurrency``, ``injected``).
    - ``errors_injected_total``: injected failures (500/503 answers, dropped connections,
      truncated answers); ``faults_by_kind`` splits every injected fault by kind (``500``,
      ``503``, ``drop``, ``truncate``, and ``slow``, which delays but does not fail).
    - ``tokens_total`` = ``prompt_tokens_total`` + ``completion_tokens_total`` +
      ``embedding_tokens_total``: tokens of every answer the simulator started to send
      (truncated ones included, refused ones not).
    - ``cached_tokens_total`` (of the prompt tokens, read from the prompt cache) and
      ``reasoning_tokens_total`` (of the completion tokens, spent reasoning).
    - ``tokens_by_model``: model -> ``prompt``, ``cached``, ``completion``, ``reasoning``,
      ``embedding`` tokens (the same counts, per model asked for).
    - ``embedding_inputs_total`` (texts embedded), ``streams_total`` (streamed answers).
    - ``requests_by_model``: chat and embedding requests per requested ``model`` (refused
      ones included: what a provider's dashboard would count); ``faults_by_kind["outage"]``
      counts answers failed by a scheduled outage.
    """

    __slots__ = (
        "_by_endpoint",
        "_by_model",
        "_by_status",
        "_counts",
        "_faults_by_kind",
        "_inflight",
        "_limited_by_reason",
        "_lock",
        "_open_connections",
        "_peak",
        "_requests_by_model",
    )

    _COUNTS = (
        "requests_total",
        "connections_opened",
        "connections_closed",
        "rate_limited_total",
        "errors_injected_total",
        "prompt_tokens_total",
        "cached_tokens_total",
        "completion_tokens_total",
        "reasoning_tokens_total",
        "embedding_tokens_total",
        "embedding_inputs_total",
        "streams_total",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inflight = 0
        self._open_connections = 0
        self._counts: dict[str, int] = {}
        self._by_endpoint: dict[str, int] = {}
        self._requests_by_model: dict[str, int] = {}
        self._by_status: dict[int, int] = {}
        self._by_model: dict[str, dict[str, int]] = {}
        self._limited_by_reason: dict[str, int] = {}
        self._faults_by_kind: dict[str, int] = {}
        self._peak = 0
        self.reset()

    def reset(self) -> None:
        """Zero every count; the peak restarts from the requests in flight now."""
        with self._lock:
            self._counts = dict.fromkeys(self._COUNTS, 0)
            self._by_endpoint = {}
            self._requests_by_model = {}
            self._by_status = {}
            self._by_model = {}
            self._limited_by_reason = {}
            self._faults_by_kind = {}
            self._peak = self._inflight

    def connection_opened(self) -> None:
        """A TCP connection was accepted."""
        with self._lock:
            self._counts["connections_opened"] += 1
            self._open_connections += 1

    def connection_closed(self) -> None:
        """A TCP connection ended (either side closed it)."""
        with self._lock:
            self._counts["connections_closed"] += 1
            self._open_connections -= 1

    def request_started(self, endpoint: str) -> int:
        """Count a request to ``endpoint``; returns how many are in flight, this one included."""
        with self._lock:
            self._counts["requests_total"] += 1
            self._by_endpoint[endpoint] = self._by_endpoint.get(endpoint, 0) + 1
            self._inflight += 1
            if self._inflight > self._peak:
                self._peak = self._inflight
            return self._inflight

    def model_request(self, model: str | None) -> None:
        """A chat or embedding request named ``model`` (``None``: none or not a string)."""
        name = model if model is not None else "?"
        with self._lock:
            self._requests_by_model[name] = self._requests_by_model.get(name, 0) + 1

    def request_finished(self, status: int | None) -> None:
        """A request left the handler, answered with ``status`` (``None``: no answer)."""
        with self._lock:
            self._inflight -= 1
            if status is not None:
                self._by_status[status] = self._by_status.get(status, 0) + 1

    def rate_limited(self, reason: str) -> None:
        """A 429 was sent, for ``reason`` (``rpm``, ``tpm``, ``concurrency``, ``outage``...)."""
        with self._lock:
            self._counts["rate_limited_total"] += 1
            self._limited_by_reason[reason] = self._limited_by_reason.get(reason, 0) + 1

    def fault(self, kind: str) -> None:
        """A fault was injected: ``500``, ``503``, ``drop``, ``truncate``, ``slow``, ``outage``."""
        with self._lock:
            if kind != "slow":
                self._counts["errors_injected_total"] += 1
            self._faults_by_kind[kind] = self._faults_by_kind.get(kind, 0) + 1

    def tokens(
        self,
        *,
        prompt: int = 0,
        completion: int = 0,
        embedding: int = 0,
        inputs: int = 0,
        stream: bool = False,
        model: str | None = None,
        cached: int = 0,
        reasoning: int = 0,
    ) -> None:
        """Tokens of an answer being sent (and texts embedded, streams started).

        ``cached`` and ``reasoning`` are parts of ``prompt`` and ``completion``; with
        ``model`` the tokens are also counted per model (``tokens_by_model``).
        """
        with self._lock:
            c = self._counts
            c["prompt_tokens_total"] += prompt
            c["cached_tokens_total"] += cached
            c["completion_tokens_total"] += completion
            c["reasoning_tokens_total"] += reasoning
            c["embedding_tokens_total"] += embedding
            c["embedding_inputs_total"] += inputs
            c["streams_total"] += stream
            if model is not None:
                per = self._by_model.get(model)
                if per is None:
                    per = self._by_model[model] = dict.fromkeys(_PER_MODEL, 0)
                per["prompt"] += prompt
                per["cached"] += cached
                per["completion"] += completion
                per["reasoning"] += reasoning
                per["embedding"] += embedding

    def snapshot(self) -> dict[str, Any]:
        """A plain, JSON-ready dict of every count (see the class docstring for the keys)."""
        with self._lock:
            c = dict(self._counts)
            out: dict[str, Any] = {
                "requests_total": c.pop("requests_total"),
                "requests_by_endpoint": dict(self._by_endpoint),
                "requests_by_model": dict(self._requests_by_model),
                "responses_by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "connections_opened": c.pop("connections_opened"),
                "connections_closed": c.pop("connections_closed"),
                "connections_active": self._open_connections,
                "inflight": self._inflight,
                "peak_inflight": self._peak,
                "rate_limited_total": c.pop("rate_limited_total"),
                "rate_limited_by_reason": dict(self._limited_by_reason),
                "errors_injected_total": c.pop("errors_injected_total"),
                "faults_by_kind": dict(self._faults_by_kind),
                "tokens_by_model": {m: dict(v) for m, v in sorted(self._by_model.items())},
            }
        out["tokens_total"] = (
            c["prompt_tokens_total"] + c["completion_tokens_total"] + c["embedding_tokens_total"]
        )
        out.update(c)
        return out

    def __repr__(self) -> str:
        s = self.snapshot()
        return (
            f"<SimulatorStats requests={s['requests_total']} inflight={s['inflight']} "
            f"peak={s['peak_inflight']} connections={s['connections_opened']} "
            f"429s={s['rate_limited_total']} faults={s['errors_injected_total']} "
            f"tokens={s['tokens_total']}>"
        )
