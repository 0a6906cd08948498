"""The page "From a PACS" in a real browser against a real Orthanc: search, the study's
series, analyse one, send it back (SCREENSHOTS=1 writes docs/pacs-*.png)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pydicom
import pytest

from tests.pacs import kmader_series

pytestmark = pytest.mark.e2e
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _screenshot(page, name: str) -> None:
    if os.environ.get("SCREENSHOTS") == "1":
        page.screenshot(path=str(DOCS / name), full_page=True)


def test_a_study_found_on_the_pacs_is_analysed_and_sent_back_from_the_browser(page, pacs, data_root):
    files = kmader_series(data_root, 3, first=21)
    pacs.store(files)
    source = pydicom.dcmread(io.BytesIO(files[0]))
    page.goto(page.base_url + "/")
    page.get_by_role("link", name="From a PACS").click()
    page.fill("input[name=patient_id]", source.PatientID)
    page.get_by_role("button", name="Search CT studies").click()
    page.get_by_text("Test Kmader").first.wait_for()
    _screenshot(page, "pacs-search.png")
    page.locator(f"a[href$='/pacs/studies/{source.StudyInstanceUID}/']").first.click()
    page.get_by_text("Lung 5 mm").wait_for()
    _screenshot(page, "pacs-series.png")
    page.get_by_role("button", name="Analyse").first.click()
    page.locator("#pacs-send").wait_for()
    assert source.PatientID not in page.content()  # the patient stays on the PACS page
    page.click("#pacs-send")
    page.locator("p[role=status]").get_by_text("were stored on the PACS").wait_for()
    _screenshot(page, "pacs-sent.png")
    held = pacs.series_of_study(source.StudyInstanceUID)
    assert len(held["SEG"]) == 1 and len(held["SR"]) == 1
