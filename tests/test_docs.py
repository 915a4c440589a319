"""The docs that are generated from code are not stale."""

from __future__ import annotations

from pathlib import Path

from rag_perf_plugins.config import reference_markdown

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_configuration_reference_is_current() -> None:
    text = (DOCS / "configuration.md").read_text()
    begin = "<!-- BEGIN GENERATED: rag-perf config reference -->\n"
    end = "<!-- END GENERATED -->"
    generated = text.split(begin, 1)[1].split(end, 1)[0]
    assert generated == reference_markdown(), (
        "docs/configuration.md is stale: regenerate the section with `rag-perf config reference`"
    )
