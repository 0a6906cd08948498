"""The JSON API: every status code it promises, and the same rows as the web pages."""

from __future__ import annotations

import json
import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from segmenter.models import Analysis, Slice

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]

URL = "/api/v1/analyses"


@pytest.fixture
def post(client, django_capture_on_commit_callbacks):
    def send(name: str, data: bytes, field: str = "file", **extra):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(URL, {field: SimpleUploadedFile(name, data)}, **extra)

    return send


def test_a_slice_is_analysed_within_the_request_and_answers_201(post, samples):
    response = post("chest.dcm", samples.dicom())
    assert response.status_code == 201, response.content
    body = response.json()
    analysis = Analysis.objects.get()
    assert body["id"] == str(analysis.id)
    assert response["Location"] == f"{URL}/{analysis.id}"
    assert body["status"] == "done" and body["kind"] == "slice"
    assert body["progress"] == {"done": 1, "total": 1, "retrying": False}
    assert body["severity"]["grade"] in {"CT-0", "CT-1", "CT-2", "CT-3", "CT-4"}
    assert body["severity"] == analysis.severity
    assert body["volumes"]["lung_ml"] > 0  # the DICOM carries pixel spacing and thickness
    (s,) = body["slices"]
    assert s["name"] == "chest.dcm" and (s["width"], s["height"]) == (512, 512)
    assert s["links"]["labels"].endswith(f"/a/{analysis.id}/slices/1/labels.png")
    assert "not for diagnosis" in body["disclaimer"]


def test_a_zip_study_lists_its_slices_in_order(post, samples):
    data = samples.zip({"s/10.jpg": samples.jpeg(10), "s/2.jpg": samples.jpeg(2), "s/1.jpg": samples.jpeg(1)})
    body = post("study.zip", data).json()
    assert body["kind"] == "study"
    assert [s["name"] for s in body["slices"]] == ["s/1.jpg", "s/2.jpg", "s/10.jpg"]
    assert body["links"]["zip"].endswith("/study.zip") and body["links"]["report_csv"].endswith("/report.csv")


def test_get_returns_the_same_object(client, post, samples):
    created = post("a.png", samples.png()).json()
    response = client.get(f"{URL}/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created


def test_an_api_upload_is_viewable_on_the_web_page_and_its_files_download(client, post, samples):
    created = post("a.png", samples.png()).json()
    page = client.get(created["links"]["page"], follow=True)
    assert page.status_code == 200
    labels = client.get(created["slices"][0]["links"]["labels"])
    assert labels.status_code == 200 and labels["Content-Type"] == "image/png"


def test_a_web_upload_is_readable_through_the_api(client, upload, samples):
    upload("web.png", samples.png())
    analysis = Analysis.objects.get()
    body = client.get(f"{URL}/{analysis.id}").json()
    assert body["source_name"] == "web.png" and body["status"] == "done"


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.png", b"", "empty"),
        ("notes.txt", b"hello", "not supported"),
        ("fake.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "could not be read"),
        ("broken.zip", b"PK\x03\x04 not really", "zip"),
    ],
)
def test_bad_input_answers_400_with_an_error_and_stores_nothing(post, stored_files, name, data, message):
    response = post(name, data)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert set(response.json()) == {"error"}
    assert not Analysis.objects.exists() and stored_files() == []


def test_a_picture_that_is_not_ct_answers_400_and_is_not_graded(post, stored_files):
    import io

    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    for picture in (skimage_data.astronaut(), skimage_data.camera(), skimage_data.text()):
        buf = io.BytesIO()
        Image.fromarray(picture).save(buf, "JPEG")
        response = post("picture.jpg", buf.getvalue())
        assert response.status_code == 400
        assert "this does not look like a CT slice" in response.json()["error"]
    assert not Analysis.objects.exists() and stored_files() == []


def test_a_ct_slice_in_a_zip_next_to_a_photograph_refuses_the_study(post, samples, stored_files):
    import io

    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    buf = io.BytesIO()
    Image.fromarray(skimage_data.coffee()).save(buf, "JPEG")
    response = post("study.zip", samples.zip({"a.dcm": samples.dicom(0), "holiday.jpg": buf.getvalue()}))
    assert response.status_code == 400
    assert "holiday.jpg" in response.json()["error"] and "CT slice" in response.json()["error"]
    assert stored_files() == []


def test_a_slice_whose_lungs_the_networks_do_not_find_answers_400_in_either_language(
    post, samples, stored_files, use_engine
):
    from tests.stubs import NoConsistentLungs

    use_engine(NoConsistentLungs)
    response = post("slice.jpg", samples.jpeg())
    assert response.status_code == 400
    assert "this does not look like a CT slice: the networks find no consistent lungs" in response.json()["error"]
    response = post("slice.jpg", samples.jpeg(), headers={"Accept-Language": "ru"})
    assert response.status_code == 400 and "нейросети не находят" in response.json()["error"]
    assert not Analysis.objects.exists() and stored_files() == []
    # Hounsfield units from a CT header are trusted: the same engine grades a DICOM slice.
    assert post("slice.dcm", samples.dicom()).status_code == 201


def test_a_slice_whose_networks_disagree_but_are_sure_is_graded_with_a_caution_in_either_language(
    post, client, samples, use_engine
):
    from tests.stubs import DisagreeingButSure

    use_engine(DisagreeingButSure)
    response = post("slice.jpg", samples.jpeg())
    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "done" and body["severity"]["grade"]
    assert body["cautions"] == [
        "This may not be a chest CT slice, or its result may be less reliable: "
        "the two networks disagree about where the lungs are."
    ]
    page = client.get(body["links"]["page"], headers={"Accept-Language": "ru"}, follow=True).content.decode()
    assert 'id="ct-caution"' in page and "нейросети" in page
    report = json.loads(b"".join(client.get(body["links"]["report_json"]).streaming_content))
    assert report["cautions"] == body["cautions"]


def test_a_slice_without_doubts_carries_no_caution(post, samples):
    response = post("slice.jpg", samples.jpeg())
    assert response.status_code == 201 and response.json()["cautions"] == []


def test_a_slice_checked_for_lungs_is_segmented_once(post, samples, segment_calls):
    calls = segment_calls
    assert post("slice.jpg", samples.jpeg()).status_code == 201
    assert len(calls) == 1  # the CT check's run is the one the result comes from


def test_a_missing_file_field_answers_400(post, samples):
    response = post("a.png", samples.png(), field="upload")
    assert response.status_code == 400 and "'file'" in response.json()["error"]


def test_a_body_neither_multipart_nor_json_answers_415(client):
    response = client.post(URL, data=b"file=1", content_type="text/plain")
    assert response.status_code == 415 and "error" in response.json()


def test_a_json_body_without_a_pacs_address_answers_400_with_the_shape_it_wants(client):
    # JSON is for series on the PACS (tests/integration/test_pacs_api.py); a file is multipart.
    response = client.post(URL, data=b'{"file": 1}', content_type="application/json")
    assert response.status_code == 400 and '{"url"' in response.json()["error"]


def test_one_byte_over_the_limit_answers_413_too(post, samples, settings, stored_files):
    data = samples.png()
    settings.SEGMENTER_MAX_UPLOAD_BYTES = len(data) - 1
    response = post("big.png", data)
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert stored_files() == []


def test_a_malformed_content_length_answers_400(client):
    response = client.post("/api/v1/analyses", data=b"x", content_type="multipart/form-data; boundary=x",
                           headers={"Content-Length": "ab"})
    assert response.status_code == 400


def test_an_upload_over_the_limit_answers_413(post, samples, settings, stored_files):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 1024
    response = post("big.png", samples.png() * 20)
    assert response.status_code == 413 and "limit" in response.json()["error"]
    assert stored_files() == []


def test_unknown_and_malformed_ids_answer_404(client):
    for path in (f"{URL}/{uuid.uuid4()}", f"{URL}/12", f"{URL}/not-a-uuid", "/api/v1/nothing-here"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert "error" in response.json()


def test_wrong_methods_answer_405_as_json(client):
    response = client.delete(URL)
    assert response.status_code == 405 and "error" in response.json()


def test_with_a_queue_the_upload_answers_202_and_shows_progress(client, post, samples, settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    data = samples.zip({f"{k}.jpg": samples.jpeg(k) for k in (0, 1, 2)})
    response = post("queued.zip", data)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["progress"] == {"done": 0, "total": 3, "retrying": False}
    assert body["severity"] is None and body["slices"] == [] and body["links"]["zip"] is None
    assert not Slice.objects.exists()
    from django_tasks_db.models import DBTaskResult

    assert DBTaskResult.objects.count() == 1


def test_the_openapi_document_describes_both_operations(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]["/api/v1/analyses"]) == {"post"}
    post = doc["paths"]["/api/v1/analyses"]["post"]
    assert {"201", "202", "400", "413"} <= set(post["responses"])
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert "get" in doc["paths"]["/api/v1/analyses/{analysis_id}"]
    assert reverse("api:openapi") == "/api/v1/openapi.json"
