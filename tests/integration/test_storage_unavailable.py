"""A file store that refuses writes (read-only, full) answers 503, and no study stays running."""

from __future__ import annotations

import errno
import io

import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from segmenter import processing, services
from segmenter.models import Analysis, Slice

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]
MESSAGE = "Storage is unavailable; please try again later."


@pytest.fixture
def read_only_after(monkeypatch):
    """A function making the store refuse every save after the first ``n`` (and every delete)."""

    def install(n: int, error: OSError | None = None):
        saved = []
        real_save = FileSystemStorage._save

        def save(self, name, content):
            if len(saved) >= n:
                raise error or PermissionError(errno.EACCES, "Permission denied", name)
            saved.append(name)
            return real_save(self, name, content)

        def delete(self, name):
            raise PermissionError(errno.EACCES, "Permission denied", name)

        monkeypatch.setattr(FileSystemStorage, "_save", save)
        monkeypatch.setattr(FileSystemStorage, "delete", delete)
        return saved

    return install


def _study(samples, n=4) -> bytes:
    return samples.zip({f"s/{k}.dcm": samples.dicom(k % 2) for k in range(n)})


def test_a_web_upload_whose_results_cannot_be_stored_answers_503_and_the_study_is_failed(
    client, upload, samples, read_only_after
):
    read_only_after(3)  # read-only from the middle of the second slice
    response = upload("study.zip", _study(samples))
    assert response.status_code == 503
    assert MESSAGE in response.content.decode()
    analysis = Analysis.objects.get()
    assert (analysis.status, analysis.error) == ("failed", MESSAGE)
    assert Slice.objects.count() == 0
    page = client.get(reverse("segmenter:analysis", args=[analysis.id]))
    assert page.status_code == 200 and MESSAGE in page.content.decode()


def test_an_api_upload_on_a_full_disk_answers_503_json(client, samples, read_only_after):
    read_only_after(0, OSError(errno.ENOSPC, "No space left on device"))
    response = client.post("/api/v1/analyses", {"file": SimpleUploadedFile("a.dcm", samples.dicom())})
    assert response.status_code == 503
    assert response.json() == {"error": MESSAGE}
    analysis = Analysis.objects.get()
    assert analysis.status == "failed"
    assert client.get(f"/api/v1/analyses/{analysis.id}").json()["status"] == "failed"


def test_a_queued_upload_that_cannot_be_stored_answers_503_and_leaves_no_row(client, samples, settings, read_only_after):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    read_only_after(0)
    response = client.post("/api/v1/analyses", {"file": SimpleUploadedFile("s.zip", _study(samples))})
    assert (response.status_code, response.json()) == (503, {"error": MESSAGE})
    assert not Analysis.objects.exists()


def test_a_worker_whose_store_turns_read_only_fails_the_study_without_raising(samples, settings, read_only_after):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    data = _study(samples, 6)
    analysis = services.analysis_create(stream=io.BytesIO(data), name="s.zip", size=len(data))
    saved = read_only_after(6)  # six slice files are stored, then the store turns read-only
    assert processing.analysis_process(analysis_id=str(analysis.id)) == processing.Outcome.STORAGE_UNAVAILABLE
    assert len(saved) == 6
    analysis.refresh_from_db()
    assert (analysis.status, analysis.error, analysis.slices_done) == ("failed", MESSAGE, 0)
