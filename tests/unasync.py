"""Generate the blocking twin of an async method from its source, and check they match.

Usage::

    python tests/unasync.py --check     # make lint: fail when a blocking twin drifted
    python tests/unasync.py --write     # regenerate every blocking twin from its async source

Where a blocking method differs from its async twin only mechanically (``await`` and the
``a`` prefixes), the async method is the source and the blocking one is generated, the way
httpcore generates ``_sync/`` from ``_async/`` (STYLE.md §2), but per method: our twins
live side by side in one class. :data:`TWINS` lists them. A generated twin carries the
comment ``# unasync: generated from <source>`` on the line above it.

The generation: the async function's text with :data:`COMMON` and the file's own
replacements applied (longest first). Docstrings are not compared and never rewritten: each
twin keeps its own. Kept in tests/ because the project's top level is fixed (STYLE.md §4).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Replacements every pair gets, after the pair's own.
COMMON: dict[str, str] = {
    "async def ": "def ",
    "async with ": "with ",
    "async for ": "for ",
    "await ": "",
}


@dataclass(frozen=True)
class Twins:
    """The twin pairs of one file: (async source, blocking target) and their renames."""

    path: str
    pairs: tuple[tuple[str, str], ...]
    replace: dict[str, str] = field(default_factory=dict)


def _prefixed(owner: str, names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``(owner.aX, owner.X)`` for each name X: the a-prefixed source and its twin."""
    return tuple((f"{owner}.a{name}", f"{owner}.{name}") for name in names)


def _renamed(names: tuple[str, ...], source: str, target: str) -> dict[str, str]:
    """``source.format(X) -> target.format(X)`` for each name X."""
    return {source.format(name): target.format(name) for name in names}


# The LangChain vector store's framework methods: every one has an a-prefixed twin.
_LC_STORE = (
    "similarity_search",
    "similarity_search_with_score",
    "similarity_search_by_vector",
    "similarity_search_with_relevance_scores",
    "max_marginal_relevance_search",
    "max_marginal_relevance_search_by_vector",
    "add_texts",
    "add_documents",
    "delete",
)

TWINS: tuple[Twins, ...] = (
    Twins(
        "rag_perf_plugins/services/search.py",
        (
            ("SearchCache.asearch", "SearchCache.search"),
            ("SearchCache.awrite", "SearchCache.write"),
        ),
        {
            "async def asearch": "def search",
            "async def awrite": "def write",
            "Callable[[], Awaitable[R]]": "Callable[[], R]",
            "await self.aversion()": "self.version",
            "self.cache.aget(": "self.cache.get(",
            "self.cache.aset(": "self.cache.set(",
            "self.ainvalidate()": "self.invalidate()",
        },
    ),
    Twins(
        "rag_perf_plugins/services/llm.py",
        (
            ("LLMService._agenerate", "LLMService._generate"),
            ("LLMService._aprovider", "LLMService._provider"),
            ("LLMService._achain", "LLMService._chain"),
            ("LLMService._aattempt", "LLMService._attempt"),
            ("LLMService._alookup_fallback", "LLMService._lookup_fallback"),
        ),
        {
            "async def _achain": "def _chain",
            "async def _aattempt": "def _attempt",
            "async def _alookup_fallback": "def _lookup_fallback",
            "self._achain(": "self._chain(",
            "self._aattempt(": "self._attempt(",
            "self._alookup_fallback(": "self._lookup_fallback(",
            "async def one(": "def one(",
            "async def looked_up(": "def looked_up(",
            "async def run_chain(": "def run_chain(",
            "Callable[[Fallback, _Call], Awaitable[R]]": "Callable[[Fallback, _Call], R]",
            "Callable[[Fallback], Awaitable[R | _Miss]]": "Callable[[Fallback], R | _Miss]",
            "breakers.aadmit(": "breakers.admit(",
            "self._abounded(": "self._bounded(",
            "await self._arecheck(": "self._recheck(",
            "await self._aheard(": "self._heard(",
            "breakers.arecord(": "breakers.record(",
            "await _apaused(": "_paused(",
            "await asyncio.sleep(": "time.sleep(",
            "async def _agenerate": "def _generate",
            "async def _aprovider": "def _provider",
            "Callable[[], Awaitable[T]]": "Callable[[], T]",
            "self._aprovider(": "self._provider(",
            "cache.aget(": "cache.get(",
            "self._aput(": "self._put(",
            "self._flight.ado(": "self._flight.do(",
            "async def lead()": "def lead()",
            "async def reread()": "def reread()",
            "cache.ashared_flight(": "cache.shared_flight(",
            "gate.aacquire(": "gate.acquire(",
            "await aobserve_failure(": "observe_failure(",
            "await areconcile_ticket(": "reconcile_ticket(",
            "self._areconcile_cost(": "self._reconcile_cost(",
            "retry.acall(": "retry.call(",
            "async def attempt()": "def attempt()",
            "await self._aprobe(": "self._probe(",
            "semantic.alookup(": "semantic.lookup(",
            "semantic.astore(": "semantic.store(",
        },
    ),
    Twins(
        "rag_perf_plugins/services/embeddings.py",
        (
            ("EmbeddingService._alookup", "EmbeddingService._lookup"),
            ("EmbeddingService._asave", "EmbeddingService._save"),
        ),
        {
            "async def _alookup": "def _lookup",
            "async def _asave": "def _save",
            "store.aget_many(": "store.get_many(",
            "store.aset_many(": "store.set_many(",
            ").aset_many(": ").set_many(",
        },
    ),
    Twins(
        "integrations/rag_perf_plugins/langchain/vectorstores.py",
        (
            ("PerfVectorStore._acached", "PerfVectorStore._cached"),
            *_prefixed("PerfVectorStore", _LC_STORE),
        ),
        {
            "async def _acached(": "def _cached(",
            "Callable[[], Awaitable[R]]": "Callable[[], R]",
            "self.searches.asearch(": "self.searches.search(",
            "self.searches.awrite(": "self.searches.write(",
            "self._acached(": "self._cached(",
            **_renamed(_LC_STORE, "async def a{}(", "def {}("),
            **_renamed(_LC_STORE, "self.inner.a{}(", "self.inner.{}("),
        },
    ),
    Twins(
        "rag_perf_plugins/engine.py",
        (("AsyncRAGEngine._query", "RAGEngine._query"),),
    ),
    Twins(
        "rag_perf_plugins/tracking/decorators.py",
        (("_wrap_async", "_wrap_sync"),),
        {"def _wrap_async": "def _wrap_sync"},
    ),
    Twins(
        "rag_perf_plugins/cache/manager.py",
        (
            ("CacheManager.aget", "CacheManager.get"),
            ("CacheManager.aget_many", "CacheManager.get_many"),
            ("CacheManager.aset", "CacheManager.set"),
            ("CacheManager.aset_many", "CacheManager.set_many"),
        ),
        {
            "async def aget_many": "def get_many",
            "async def aget": "def get",
            "async def aset_many": "def set_many",
            "async def aset": "def set",
            "(await self._alookup(namespace, [key])).get(": "self._lookup(namespace, [key]).get(",
            "self._alookup(": "self._lookup(",
            "self._astore(": "self._store(",
            "self.aset_many(": "self.set_many(",
        },
    ),
)


def _function(tree: ast.Module, dotted: str) -> ast.FunctionDef | ast.AsyncFunctionDef:
    scope: list[ast.stmt] = tree.body
    *owners, name = dotted.split(".")
    for owner in owners:
        found = next(n for n in scope if isinstance(n, ast.ClassDef) and n.name == owner)
        scope = found.body
    for node in scope:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node
    msg = f"{dotted}: not found"
    raise LookupError(msg)


def _span(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, int]:
    """0-based first line (decorators included) and end line (exclusive)."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)]) - 1
    assert node.end_lineno is not None
    return first, node.end_lineno


def _docstring_span(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[int, int] | None:
    body = node.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        assert body[0].end_lineno is not None
        return body[0].lineno - 1, body[0].end_lineno
    return None


def _without_docstring(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    first, end = _span(node)
    doc = _docstring_span(node)
    if doc is None:
        return "".join(lines[first:end])
    return "".join(lines[first : doc[0]] + lines[doc[1] : end])


def _transform(text: str, replace: dict[str, str]) -> str:
    for table in (replace, COMMON):
        for old in sorted(table, key=len, reverse=True):
            text = text.replace(old, table[old])
    return text


def check(write: bool) -> list[str]:
    """Problems found (and, with ``write``, fixed): one diff per drifted twin.

    A twin matches when the file, with the twin generated afresh and run through
    ``ruff format``, is the file on disk: formatting may rewrap what the replacements
    shortened, so the comparison is on formatted text.
    """
    problems: list[str] = []
    for twins in TWINS:
        path = ROOT / twins.path
        for source_name, target_name in twins.pairs:
            text = path.read_text()
            lines = text.splitlines(keepends=True)
            tree = ast.parse(text)
            source = _function(tree, source_name)
            target = _function(tree, target_name)
            expected = _transform(_without_docstring(lines, source), twins.replace)
            first, _ = _span(target)
            marker = f"# unasync: generated from {source_name.rsplit('.', 1)[-1]}"
            marked = first > 0 and lines[first - 1].strip() == marker
            generated = _ruff_format(_rewritten(lines, target, expected, marker, marked), path)
            if generated == text:
                continue
            if write:
                path.write_text(generated)
                problems.append(f"rewrote {twins.path}:{target_name} from {source_name}")
                continue
            diff = difflib.unified_diff(
                text.splitlines(keepends=True),
                generated.splitlines(keepends=True),
                f"{twins.path} (on disk)",
                f"{twins.path} ({target_name} generated from {source_name})",
            )
            problems.append("".join(diff))
    return problems


def _ruff_format(text: str, path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(path), "-"],
        input=text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return done.stdout


def _rewritten(
    lines: list[str],
    target: ast.FunctionDef | ast.AsyncFunctionDef,
    expected: str,
    marker: str,
    marked: bool,
) -> str:
    first, end = _span(target)
    doc = _docstring_span(target)
    generated = expected.splitlines(keepends=True)
    if doc is not None:
        # Keep the target's own docstring, right after its signature (the line ending ':').
        header = next(i for i, line in enumerate(generated) if line.rstrip().endswith(":"))
        generated = generated[: header + 1] + lines[doc[0] : doc[1]] + generated[header + 1 :]
    indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
    start = first - 1 if marked else first
    return "".join([*lines[:start], f"{indent}{marker}\n", *generated, *lines[end:]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="fail when a twin drifted")
    mode.add_argument("--write", action="store_true", help="regenerate the blocking twins")
    args = parser.parse_args(argv)
    problems = check(write=args.write)
    for problem in problems:
        print(problem)
    if args.check and problems:
        print(f"{len(problems)} blocking twin(s) drifted: run python tests/unasync.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
