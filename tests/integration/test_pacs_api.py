"""The API against a real PACS (tests/pacs.py): POST {"url": …, "send": …}, the results sent
back and read back from Orthanc, a failed send and its retry, and every fault a 4xx."""

from __future__ import annotations

import io
import json

import pydicom
import pytest

from segmenter.models import Analysis
from segmenter.ml.results.sr import sr_numbers
from tests.pacs import FaultyProxy, free_port, kmader_series

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]

URL = "/api/v1/analyses"


@pytest.fixture
def post_json(client, django_capture_on_commit_callbacks):
    def send(body):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(URL, body, content_type="application/json")

    return send


def _series(pacs, data_root, count=3, first=0):
    files = kmader_series(data_root, count, first=first)
    pacs.store(files)
    return [pydicom.dcmread(io.BytesIO(f)) for f in files]


def _url(root, source):
    return f"{root}/studies/{source[0].StudyInstanceUID}/series/{source[0].SeriesInstanceUID}"


def test_a_pacs_series_is_analysed_and_sent_back_once_however_often_it_is_sent(
    client, post_json, pacs, data_root
):
    source = _series(pacs, data_root, first=32)
    response = post_json({"url": _url(pacs.root, source), "send": True})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "done" and body["progress"]["done"] == body["progress"]["total"] == 3
    assert body["pacs"]["series"] == _url(pacs.root, source)
    assert body["pacs"]["sent"] is not None and body["pacs"]["error"] == ""
    assert body["links"]["dicom_seg"] is not None
    held = pacs.series_of_study(source[0].StudyInstanceUID)
    assert len(held["SEG"]) == 1 and len(held["SR"]) == 1
    assert held["SR"][0].PatientID == source[0].PatientID
    # Nothing of the patient is stored by the app.
    analysis = Analysis.objects.get()
    assert source[0].PatientID not in str(analysis.pacs_source) and analysis.source_name.startswith("pacs-")

    report = json.loads(b"".join(client.get(body["links"]["report_json"]).streaming_content))
    numbers = sr_numbers(held["SR"][0])["lungs"]
    assert numbers["Volume"] == pytest.approx(report["study"]["lung_ml"], rel=0.01)
    assert numbers["Lesion share of the lung"] == pytest.approx(report["study"]["lesion_percent"], abs=0.1)

    again = client.post(f"{URL}/{body['id']}/send")
    assert again.status_code == 200, again.content
    held = pacs.series_of_study(source[0].StudyInstanceUID)
    assert len(held["SEG"]) == 1 and len(held["SR"]) == 1
    assert (
        held["SEG"][0].SOPInstanceUID
        == pacs.series_of_study(source[0].StudyInstanceUID)["SEG"][0].SOPInstanceUID
    )


def test_without_send_nothing_goes_back_until_asked(client, post_json, pacs, data_root):
    source = _series(pacs, data_root, count=2, first=35)
    body = post_json({"url": _url(pacs.root, source)}).json()
    assert body["pacs"]["send"] is False and body["pacs"]["sent"] is None
    assert sorted(pacs.series_of_study(source[0].StudyInstanceUID)) == ["CT"]
    assert client.post(f"{URL}/{body['id']}/send").status_code == 200
    assert sorted(pacs.series_of_study(source[0].StudyInstanceUID)) == ["CT", "SEG", "SR"]


def test_a_failed_send_leaves_the_analysis_done_with_the_reason_and_a_retry_works(
    client, post_json, pacs, settings, data_root
):
    source = _series(pacs, data_root, count=2, first=37)
    proxy = FaultyProxy(pacs.http)
    try:
        settings.SEGMENTER_DICOMWEB_URL = proxy.root(pacs.root)
        proxy.mode = "fail-store"
        body = post_json({"url": _url(proxy.root(pacs.root), source), "send": True}).json()
        assert body["status"] == "done"
        assert "could not be sent to the PACS" in body["pacs"]["error"] and body["pacs"]["sent"] is None
        assert sorted(pacs.series_of_study(source[0].StudyInstanceUID)) == ["CT"]
        refused = client.post(f"{URL}/{body['id']}/send")
        assert refused.status_code == 400 and "HTTP 503" in refused.json()["error"]
        proxy.mode = "pass"
        retried = client.post(f"{URL}/{body['id']}/send")
        assert retried.status_code == 200 and retried.json()["pacs"]["error"] == ""
    finally:
        proxy.close()
    held = pacs.series_of_study(source[0].StudyInstanceUID)
    assert len(held["SEG"]) == 1 and len(held["SR"]) == 1


@pytest.mark.parametrize(
    "case, expected",
    [
        ("elsewhere", "Only studies on the configured PACS"),
        ("not-an-address", "not the address of a study or series"),
        ("credentials-in-address", "not the address of a study or series"),
        ("unknown", "does not know this study or series"),
        ("down", "cannot be reached"),
        ("wrong-password", "refused the credentials"),
        ("not-json", "Send JSON"),
    ],
)
def test_every_fault_is_a_400_with_the_reason_and_stores_nothing(post_json, pacs, settings, case, expected):
    study = "1.2.3.4"
    body = {"url": f"{pacs.root}/studies/{study}"}
    if case == "elsewhere":
        body["url"] = f"http://127.0.0.1:{free_port()}/dicom-web/studies/{study}"
    elif case == "not-an-address":
        body["url"] = "file:///etc/passwd"
    elif case == "credentials-in-address":
        body["url"] = pacs.root.replace("http://", "http://u:p@") + f"/studies/{study}"
    elif case == "down":
        settings.SEGMENTER_DICOMWEB_URL = f"http://127.0.0.1:{free_port()}/dicom-web"
        body["url"] = f"{settings.SEGMENTER_DICOMWEB_URL}/studies/{study}"
    elif case == "wrong-password":
        settings.SEGMENTER_DICOMWEB_PASSWORD = "wrong"
    elif case == "not-json":
        body = ["a list"]
    response = post_json(body)
    assert response.status_code == 400, response.content
    assert expected in response.json()["error"]
    assert not Analysis.objects.exists()


def test_without_a_configured_pacs_a_url_is_refused(post_json, settings):
    settings.SEGMENTER_DICOMWEB_URL = ""
    response = post_json({"url": "http://127.0.0.1:8042/dicom-web/studies/1.2.3"})
    assert response.status_code == 400 and "Only studies on the configured PACS" in response.json()["error"]


def test_a_queued_pacs_analysis_is_read_from_the_pacs_again_by_the_worker(
    post_json, pacs, settings, data_root
):
    from segmenter import processing

    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    source = _series(pacs, data_root, count=2, first=30)
    response = post_json({"url": f"{pacs.root}/studies/{source[0].StudyInstanceUID}", "send": True})
    assert response.status_code == 202, response.content
    analysis = Analysis.objects.get()
    assert processing.analysis_process(analysis_id=analysis.id) == processing.Outcome.DONE
    analysis.refresh_from_db()
    assert analysis.slices.count() == 2 and analysis.pacs_sent is not None
    assert sorted(pacs.series_of_study(source[0].StudyInstanceUID)) == ["CT", "SEG", "SR"]


def test_a_queued_analysis_whose_series_has_left_the_pacs_ends_failed_with_the_reason(
    post_json, pacs, settings, data_root
):
    import requests

    from segmenter import processing
    from tests.pacs import PASSWORD, USER

    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    source = _series(pacs, data_root, count=1, first=31)
    assert post_json({"url": _url(pacs.root, source)}).status_code == 202
    auth = (USER, PASSWORD)
    (found,) = requests.post(
        f"{pacs.http}/tools/lookup", data=source[0].SeriesInstanceUID, auth=auth, timeout=10
    ).json()
    requests.delete(f"{pacs.http}/series/{found['ID']}", auth=auth, timeout=10).raise_for_status()
    analysis = Analysis.objects.get()
    assert processing.analysis_process(analysis_id=analysis.id) == processing.Outcome.FAILED
    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.FAILED
    assert "does not know this study or series" in analysis.error


def test_the_send_always_setting_sends_without_being_asked(post_json, pacs, settings, data_root):
    settings.SEGMENTER_DICOMWEB_SEND_ALWAYS = True
    source = _series(pacs, data_root, count=1, first=39)
    body = post_json({"url": _url(pacs.root, source)}).json()
    assert body["pacs"]["send"] is False and body["pacs"]["sent"] is not None
    assert sorted(pacs.series_of_study(source[0].StudyInstanceUID)) == ["CT", "SEG", "SR"]
