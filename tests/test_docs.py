"""The docs are true to the code: generated parts current, names importable, samples run.

- The configuration reference is what ``rag-perf config reference`` prints.
- The benchmark table in docs/benchmarks.md is the committed full run, rendered.
- Every ``rag_perf_plugins`` name imported by a Python sample, or written as a dotted path
  in the text, exists.
- Every ``rag-perf ...`` command in a shell sample parses with the real CLI parser.
- Samples marked ``<!-- test: run -->`` run as they are (in a temporary directory, with
  the test's private cache directory).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
from pathlib import Path

import pytest

from rag_perf_plugins.bench.runner import render_markdown, validate_document
from rag_perf_plugins.cli import build_parser
from rag_perf_plugins.config import reference_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
RUN_MARK = "<!-- test: run -->"
_BLOCK = re.compile(r"(<!-- test: run -->\n)?```(\w+)\n(.*?)```", re.DOTALL)
_DOTTED = re.compile(r"`(rag_perf_plugins(?:\.\w+)+)")


def _blocks(page: Path, language: str) -> list[tuple[bool, str]]:
    """(marked to run, code) of every fenced block in ``language`` on ``page``."""
    return [
        (bool(mark), code)
        for mark, lang, code in _BLOCK.findall(page.read_text(encoding="utf-8"))
        if lang == language
    ]


def _parse(code: str, page: Path) -> ast.Module:
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    tree = compile(code, str(page), "exec", flags=flags, dont_inherit=True)
    assert isinstance(tree, ast.Module)
    return tree


def _resolve(dotted: str) -> object:
    """Import the longest importable module prefix of ``dotted``, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_configuration_reference_is_current() -> None:
    text = (DOCS / "configuration.md").read_text()
    begin = "<!-- BEGIN GENERATED: rag-perf config reference -->\n"
    end = "<!-- END GENERATED -->"
    generated = text.split(begin, 1)[1].split(end, 1)[0]
    assert generated == reference_markdown(), (
        "docs/configuration.md is stale: regenerate the section with `rag-perf config reference`"
    )


def test_configuration_reference_rows_have_six_cells() -> None:
    """A "|" inside a cell (a Literal's alternatives) must be escaped, or the row shifts."""
    for line in reference_markdown().split("\n\n### Presets")[0].splitlines():
        cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        assert len(cells) == 6, line


def test_benchmark_table_is_the_committed_full_run() -> None:
    document = json.loads((DOCS / "results" / "full.json").read_text(encoding="utf-8"))
    assert validate_document(document) == []
    assert document["meta"]["quick"] is False and not document["meta"]["only"]
    rendered = render_markdown(document)
    assert (DOCS / "results" / "full.md").read_text(encoding="utf-8") == rendered
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    begin = (
        "<!-- BEGIN GENERATED: rag-perf bench --render docs/results/full.json --markdown - -->\n"
    )
    end = "<!-- END GENERATED -->"
    assert begin in text, "docs/benchmarks.md lost its generated results section"
    assert text.split(begin, 1)[1].split(end, 1)[0] == rendered, (
        "docs/benchmarks.md is stale: paste `rag-perf bench --render docs/results/full.json "
        "--markdown -` between the markers"
    )


def test_the_pages_the_brief_promises_exist() -> None:
    names = {str(p.relative_to(DOCS)) for p in PAGES}
    expected = {
        "index.md",
        "quickstart-langchain.md",
        "quickstart-llama-index.md",
        "configuration.md",
        "benchmarks.md",
        "operations.md",
        "troubleshooting.md",
        *(f"components/{c}.md" for c in ("cache", "pool", "admission", "retry")),
        *(f"components/{c}.md" for c in ("batching", "tracking", "simulator", "engine")),
    }
    assert expected <= names


def test_index_links_to_pages() -> None:
    assert re.findall(r"\]\(([^)#]+\.md)\)", (DOCS / "index.md").read_text())


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_relative_links_resolve(page: Path) -> None:
    """Links to other pages and images (``](x.md)``, ``](img/x.png)``) point at files."""
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
        assert (page.parent / link).is_file(), f"{page.name}: {link}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_python_samples_import_real_names(page: Path) -> None:
    for _, code in _blocks(page, "python"):
        for node in ast.walk(_parse(code, page)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "rag_perf_plugins"
            ):
                module = importlib.import_module(node.module or "")
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{page.name}: {node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("rag_perf_plugins"):
                        importlib.import_module(alias.name)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_dotted_names_in_the_text_exist(page: Path) -> None:
    for dotted in set(_DOTTED.findall(page.read_text(encoding="utf-8"))):
        _resolve(dotted)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_cli_commands_parse(page: Path) -> None:
    parser = build_parser()
    for _, code in _blocks(page, "bash"):
        for line in code.splitlines():
            line = line.split(" #", 1)[0].strip()
            if not line.startswith("rag-perf "):
                continue
            try:
                parser.parse_args(shlex.split(line)[1:])
            except SystemExit as exc:  # argparse's way of saying no
                pytest.fail(f"{page.name}: `{line}` does not parse ({exc})")


RUNNABLE = [
    pytest.param(page, i, code, id=f"{page.relative_to(DOCS)}#{i}")
    for page in PAGES
    for i, (marked, code) in enumerate(_blocks(page, "python"))
    if marked
]


@pytest.mark.parametrize(("page", "index", "code"), RUNNABLE)
def test_marked_samples_run(
    page: Path, index: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    from rag_perf_plugins import set_cache_manager

    try:
        exec(compile(code, f"{page}#{index}", "exec"), {"__name__": "__doc_sample__"})
    finally:
        set_cache_manager(None)


def test_some_samples_are_run() -> None:
    assert len(RUNNABLE) >= 8
