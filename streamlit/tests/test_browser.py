"""End to end in a real browser (Debian's headless Chromium driven by Playwright): the page served by
`streamlit run`, the real API behind it. Fill the form from an example, submit, see the risk and the model
version; open each tab and see the Model tab's metrics, plots, importance and history. Screenshots are saved
under test-output/streamlit/ (git ignores test-output/)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from livesupport import free_port, serve
from uisupport import APP

from readmission import schema

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-output" / "streamlit"
# Hang guards, not speed limits: on a busy machine Chromium, the page and the API can take many seconds.
PATIENCE_MS = 300_000


@pytest.fixture
def page_url(api_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "API_URL": api_url, "API_TIMEOUT_SECONDS": str(PATIENCE_MS // 1000)}
    command = [
        str(Path(sys.executable).with_name("streamlit")),
        "run",
        str(APP),
        "--server.headless=true",
        f"--server.port={port}",
        "--server.address=127.0.0.1",
        "--browser.gatherUsageStats=false",
    ]
    url = f"http://127.0.0.1:{port}"
    for _ in serve(command, env, f"{url}/_stcore/health", tmp_path / "streamlit.log"):
        yield url


def test_a_person_fills_the_form_and_sees_the_risk_and_the_model(page_url: str) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=PATIENCE_MS)  # every expectation below, not only those given a timeout

    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: `apt-get install chromium` (CI installs it)")
    example = list(schema.EXAMPLE_ENCOUNTERS)[1]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(PATIENCE_MS)  # navigation, clicks
            page.goto(page_url)
            expect(page.get_by_text("Ready: diabetes-readmission v1 (@champion)")).to_be_visible()
            page.get_by_role("button", name=example).click()
            expect(page.get_by_label("Earlier encounters of the same patient known to the system")).to_have_value("4")
            page.get_by_role("button", name="Predict").click()
            risk = page.get_by_test_id("stMetric").filter(has_text="30-day readmission risk")
            expect(risk).to_contain_text(re.compile(r"\d+\.\d%"))
            answered = page.get_by_text("Answered by model", exact=False)
            expect(answered).to_contain_text("diabetes-readmission v1")
            expect(answered).to_contain_text("alias champion")
            # The answer's explanation and its place in the population: headings, words and both charts drawn.
            for heading in ("Against the population", "Why this risk"):
                expect(page.get_by_role("heading", name=heading)).to_be_visible()
            expect(page.get_by_text("against a base rate of", exact=False)).to_be_visible()
            expect(page.get_by_text("Bands: low below 15%", exact=False)).to_be_visible()
            expect(page.get_by_text("features not shown add", exact=False)).to_be_visible()
            charts = page.get_by_role("tabpanel", name="Predict").get_by_test_id("stVegaLiteChart")
            expect(charts).to_have_count(3)  # outcomes, the band strip, the factors
            for i in range(3):
                expect(charts.nth(i).locator("canvas, svg").first).to_be_visible()
            _full_page_screenshot(page, SCREENSHOTS / "prediction.png")
        finally:
            browser.close()
    assert (SCREENSHOTS / "prediction.png").stat().st_size > 10_000


TABS = {"Predict": "tab-predict.png", "Batch scoring": "tab-batch-scoring.png", "Model": "tab-model.png"}


def test_each_tab_opens_and_the_model_tab_shows_its_metrics_plots_importance_and_history(page_url: str) -> None:
    """A full-page screenshot of each tab (test-output/streamlit/tab-*.png); on the Model tab: the metrics under
    their names with their meanings, the three plots loaded, the importance chart drawn, the version history."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=PATIENCE_MS)
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: `apt-get install chromium` (CI installs it)")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(PATIENCE_MS)
            page.goto(page_url)
            expect(page.get_by_text("Ready: diabetes-readmission v1 (@champion)")).to_be_visible()
            for tab, file in TABS.items():
                page.get_by_role("tab", name=tab).click()
                panel = page.get_by_role("tabpanel", name=tab)
                expect(panel).to_be_visible()
                if tab == "Predict":
                    expect(panel.get_by_role("button", name="Predict")).to_be_visible()
                elif tab == "Batch scoring":
                    expect(panel.get_by_text("Encounters (CSV)")).to_be_visible()
                else:
                    _expect_the_model_tab(panel)
                _full_page_screenshot(page, SCREENSHOTS / file)
        finally:
            browser.close()
    for file in TABS.values():
        assert (SCREENSHOTS / file).stat().st_size > 10_000, file


def _full_page_screenshot(page: Page, path: Path) -> None:
    """Once the script has finished and every lazily loaded widget is drawn (no placeholder left), the whole
    page: Streamlit scrolls inside its own container, which a full-page screenshot does not unroll, so the
    window is first made as tall as the content."""
    from playwright.sync_api import expect

    expect(page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')).to_have_count(1)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0)
    height = page.get_by_test_id("stMainBlockContainer").evaluate("block => block.scrollHeight")
    page.set_viewport_size({"width": 1400, "height": max(900, int(height) + 120)})
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0)
    page.screenshot(path=str(path), full_page=True)


def _expect_the_model_tab(panel: Locator) -> None:
    from playwright.sync_api import expect

    metrics = panel.get_by_test_id("stTable").filter(has_text="Validation")
    for text in ("ROC-AUC (30-day)", "Brier skill (30-day)", "Calibration slope (30-day)", "Prevalence (30-day)"):
        expect(metrics.get_by_text(text, exact=True)).to_be_visible()
    expect(metrics.get_by_text("Chance that an encounter readmitted within 30 days", exact=False)).to_be_visible()
    expect(panel.get_by_text("Decision threshold (30-day)", exact=True)).to_be_visible()
    images = panel.get_by_test_id("stImage").locator("img")
    expect(images).to_have_count(3)
    for i in range(3):
        image = images.nth(i)
        expect(image).to_be_visible()
        image.scroll_into_view_if_needed()
        assert image.evaluate("img => img.complete && img.naturalWidth > 100"), f"plot {i} did not load"
    for caption in ("ROC curve", "Precision-recall curve", "Reliability"):
        expect(panel.get_by_text(caption, exact=False).first).to_be_visible()
    chart = panel.get_by_test_id("stVegaLiteChart")
    expect(chart).to_be_visible()
    expect(chart.locator("canvas, svg").first).to_be_visible()
    history = panel.get_by_test_id("stTable").filter(has_text="Registered (UTC)")
    expect(history).to_be_visible()
    expect(history.get_by_text("no champion yet")).to_be_visible()
    expect(history.get_by_text("promoted", exact=True)).to_be_visible()
