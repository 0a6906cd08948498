"""Every file of an analysis in an S3 bucket (django-storages' S3 backend against moto's
standalone server, see tests/s3.py): the upload a worker waits for, every slice's PNGs,
the result files and the exports built on download; every download streamed from the
bucket; nothing written to MEDIA_ROOT."""

from __future__ import annotations

import gzip
import io
import runpy
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from segmenter import processing, services
from segmenter.models import Analysis
from tests.s3 import AWS_ENV, bucket_keys, new_bucket, s3_server

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory):
    yield from s3_server(tmp_path_factory.mktemp("s3"))


@pytest.fixture
def bucket(settings, monkeypatch, s3_url):
    """A fresh bucket, the default storage of this test (as DJANGO_STORAGE_S3_BUCKET makes it)."""
    for key, value in AWS_ENV.items():
        monkeypatch.setenv(key, value)
    name = new_bucket(s3_url)
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {
                "bucket_name": name, "endpoint_url": s3_url, "file_overwrite": False, "default_acl": None
            },
        },
    }
    return lambda: bucket_keys(s3_url, name)


def _volume() -> bytes:
    hu = np.full((96, 96, 4), -1000, np.int16)
    hu[20:76, 15:45] = hu[20:76, 51:81] = -850  # two "lungs"
    hu[30:40, 20:30, 1] = -300
    return gzip.compress(nib.Nifti1Image(hu, np.diag([3.0, 3.0, 5.0, 1.0])).to_bytes())


def test_the_settings_switch_the_bucket_on_from_the_environment(monkeypatch):
    settings_file = str(Path(__file__).resolve().parents[2] / "_42epochs" / "settings.py")
    monkeypatch.setenv("DJANGO_STORAGE_S3_BUCKET", "results")
    monkeypatch.setenv("DJANGO_STORAGE_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    on = runpy.run_path(settings_file)["STORAGES"]["default"]  # run afresh, as test_settings does
    monkeypatch.delenv("DJANGO_STORAGE_S3_BUCKET")
    off = runpy.run_path(settings_file)["STORAGES"]["default"]
    assert on["BACKEND"] == "storages.backends.s3.S3Storage"
    assert on["OPTIONS"]["bucket_name"] == "results"
    assert on["OPTIONS"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert on["OPTIONS"]["file_overwrite"] is False
    assert off == {"BACKEND": "django.core.files.storage.FileSystemStorage"}


def test_a_queued_volume_lives_in_the_bucket_from_upload_to_export(
    client, settings, bucket, stored_files, django_capture_on_commit_callbacks
):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    with django_capture_on_commit_callbacks(execute=True):
        created = client.post("/api/v1/analyses", {"file": SimpleUploadedFile("ct.nii.gz", _volume())}).json()
    analysis = Analysis.objects.get(pk=created["id"])
    assert bucket() == [analysis.upload.name] and analysis.upload.name.endswith(".nii.gz")

    assert processing.analysis_process(analysis_id=created["id"]) == processing.Outcome.DONE
    keys = bucket()
    assert len([k for k in keys if k.endswith(".png")]) == 4 * 5 and not any("/upload/" in k for k in keys)
    assert f"analyses/{analysis.id}/slices/provenance.json" in keys

    body = client.get(f"/api/v1/analyses/{analysis.id}").json()
    assert body["status"] == "done" and len(body["slices"]) == 4
    image = client.get(reverse("segmenter:slice_image", args=[analysis.id, 2]))
    assert image.status_code == 200 and image.streaming
    assert b"".join(image.streaming_content).startswith(b"\x89PNG")
    study = client.get(reverse("segmenter:study_zip", args=[analysis.id]))
    names = zipfile.ZipFile(io.BytesIO(b"".join(study.streaming_content))).namelist()
    assert "report.csv" in names and len(names) > 4 * 3
    labels = client.get(reverse("segmenter:labels_nifti", args=[analysis.id]))
    assert labels.status_code == 200
    volume = nib.Nifti1Image.from_bytes(gzip.decompress(b"".join(labels.streaming_content)))
    assert volume.shape == (96, 96, 4)
    assert f"analyses/{analysis.id}/exports/labels.nii.gz" in bucket()  # built once, kept in the bucket
    assert stored_files() == []  # nothing on the local disk, ever

    services.analysis_delete(analysis=analysis)
    assert not any(str(analysis.id) in k for k in bucket())


def test_a_slice_processed_in_its_request_is_stored_in_the_bucket(client, bucket, stored_files, samples):
    response = client.post("/api/v1/analyses", {"file": SimpleUploadedFile("a.dcm", samples.dicom(0))})
    assert response.status_code == 201, response.content
    keys = bucket()  # five PNGs, provenance.json and geometry.json
    assert len(keys) == 5 + 2 and all(k.startswith(f"analyses/{response.json()['id']}/slices/") for k in keys)
    assert stored_files() == []


def test_a_missing_object_reads_as_404_not_500(client, bucket, samples):
    response = client.post("/api/v1/analyses", {"file": SimpleUploadedFile("a.dcm", samples.dicom(0))})
    analysis_id = response.json()["id"]
    slice_ = Analysis.objects.get(pk=analysis_id).slices.get()
    default_storage.delete(slice_.labels.name)
    assert client.get(reverse("segmenter:slice_labels", args=[analysis_id, 1])).status_code == 404
