"""My analyses in a real browser: what this browser uploaded is listed on the home page
and deleted from there; another browser (another context, its own cookies) sees nothing."""

from __future__ import annotations

import pytest

from segmenter.models import Analysis

pytestmark = pytest.mark.e2e


def _upload(page, name: str, data: bytes) -> None:
    page.goto(page.base_url + "/")
    page.set_input_files("#id_file", files=[{"name": name, "mimeType": "application/octet-stream", "buffer": data}])
    page.get_by_role("button", name="Analyse").click()
    page.wait_for_url("**/a/**")


def test_my_analyses_are_listed_with_their_grade_and_deleted_from_the_home_page(page, browser, samples):
    _upload(page, "first.dcm", samples.dicom(0))
    _upload(page, "second.png", samples.png(2))
    page.goto(page.base_url + "/")
    rows = page.locator("#mine tbody tr")
    assert rows.count() == 2
    assert "second.png" in rows.nth(0).inner_text() and "first.dcm" in rows.nth(1).inner_text()
    first = Analysis.objects.get(source_name="first.dcm")
    assert first.severity["grade"] in rows.nth(1).locator(".grade-chip").inner_text()

    stranger = browser.new_context().new_page()
    stranger.goto(page.base_url + "/")
    assert stranger.locator("#mine").count() == 0
    stranger.context.close()

    page.get_by_role("button", name="Delete first.dcm").click()
    page.wait_for_url("**/#mine")
    assert page.locator("#mine tbody tr").count() == 1
    assert "first.dcm" not in page.locator("#mine").inner_text()
    assert not Analysis.objects.filter(source_name="first.dcm").exists()
    assert Analysis.objects.filter(source_name="second.png").exists()
    assert page.goto(page.base_url + f"/a/{first.id}/").status == 404
