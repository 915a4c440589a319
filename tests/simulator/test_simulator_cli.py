"""``rag-perf simulate`` in the foreground, and the load generator the benchmark uses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest

from rag_perf_plugins.cli import build_parser, main
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.simulator.loadgen import run_load


def test_simulate_serves_until_interrupted_and_prints_its_counts() -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rag_perf_plugins.cli",
            "simulate",
            "--port",
            "0",
            "--rpm",
            "none",
            "--embedding-dim",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        assert banner.startswith("simulator listening on http://127.0.0.1:")
        base_url = banner.split()[3]
        with httpx.Client() as http:
            body = http.post(base_url + "/embeddings", json={"model": "m", "input": "x"}).json()
        assert len(body["data"][0]["embedding"]) == 8
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    final = json.loads(out.strip().splitlines()[-1])
    assert final["requests_total"] == 1 and final["connections_opened"] == 1


def test_every_option_is_a_flag() -> None:
    args = build_parser().parse_args(
        ["simulate", "--latency-ms", "5", "--tpm", "9000", "--max-concurrency", "off"]
    )
    assert (args.latency_ms, args.tpm, args.max_concurrency) == (5.0, 9000.0, None)
    assert args.retry_after_s == 1.0 and args.seed == 0


def test_bad_option_values_exit_2_with_the_option_named(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--drop-rate", "2"]) == 2
    assert "drop_rate must be a number in [0, 1], got 2.0" in capsys.readouterr().err


def test_load_generator_counts_match_the_simulator() -> None:
    bodies = [{"model": "text-embedding-3-small", "input": f"text {i}"} for i in range(50)]
    with Simulator(embedding_dim=8).in_thread() as sim:
        result = run_load(
            sim.base_url + "/embeddings", bodies, seconds=0.3, concurrency=4, warmup_s=0.0
        )
        stats = sim.stats()
    assert result["errors"] == 0 and result["requests"] > 0
    # Every answer the client counted was counted by the server (which also saw the ones
    # still in flight when the client stopped counting).
    assert stats["requests_total"] >= result["requests"]
    assert stats["connections_opened"] == 4
    assert stats["embedding_inputs_total"] == stats["requests_total"]


def test_load_generator_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="seconds must be > 0"):
        run_load("http://127.0.0.1:1/", [{}], seconds=0)
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        run_load("http://127.0.0.1:1/", [{}], seconds=1, concurrency=0)
    with pytest.raises(ValueError, match="at least one JSON body"):
        run_load("http://127.0.0.1:1/", [], seconds=1)
