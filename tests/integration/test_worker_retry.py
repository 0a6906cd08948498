"""A study whose worker stopped goes back to the queue with its upload, and another run
does it again from the start, at most SEGMENTER_MAX_ATTEMPTS times; a run that wakes up
after losing its lease writes nothing, and no slice is ever stored twice.

The study is processed here as a worker would (``processing.analysis_process``), with the
pausing stand-in of test_worker_lease: on the third slice its heartbeat is aged past the
stale timeout (as a SIGSTOP would) and the test looks, reaps or runs the study again.
"""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import translation
from django_tasks import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from segmenter import engine, processing, tasks
from segmenter.models import Analysis, Slice
from tests.integration import test_worker_lease as lease_tests
from tests.integration.test_worker_lease import SLICES, _pause, queued  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def three_runs(settings, queued):  # noqa: F811 - the fixture imported above
    settings.SEGMENTER_MAX_ATTEMPTS = 3


def _reap() -> str:
    out = io.StringIO()
    call_command("reap", stdout=out)
    return out.getvalue()


def _ready_tasks() -> int:
    return DBTaskResult.objects.filter(status=TaskResultStatus.READY).count()


def test_a_study_whose_worker_stopped_is_queued_again_with_its_upload_and_then_done_once(
    queued, stored_files  # noqa: F811
):
    seen = {}

    def reap():
        seen["reap"] = _reap()
        seen["row"] = Analysis.objects.get(pk=queued.pk)
        seen["files"] = stored_files()
        seen["tasks"] = _ready_tasks()

    _pause(then=reap)
    ready_before = _ready_tasks()
    assert processing.analysis_process(analysis_id=str(queued.id)) == processing.Outcome.LEASE_LOST

    assert f"running 2/{SLICES} (run 1 of 3)" in seen["reap"]
    assert "-> queued again; 10 files removed" in seen["reap"]
    row = seen["row"]
    assert (row.status, row.attempts, row.owner, row.heartbeat, row.slices_done) == ("queued", 1, "", None, 0)
    assert row.upload and seen["files"] == [row.upload.name]  # the upload alone: the stopped run's files went
    assert seen["tasks"] == ready_before + 1  # a task for the next run
    after = Analysis.objects.get(pk=queued.pk)
    # The woken run wrote nothing.
    assert (after.status, after.attempts, after.heartbeat) == ("queued", 1, None)
    assert stored_files() == [row.upload.name]

    lease_tests.on_third_slice = None
    assert processing.analysis_process(analysis_id=str(queued.id)) == processing.Outcome.DONE
    done = Analysis.objects.get(pk=queued.pk)
    assert (done.status, done.attempts, done.slices_done) == ("done", 2, SLICES) and not done.upload
    assert list(Slice.objects.values_list("index", flat=True)) == list(range(1, SLICES + 1))
    assert len(stored_files()) == 5 * SLICES + 1  # each slice's five PNGs once, and provenance.json


def test_the_page_and_the_api_say_retrying_meanwhile_in_english_and_russian(client, queued):  # noqa: F811
    seen = {}

    def look():
        seen["api"] = client.get(f"/api/v1/analyses/{queued.id}").json()  # expired, not yet reaped
        seen["page"] = client.get(reverse("segmenter:analysis", args=[queued.id])).content.decode()
        _reap()
        seen["status"] = client.get(reverse("segmenter:status", args=[queued.id])).json()
        with translation.override("ru"):
            seen["ru"] = client.get(
                reverse("segmenter:analysis", args=[queued.id]), HTTP_ACCEPT_LANGUAGE="ru"
            ).content.decode()

    _pause(then=look)
    processing.analysis_process(analysis_id=str(queued.id))

    assert seen["api"]["status"] == "queued" and seen["api"]["progress"]["retrying"] is True
    assert seen["api"]["error"] == ""
    assert "Retrying" in seen["page"] and "run 2 of at most 3" in seen["page"]
    assert seen["status"]["status_label"] == "retrying" and seen["status"]["retrying"] is True
    assert "Повтор" in seen["ru"] and "попытка 2 из 3" in seen["ru"]


def test_after_its_last_run_stops_it_fails_with_the_reason_and_only_then_loses_its_upload(
    queued, stored_files, settings  # noqa: F811
):
    settings.SEGMENTER_MAX_ATTEMPTS = 2
    for run in (1, 2):
        engine.reset()  # a fresh stand-in, which pauses on its third slice again
        _pause(then=_reap)
        assert processing.analysis_process(analysis_id=str(queued.id)) == processing.Outcome.LEASE_LOST
        row = Analysis.objects.get(pk=queued.pk)
        if run == 1:
            assert row.status == "queued" and row.upload
    assert (row.status, row.attempts) == ("failed", 2)
    assert row.error == "Processing stopped before it finished, 2 times; please upload the file again."
    assert not row.upload and stored_files() == [] and Slice.objects.count() == 0


def test_a_task_whose_run_finds_its_own_lease_expired_queues_the_study_again(
    queued, stored_files  # noqa: F811
):
    _pause()  # nobody reaps: the run itself finds its lease gone at its next report
    with pytest.raises(processing.LeaseLost):
        tasks.process_analysis.call(str(queued.id))
    row = Analysis.objects.get(pk=queued.pk)
    assert (row.status, row.attempts) == ("queued", 1) and row.upload
    assert stored_files() == [row.upload.name]


@pytest.mark.parametrize("why", ["no upload kept", "tasks run in the request"])
def test_a_study_that_cannot_be_run_again_fails(settings, queued, why):  # noqa: F811
    def reap():
        if why == "no upload kept":  # as with an upload processed in its request
            Analysis.objects.filter(pk=queued.pk).update(upload="")
        else:
            settings.TASKS = {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}}
        _reap()

    _pause(then=reap)
    assert processing.analysis_process(analysis_id=str(queued.id)) == processing.Outcome.LEASE_LOST
    row = Analysis.objects.get(pk=queued.pk)
    assert row.status == "failed" and row.error.startswith("Processing stopped before it finished;")
