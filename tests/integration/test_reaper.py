"""`manage.py reap`: abandoned work is cleaned up without anyone visiting it, live work is not."""

from __future__ import annotations

import io
import os
import re
import time
from datetime import timedelta

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command
from django.utils import timezone
from django_tasks import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from segmenter.models import Analysis

pytestmark = pytest.mark.django_db
STALE_S = 60
TASK = "segmenter.tasks.process_analysis"


@pytest.fixture(autouse=True)
def stale_after(settings):
    settings.SEGMENTER_STALE_AFTER_SECONDS = STALE_S


def _ago(seconds: float):
    return timezone.now() - timedelta(seconds=seconds)


def _running(name: str, heartbeat) -> Analysis:
    analysis = Analysis.objects.create(
        kind="study", status="running", owner="a-run", source_name=name, slices_total=100, slices_done=7,
        heartbeat=heartbeat,
    )
    for k in (1, 2):
        default_storage.save(f"analyses/{analysis.id}/slices/{k:04d}-image.png", ContentFile(b"png"))
    analysis.upload = default_storage.save(f"analyses/{analysis.id}/upload/{name}", ContentFile(b"zip"))
    analysis.save()
    return analysis


def _task_row(analysis_id, status=TaskResultStatus.RUNNING, started=None) -> DBTaskResult:
    return DBTaskResult.objects.create(
        task_path=TASK, args_kwargs={"args": [str(analysis_id)], "kwargs": {}}, backend_name="default",
        status=status, started_at=started, worker_ids=["w1"],
    )


def _temp_file(folder, name: str, age_s: float):
    path = folder / name
    path.write_bytes(b"x" * 1024)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def _reap() -> str:
    out = io.StringIO()
    call_command("reap", stdout=out)
    return out.getvalue()


def test_reap_cleans_an_abandoned_study_its_task_row_and_an_old_temporary_upload(upload_temp_dir, stored_files):
    abandoned = _running("lost.zip", _ago(5 * STALE_S))
    abandoned_task = _task_row(abandoned.id, started=_ago(6 * STALE_S))
    finished = Analysis.objects.create(kind="slice", status="done", source_name="d.png", finished=_ago(3 * STALE_S))
    finished_task = _task_row(finished.id, started=_ago(4 * STALE_S))  # its worker died before recording it
    old_spool = _temp_file(upload_temp_dir, "tmpab12cd.upload.zip", 2 * STALE_S)

    out = _reap()

    abandoned.refresh_from_db()
    assert abandoned.status == "failed" and "stopped" in abandoned.error and not abandoned.upload
    assert abandoned.finished == abandoned.heartbeat + timedelta(seconds=STALE_S)  # when it went stale
    assert stored_files() == []
    assert re.search(
        rf"analysis {abandoned.id} \(lost.zip\): running 7/100 \(run 0 of 3\), silent 30\d s "
        r"-> failed; 2 files removed",
        out,
    )
    for row in (abandoned_task, finished_task):
        row.refresh_from_db()
        assert row.status == TaskResultStatus.FAILED and row.exception_class_path == "segmenter.processing.LeaseLost"
        assert f"task {row.id} (analysis " in out
    assert not old_spool.exists() and f"temporary upload {old_spool}" in out
    assert out.splitlines()[-1] == "reaped 1 analyses, 2 task rows, 1 temporary uploads"
    assert _reap().splitlines() == ["reaped 0 analyses, 0 task rows, 0 temporary uploads"]


def test_reap_leaves_live_and_queued_work_and_other_files_alone(upload_temp_dir, stored_files):
    live = _running("live.zip", _ago(STALE_S / 2))
    live_task = _task_row(live.id, started=_ago(10 * STALE_S))  # a long study, still reporting
    queued = Analysis.objects.create(kind="study", status="queued", source_name="q.zip")
    queued_task = _task_row(queued.id, status=TaskResultStatus.READY)
    fresh_spool = _temp_file(upload_temp_dir, "tmpzz99.upload.dcm", STALE_S / 2)
    not_ours = _temp_file(upload_temp_dir, "notes.upload.txt", 10 * STALE_S)
    files = stored_files()

    assert _reap().splitlines() == ["reaped 0 analyses, 0 task rows, 0 temporary uploads"]

    live.refresh_from_db()
    assert (live.status, live.slices_done, live.owner) == ("running", 7, "a-run") and live.upload
    assert stored_files() == files
    live_task.refresh_from_db()
    queued_task.refresh_from_db()
    assert (live_task.status, queued_task.status) == (TaskResultStatus.RUNNING, TaskResultStatus.READY)
    assert Analysis.objects.get(pk=queued.pk).status == "queued"
    assert fresh_spool.exists() and not_ours.exists()


def test_reading_a_stale_study_deletes_nothing_until_the_reaper_runs(client, stored_files):
    analysis = _running("quiet.zip", _ago(2 * STALE_S))
    files = stored_files()
    body = client.get(f"/api/v1/analyses/{analysis.id}").json()
    assert body["status"] == "failed" and body["slices"] == []
    assert Analysis.objects.get(pk=analysis.pk).status == "running" and stored_files() == files
    _reap()
    assert Analysis.objects.get(pk=analysis.pk).status == "failed" and stored_files() == []
    assert client.get(f"/api/v1/analyses/{analysis.id}").json()["error"] == body["error"]


def test_reap_fails_a_study_left_queued_without_a_task_and_leaves_a_waiting_one(stored_files):
    lost = Analysis.objects.create(kind="study", status="queued", source_name="lost.zip")
    lost.upload = default_storage.save(f"analyses/{lost.id}/upload/lost.zip", ContentFile(b"zip"))
    lost.save()
    waiting = Analysis.objects.create(kind="study", status="queued", source_name="waiting.zip")
    _task_row(waiting.id, status=TaskResultStatus.READY)
    fresh = Analysis.objects.create(kind="study", status="queued", source_name="fresh.zip")
    Analysis.objects.filter(pk__in=[lost.pk, waiting.pk]).update(created=_ago(3 * STALE_S))

    out = _reap()

    assert f"analysis {lost.id} (lost.zip): queued, no task -> failed; 1 files removed" in out
    assert Analysis.objects.get(pk=lost.pk).status == "failed"
    assert Analysis.objects.get(pk=waiting.pk).status == "queued"  # a worker will take it
    assert Analysis.objects.get(pk=fresh.pk).status == "queued"  # its request may still be enqueueing it
    assert not any(str(lost.id) in f for f in stored_files())
