"""A real headless Chromium, driven by Playwright's sync API, against pytest-django's
live_server. Chromium comes from the system (/usr/bin/chromium, or E2E_CHROMIUM): when it
is missing the tests are skipped, unless REQUIRE_E2E=1 makes that a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Playwright's sync API runs an event loop in the test's thread; the ORM calls the tests
# make there (to look up what the page should show) are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

CHROMIUM = Path(os.environ.get("E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        reason = f"no Chromium at {CHROMIUM} (set E2E_CHROMIUM)"
        if os.environ.get("REQUIRE_E2E") == "1":
            pytest.fail(reason + " and REQUIRE_E2E=1")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


#: Reports every Content-Security-Policy violation of a page on its console.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error("CSP violation: " + event.violatedDirective + " blocked " + (event.blockedURI || "inline"));
});
"""


@pytest.fixture
def page(browser, live_server, stand_in_engine, transactional_db):
    """A fresh browser tab (own cookies) on a laptop-sized screen, in English. The test
    fails if the site's Content-Security-Policy blocked anything on any page it opened."""
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True, locale="en-GB")
    context.set_default_timeout(30_000)
    context.add_init_script(REPORT_CSP_VIOLATIONS)
    page = context.new_page()
    violations: list[str] = []
    page.on("console", lambda message: message.text.startswith("CSP violation") and violations.append(message.text))
    page.base_url = live_server.url
    yield page
    context.close()
    assert violations == [], "the Content-Security-Policy blocked part of a page"
