"""Processing behind the pages: all of a result or nothing, and the real engine end to end."""

from __future__ import annotations

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from segmenter.models import Analysis, Slice
from tests import stubs


@pytest.mark.django_db(transaction=True)
def test_a_failure_halfway_leaves_nothing_half_written(client, samples, use_engine, stored_files):
    use_engine(stubs.FailingOnThirdSlice)
    archive = samples.zip({f"s{k}.jpg": samples.jpeg(k) for k in range(4)})
    response = client.post(reverse("segmenter:home"), {"file": SimpleUploadedFile("four.zip", archive)})

    analysis = Analysis.objects.get()
    assert response.status_code == 302
    assert analysis.status == Analysis.Status.FAILED
    assert Slice.objects.count() == 0
    assert stored_files() == []  # neither the two finished slices' files nor the upload
    content = client.get(response["Location"]).content.decode()
    assert "The analysis failed" in content
    assert analysis.error in content
    assert client.get(reverse("segmenter:slice_image", args=[analysis.id, 1])).status_code == 404
    assert client.get(reverse("segmenter:study_zip", args=[analysis.id])).status_code == 404


@pytest.mark.django_db(transaction=True)
def test_a_processed_upload_keeps_only_its_result_files(client, samples, stand_in_engine, stored_files):
    archive = samples.zip({"a.dcm": samples.dicom(0), "b.dcm": samples.dicom(1)})
    client.post(reverse("segmenter:home"), {"file": SimpleUploadedFile("pair.zip", archive)})
    analysis = Analysis.objects.get()
    assert analysis.status == Analysis.Status.DONE
    folder = f"analyses/{analysis.id}/slices"
    assert stored_files() == [
        f"{folder}/{k:04d}-{kind}.png" for k in (1, 2) for kind in ("hu", "image", "labels", "overlay", "thumbnail")  # HU: DICOM
    ] + [f"{folder}/geometry.json", f"{folder}/provenance.json"]  # what the exports and report.json need


@pytest.mark.django_db
@pytest.mark.parametrize(("backend", "stored"), [
    ("django_tasks.backends.immediate.ImmediateBackend", False),  # processed in the request
    ("django_tasks_db.DatabaseBackend", True),  # a worker reads it from storage
])
def test_the_upload_is_stored_only_for_a_worker(client, samples, stand_in_engine, settings, monkeypatch, backend, stored):
    from django.core.files.storage import default_storage

    settings.TASKS = {"default": {"BACKEND": backend}}
    saved = []
    save = default_storage.save
    monkeypatch.setattr(default_storage, "save", lambda name, *a, **k: saved.append(name) or save(name, *a, **k))
    client.post(reverse("segmenter:home"), {"file": SimpleUploadedFile("0.dcm", samples.dicom(0))})
    assert any("/upload/" in name for name in saved) == stored


@pytest.mark.slow
@pytest.mark.real_engine
@pytest.mark.django_db
def test_the_real_engine_finds_lung_on_the_dicom_sample(client, upload, samples):
    weights = django_settings.SEGMENTER_WEIGHTS_DIR
    if not (weights / "manifest.json").is_file():
        pytest.skip(f"no trained weights in {weights} (set SEGMENTER_WEIGHTS_DIR)")
    assert django_settings.SEGMENTER_ENGINE == "segmenter.engine.load_ensemble"
    response = upload("0.dcm", samples.dicom(0))
    assert response.status_code == 302
    analysis = Analysis.objects.get()
    assert analysis.status == Analysis.Status.DONE, analysis.error
    slice_ = analysis.slices.get()
    lung = slice_.areas["ggo"] + slice_.areas["consolidation"] + slice_.areas["other_lung"]
    assert lung > 0.01 * 512 * 512
    assert slice_.severity["grade"] in ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
    with slice_.labels.open("rb") as fh:
        labels = np.asarray(Image.open(fh))
    assert labels.shape == (512, 512) and set(np.unique(labels)) <= {0, 1, 2, 3}
    content = client.get(reverse("segmenter:slice", args=[analysis.id, 1])).content.decode()
    assert slice_.severity["grade"] in content
