"""The simulator's HTTP server (aiohttp), on the caller's event loop or in its own thread.

Example::

    async with Simulator(latency_ms=20.0, rpm=600) as sim:          # on the running loop
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="sk-test")
        await client.embeddings.create(model="text-embedding-3-small", input=["hi"])
        sim.stats()["requests_total"]                                # 1

    with Simulator().in_thread() as sim:      # its own loop in a background thread: for
        ...                                   # sync code (from_texts, from_documents)

Endpoints: ``POST /v1/embeddings``, ``POST /v1/chat/completions`` (JSON or SSE stream),
``GET /v1/models``, ``GET /v1/models/{id}``; Anthropic's ``POST /v1/messages`` (JSON or SSE
events, tool use, prompt-cache usage: :mod:`.anthropic`); Azure OpenAI's
``POST /openai/deployments/{deployment}/chat/completions`` and ``.../embeddings`` (the
``api-version`` query parameter is required; the deployment name is the model); ``GET
/stats`` and ``POST /stats/reset`` (control endpoints, not counted). Each answer to a
provider request passes, in order: a dropped-connection roll, the concurrency cap, the
injected-429 roll, the RPM and TPM buckets, the overload roll (529 on Anthropic's route,
503 elsewhere), the 500/503 roll, then the latency model (plus a slow roll) and, last, the
truncation roll. Every OpenAI response carries ``x-ratelimit-*`` headers for the limits
that are set; a 429 carries ``Retry-After`` (seconds, fractions allowed, as the OpenAI SDK
reads it) and ``retry-after-ms``.

Provider headers: Anthropic answers carry ``anthropic-ratelimit-{requests,tokens}-{limit,
remaining,reset}`` (reset as an RFC 3339 time) for the limits that are set, and its errors
use Anthropic's envelope (``rate_limit_error`` 429, ``overloaded_error`` 529, the latter
drawn with ``overload_rate`` and sent with ``retry_after_s`` as ``Retry-After``). Azure
answers always carry ``x-ratelimit-remaining-{requests,tokens}`` and
``x-ratelimit-reset-{requests,tokens}`` (seconds); for a limit that is not set they send
``-1`` and ``0``, as Azure does for deployments without that quota. ``limit_scope``
(``account`` or ``model``) says whether one budget covers every model and route or each
model / deployment has its own.

It listens on 127.0.0.1 only, with no authentication (any API key is accepted). Built on
aiohttp's low-level :class:`aiohttp.web.Server`, whose protocol hooks give an exact count
of TCP connections accepted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .._clock import Clock, monotonic
from .anthropic import (
    MessagesRequest,
    anthropic_error_body,
    message_body,
    message_events,
    parse_messages,
)
from .anthropic import PromptCache as MessagesPromptCache
from .chat import (
    ChatInputError,
    ChatPlan,
    ChatRequest,
    PromptCache,
    completion_body,
    plan_chat,
    stream_events,
)
from .embeddings import KNOWN_MODELS, Embedder, EmbeddingInputError
from .limits import FaultDice, Roll, TokenBucket, format_reset
from .options import SimulatorOptions
from .outage import Outage
from .stats import SimulatorStats

__all__ = ["Simulator", "ThreadedSimulator"]

AsyncSleep = Callable[[float], Awaitable[None]]

_CHAT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-3.5-turbo")
_JSON = "application/json"
# How long stop() lets in-flight requests finish; aiohttp waits this twice (graceful, then
# after cancelling the request), so the grace is at most half a second in all.
_SHUTDOWN_TIMEOUT_S = 0.25
_EMBEDDINGS = "/v1/embeddings"
_CHAT = "/v1/chat/completions"
_MODELS = "/v1/models"
_MESSAGES = "/v1/messages"
_AZURE = "/openai/deployments/"
_AZURE_CHAT = "azure:chat/completions"
_AZURE_EMBEDDINGS = "azure:embeddings"
_STYLE_OPENAI, _STYLE_ANTHROPIC, _STYLE_AZURE = "openai", "anthropic", "azure"


class _CountingServer(web.Server):
    """aiohttp's low-level server, counting every TCP connection it accepts and loses."""

    def __init__(self, handler: Any, *, stats: SimulatorStats, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._stats = stats

    def connection_made(self, handler: web.RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._stats.connection_opened()

    def connection_lost(
        self, handler: web.RequestHandler, exc: BaseException | None = None
    ) -> None:
        super().connection_lost(handler, exc)
        self._stats.connection_closed()


def _error_body(message: str, kind: str, code: str | None = None) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": kind, "param": None, "code": code}}
    ).encode()


def _seconds_text(seconds: float) -> str:
    return f"{round(seconds, 3):g}"


class _Refused(Exception):
    """Internal: answer this request with ``status`` and ``body`` now."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or {}


class Simulator:
    """An OpenAI-compatible provider on loopback that counts what it sees.

    Example::

        async with Simulator(latency_ms=5.0, error_rate=0.1, seed=1) as sim:
            ...  # point clients at sim.base_url
            assert sim.stats()["connections_opened"] == 3

    Args:
        options: a :class:`SimulatorOptions`; keyword options override its fields.
        host: address to listen on (loopback by default).
        port: TCP port; 0 picks a free one (read it from :attr:`port`).
        clock: seconds, monotonic: drives the RPM/TPM buckets (pass a FakeClock in tests).
        sleep: awaited for every simulated delay, in seconds (``asyncio.sleep``).
        **overrides: any :class:`SimulatorOptions` field (``latency_ms``, ``rpm``, ...).

    Raises:
        ValueError: an option is unknown or out of range (the message names it).

    Start and stop it on one event loop. :meth:`stats` and :meth:`reset_stats` may be
    called from any thread. Not done: TLS, authentication, the Assistants/Responses/Batch
    APIs, images and audio.
    """

    def __init__(
        self,
        options: SimulatorOptions | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Clock = monotonic,
        sleep: AsyncSleep = asyncio.sleep,
        **overrides: Any,
    ) -> None:
        unknown = sorted(set(overrides) - set(SimulatorOptions.names()))
        if unknown:
            msg = (
                f"unknown simulator option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(SimulatorOptions.names())}"
            )
            raise ValueError(msg)
        base = options or SimulatorOptions()
        self.options = base.replace(**overrides) if overrides else base
        if not isinstance(port, int) or not 0 <= port <= 65535:
            msg = f"port must be an integer in [0, 65535], got {port!r}"
            raise ValueError(msg)
        self.host = host
        self._requested_port = port
        self._clock = clock
        self._sleep = sleep
        self._stats = SimulatorStats()
        self._embedder = Embedder(default_dim=self.options.embedding_dim)
        self._prompt_cache = PromptCache()
        self._dice = FaultDice(self.options)
        self._budgets: dict[str, tuple[TokenBucket | None, TokenBucket | None]] = {}
        self._rpm, self._tpm = self._budget("")
        self._messages_cache = MessagesPromptCache()
        self._ids = itertools.count(1)
        self._born = clock()  # outage windows count from here
        self._outages: list[Outage] = list(self.options.outages)
        # Its own draws: other rolls keep their order.
        self._outage_rng = random.Random(self.options.seed)
        self._outage_lock = threading.Lock()
        self._runner: web.ServerRunner | None = None
        self._port: int | None = None
        models = sorted({*_CHAT_MODELS, *KNOWN_MODELS})
        self._models_body = json.dumps(
            {"object": "list", "data": [self._model_json(m) for m in models]}
        ).encode()

    def _budget(self, model: str) -> tuple[TokenBucket | None, TokenBucket | None]:
        """The RPM and TPM buckets of ``model``'s scope (one pair for ``account`` scope)."""
        scope = model if self.options.limit_scope == "model" else ""
        pair = self._budgets.get(scope)
        if pair is None:
            o = self.options
            pair = self._budgets[scope] = (
                TokenBucket(rate_per_minute=o.rpm, burst_seconds=o.burst_seconds, clock=self._clock)
                if o.rpm is not None
                else None,
                TokenBucket(rate_per_minute=o.tpm, burst_seconds=o.burst_seconds, clock=self._clock)
                if o.tpm is not None
                else None,
            )
        return pair

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> Simulator:
        """Start listening on the running loop; returns self. Idempotent while running."""
        if self._runner is not None:
            return self
        server = _CountingServer(
            self._handle, stats=self._stats, access_log=None, handler_cancellation=False
        )
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        """Stop listening and close every connection (in-flight requests get up to 0.5 s)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def in_thread(self) -> ThreadedSimulator:
        """Run this simulator on its own event loop in a background thread (for sync code)."""
        return ThreadedSimulator(self)

    # ---- what callers read -----------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the server is listening."""
        return self._runner is not None

    @property
    def port(self) -> int:
        """The TCP port it listens on (only while running)."""
        if self._port is None:
            raise RuntimeError("the simulator is not started: use `async with Simulator()`")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the ``base_url`` / ``api_base`` for clients."""
        return f"http://{self.host}:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        """A plain dict of every counter; thread-safe (see :class:`SimulatorStats`)."""
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        """Zero the counters (not the rate-limit buckets); thread-safe."""
        self._stats.reset()

    def elapsed(self) -> float:
        """Seconds on the simulator's clock since it was built (the outages' time axis)."""
        return self._clock() - self._born

    def add_outage(self, outage: Outage | None = None, **fields: Any) -> Outage:
        """Schedule an outage; ``start_s`` defaults to now. Thread-safe.

        Example: ``sim.add_outage(model="gpt-4o-mini", duration_s=10.0)`` (503s from now
        for 10 s), or ``sim.add_outage(Outage(...))`` with its own start.
        """
        if outage is None:
            fields.setdefault("start_s", self.elapsed())
            outage = Outage(**fields)
        with self._outage_lock:
            self._outages.append(outage)
        return outage

    def _outage(self, route: str, model: str | None) -> Outage | None:
        if not self._outages:
            return None
        elapsed = self.elapsed()
        with self._outage_lock:
            for outage in self._outages:
                if outage.active(elapsed, route, model) and (
                    outage.rate >= 1.0 or self._outage_rng.random() < outage.rate
                ):
                    return outage
        return None

    def __repr__(self) -> str:
        where = self.base_url if self.running else "stopped"
        s = self._stats.snapshot()
        return (
            f"<Simulator {where} requests={s['requests_total']} inflight={s['inflight']} "
            f"connections={s['connections_opened']} 429s={s['rate_limited_total']}>"
        )

    # ---- request handling ------------------------------------------------------------

    @staticmethod
    def _model_json(model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": 0, "owned_by": "rag-perf-simulator"}

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == "/stats" or path == "/stats/reset":
            return self._control(request)
        endpoint = path if path in (_EMBEDDINGS, _CHAT, _MODELS, _MESSAGES) else "other"
        if endpoint == "other" and path.startswith(_MODELS + "/"):
            endpoint = _MODELS
        elif endpoint == "other" and path.startswith(_AZURE):
            tail = path[len(_AZURE) :].partition("/")[2]
            endpoint = {"chat/completions": _AZURE_CHAT, "embeddings": _AZURE_EMBEDDINGS}.get(
                tail, "other"
            )
        inflight = self._stats.request_started(endpoint)
        status: int | None = None
        try:
            response = await self._answer(request, endpoint, path, inflight)
            status = None if response is None else response.status
            return response if response is not None else web.Response(status=499)
        finally:
            self._stats.request_finished(status)

    def _control(self, request: web.BaseRequest) -> web.Response:
        if request.path == "/stats" and request.method == "GET":
            return web.Response(body=json.dumps(self.stats()).encode(), content_type=_JSON)
        if request.path == "/stats/reset" and request.method == "POST":
            self.reset_stats()
            return web.Response(body=b'{"reset":true}', content_type=_JSON)
        return web.Response(status=405, body=_error_body("method not allowed", "invalid_request"))

    async def _answer(
        self, request: web.BaseRequest, endpoint: str, path: str, inflight: int
    ) -> web.StreamResponse | None:
        method = request.method
        if endpoint == "other" or (endpoint == _MODELS) != (method == "GET"):
            status = 404 if endpoint == "other" else 405
            body = _error_body(f"no route for {method} {path}", "invalid_request_error")
            return web.Response(status=status, body=body, content_type=_JSON)
        body_bytes = await request.read()
        style = (
            _STYLE_ANTHROPIC
            if endpoint == _MESSAGES
            else _STYLE_AZURE
            if endpoint in (_AZURE_CHAT, _AZURE_EMBEDDINGS)
            else _STYLE_OPENAI
        )
        scope = ""
        roll = self._dice.roll()
        if roll.drop:
            self._stats.fault("drop")
            self._drop(request)
            return None
        try:
            if style == _STYLE_AZURE:
                scope = path[len(_AZURE) :].partition("/")[0]
                if not request.query.get("api-version"):
                    raise _Refused(
                        404,
                        _error_body(
                            "Resource not found: the api-version query parameter is required.",
                            "invalid_request_error",
                            "404",
                        ),
                    )
            self._admit_concurrency(inflight)
            if roll.rate_limit:
                wait = self.options.retry_after_s
                self._stats.rate_limited("injected")
                raise _Refused(
                    429,
                    _error_body(
                        "Rate limit reached (injected by the simulator).",
                        "requests",
                        "rate_limit_exceeded",
                    ),
                    self._retry_headers(wait),
                )
            if endpoint == _MODELS:
                return await self._models(request, path, roll)
            payload = self._decode(body_bytes)
            if style == _STYLE_AZURE and isinstance(payload, dict):
                payload = {**payload, "model": scope}
            elif isinstance(payload, dict) and isinstance(payload.get("model"), str):
                scope = payload["model"]
            model = payload.get("model") if isinstance(payload, dict) else None
            model = model if isinstance(model, str) else None
            self._stats.model_request(model)
            self._fail_outage(endpoint, model)
            if endpoint == _MESSAGES:
                return await self._messages(request, payload, roll)
            if endpoint in (_EMBEDDINGS, _AZURE_EMBEDDINGS):
                return await self._embeddings(request, payload, roll, style)
            return await self._chat(request, payload, roll, style)
        except _Refused as refused:
            headers = self._limit_headers(scope, style)
            headers.update(refused.headers)
            body = refused.body
            if style == _STYLE_ANTHROPIC:
                body = _anthropic_error(refused)
            return web.Response(status=refused.status, body=body, headers=headers)

    @staticmethod
    def _decode(body: bytes) -> Any:
        try:
            return json.loads(body)
        except ValueError as exc:
            raise _Refused(
                400, _error_body(f"request body is not valid JSON: {exc}", "invalid_request_error")
            ) from None

    def _admit_concurrency(self, inflight: int) -> None:
        cap = self.options.max_concurrency
        if cap is not None and inflight > cap:
            self._stats.rate_limited("concurrency")
            raise _Refused(
                429,
                _error_body(
                    f"Too many concurrent requests (limit {cap}).",
                    "requests",
                    "rate_limit_exceeded",
                ),
                self._retry_headers(self.options.retry_after_s),
            )

    def _admit_budget(self, tokens: int, model: str = "") -> None:
        rpm, tpm = self._budget(model)
        wait_r = rpm.wait_for(1.0) if rpm is not None else 0.0
        wait_t = tpm.wait_for(float(tokens)) if tpm is not None else 0.0
        if wait_r > 0.0 or wait_t > 0.0:
            reason = "rpm" if wait_r >= wait_t else "tpm"
            self._stats.rate_limited(reason)
            limit = self.options.rpm if reason == "rpm" else self.options.tpm
            kind = "requests" if reason == "rpm" else "tokens"
            message = f"Rate limit reached: limit {limit:g} {kind} per minute."
            raise _Refused(
                429,
                _error_body(message, kind, "rate_limit_exceeded"),
                self._retry_headers(max(wait_r, wait_t)),
            )
        if rpm is not None:
            rpm.take(1.0)
        if tpm is not None:
            tpm.take(float(tokens))

    @staticmethod
    def _retry_headers(seconds: float) -> dict[str, str]:
        return {
            "Retry-After": _seconds_text(seconds),
            "retry-after-ms": str(max(1, round(seconds * 1000))),
        }

    def _limit_headers(self, model: str = "", style: str = _STYLE_OPENAI) -> dict[str, str]:
        # Content-Type set here, not through content_type=: aiohttp parses that argument.
        headers = {"Content-Type": _JSON, "x-request-id": f"req_sim_{next(self._ids):x}"}
        rpm, tpm = self._budget(model)
        if style == _STYLE_ANTHROPIC:
            now = time.time()
            for name, bucket, limit in (
                ("requests", rpm, self.options.rpm),
                ("tokens", tpm, self.options.tpm),
            ):
                if bucket is None or limit is None:
                    continue
                # Whole seconds, rounded up: never earlier than the bucket is full again.
                reset = time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(now + bucket.reset_after()))
                )
                headers[f"anthropic-ratelimit-{name}-limit"] = f"{limit:g}"
                headers[f"anthropic-ratelimit-{name}-remaining"] = str(bucket.remaining())
                headers[f"anthropic-ratelimit-{name}-reset"] = reset
            return headers
        if style == _STYLE_AZURE:
            for name, bucket in (("requests", rpm), ("tokens", tpm)):
                if bucket is None:
                    headers[f"x-ratelimit-remaining-{name}"] = "-1"
                    headers[f"x-ratelimit-reset-{name}"] = "0"
                else:
                    headers[f"x-ratelimit-remaining-{name}"] = str(bucket.remaining())
                    headers[f"x-ratelimit-reset-{name}"] = str(math.ceil(bucket.reset_after()))
            return headers
        if self._rpm is not None:
            headers["x-ratelimit-limit-requests"] = f"{self.options.rpm:g}"
            headers["x-ratelimit-remaining-requests"] = str(rpm.remaining()) if rpm else "0"
            headers["x-ratelimit-reset-requests"] = format_reset(rpm.reset_after() if rpm else 0)
        if self._tpm is not None:
            headers["x-ratelimit-limit-tokens"] = f"{self.options.tpm:g}"
            headers["x-ratelimit-remaining-tokens"] = str(tpm.remaining()) if tpm else "0"
            headers["x-ratelimit-reset-tokens"] = format_reset(tpm.reset_after() if tpm else 0)
        return headers

    def _fail_outage(self, route: str, model: str | None) -> None:
        outage = self._outage(route, model)
        if outage is None:
            return
        self._stats.fault("outage")
        if outage.status == 429:
            self._stats.rate_limited("outage")
            raise _Refused(
                429,
                _error_body(
                    "Rate limit reached (scheduled outage).", "requests", "rate_limit_exceeded"
                ),
                self._retry_headers(outage.retry_after_s),
            )
        message = f"The model {model or '?'} is unavailable (scheduled outage)."
        raise _Refused(outage.status, _error_body(message, "server_error"))

    def _fail_injected(self, roll: Roll, style: str = _STYLE_OPENAI) -> None:
        if roll.overload:
            self._stats.fault("529" if style == _STYLE_ANTHROPIC else "503")
            if style == _STYLE_ANTHROPIC:
                raise _Refused(
                    529,
                    anthropic_error_body("overloaded_error", "Overloaded"),
                    self._retry_headers(self.options.retry_after_s),
                )
            message = "The engine is currently overloaded (injected)."
            raise _Refused(503, _error_body(message, "server_error"))
        if roll.error:
            self._stats.fault(str(roll.error))
            message = (
                "The server had an error while processing your request (injected)."
                if roll.error == 500
                else "The engine is currently overloaded (injected)."
            )
            raise _Refused(roll.error, _error_body(message, "server_error"))

    def _base_delay(self, roll: Roll) -> float:
        delay = self.options.latency_ms / 1000.0 + roll.jitter_s
        if roll.slow:
            self._stats.fault("slow")
            delay += self.options.slow_ms / 1000.0
        return delay

    @staticmethod
    def _drop(request: web.BaseRequest) -> None:
        # Close without a byte of answer; aiohttp then finds the transport closing, skips the
        # response and ends the connection (the client sees "server disconnected").
        transport = request.transport
        if transport is not None:
            transport.close()

    async def _send_json(
        self,
        request: web.BaseRequest,
        body: bytes,
        roll: Roll,
        model: str = "",
        style: str = _STYLE_OPENAI,
    ) -> web.StreamResponse | None:
        headers = self._limit_headers(model, style)
        if not roll.truncate:
            return web.Response(body=body, headers=headers)
        # Truncated: promise the whole body, send half, then close the connection.
        self._stats.fault("truncate")
        response = web.StreamResponse(headers=headers)
        response.content_length = len(body)
        try:
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
        except ConnectionError:
            return None
        self._drop(request)
        return response

    async def _models(
        self, request: web.BaseRequest, path: str, roll: Roll
    ) -> web.StreamResponse | None:
        self._admit_budget(0)
        self._fail_injected(roll)
        delay = self._base_delay(roll)
        if delay > 0.0:
            await self._sleep(delay)
        if path == _MODELS:
            return await self._send_json(request, self._models_body, roll)
        model = path[len(_MODELS) + 1 :]
        return await self._send_json(request, json.dumps(self._model_json(model)).encode(), roll)

    async def _embeddings(
        self, request: web.BaseRequest, payload: Any, roll: Roll, style: str = _STYLE_OPENAI
    ) -> web.StreamResponse | None:
        model, inputs, dimensions, encoding = self._embedding_request(payload)
        try:
            values, tokens = self._embedder.embed_json(model, inputs, dimensions, encoding)
        except EmbeddingInputError as exc:
            raise _Refused(400, _error_body(str(exc), "invalid_request_error")) from None
        self._admit_budget(tokens, model)
        self._fail_injected(roll, style)
        delay = self._base_delay(roll) + tokens * self.options.embedding_latency_per_token_ms / 1e3
        if delay > 0.0:
            await self._sleep(delay)
        # Assembled from pre-encoded pieces: json.dumps would rescan every vector's text.
        items = b",".join(
            b'{"object":"embedding","index":%d,"embedding":%s}' % (i, value)
            for i, value in enumerate(values)
        )
        body = b'{"object":"list","data":[%s],"model":%s,"usage":%s}' % (
            items,
            json.dumps(model).encode(),
            b'{"prompt_tokens":%d,"total_tokens":%d}' % (tokens, tokens),
        )
        self._stats.tokens(embedding=tokens, inputs=len(inputs), model=model)
        return await self._send_json(request, body, roll, model, style)

    @staticmethod
    def _embedding_request(payload: Any) -> tuple[str, list[Any], int | None, str]:
        def bad(message: str) -> _Refused:
            return _Refused(400, _error_body(message, "invalid_request_error"))

        if not isinstance(payload, dict):
            raise bad("request body must be a JSON object")
        model = payload.get("model")
        if not isinstance(model, str) or not model:
            raise bad("'model' is required and must be a string")
        raw = payload.get("input")
        inputs: list[Any]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [raw]  # one pre-tokenised input
        elif (
            isinstance(raw, list)
            and raw
            and all(
                isinstance(x, str) or (isinstance(x, list) and all(isinstance(t, int) for t in x))
                for x in raw
            )
        ):
            inputs = raw
        else:
            raise bad("'input' must be a string, a list of strings, or token id arrays")
        if len(inputs) > 2048:
            raise bad(f"'input' has {len(inputs)} items; at most 2048 are allowed")
        encoding = payload.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise bad(f"'encoding_format' must be 'float' or 'base64', got {encoding!r}")
        return model, inputs, payload.get("dimensions"), encoding

    async def _chat(
        self, request: web.BaseRequest, payload: Any, roll: Roll, style: str = _STYLE_OPENAI
    ) -> web.StreamResponse | None:
        try:
            chat = ChatRequest.parse(payload)
            plan = plan_chat(chat, sample=roll.sample)
        except ChatInputError as exc:
            raise _Refused(400, _error_body(str(exc), "invalid_request_error")) from None
        self._admit_budget(plan.total_tokens, plan.model)
        self._fail_injected(roll, style)
        cached = self._prompt_cache.cached_tokens(chat)
        if cached:
            plan = dataclasses.replace(plan, cached_tokens=min(cached, plan.prompt_tokens))
        completion_id = f"chatcmpl-sim{next(self._ids):08x}"
        created = int(time.time())
        self._stats.tokens(
            prompt=plan.prompt_tokens,
            completion=plan.completion_tokens,
            stream=plan.stream,
            model=plan.model,
            cached=plan.cached_tokens,
            reasoning=plan.reasoning_tokens,
        )
        if plan.stream:
            events = stream_events(plan, completion_id, created=created)
            return await self._stream(request, plan, events, roll, style)
        o = self.options
        pieces = max((len(p) for p in plan.pieces), default=0)
        delay = (
            self._base_delay(roll)
            + plan.completion_tokens * o.latency_per_token_ms / 1e3
            + max(0, pieces - 1) * o.chunk_latency_ms / 1e3
        )
        if delay > 0.0:
            await self._sleep(delay)
        body = json.dumps(completion_body(plan, completion_id, created=created)).encode()
        return await self._send_json(request, body, roll, plan.model, style)

    async def _messages(
        self, request: web.BaseRequest, payload: Any, roll: Roll
    ) -> web.StreamResponse | None:
        try:
            parsed: MessagesRequest = parse_messages(payload)
            plan = plan_chat(parsed.chat, sample=roll.sample)
        except ChatInputError as exc:
            raise _Refused(400, anthropic_error_body("invalid_request_error", str(exc))) from None
        self._admit_budget(plan.total_tokens, plan.model)
        self._fail_injected(roll, _STYLE_ANTHROPIC)
        message_id = f"msg_sim{next(self._ids):08x}"
        cache = self._messages_cache.use(parsed)
        self._stats.tokens(
            prompt=plan.prompt_tokens,
            completion=plan.completion_tokens,
            stream=plan.stream,
            model=plan.model,
            cached=cache[1],
        )
        if plan.stream:
            events = message_events(plan, parsed, message_id, cache=cache)
            return await self._stream(request, plan, events, roll, _STYLE_ANTHROPIC)
        o = self.options
        pieces = max((len(p) for p in plan.pieces), default=0)
        delay = (
            self._base_delay(roll)
            + plan.completion_tokens * o.latency_per_token_ms / 1e3
            + max(0, pieces - 1) * o.chunk_latency_ms / 1e3
        )
        if delay > 0.0:
            await self._sleep(delay)
        body = json.dumps(message_body(plan, parsed, message_id, cache=cache)).encode()
        return await self._send_json(request, body, roll, plan.model, _STYLE_ANTHROPIC)

    async def _stream(
        self,
        request: web.BaseRequest,
        plan: ChatPlan,
        events: list[tuple[bytes, int]],
        roll: Roll,
        style: str = _STYLE_OPENAI,
    ) -> web.StreamResponse | None:
        o = self.options
        if roll.truncate:
            # Stop midway: no finish reason, no usage, no [DONE]; then the connection closes.
            self._stats.fault("truncate")
            events = events[: max(1, (len(events) - 1) // 2)]
        delay = self._base_delay(roll)
        if delay > 0.0:
            await self._sleep(delay)
        headers = self._limit_headers(plan.model, style)
        headers["Content-Type"] = "text/event-stream"
        headers["Cache-Control"] = "no-cache"
        response = web.StreamResponse(headers=headers)
        per_token_s = o.latency_per_token_ms / 1e3
        chunk_s = o.chunk_latency_ms / 1e3
        try:
            await response.prepare(request)
            pending: list[bytes] = []
            seen_tokens = False
            for data, tokens in events:
                pause = tokens * per_token_s + (chunk_s if tokens and seen_tokens else 0.0)
                seen_tokens = seen_tokens or tokens > 0
                if pause > 0.0 and pending:
                    await response.write(b"".join(pending))
                    pending.clear()
                if pause > 0.0:
                    await self._sleep(pause)
                pending.append(data)
            if roll.truncate:
                if pending:
                    await response.write(b"".join(pending))
                self._drop(request)
                return response
            # The last events and the end of the body go out in one write, so a client that
            # stops reading at [DONE] can still find the body complete and keep the connection.
            await response.write_eof(b"".join(pending))
        except ConnectionError:
            # The client went away mid-stream (or we truncated): nothing left to send.
            return None
        return response


def _anthropic_error(refused: _Refused) -> bytes:
    """A refusal's body in Anthropic's envelope (already there for 529 and bad input)."""
    try:
        data = json.loads(refused.body)
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("type") == "error":
        return refused.body
    message = ""
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        message = str(data["error"].get("message", ""))
    kind = {429: "rate_limit_error", 529: "overloaded_error", 404: "not_found_error"}.get(
        refused.status, "api_error" if refused.status >= 500 else "invalid_request_error"
    )
    return anthropic_error_body(kind, message)


class ThreadedSimulator:
    """A :class:`Simulator` running on its own event loop in a daemon thread.

    Example::

        with Simulator(latency_ms=10.0).in_thread() as sim:
            OpenAI(base_url=sim.base_url, api_key="sk-test").models.list()
            sim.stats()["requests_total"]       # 1

    Use it whenever sync code calls the simulator, or a sync client would deadlock on the
    loop it shares with the server. :meth:`start` returns the running simulator; :meth:`stop`
    closes its connections, cancels leftover tasks, shuts down async generators and the
    default executor, closes the loop and joins the thread. Not re-startable once stopped.
    """

    __slots__ = ("_error", "_loop", "_ready", "_stopped", "_thread", "simulator")

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopped = False

    def start(self, timeout: float = 30.0) -> Simulator:
        """Start the thread and the server; returns the simulator once it listens.

        Args:
            timeout: seconds to wait for the server to listen.

        Raises:
            RuntimeError: it was already stopped, or did not start within ``timeout``.
        """
        if self._stopped:
            raise RuntimeError("a ThreadedSimulator cannot be restarted; make a new one")
        if self._thread is not None:
            return self.simulator
        self._thread = threading.Thread(target=self._run, name="rag-perf-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            msg = f"the simulator did not start within {timeout:g} s"
            raise RuntimeError(msg)
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self.simulator

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.simulator.start())
            except BaseException as exc:
                self._error = exc
                return
            finally:
                self._ready.set()
            loop.run_forever()
            loop.run_until_complete(self.simulator.stop())
        finally:
            _close_loop(loop)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the server and the thread (waits up to ``timeout`` seconds); idempotent."""
        self._stopped = True
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        alive = self._thread is not None and self._thread.is_alive()
        return f"<ThreadedSimulator {'running' if alive else 'stopped'} {self.simulator!r}>"


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    try:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
