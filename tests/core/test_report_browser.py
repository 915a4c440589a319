"""The HTML bench report in a real browser: Debian's Chromium, headless, via Playwright.

Fails (never skips) in CI (``CI`` set, as ``.ci/run`` runs) when /usr/bin/chromium is
missing; elsewhere it skips with the command that installs it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rag_perf_plugins.bench.report import render_html
from rag_perf_plugins.cli import main
from tests.report_browser import CHROMIUM, open_report

FULL = Path(__file__).resolve().parents[2] / "docs" / "results" / "full.json"


@pytest.fixture
def chromium() -> Path:
    if not CHROMIUM.exists():
        hint = "apt-get install -y chromium (make browser does it)"
        if os.environ.get("CI") or os.environ.get("RAG_PERF_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing: {hint}")
        pytest.skip(f"{CHROMIUM} is missing: {hint}")
    return CHROMIUM


def test_report_of_the_committed_run_renders_every_chart(chromium: Path, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    assert main(["bench", "--render", str(FULL), "--html", str(html)]) == 0
    text = html.read_text(encoding="utf-8")
    # Self-contained: nothing to fetch, no script (xmlns URIs are names, not fetches).
    for fetch in ("<script", "<link", "src=", "@import", 'href="http', "url(http", "<img"):
        assert fetch not in text, fetch
    shot = tmp_path / "report.png"
    seen = open_report(html, shot)
    assert seen.console_errors == []
    assert [u for u in seen.requests if not u.startswith("file://")] == []
    document = json.loads(FULL.read_text(encoding="utf-8"))
    categories = {row["category"] for row in document["results"]}
    assert seen.tables == len(categories)
    keys = [c["key"] for c in seen.charts]
    assert "peers" in keys and "concurrency__concurrency_throughput_qps__throughput" in keys
    assert "scalability__disk_cache_get_us" in keys
    for chart in seen.charts:  # drawn: a real box and shapes in it, a question as its title
        assert float(str(chart["width"])) > 300 and float(str(chart["height"])) > 150, chart
        assert int(str(chart["shapes"])) > 20, chart
        assert str(chart["title"]).strip(), chart
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000


def test_a_quick_document_renders_too(chromium: Path, tmp_path: Path) -> None:
    """A document with one category and no peers: no empty peer section, charts drawn."""
    document = json.loads(FULL.read_text(encoding="utf-8"))
    document["results"] = [r for r in document["results"] if r["category"] == "tracker"]
    html = tmp_path / "tracker.html"
    html.write_text(render_html(document), encoding="utf-8")
    seen = open_report(html)
    assert seen.console_errors == [] and seen.tables == 1
    assert [c["key"] for c in seen.charts] == [
        "tracker__ratios",
        "tracker__tracker_cost_at_1000_names_us",
    ]
