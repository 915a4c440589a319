"""A private redis-server per test, started and stopped by the test (always killed at teardown)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` child on a free port: ``start()``, ``stop()``, ``url``."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.port = _free_port() if port is None else port
        self.directory = directory
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not on PATH")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--enable-debug-command", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        try:
            for _ in range(200):
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    time.sleep(0.025)  # the server process is starting; nothing to fake here
            pytest.fail(f"redis-server on port {self.port} did not answer within 5 s")
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running private redis-server; killed at teardown whatever the test did."""
    server = RedisServer(tmp_path)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def redis_server_on(tmp_path: Path) -> Iterator[Callable[[int], RedisServer]]:
    """``make(port)``: a private redis-server on that port (not started); killed at teardown."""
    made: list[RedisServer] = []

    def make(port: int) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{port}", port=port)
        server.directory.mkdir(parents=True, exist_ok=True)
        made.append(server)
        return server

    try:
        yield make
    finally:
        for server in made:
            server.stop()
