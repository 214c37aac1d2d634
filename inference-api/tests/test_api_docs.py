"""The API documentation pages (/docs, /redoc) work without the internet: every script, style sheet, icon and
document they load is served by the app itself (issue #23: /docs was blank offline, its Swagger UI came from a
CDN). No model is needed to read the documentation, so these apps have an empty registry."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from apisupport import ApiServer, settings_for
from fastapi.testclient import TestClient

from inference_api.app import create_app
from inference_api.settings import ApiSettings

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "test-output" / "inference-api"
PATIENCE_MS = 300_000  # a hang guard for a busy machine, not a speed limit
# ReDoc's script always draws this logo in its side menu (an image, hidden when it fails to load): the one outside
# address the pages may ask for, refused here like any other.
REDOCLY_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"

# Where a page names what it loads: attributes of its tags, and the Swagger UI initializer's ``url: '...'``.
_REFERENCE = re.compile(r"""(?:\b(?:src|href|spec-url)\s*=\s*|\burl:\s*)["']([^"']+)["']""")
_CONTENT_TYPES = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",), ".png": ("image/png",)}


def _settings(folder: Path) -> ApiSettings:
    return settings_for(f"sqlite:///{folder / 'empty-mlflow.db'}", f"sqlite:///{folder / 'log.db'}")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path)), raise_server_exceptions=False) as c:
        yield c


def _references(html: str) -> list[str]:
    return list(dict.fromkeys(_REFERENCE.findall(html)))


def _expected_types(path: str) -> tuple[str, ...]:
    if path.endswith(".json"):
        return ("application/json",)
    return _CONTENT_TYPES[Path(path).suffix]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_references_only_assets_the_app_serves(client: TestClient, page: str) -> None:
    """Before: /docs loaded swagger-ui-bundle.js and its CSS from cdn.jsdelivr.net (a blank page offline), the
    icon from fastapi.tiangolo.com; /redoc its script from the CDN and its fonts from Google."""
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert not re.search(r"https?:|//[\w.-]+\.\w", html), f"{page} names another host:\n{html}"
    references = _references(html)
    assert any(r.endswith(".js") for r in references), f"{page} loads no script: {references}"
    for reference in references:
        parts = urlsplit(reference)
        assert not parts.scheme and not parts.netloc and parts.path.startswith("/"), reference
        asset = client.get(reference)
        assert asset.status_code == 200, f"{page} references {reference}: {asset.status_code}"
        content_type = asset.headers["content-type"].split(";")[0]
        assert content_type in _expected_types(parts.path), f"{reference} is served as {content_type}"
        assert len(asset.content) > 100, f"{reference} is nearly empty"


def test_swagger_ui_sends_the_document_to_no_validator(client: TestClient) -> None:
    """Swagger UI's default shows a badge fetched from an online validator, sending it the document's URL."""
    assert "validatorUrl" in client.get("/docs").text
    assert re.search(r"""["']?validatorUrl["']?\s*:\s*null""", client.get("/docs").text)


def test_docs_show_the_operations_in_a_browser_cut_off_from_the_internet(tmp_path: Path) -> None:
    """The page as a newcomer sees it: Chromium may reach the API's own address only; every other request is
    refused and recorded. Before: the Swagger UI script was refused and the page stayed blank."""
    from playwright.sync_api import Route, expect, sync_playwright

    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: `apt-get install chromium` (CI installs it)")
    expect.set_options(timeout=PATIENCE_MS)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    refused: list[str] = []

    def only_the_api(route: Route) -> None:
        if route.request.url.startswith(server.url + "/"):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with ApiServer(_settings(tmp_path)) as server, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(PATIENCE_MS)
            page.route("**/*", only_the_api)
            page.goto(f"{server.url}/docs")  # returns once the page's scripts and style sheets are loaded
            assert refused == [], f"/docs asked for outside addresses: {refused}"
            expect(page.locator(".opblock-summary-path", has_text="/predict/batch")).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "docs.png"))
            page.goto(f"{server.url}/redoc")
            assert refused == [], f"/redoc asked for outside addresses: {refused}"
            expect(page.get_by_role("heading", name="Diabetes readmission inference API")).to_be_visible()
            expect(page.locator("[data-section-id]", has_text="/predict/batch").first).to_be_attached()
            page.screenshot(path=str(SCREENSHOTS / "redoc.png"))
        finally:
            browser.close()
    assert [url for url in refused if url != REDOCLY_LOGO] == [], f"the pages asked for outside addresses: {refused}"
