"""The use cases behind every front end: one size gate with one message for the web form and
the API, each upload decoded once per process that handles it, and modules without cycles."""

from __future__ import annotations

import ast
import io
import os
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from segmenter import processing, reaper, services, tasks, uploads
from segmenter.models import Analysis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]
APP = Path(__file__).resolve().parents[2] / "segmenter"
API = "/api/v1/analyses"


def _web(client, data: bytes, **extra):
    return client.post(
        reverse("segmenter:home"),
        {"file": SimpleUploadedFile("big.png", data)},
        headers={"Accept": "application/json"},
        **extra,
    )


def _api(client, data: bytes, **extra):
    return client.post(API, {"file": SimpleUploadedFile("big.png", data)}, **extra)


@pytest.mark.parametrize("send", [_web, _api], ids=["web", "api"])
def test_a_body_declared_over_the_limit_gets_the_same_413_from_the_form_and_the_api(client, settings, send):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 1024 * 1024
    response = send(client, b"x", CONTENT_LENGTH=str(1024 * 1024 + uploads.MULTIPART_OVERHEAD_BYTES + 1))
    assert response.status_code == 413
    assert response.json()["error"] == "The file is larger than the limit of 1 MB."


@pytest.mark.parametrize("send", [_web, _api], ids=["web", "api"])
def test_a_file_just_over_the_limit_gets_the_same_413_from_the_form_and_the_api(client, settings, send):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 1024 * 1024
    response = send(client, b"\x89PNG\r\n\x1a\n" + b"\x00" * (1024 * 1024))
    assert response.status_code == 413
    assert response.json()["error"] == "The file is 1.1 MB; the limit is 1 MB."


@pytest.mark.parametrize("send", [_web, _api], ids=["web", "api"])
def test_a_malformed_content_length_is_a_400_from_both(client, send):
    response = send(client, b"x", CONTENT_LENGTH="ab")
    assert response.status_code == 400 and "Content-Length" in response.json()["error"]


def test_the_browser_script_is_told_the_same_limit(client, settings):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 1024 * 1024
    page = client.get(reverse("segmenter:home")).content.decode()
    assert (
        uploads.too_large_message() == "The file is larger than the limit of 1 MB."
        and "larger than the limit of 1 MB" in page
    )


@pytest.fixture
def decodes(monkeypatch):
    """How many times an archive is decoded, counted at the reader uploads calls."""
    calls = []
    read = uploads.read_any_archive
    monkeypatch.setattr(uploads, "read_any_archive", lambda *a, **k: calls.append(1) or read(*a, **k))
    return calls


def test_an_upload_processed_in_the_request_is_decoded_once(samples, decodes):
    data = samples.zip({f"s/{k}.jpg": samples.jpeg(k) for k in range(3)})
    analysis = services.analysis_create(stream=io.BytesIO(data), name="s.zip", size=len(data))
    assert analysis.status == Analysis.Status.DONE and analysis.slices.count() == 3
    assert len(decodes) == 1
    assert not analysis.upload  # nothing stored for a worker


def test_a_queued_upload_is_decoded_once_where_it_is_checked_and_once_by_its_worker(
    samples, settings, decodes
):
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    data = samples.zip({f"s/{k}.jpg": samples.jpeg(k) for k in range(3)})
    analysis = services.analysis_create(stream=io.BytesIO(data), name="s.zip", size=len(data))
    assert analysis.status == Analysis.Status.QUEUED and len(decodes) == 1  # checked before it was stored
    assert processing.analysis_process(analysis_id=str(analysis.id)) == processing.Outcome.DONE
    assert len(decodes) == 2  # the worker's own process reads the stored upload once


@pytest.mark.parametrize("name", ["ct.nii", "ct.nii.gz"])
def test_a_queued_volume_is_read_slice_by_slice_from_its_stored_upload(name, settings):
    """The worker reads a volume's slices from the open upload (or, gzipped, from its
    temporary file) as they are reached, and lets go of every file it opened."""
    import gzip

    import nibabel as nib
    import numpy as np

    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    hu = np.full((64, 64, 5), -1000, np.int16)
    hu[8:56, 8:56] = 40
    hu[16:48, 14:30] = hu[16:48, 34:50] = -850  # two lungs in a body
    data = nib.Nifti1Image(hu, np.diag([-0.7, -0.7, 1.0, 1.0])).to_bytes()
    data = gzip.compress(data) if name.endswith(".gz") else data
    analysis = services.analysis_create(stream=io.BytesIO(data), name=name, size=len(data))
    assert analysis.status == Analysis.Status.QUEUED
    fds = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    assert processing.analysis_process(analysis_id=str(analysis.id)) == processing.Outcome.DONE
    analysis.refresh_from_db()
    assert analysis.slices.count() == 5 and not analysis.upload
    if fds is not None:
        assert set(os.listdir("/proc/self/fd")) <= fds


def test_a_queued_zip_is_read_slice_by_slice_and_leaves_no_file_open(samples, settings, segment_calls):
    """The worker decodes an archive's slices once to check them and then once each as
    they are segmented, from one temporary file it closes; the lung check's slices are
    segmented once."""
    from tests.conftest import zip_bytes
    from tests.unit.conftest import png

    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    members = {}
    for k in range(6):
        grey = samples.grey(k % 3).copy()
        grey[0, :] = k  # no two slices alike
        members[f"s{k}.png"] = png(grey)
    data = zip_bytes(members)
    analysis = services.analysis_create(stream=io.BytesIO(data), name="study.zip", size=len(data))
    assert analysis.status == Analysis.Status.QUEUED
    fds = set(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    segment_calls.clear()
    assert processing.analysis_process(analysis_id=str(analysis.id)) == processing.Outcome.DONE
    analysis.refresh_from_db()
    assert analysis.slices.count() == 6 and not analysis.upload
    assert len(segment_calls) == 6  # three by the lung check, remembered; three more
    if fds is not None:
        assert set(os.listdir("/proc/self/fd")) <= fds


def test_the_reaper_names_the_task_that_processes_an_analysis():
    assert reaper.PROCESS_TASK_PATH == tasks.process_analysis.module_path


def _imports(module: str) -> set[str]:
    """The segmenter modules a module imports, at the top or inside functions."""
    tree = ast.parse((APP / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add((node.module or "").split(".")[0] or next(a.name for a in node.names))
            if not node.module:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("segmenter."):
            found.add(node.module.split(".")[1])
    return found


def test_the_modules_import_each_other_in_one_direction():
    order = ["reasons", "uploads", "exports", "processing", "reaper", "selectors", "tasks", "services"]
    for k, module in enumerate(order):
        later = set(order[k + 1 :])
        assert not (_imports(module) & later), f"{module} imports {_imports(module) & later}"
    assert "services" not in _imports("tasks") and "tasks" not in _imports("processing")


def test_no_module_level_hand_over_of_decoded_slices_remains():
    for path in APP.glob("*.py"):
        assert "_decoded" not in path.read_text(encoding="utf-8"), path


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are set on Linux only")
def test_the_png_writer_runs_below_the_networks_priority():
    """The writer encodes in the time the networks leave idle (processing._yield_to_networks):
    its thread runs at WRITER_NICENESS while the calling thread keeps its own."""
    import threading
    from types import SimpleNamespace

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = niceness()
    with processing._Recording(SimpleNamespace(pk="x"), lease=None, segmenter=None) as recording:
        in_writer = recording._writer.submit(niceness).result()
    assert in_writer == processing.WRITER_NICENESS and niceness() == before
