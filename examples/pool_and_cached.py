"""The generic connection pool and the ``@cached`` decorator (the seed's examples).

Run it with ``python examples/pool_and_cached.py``. It starts the bundled provider
simulator unless ``RAG_PERF_BASE_URL`` points at a running OpenAI-compatible provider, and
keeps its cache in a temporary directory.

``ConnectionPool`` pools any expensive object; here each connection is a raw TCP socket to
the provider speaking HTTP/1.1 keep-alive, so the simulator's connection counter shows the
reuse. (For HTTP providers in real code use the shared clients of
``rag_perf_plugins.pool.http``; this pool is for database sessions, gRPC channels and sockets.)
``@cached`` stores a function's results by its arguments in the persistent cache.
"""

from __future__ import annotations

import json
import socket
import tempfile
from urllib.parse import urlsplit

from rag_perf_plugins import (
    CacheManager,
    ConnectionPool,
    ConnectionPoolConfig,
    PerformanceConfig,
    cached,
    get_cache_manager,
    set_cache_manager,
)
from rag_perf_plugins.simulator import provider_url


class HttpConnection:
    """One keep-alive HTTP/1.1 connection (just enough for GET /v1/models)."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.path = parts.hostname or "127.0.0.1", parts.path.rstrip("/")
        self.sock = socket.create_connection((self.host, parts.port or 80), timeout=10.0)
        self.reader = self.sock.makefile("rb")

    def get(self, path: str) -> dict[str, object]:
        request = f"GET {self.path}{path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n"
        self.sock.sendall(request.encode())
        length = 0
        self.reader.readline()  # status line
        while (line := self.reader.readline().strip()) != b"":
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        body: dict[str, object] = json.loads(self.reader.read(length))
        return body

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as cache_dir, provider_url(latency_ms=5.0, seed=1) as url:
        set_cache_manager(CacheManager(PerformanceConfig(cache_dir=cache_dir)))
        pool = ConnectionPool(
            lambda: HttpConnection(url),
            ConnectionPoolConfig(max_connections=4, min_connections=1, connection_timeout=5.0),
        )
        # The seed's explicit API...
        conn = pool.get_connection()
        try:
            models = conn.get("/models")
        finally:
            pool.return_connection(conn)
        print(f"models listed: {len(models['data'])}")  # type: ignore[arg-type]
        # ...and the context manager (an OSError inside marks the connection broken).
        for _ in range(20):
            with pool.connection() as conn:
                conn.get("/models/gpt-4o-mini")
        stats = pool.get_stats()
        print(
            f"pool: {stats.borrows} borrows, {stats.created} connections created, "
            f"reuse ratio {stats.reuse_ratio:.0%}"
        )
        pool.close()

        calls = 0

        @cached(ttl=1800.0)
        def expensive(term: str) -> dict[str, int]:
            nonlocal calls
            calls += 1
            return {"term_length": len(term)}

        results = [expensive(term) for term in ["rag", "cache", "rag", "rag", "cache"]]
        print(f"@cached: 5 calls, {calls} computed, results {results}")
        cache = get_cache_manager()
        cache.set("key", "value", ttl=3600.0)
        print(
            f"cache.get('key') = {cache.get('key')!r}; hit rate {cache.get_stats()['hit_rate']:.0%}"
        )
        set_cache_manager(None)


if __name__ == "__main__":
    main()
