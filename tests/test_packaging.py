"""``pip install rag-perf-plugins``, with no extra, in a fresh virtual environment.

The wheel is built from this checkout and installed, without extras, into a new virtual
environment from the package index configured on this machine. Every check then runs in
that environment's interpreter or console script, from a directory outside the checkout,
so nothing can come from the source tree or from this test session's environment. One
environment serves every test (a module-scoped fixture). The environment has no pip of
its own (that saves seconds): this session's pip installs into it with ``--python``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# Installed only by extras: the simulator's, the bench's, and the frameworks'.
EXTRA_MODULES = ("aiohttp", "matplotlib", "aiolimiter", "langchain_core", "llama_index")

PROBE = """
import importlib.metadata, importlib.util, json, sys
import rag_perf_plugins, rag_perf_plugins.cache, rag_perf_plugins.admission
import rag_perf_plugins.services

loaded = sorted(
    m for m in sys.modules
    if m.startswith(("rag_perf_plugins.bench", "rag_perf_plugins.simulator"))
    or m.split(".")[0] in ("aiohttp", "matplotlib")
)
names = (*EXTRA_MODULES, "rag_perf_plugins.bench", "rag_perf_plugins.simulator")
try:
    import rag_perf_plugins.langchain
    langchain_error = None
except ImportError as exc:
    langchain_error = str(exc)
print(json.dumps({
    "file": rag_perf_plugins.__file__,
    "loaded": loaded,
    "found": {name: importlib.util.find_spec(name) is not None for name in names},
    "distributions": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
    "langchain_error": langchain_error,
}))
""".replace("EXTRA_MODULES", repr(EXTRA_MODULES))


def _check(argv: list[str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done


@dataclass(frozen=True)
class CoreEnvironment:
    """A virtual environment holding the wheel and the core's dependencies only."""

    root: Path
    workdir: Path  # outside the checkout: ``python -c`` puts the current directory first

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv[0]`` from the environment's bin directory; never raises on exit status."""
        env = {
            name: value
            for name, value in os.environ.items()
            if name not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
        }
        env["PYTHONNOUSERSITE"] = "1"
        return subprocess.run(
            [str(self.root / "bin" / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            check=False,
            cwd=self.workdir,
            env=env,
            timeout=60,
        )


@pytest.fixture(scope="module")
def core_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreEnvironment]:
    tmp = tmp_path_factory.mktemp("packaging")
    dist = tmp / "dist"
    pip = [sys.executable, "-m", "pip"]
    # hatchling comes with the dev extra: no isolated build environment to install.
    _check([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)])
    (wheel,) = dist.glob("rag_perf_plugins-*.whl")
    root = tmp / "venv"
    venv.create(root, with_pip=False, symlinks=True)
    python = root / "bin" / "python"
    _check([*pip, "--python", str(python), "install", "--quiet", str(wheel)])
    workdir = tmp / "work"
    workdir.mkdir()
    yield CoreEnvironment(root, workdir)


@pytest.fixture(scope="module")
def probe(core_env: CoreEnvironment) -> dict[str, Any]:
    done = core_env.run("python", "-c", PROBE)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_the_core_comes_from_the_wheel_in_the_fresh_environment(
    core_env: CoreEnvironment, probe: dict[str, Any]
) -> None:
    assert Path(probe["file"]).resolve().is_relative_to(core_env.root.resolve())
    assert "rag-perf-plugins" in probe["distributions"]


def test_the_core_imports_without_aiohttp_matplotlib_or_a_framework(
    probe: dict[str, Any],
) -> None:
    assert probe["loaded"] == []
    assert {name: probe["found"][name] for name in EXTRA_MODULES} == dict.fromkeys(
        EXTRA_MODULES, False
    )
    installed = probe["distributions"]
    assert not [d for d in installed if d.startswith(("langchain", "llama-index", "llama_index"))]
    assert not {"aiohttp", "matplotlib", "aiolimiter"} & set(installed)


def test_the_simulator_and_the_bench_ship_in_the_one_wheel(probe: dict[str, Any]) -> None:
    assert probe["found"]["rag_perf_plugins.bench"]
    assert probe["found"]["rag_perf_plugins.simulator"]


def test_an_adapter_names_its_extra(probe: dict[str, Any]) -> None:
    assert "pip install 'rag-perf-plugins[langchain]'" in probe["langchain_error"]


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (
            ("rag-perf", "simulate", "--help"),
            "rag-perf simulate needs the simulator extra: "
            "pip install 'rag-perf-plugins[simulator]'",
        ),
        (
            # Any arguments, even unknown ones (which also keep a wrongly installed
            # simulator from starting and holding the test until the timeout).
            ("rag-perf", "simulate", "--port", "0", "--no-such-option"),
            "rag-perf simulate needs the simulator extra: "
            "pip install 'rag-perf-plugins[simulator]'",
        ),
        (
            ("rag-perf", "bench"),
            "rag-perf bench needs the bench extra: pip install 'rag-perf-plugins[bench]'",
        ),
        (
            ("python", "-m", "rag_perf_plugins.bench", "--quick"),
            "rag-perf bench needs the bench extra: pip install 'rag-perf-plugins[bench]'",
        ),
    ],
)
def test_a_command_without_its_extra_names_it_and_exits_2(
    core_env: CoreEnvironment, argv: tuple[str, ...], hint: str
) -> None:
    done = core_env.run(*argv)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.startswith(hint), done.stderr
    assert "Traceback" not in done.stderr


def test_the_core_commands_run(core_env: CoreEnvironment) -> None:
    listing = core_env.run("rag-perf", "--help")
    assert listing.returncode == 0, listing.stderr
    assert "needs the simulator extra (not installed)" in listing.stdout
    reference = core_env.run("rag-perf", "config", "reference")
    assert reference.returncode == 0, reference.stderr
    assert "max_concurrent_requests" in reference.stdout
