"""Whatever an upload is called, the files stored for it have short ASCII names, and the
name shown stays the upload's own (less control and bidi characters)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from segmenter import processing, uploads
from segmenter.ml.io.names import clean_name
from segmenter.models import Analysis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]

URL = "/api/v1/analyses"
#: 200 Cyrillic letters: 400 bytes in UTF-8, over any file system's 255-byte name limit.
LONG_CYRILLIC = "снимок-грудной-клетки-" * 9 + "и" * 2
MAX_STORED_NAME = 64


@pytest.fixture
def queued(settings):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}


@pytest.fixture
def post(client, django_capture_on_commit_callbacks):
    def send(name: str, data: bytes):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(URL, {"file": SimpleUploadedFile(name, data)})

    return send


def _stored_names(files: list[str]) -> list[str]:
    return [f.rsplit("/", 1)[-1] for f in files]


def test_a_200_character_cyrillic_name_is_queued_under_a_short_ascii_name(queued, post, samples, stored_files):
    name = LONG_CYRILLIC[:196] + ".png"
    assert len(name) == 200
    response = post(name, samples.png())
    assert response.status_code == 202, response.content
    assert response.json()["source_name"] == name
    (stored,) = stored_files()
    assert stored.startswith(f"analyses/{response.json()['id']}/upload/")
    (file_name,) = _stored_names([stored])
    assert file_name.isascii() and len(file_name) <= MAX_STORED_NAME and file_name.endswith(".png")


def test_a_queued_upload_keeps_its_kind_of_file_in_the_stored_name(queued, post, samples, stored_files):
    post(LONG_CYRILLIC + ".nii.gz", b"")  # refused: empty, nothing stored
    assert stored_files() == []
    post("том " + LONG_CYRILLIC + ".ZIP", samples.zip({"a.jpg": samples.jpeg(0)}))
    (file_name,) = _stored_names(stored_files())
    assert file_name.isascii() and file_name.endswith(".zip")


def test_a_queued_upload_named_in_cyrillic_is_processed_by_the_worker(queued, post, samples):
    name = LONG_CYRILLIC + ".dcm"
    analysis = Analysis.objects.get(pk=post(name, samples.dicom()).json()["id"])
    processing.analysis_process(analysis_id=str(analysis.id))  # what db_worker runs
    analysis.refresh_from_db()
    assert analysis.status == Analysis.Status.DONE, analysis.error
    assert analysis.source_name == clean_name(name) == analysis.slices.get().name


def test_a_200_character_cyrillic_name_is_analysed_in_the_request(post, samples, stored_files):
    name = LONG_CYRILLIC[:196] + ".dcm"
    response = post(name, samples.dicom())
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["source_name"] == name and body["slices"][0]["name"] == name
    assert all(f.isascii() and len(f) <= MAX_STORED_NAME for f in _stored_names(stored_files()))


def test_control_and_bidi_characters_are_dropped_from_the_shown_name(queued, post, samples, stored_files):
    response = post("scan\u202egnp.\t\x07" + LONG_CYRILLIC[:150] + ".png", samples.png())
    assert response.status_code == 202, response.content
    shown = response.json()["source_name"]
    assert shown == "scangnp." + LONG_CYRILLIC[:150] + ".png"
    (file_name,) = _stored_names(stored_files())
    assert file_name.isascii() and file_name.endswith(".png")


def test_a_large_upload_with_a_long_cyrillic_extension_is_answered_not_a_500(client, samples):
    # Bodies over FILE_UPLOAD_MAX_MEMORY_SIZE are spooled to a temporary file named after
    # the upload's extension by Django; a 400-byte "extension" must not make that fail.
    data = samples.png() + b"\0" * (5 * 1024 * 1024)
    response = client.post(URL, {"file": SimpleUploadedFile("scan." + LONG_CYRILLIC, data)})
    assert response.status_code < 500 and response.json()


def test_stored_names_are_short_ascii_whatever_the_name():
    for name in (LONG_CYRILLIC, LONG_CYRILLIC + ".png", "x" * 300 + ".nii.gz", "IM000001", ".png", "a.PNG.exe",
                 "..\\..\\etc/passwd", "scan.dcm\u202e"):
        stored = uploads.stored_upload_name(name)
        assert stored.isascii() and 0 < len(stored) <= MAX_STORED_NAME, name
        assert "/" not in stored and "\\" not in stored and not stored.startswith(".")
    assert uploads.stored_upload_name("Study.NII.GZ").endswith(".nii.gz")
    assert uploads.stored_upload_name(LONG_CYRILLIC).isalnum()
    assert uploads.stored_upload_name("a.png") != uploads.stored_upload_name("a.png")
