"""examples/shared_limits_redis.py runs against Redis and the simulator it starts itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SCRIPT = Path(__file__).resolve().parents[3] / "examples" / "shared_limits_redis.py"


def test_shared_limits_example_runs_with_zero_429s(redis_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_PERF_")}
    env["RAG_PERF_REDIS_URL"] = redis_url
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=280, env=env,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "120/120 calls answered, 0 rate-limited" in done.stdout, done.stdout
    # Zero 429s is the rule (the 4-process test asserts it); on a starved 2-core machine a
    # request can leave a second after its admission, and the retry policy absorbs it. Seen:
    # 0 mostly, 3 once at load 4. Local budgets (no Redis) draw dozens at this rate.
    seen = re.search(r"the simulator saw (\d+) requests and sent (\d+) 429s", done.stdout)
    assert seen is not None, done.stdout
    requests, sent = int(seen.group(1)), int(seen.group(2))
    assert sent <= max(2, requests // 20), done.stdout
    assert "budget calls answered by Redis" in done.stdout
    assert "cache hits through Redis" in done.stdout
