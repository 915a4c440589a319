"""``rag-perf`` subcommands whose extra is missing name it and exit 2 (no traceback).

The extra is made to look missing with ``sys.modules[name] = None``, which
``importlib.util.find_spec`` reports as not installed; tests/test_packaging.py checks the
same in a fresh virtual environment with only the core installed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rag_perf_plugins.cli import COMMANDS, Command, build_parser, main

SIMULATOR_HINT = (
    "rag-perf simulate needs the simulator extra: pip install 'rag-perf-plugins[simulator]'"
)
BENCH_HINT = "rag-perf bench needs the bench extra: pip install 'rag-perf-plugins[bench]'"


@pytest.mark.parametrize(
    "argv",
    [["simulate"], ["simulate", "--help"], ["simulate", "-h"], ["simulate", "--port", "0", "x"]],
)
def test_simulate_without_aiohttp_names_the_extra(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == SIMULATOR_HINT + " (aiohttp is not installed)\n"


@pytest.mark.parametrize("missing", ["aiohttp", "matplotlib"])
@pytest.mark.parametrize("argv", [["bench"], ["bench", "--help"], ["bench", "--quick", "--list"]])
def test_bench_without_its_extra_names_it(
    missing: str,
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setitem(sys.modules, missing, None)
    assert main(argv) == 2
    assert capsys.readouterr().err == f"{BENCH_HINT} ({missing} is not installed)\n"


def test_only_the_commands_of_the_missing_extra_refuse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # bench's, not the simulator's
    args = build_parser().parse_args(["simulate", "--port", "0"])
    assert args.port == 0
    assert main(["config", "reference"]) == 0
    assert main(["bench"]) == 2
    capsys.readouterr()


def test_help_lists_a_command_whose_extra_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiohttp", None)
    text = build_parser().format_help()
    assert "simulate" in text and "needs the simulator extra (not installed)" in text
    assert "needs the bench extra (not installed)" in text


def test_other_commands_still_refuse_unknown_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["stats", "stats.json", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_an_unlisted_module_of_the_extra_still_gives_the_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The command's module imports a package its ``needs`` forgot to list.
    (tmp_path / "fake_command.py").write_text("import not_installed_anywhere.sub\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "fake", Command("fake_command", "fake-extra", ()))
    assert main(["fake", "--help"]) == 2
    assert capsys.readouterr().err == (
        "rag-perf fake needs the fake-extra extra: pip install 'rag-perf-plugins[fake-extra]'"
        " (not_installed_anywhere is not installed)\n"
    )


def test_a_missing_module_of_a_command_without_extra_is_a_real_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_command.py").write_text("import not_installed_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "broken", Command("broken_command"))
    with pytest.raises(ModuleNotFoundError, match="not_installed_anywhere"):
        main(["broken"])


def test_every_extra_a_command_names_exists_and_brings_what_it_needs() -> None:
    # Read from the installed metadata, i.e. pyproject.toml's optional-dependencies.
    from importlib.metadata import packages_distributions, requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    requirements = [Requirement(line) for line in requires("rag-perf-plugins") or []]
    distributions = packages_distributions()
    for name, command in COMMANDS.items():
        assert (command.extra is None) == (not command.needs), name
        if command.extra is None:
            continue
        in_extra = {
            canonicalize_name(r.name)
            for r in requirements
            if r.marker is not None and r.marker.evaluate({"extra": command.extra})
        }
        for module in command.needs:
            # Names compared as PyPI does (prometheus_client's metadata spells it with "_").
            found = {canonicalize_name(d) for d in distributions[module]}
            assert found & in_extra, (name, module)
    assert (COMMANDS["simulate"].extra, COMMANDS["bench"].extra) == ("simulator", "bench")
