"""Generic connection pools: ConnectionPool (threads) and AsyncConnectionPool (one loop).

For HTTP providers use :mod:`rag_perf_plugins.pool.http` instead: httpx already pools HTTP
connections, and the registry there shares one correctly-scoped client per base URL and
event loop. These pools are for everything else: database sessions, gRPC channels,
sockets, SDK objects that are expensive to build::

    from rag_perf_plugins.pool import ConnectionPool, ConnectionPoolConfig

    pool = ConnectionPool(make_connection, ConnectionPoolConfig(max_connections=10,
                                                                min_connections=2))
    with pool.connection() as conn:
        conn.query("...")
    pool.get_stats()        # PoolStats(created=2, reused=1, reuse_ratio=1.0, ...)
    pool.close()

Both pools share one I/O-free bookkeeping core, so limits, FIFO fairness, expiry and the
statistics behave the same in both.
"""

from __future__ import annotations

from ..errors import PoolClosed, PoolError, PoolTimeout
from .aio import DEFAULT_ABROKEN_ON, AsyncConnectionPool
from .core import ConnectionPoolConfig, PoolStats
from .sync import DEFAULT_BROKEN_ON, ConnectionPool

__all__ = [
    "AsyncConnectionPool",
    "ConnectionPool",
    "ConnectionPoolConfig",
    "PoolStats",
    # Which exceptions mark a connection broken inside connection() (sync / async).
    "DEFAULT_ABROKEN_ON",
    "DEFAULT_BROKEN_ON",
    # Errors, re-exported for convenience.
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
]
