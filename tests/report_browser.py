"""Open a bench HTML report in headless Debian Chromium through Playwright; no download.

Used by ``tests/core/test_report_browser.py`` and by ``make report`` (the screenshot in
docs/img). Chromium is Debian's ``/usr/bin/chromium`` (``.ci/run`` and ``make browser``
install it); ``playwright install`` is never run (it downloads browsers).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Opened:
    """What the browser saw."""

    charts: list[dict[str, object]] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    tables: int = 0


def open_report(html: Path, screenshot: Path | None = None, *, width: int = 1200) -> Opened:
    """Load ``html``, measure every chart's SVG, and save a full-page ``screenshot``."""
    from playwright.sync_api import sync_playwright

    seen = Opened()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on(
                "console",
                lambda m: seen.console_errors.append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: seen.console_errors.append(str(e)))
            page.on("request", lambda r: seen.requests.append(r.url))
            page.goto(html.resolve().as_uri(), wait_until="load")
            seen.charts = page.eval_on_selector_all(
                "figure.chart",
                """figs => figs.map(f => {
                    const svg = f.querySelector('svg');
                    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
                    return {key: f.dataset.chart, width: box.width, height: box.height,
                            shapes: svg ? svg.querySelectorAll('path, rect, line, text').length : 0,
                            title: f.querySelector('figcaption').textContent};
                })""",
            )
            seen.tables = page.eval_on_selector_all("table", "t => t.length")
            if screenshot is not None:
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(screenshot), full_page=False)
        finally:
            browser.close()
    return seen


if __name__ == "__main__":
    opened = open_report(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{len(opened.charts)} charts, {opened.tables} tables, errors: {opened.console_errors}")
