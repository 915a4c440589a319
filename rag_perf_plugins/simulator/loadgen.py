"""A small HTTP load generator, run in its own process to measure the simulator's throughput.

Example::

    bodies = [{"model": "text-embedding-3-small", "input": f"text {i}"} for i in range(5000)]
    result = run_load("http://127.0.0.1:8600/v1/embeddings", bodies,
                      seconds=3.0, concurrency=32)
    result["requests_per_s"], result["errors"]

It starts ``python -m rag_perf_plugins.simulator.loadgen`` (so the client does not share
the server's interpreter lock), which posts the JSON bodies in turn (cycling through the
list, so a server-side cache sees as many distinct requests as you give) over
``concurrency`` keep-alive connections, one request at a time on each, for a warm-up and then for
``seconds``, and prints one JSON line: ``requests`` (answered in the measured window),
``errors`` (non-200 answers or failures), ``elapsed_s`` and ``requests_per_s``. It
measures the server and this client together on the same machine, so the figure is a
floor for the server alone.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

__all__ = ["run_load"]


def run_load(
    url: str,
    bodies: Sequence[dict[str, Any]],
    *,
    seconds: float,
    concurrency: int = 32,
    warmup_s: float = 0.5,
) -> dict[str, float]:
    """Drive ``url`` from a separate process; returns its counts (see the module docstring).

    Raises:
        ValueError: ``seconds`` or ``warmup_s`` is negative, or ``concurrency`` below 1.
        RuntimeError: the load process failed.
    """
    if seconds <= 0 or warmup_s < 0:
        msg = f"seconds must be > 0 and warmup_s >= 0, got {seconds!r} and {warmup_s!r}"
        raise ValueError(msg)
    if concurrency < 1:
        msg = f"concurrency must be >= 1, got {concurrency!r}"
        raise ValueError(msg)
    if not bodies:
        raise ValueError("bodies must hold at least one JSON body")
    command = [
        sys.executable,
        "-m",
        "rag_perf_plugins.simulator.loadgen",
        url,
        f"--seconds={seconds}",
        f"--concurrency={concurrency}",
        f"--warmup={warmup_s}",
    ]
    done = subprocess.run(
        command,
        input=json.dumps(list(bodies)),  # on stdin: one argument may hold only 128 KiB
        capture_output=True,
        text=True,
        timeout=seconds + warmup_s + 60,
        check=False,
    )
    if done.returncode != 0:
        msg = f"load generator failed ({done.returncode}): {done.stderr.strip()[-2000:]}"
        raise RuntimeError(msg)
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class _KeepAliveClient(asyncio.Protocol):
    """One keep-alive connection sending the same request again as soon as each answer ends.

    Parses only what it needs (status and Content-Length), so the client costs far less
    CPU per request than the server it measures; aiohttp's or httpx's client would cost
    more than the server and, on a two-core machine, the figure would measure the client.
    """

    def __init__(self, requests: Sequence[bytes], state: _LoadState) -> None:
        self._requests = requests
        self._next = 0
        self._state = state
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        assert self._transport is not None
        if self._state.running():
            self._transport.write(self._requests[self._next])
            self._next = (self._next + 1) % len(self._requests)
        else:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self._buffer[:head_end].lower()
            marker = head.find(b"content-length:")
            if marker < 0:  # not an answer this client understands: count and stop
                self._state.record(ok=False)
                assert self._transport is not None
                self._transport.close()
                return
            length = int(head[marker + 15 : head.find(b"\r\n", marker)].strip() or b"0")
            end = head_end + 4 + length
            if len(self._buffer) < end:
                return
            self._state.record(ok=head[9:12] == b"200")
            self._buffer = self._buffer[end:]
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _LoadState:
    __slots__ = ("errors", "loop", "measuring", "requests", "stop_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, stop_at: float) -> None:
        self.loop = loop
        self.stop_at = stop_at
        self.measuring = False
        self.requests = 0
        self.errors = 0

    def running(self) -> bool:
        return self.loop.time() < self.stop_at

    def record(self, *, ok: bool) -> None:
        if self.measuring:
            if ok:
                self.requests += 1
            else:
                self.errors += 1


async def _drive(
    url: str, payloads: Sequence[bytes], *, seconds: float, concurrency: int, warmup_s: float
) -> dict[str, float]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [
        (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/json\r\nAuthorization: Bearer sk-load\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        + payload
        for payload in payloads
    ]
    loop = asyncio.get_running_loop()
    state = _LoadState(loop, loop.time() + warmup_s + seconds)
    clients: list[_KeepAliveClient] = []
    for k in range(concurrency):
        # Connections start evenly spread over the list, so a body comes round again only
        # after about len(bodies) requests in all.
        offset = k * len(requests) // concurrency
        mine = requests[offset:] + requests[:offset]
        _, protocol = await loop.create_connection(
            functools.partial(_KeepAliveClient, mine, state), host, port
        )
        clients.append(protocol)
    await asyncio.sleep(warmup_s)
    state.measuring = True
    started = time.perf_counter()
    await asyncio.gather(*(c.closed for c in clients))
    elapsed = time.perf_counter() - started
    return {
        "requests": state.requests,
        "errors": state.errors,
        "elapsed_s": elapsed,
        "requests_per_s": state.requests / elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    """Command-line entry of the load process; prints one JSON line."""
    parser = argparse.ArgumentParser(
        description="POST JSON bodies (a JSON list on stdin) as fast as possible."
    )
    parser.add_argument("url")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args(argv)
    result = asyncio.run(
        _drive(
            args.url,
            [json.dumps(body).encode() for body in json.load(sys.stdin)],
            seconds=args.seconds,
            concurrency=args.concurrency,
            warmup_s=args.warmup,
        )
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a subprocess
    sys.exit(main())
