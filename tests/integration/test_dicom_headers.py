"""DICOM slices whose pixel headers pydicom cannot decode as declared (BitsAllocated 1, more
bits stored than allocated, a CT with three samples per pixel, a palette...) are refused
with a 400 and a reason before anything is stored, through the API and the web form."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from segmenter.hostile import DICOM_HEADER_CASES, dicom_header_cases
from segmenter.models import Analysis, Slice

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]

#: Each case's reason, as the API words it.
REASONS = {
    "bits-allocated-1": "1 bits per pixel (BitsAllocated); 8, 16 and 32 are read",
    "bits-allocated-12": "12 bits per pixel (BitsAllocated)",
    "bits-allocated-64": "64 bits per pixel (BitsAllocated)",
    "bits-stored-over-allocated": "declares 20 stored bits in 16 allocated",
    "bits-stored-0": "declares 0 stored bits in 16 allocated",
    "ct-with-3-samples": "3 samples per pixel with the photometric interpretation MONOCHROME2",
    "rgb-without-planar": "no valid PlanarConfiguration",
    "pixel-representation-2": "PixelRepresentation is 2; it must be 0 or 1",
    "palette-colour": "a palette colour picture, not a CT slice",
    "ybr-with-1-sample": "1 samples per pixel with the photometric interpretation YBR_FULL",
    "bits-allocated-8-of-16-bit-data": "pixel data hold 524,288 bytes but the header declares 262,144",
    "bits-allocated-32-of-16-bit-data": "pixel data hold 524,288 bytes but the header declares 1,048,576",
    "bits-allocated-1-in-a-study": "s/2.dcm: the DICOM image has 1 bits per pixel",
}


@pytest.fixture(scope="module")
def cases(data_root):
    from tests.conftest import Samples

    return dicom_header_cases(Samples(data_root).dicom(0))


def test_every_case_has_its_reason_here():
    assert {f"dicom-header-{c}.dcm" for c in DICOM_HEADER_CASES} | {
        "dicom-header-bits-allocated-1-in-a-study.zip"
    } == {f"dicom-header-{c}{'.zip' if c.endswith('study') else '.dcm'}" for c in REASONS}


@pytest.mark.parametrize("case", list(REASONS))
def test_the_api_refuses_it_with_a_400_and_its_reason_and_stores_nothing(
    client, cases, case, stored_files, django_capture_on_commit_callbacks
):
    name = f"dicom-header-{case}{'.zip' if case.endswith('study') else '.dcm'}"
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post("/api/v1/analyses", {"file": SimpleUploadedFile(name, cases[name])})
    assert response.status_code == 400, response.content[:300]
    assert REASONS[case] in response.json()["error"]
    assert Analysis.objects.count() == 0 and Slice.objects.count() == 0
    assert stored_files() == []


def test_a_queued_upload_is_refused_the_same_before_it_is_stored(
    client, cases, settings, stored_files, django_capture_on_commit_callbacks
):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/analyses",
            {"file": SimpleUploadedFile("x.dcm", cases["dicom-header-bits-allocated-1.dcm"])},
        )
    assert response.status_code == 400
    assert Analysis.objects.count() == 0 and stored_files() == []


def test_the_web_form_gives_the_reason_in_russian(client, cases):
    response = client.post(
        "/", {"file": SimpleUploadedFile("x.dcm", cases["dicom-header-palette-colour.dcm"])},
        HTTP_ACCEPT_LANGUAGE="ru",
    )
    assert response.status_code == 400
    assert "цветная картинка с палитрой, а не срез КТ" in response.content.decode()
    assert Analysis.objects.count() == 0
