"""A throwaway PostgreSQL 16 server with pgvector, from the ``pgserver`` wheel, on loopback.

Example::

    with LocalPostgres() as pg:
        engine_url = pg.url("psycopg")     # postgresql+psycopg://postgres@127.0.0.1:PORT/postgres
        store = PGVector(embeddings, connection=engine_url, collection_name="docs")

The tests of the vector-store wrappers and the benchmark's store rows use it: the
``pgserver`` package (the ``stores`` extra) ships a PostgreSQL 16 build with the pgvector
extension inside its wheel, which Debian's PostgreSQL 15 lacks. We run its binaries
(``initdb``, ``pg_ctl``) directly on a fresh data directory under the system's temporary
directory, listening on 127.0.0.1 at a free port, with trust authentication (loopback
only), and remove everything on :meth:`LocalPostgres.stop`.

PostgreSQL refuses to run as root: as root the server runs as the ``postgres`` system user
(``runuser -u postgres``); the machine's Debian PostgreSQL package creates it. When that
user cannot reach the binaries inside the virtual environment, they are copied next to
the data directory first (34 MB). pgserver's own ``get_server()`` would instead create a
system user and widen the permissions of every parent directory, which we do not want.

Not done: anything but a throwaway server (no persistence across runs, no TLS, no
passwords).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

__all__ = ["LocalPostgres", "PostgresUnavailable"]

_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """The local PostgreSQL server could not be started (the message says why)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _install_dir() -> Path:
    # Found, not imported: importing pgserver starts its own machinery (a lock file in the
    # user's runtime directory, a warning where XDG_RUNTIME_DIR is unset).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        msg = "LocalPostgres needs pgserver: pip install 'rag-perf-plugins[stores]'"
        raise PostgresUnavailable(msg)
    return Path(spec.origin).resolve().parent / "pginstall"


class LocalPostgres:
    """Start, use and remove a PostgreSQL 16 + pgvector server on 127.0.0.1.

    Example: ``with LocalPostgres() as pg: psycopg.connect(pg.url())``.

    Args:
        port: TCP port on 127.0.0.1; ``None`` picks a free one.

    Raises:
        PostgresUnavailable: pgserver is not installed, or the process runs as root and
            there is no ``postgres`` system user, or the server did not start (its log is
            in the message).
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port if port is not None else _free_port()
        self.root: Path | None = None
        self._run_as: list[str] = []

    # --- life cycle -----------------------------------------------------------------
    def start(self) -> LocalPostgres:
        """Create the data directory, start the server, create the ``vector`` extension."""
        install = _install_dir()
        self.root = Path(tempfile.mkdtemp(prefix="rag-perf-pg-"))
        data = self.root / "data"
        if os.geteuid() == 0:
            try:
                import pwd

                entry = pwd.getpwnam(_USER)
            except KeyError:
                msg = "PostgreSQL refuses to run as root and there is no 'postgres' user"
                raise PostgresUnavailable(msg) from None
            self._run_as = ["runuser", "-u", _USER, "--"]
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            if not self._reachable(install / "bin" / "postgres"):
                shutil.copytree(install, self.root / "pginstall", symlinks=True)
                install = self.root / "pginstall"
                for path in [install, *install.rglob("*")]:
                    os.chown(path, entry.pw_uid, entry.pw_gid, follow_symlinks=False)
        self.bin = install / "bin"
        self._run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(data),
                "-U",
                _USER,
                "--auth=trust",
                "--encoding=utf8",
                "--no-sync",
            ]
        )
        options = (
            f"-p {self.port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(self.root / "server.log"),
                "-w",
                "start",
            ]
        )
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory; idempotent."""
        root, self.root = self.root, None
        if root is None:
            return
        try:
            self._run(
                [str(self.bin / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop"]
            )
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what clients need ------------------------------------------------------------
    def url(self, driver: str | None = None, database: str = "postgres") -> str:
        """The server's URL, e.g. ``postgresql://postgres@127.0.0.1:PORT/postgres``.

        ``driver="psycopg"`` gives SQLAlchemy's ``postgresql+psycopg://...`` form.
        """
        scheme = "postgresql" if driver is None else f"postgresql+{driver}"
        return f"{scheme}://{_USER}@127.0.0.1:{self.port}/{database}"

    def database(self, name: str) -> str:
        """Create database ``name`` with the ``vector`` extension if missing; returns ``name``.

        Example: ``pg.url("psycopg", pg.database("dim6"))``. LangChain's PGVector keeps every
        collection in one table whose vector column has the first store's dimension: stores
        of other dimensions need a database of their own.
        """
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        with psycopg.connect(self.url(database=name), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        return name

    def sessions(self, database: str = "postgres") -> int:
        """``pg_stat_database.sessions`` of ``database``: connections opened since start."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(
                "SELECT sessions FROM pg_stat_database WHERE datname = %s", (database,)
            ).fetchone()
        return int(row[0]) if row else 0

    # --- helpers ----------------------------------------------------------------------
    def _reachable(self, path: Path) -> bool:
        done = subprocess.run(
            [*self._run_as, "test", "-x", str(path)], check=False, capture_output=True
        )
        return done.returncode == 0

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(
            [*self._run_as, *argv], check=False, capture_output=True, text=True, cwd="/"
        )
        if done.returncode != 0:
            log = ""
            if self.root is not None and (self.root / "server.log").exists():
                log = (self.root / "server.log").read_text(errors="replace")[-2000:]
            msg = f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr.strip()} {log}"
            raise PostgresUnavailable(msg)

    def __repr__(self) -> str:
        state = "running" if self.root is not None else "stopped"
        return f"<LocalPostgres 127.0.0.1:{self.port} {state}>"
