"""SQLAlchemy engines that borrow their connections from a psycopg pool you own.

LangChain's ``PGVector(connection=engine)`` and LlamaIndex's
``PGVectorStore(engine=..., async_engine=...)`` accept an engine; build it here around a
``psycopg_pool`` pool and every search, in every store sharing the pool, uses one of the
pool's connections, so the server never sees more than the pool's ``max_size``::

    from psycopg_pool import AsyncConnectionPool, ConnectionPool
    from rag_perf_plugins.pool.postgres import async_pooled_engine, pooled_engine

    pool = ConnectionPool("host=127.0.0.1 dbname=rag", max_size=8, close_returns=True)
    store = PGVector(embeddings, connection=pooled_engine(pool), collection_name="docs")
    ...
    pool.close()

The pool must be built with ``close_returns=True``: SQLAlchemy (with its own pooling off,
``NullPool``) closes each connection it is done with, and psycopg then hands it back to
the pool instead of closing it. Needs the ``stores`` extra (sqlalchemy, psycopg, psycopg-pool).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool, ConnectionPool
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["async_pooled_engine", "pooled_engine"]

_URL = "postgresql+psycopg://"


def _check(pool: Any) -> None:
    if not getattr(pool, "close_returns", False):
        raise ConfigError(
            f"close_returns: must be True on the psycopg pool passed here (got "
            f"{getattr(pool, 'close_returns', None)!r}); build it with "
            "ConnectionPool(..., close_returns=True) so that closed connections go back "
            "to the pool",
            key="close_returns",
            value=getattr(pool, "close_returns", None),
        )


def pooled_engine(pool: ConnectionPool[Any], **engine_args: Any) -> Engine:
    """A sync engine whose connections come from ``pool`` (at most its ``max_size``).

    Example::

        engine = pooled_engine(ConnectionPool(dsn, max_size=8, close_returns=True))
        PGVector(embeddings, connection=engine, collection_name="docs")

    ``engine_args`` go to ``sqlalchemy.create_engine`` (``poolclass`` and ``creator`` are
    set here). Disposing the engine leaves the pool open: close the pool yourself.
    """
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    _check(pool)
    return create_engine(_URL, creator=pool.getconn, poolclass=NullPool, **engine_args)


def async_pooled_engine(pool: AsyncConnectionPool[Any], **engine_args: Any) -> AsyncEngine:
    """An async engine whose connections come from ``pool`` (at most its ``max_size``).

    Example::

        pool = AsyncConnectionPool(dsn, max_size=8, close_returns=True, open=False)
        await pool.open()
        PGVector(embeddings, connection=async_pooled_engine(pool), async_mode=True, ...)

    Use it from the event loop the pool was opened on.
    """
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    _check(pool)
    return create_async_engine(_URL, async_creator=pool.getconn, poolclass=NullPool, **engine_args)
