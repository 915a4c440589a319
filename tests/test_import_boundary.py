"""The core never imports a framework or an extra's package; adapters name their extra.

The frameworks, aiohttp (the ``simulator`` extra) and matplotlib (``bench``) are checked
here in a subprocess, because the test session itself has imported them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

FRAMEWORKS = {
    "langchain",
    "langchain_core",
    "langchain_openai",
    "llama_index",
    "llama_index_instrumentation",
}
# Installed by the simulator / bench extras, imported only by rag_perf_plugins.simulator
# and rag_perf_plugins.bench (which the core never imports).
EXTRAS_ONLY = {"aiohttp", "httpx_aiohttp", "matplotlib", "aiolimiter"}
OPTIONAL_PACKAGES = (
    "rag_perf_plugins.simulator",
    "rag_perf_plugins.bench",
    "rag_perf_plugins.pool._aiohttp",  # http_transport: aiohttp, the [aiohttp] extra
)


def _run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def test_core_imports_no_framework() -> None:
    code = f"""
        import pkgutil, importlib, sys
        import rag_perf_plugins
        # every core module, not just the package: a slip in any of them is caught.
        # (pkgutil.walk_packages would import the adapter packages to recurse into them.)
        SKIP = {
        "rag_perf_plugins.langchain", "rag_perf_plugins.llama_index", "rag_perf_plugins.bench.peers"
    }   # peers: the benchmark's comparisons, by design
        todo = [("rag_perf_plugins.", rag_perf_plugins.__path__)]
        while todo:
            prefix, path = todo.pop()
            for info in pkgutil.iter_modules(path, prefix):
                if info.name in SKIP:
                    continue
                module = importlib.import_module(info.name)
                if info.ispkg:
                    todo.append((info.name + ".", module.__path__))
        print(sorted(m for m in sys.modules if m.split(".")[0] in {FRAMEWORKS!r}))
    """
    assert _run(code) == "[]"


def test_adapters_are_subpackages_of_one_import_package() -> None:
    code = """
        import rag_perf_plugins.langchain as lc, rag_perf_plugins.llama_index as li
        print(lc.__name__, li.__name__)
    """
    assert _run(code) == "rag_perf_plugins.langchain rag_perf_plugins.llama_index"


def test_adapter_without_framework_names_the_extra() -> None:
    code = """
        import sys
        sys.modules["langchain_core"] = None        # as if the extra were not installed
        sys.modules["llama_index.core"] = None
        for name in ("rag_perf_plugins.langchain", "rag_perf_plugins.llama_index"):
            try:
                __import__(name)
            except ImportError as exc:
                print(exc)
    """
    out = _run(code)
    assert "pip install 'rag-perf-plugins[langchain]'" in out
    assert "pip install 'rag-perf-plugins[llama-index]'" in out


def test_core_imports_neither_the_simulator_nor_the_bench_nor_their_extras() -> None:
    code = f"""
        import pkgutil, importlib, sys
        import rag_perf_plugins
        # every core module: all but the adapters, the simulator and the bench.
        SKIP = {{
            "rag_perf_plugins.langchain", "rag_perf_plugins.llama_index", *{OPTIONAL_PACKAGES!r}
        }}
        todo = [("rag_perf_plugins.", rag_perf_plugins.__path__)]
        while todo:
            prefix, path = todo.pop()
            for info in pkgutil.iter_modules(path, prefix):
                if info.name in SKIP:
                    continue
                module = importlib.import_module(info.name)
                if info.ispkg:
                    todo.append((info.name + ".", module.__path__))
        print(sorted(
            m for m in sys.modules
            if m.split(".")[0] in {EXTRAS_ONLY!r} or m.startswith({OPTIONAL_PACKAGES!r})
        ))
    """
    assert _run(code) == "[]"


def test_rag_perf_imports_only_the_subcommand_it_runs() -> None:
    code = f"""
        import sys
        from rag_perf_plugins.cli import main
        assert main(["config", "reference"]) == 0
        print(sorted(
            m for m in sys.modules
            if m.split(".")[0] in {EXTRAS_ONLY!r} or m.startswith({OPTIONAL_PACKAGES!r})
        ))
    """
    assert _run(code).splitlines()[-1] == "[]"


def test_no_import_cycle_inside_the_package() -> None:
    """No module of rag_perf_plugins imports itself back, counting imports in functions and
    under TYPE_CHECKING (grimp's graph, the one import-linter checks the layers on)."""
    import grimp

    graph = grimp.build_graph("rag_perf_plugins", exclude_type_checking_imports=False)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    cycles = _strongly_connected(edges)
    assert cycles == [], f"import cycles: {cycles}"


def _strongly_connected(edges: dict[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: every group of two or more modules importing in a ring."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges.get(node, [])
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def test_the_cycle_finder_finds_a_ring() -> None:
    ring = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"], "e": ["e"]}
    assert _strongly_connected(ring) == [["a", "b", "c"]]
