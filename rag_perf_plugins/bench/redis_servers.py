"""Redis Cluster and Sentinel sets on loopback ports, for the benchmarks and the tests.

Example::

    with ClusterSet(Path(tmp), base_port=7100).started() as cluster:   # 3 masters, 3 replicas
        cluster.url                     # "redis://127.0.0.1:7100/0" (redis_mode: cluster)
        cluster.kill_master("some-key") # SIGKILL the master of that key's slot
        cluster.wait_ok()               # until its replica serves the slots
    with SentinelSet(Path(tmp), base_port=7200).started() as sentinel:
        sentinel.sentinels              # "127.0.0.1:27200,127.0.0.1:27201,127.0.0.1:27202"
        sentinel.wait_promoted(sentinel.kill_master())

``ClusterSet`` starts six ``redis-server --cluster-enabled yes`` on ``base_port`` ..
``base_port + 5`` and joins them with ``redis-cli --cluster create ... --cluster-replicas
1``; ``SentinelSet`` starts a master (``base_port``), its replica (``base_port + 1``) and
three sentinels (``base_port + 20000`` ..) watching it as ``rag-perf-ha``. Nothing is
persisted (``--save "" --appendonly no``, files under the given directory), every process
is killed on exit (by the pid started here), and a port already taken raises
:class:`ServerSetError` at once, naming it. Needs ``redis-server`` and ``redis-cli`` on
``PATH``; loopback only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis

__all__ = ["MASTER_NAME", "ClusterSet", "SentinelSet", "ServerSetError"]

MASTER_NAME = "rag-perf-ha"
HOST = "127.0.0.1"


class ServerSetError(RuntimeError):
    """A server set could not start: a binary missing, a port taken, a node not answering."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        msg = f"{name} is not on PATH (install redis-server / redis-tools)"
        raise ServerSetError(msg)
    return found


def _check_free(ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                msg = (
                    f"port {port} on {HOST} is taken: this Redis set needs ports "
                    f"{ports[0]}-{ports[-1]}; stop what listens there or choose other ports"
                )
                raise ServerSetError(msg) from None


def _wait(what: str, ok: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.05)  # servers starting or electing
    msg = f"{what}: not within {timeout:g} s"
    raise ServerSetError(msg)


class _Servers:
    """redis-server children by port; killed by pid."""

    procs: dict[int, subprocess.Popen[bytes]]

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, port: int, *args: str) -> None:
        workdir = self.directory / str(port)
        workdir.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [_binary("redis-server"), *args, "--port", str(port), "--bind", HOST,
             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def start_config(self, port: int, config: str, *args: str) -> None:
        path = self.directory / f"{port}.conf"
        path.write_text(config)
        self.procs[port] = subprocess.Popen(
            [_binary("redis-server"), str(path), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=1.0, socket_connect_timeout=1.0)


def _answers(port: int, command: str, *args: str) -> Any:
    client = _client(port)
    try:
        return client.execute_command(command, *args)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def _pings(port: int) -> Callable[[], bool]:
    return lambda: bool(_answers(port, "PING"))


class ClusterSet:
    """Six cluster nodes on loopback: three masters with one replica each."""

    def __init__(self, directory: Path, *, base_port: int = 7100) -> None:
        self.ports = list(range(base_port, base_port + 6))
        self.servers = _Servers(directory)

    @property
    def url(self) -> str:
        """``redis_url`` of the cluster (its first node; redis_mode: cluster)."""
        return f"redis://{HOST}:{self.ports[0]}/0"

    @contextlib.contextmanager
    def started(self) -> Iterator[ClusterSet]:
        """Start the set; kill every node on exit, whatever happened."""
        try:
            yield self.start()
        finally:
            self.servers.stop()

    def start(self) -> ClusterSet:
        """Start and join the six nodes; wait until every slot is served."""
        _check_free(self.ports)
        for port in self.ports:
            self.servers.start(
                port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
            )  # fmt: skip
        for port in self.ports:
            _wait(f"cluster node {port} answers", _pings(port))
        subprocess.run(
            [_binary("redis-cli"), "--cluster", "create",
             *(f"{HOST}:{p}" for p in self.ports), "--cluster-replicas", "1", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
        self.wait_ok()
        return self

    def _state_ok(self, port: int) -> bool:
        info = _answers(port, "CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_slots_ok:16384" in text

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node sees all 16384 slots served (after a failover too)."""
        live = [p for p in self.ports if self.servers.procs[p].poll() is None]
        _wait("the cluster serves every slot", lambda: all(self._state_ok(p) for p in live),
              timeout)  # fmt: skip

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now."""
        slot = int(_answers(self.ports[0], "CLUSTER", "KEYSLOT", key))
        raw = _answers(self.ports[0], "CLUSTER", "SLOTS")
        for entry in raw:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            if start <= slot <= end:
                return int(master[1])
        msg = f"no node serves slot {slot}"
        raise AssertionError(msg)

    def kill_master(self, key: str) -> int:
        """SIGKILL the master of ``key``'s slot (by the pid started here); its port."""
        port = self.master_of(key)
        self.servers.kill(port)
        return port


class SentinelSet:
    """A master, its replica and three sentinels watching it as ``rag-perf-ha``."""

    def __init__(self, directory: Path, *, base_port: int = 7200) -> None:
        self.master_port, self.replica_port = base_port, base_port + 1
        self.sentinel_ports = [base_port + 20000 + i for i in range(3)]
        self.servers = _Servers(directory)

    @property
    def sentinels(self) -> str:
        """``redis_sentinels`` of this set."""
        return ",".join(f"{HOST}:{p}" for p in self.sentinel_ports)

    @property
    def url(self) -> str:
        """``redis_url`` in sentinel mode: database 0, no password (the host is not used)."""
        return f"redis://{HOST}:{self.master_port}/0"

    @contextlib.contextmanager
    def started(self) -> Iterator[SentinelSet]:
        """Start the set; kill every process on exit, whatever happened."""
        try:
            yield self.start()
        finally:
            self.servers.stop()

    def start(self) -> SentinelSet:
        """Start master, replica and sentinels; wait until the sentinels see the replica."""
        _check_free([self.master_port, self.replica_port, *self.sentinel_ports])
        self.servers.start(self.master_port)
        self.servers.start(self.replica_port, "--replicaof", HOST, str(self.master_port))
        for port in self.sentinel_ports:
            config = (
                f"port {port}\nbind {HOST}\ndir {self.servers.directory}\n"
                f"sentinel monitor {MASTER_NAME} {HOST} {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 4000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            self.servers.start_config(port, config, "--sentinel")
        _wait("the replica is in sync", self._replica_synced)
        _wait("the sentinels know each other and the replica", self._sentinels_ready)
        return self

    def _replica_synced(self) -> bool:
        info = _client(self.replica_port).info("replication")
        return bool(info.get("master_link_status") == "up")

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            client = _client(port)
            try:
                fields: Any = client.sentinel_master(MASTER_NAME)
            finally:
                client.close()
            if int(fields["num-other-sentinels"]) < 2 or int(fields["num-slaves"]) < 1:
                return False
        return True

    def master_port_now(self) -> int:
        """The master's port as the first sentinel reports it."""
        addr = _answers(self.sentinel_ports[0], "SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(addr[1])

    def kill_master(self) -> int:
        """SIGKILL the master (by the pid started here); its port."""
        port = self.master_port_now()
        self.servers.kill(port)
        return port

    def wait_promoted(self, old: int, timeout: float = 30.0) -> None:
        """Until the sentinels name another master than ``old`` and it accepts writes."""

        def promoted() -> bool:
            port = self.master_port_now()
            return port != old and _client(port).info("replication")["role"] == "master"

        _wait("the sentinels promoted the replica", promoted, timeout)
