"""The page "From a PACS" against a real Orthanc: search, a study's series, analyse, send back."""

from __future__ import annotations

import io

import pydicom
import pytest

from segmenter.models import Analysis
from tests.pacs import free_port, kmader_series

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]


def test_without_a_configured_pacs_there_is_no_such_page(client, settings):
    settings.SEGMENTER_DICOMWEB_URL = ""
    assert client.get("/pacs/").status_code == 404
    assert "From a PACS" not in client.get("/").content.decode()


def test_a_study_is_found_its_series_listed_analysed_and_sent_back(client, pacs, data_root):
    files = kmader_series(data_root, 3, first=17)
    pacs.store(files)
    source = pydicom.dcmread(io.BytesIO(files[0]))
    assert "From a PACS" in client.get("/").content.decode()

    page = client.get("/pacs/", {"patient_id": source.PatientID}).content.decode()
    assert "Test Kmader" in page and f"/pacs/studies/{source.StudyInstanceUID}/" in page

    page = client.get(f"/pacs/studies/{source.StudyInstanceUID}/").content.decode()
    assert "Lung 5 mm" in page and "<td>3</td>" in page

    url = f"{pacs.root}/studies/{source.StudyInstanceUID}/series/{source.SeriesInstanceUID}"
    response = client.post("/pacs/analyse", {"url": url})
    analysis = Analysis.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/a/{analysis.id}/"
    assert analysis.status == Analysis.Status.DONE and analysis.browser  # listed under "your analyses"
    page = client.get(response["Location"]).content.decode()
    assert 'id="pacs-send"' in page and source.PatientID not in page  # the patient stays on the PACS page

    response = client.post(f"/a/{analysis.id}/send", follow=True)
    assert "were stored on the PACS" in response.content.decode()
    held = pacs.series_of_study(source.StudyInstanceUID)
    assert len(held["SEG"]) == 1 and len(held["SR"]) == 1


def test_a_search_by_accession_number_and_dates(client, pacs, data_root):
    files = kmader_series(data_root, 1, first=18)
    pacs.store(files)
    source = pydicom.dcmread(io.BytesIO(files[0]))
    page = client.get(
        "/pacs/", {"accession": source.AccessionNumber, "date_from": "2025-12-31", "date_to": "2026-01-02"}
    ).content.decode()
    assert f"/pacs/studies/{source.StudyInstanceUID}/" in page
    page = client.get(
        "/pacs/", {"accession": source.AccessionNumber, "date_from": "2027-01-01"}
    ).content.decode()
    assert "No CT study matches." in page


@pytest.mark.parametrize("case", ["bad-date", "down", "not-a-series"])
def test_faults_answer_400_with_the_reason(client, pacs, settings, case):
    if case == "bad-date":
        response = client.get("/pacs/", {"date_from": "yesterday"})
        expected = "YYYY-MM-DD"
    elif case == "down":
        settings.SEGMENTER_DICOMWEB_URL = f"http://127.0.0.1:{free_port()}/dicom-web"
        response = client.get("/pacs/", {"patient_id": "X"})
        expected = "cannot be reached"
    else:
        response = client.post("/pacs/analyse", {"url": f"{pacs.root}/studies/1.2.3/series/4.5.6"})
        expected = "does not know this study or series"
    assert response.status_code == 400 and expected in response.content.decode()
    assert not Analysis.objects.exists()
