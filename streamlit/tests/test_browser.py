"""End to end in a real browser (Debian's headless Chromium driven by Playwright): the page served by
`streamlit run`, the real API behind it. Fill the form from an example, submit, see the risk and the model
version. A screenshot is saved under test-output/streamlit/."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from livesupport import free_port, serve
from uisupport import APP

from readmission import schema

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
            risk.scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOTS / "prediction.png"), full_page=True)
        finally:
            browser.close()
    assert (SCREENSHOTS / "prediction.png").stat().st_size > 10_000
