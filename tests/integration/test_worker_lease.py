"""A worker holds a running study only under a lease, and cannot write it once it lost it.

Here a study gets one run (SEGMENTER_MAX_ATTEMPTS=1), so a run that stopped fails it;
tests/integration/test_worker_retry.py has the default, where it is queued again.

The study is queued (stored for a worker) and processed here as a worker would,
``processing.analysis_process``, with a stand-in engine that "pauses" on the third slice:
it runs a function of the test there, which ages the heartbeat past the stale timeout
(as a SIGSTOP would) and perhaps runs the reaper, before the run goes on.
"""

from __future__ import annotations

import io
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from segmenter import processing, reaper, services, tasks
from segmenter.models import Analysis, Slice
from tests.stubs import StandInSegmenter

pytestmark = pytest.mark.django_db
SLICES = 6
STALE_S = 60
#: What the stand-in runs when it reaches the third slice (set by each test).
on_third_slice = None


class PausingOnThirdSlice(StandInSegmenter):
    def __init__(self) -> None:
        self.calls = 0

    def segment(self, pixels, spacing_mm=None):
        self.calls += 1
        if self.calls == 3 and on_third_slice is not None:
            on_third_slice()
        return super().segment(pixels)


@pytest.fixture
def queued(settings, samples, use_engine, monkeypatch):
    """A study of SLICES slices stored for a worker, with the pausing engine installed."""
    global on_third_slice
    settings.TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    settings.SEGMENTER_STALE_AFTER_SECONDS = STALE_S
    settings.SEGMENTER_MAX_ATTEMPTS = 1
    monkeypatch.setattr(processing, "PROGRESS_INTERVAL", 0)  # a heartbeat with every slice
    use_engine(PausingOnThirdSlice)
    data = samples.zip({f"s/{k}.dcm": samples.dicom(k % 2) for k in range(SLICES)})
    analysis = services.analysis_create(stream=io.BytesIO(data), name="study.zip", size=len(data))
    assert analysis.status == Analysis.Status.QUEUED and analysis.upload
    yield analysis
    on_third_slice = None


def _second_slice_stored(timeout_s: float = 10.0) -> None:
    """Wait until the worker's second thread has stored the second slice's last file (its
    thumbnail), which it writes while the third slice is segmented: what a reaper then
    sees is settled."""
    from django.core.files.storage import default_storage

    analysis = Analysis.objects.get(status=Analysis.Status.RUNNING)
    name = f"analyses/{analysis.pk}/slices/0002-thumbnail.png"
    deadline = time.monotonic() + timeout_s
    while not default_storage.exists(name) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # the file exists as soon as it is opened: let its write finish


def _pause(then=None):
    """On the third slice: the heartbeat goes silent past the stale timeout, then ``then()``."""

    def paused():
        _second_slice_stored()
        Analysis.objects.filter(status=Analysis.Status.RUNNING).update(
            heartbeat=timezone.now() - timedelta(seconds=2 * STALE_S)
        )
        if then is not None:
            then()

    global on_third_slice
    on_third_slice = paused


def test_a_paused_worker_that_resumes_after_the_reaper_writes_nothing_and_the_study_stays_failed(
    queued, stored_files
):
    seen = {}

    def reap():
        seen["reap"] = io.StringIO()
        call_command("reap", stdout=seen["reap"])
        seen["row"] = Analysis.objects.values().get(pk=queued.pk)
        seen["files"] = stored_files()

    _pause(then=reap)
    outcome = processing.analysis_process(analysis_id=str(queued.id))

    assert outcome == processing.Outcome.LEASE_LOST
    assert f"analysis {queued.id} (study.zip): running 2/{SLICES} (run 1 of 1)" in seen["reap"].getvalue()
    # Reaped while the worker slept: slices 1 and 2 are gone (slice 3's files are written
    # only once it is segmented, after the pause).
    assert seen["row"]["status"] == "failed"
    assert seen["files"] == [], seen["files"]
    after = Analysis.objects.values().get(pk=queued.pk)
    assert after == seen["row"]  # the resumed worker wrote nothing: no done, no progress, no heartbeat
    assert Slice.objects.count() == 0
    assert stored_files() == []  # what it wrote after waking up (slice 3's labels) it removed


def test_a_stale_study_reads_as_failed_without_a_write_and_its_worker_cannot_finish_it(
    client, queued, stored_files
):
    seen = {}

    def look():
        seen["api"] = client.get(f"/api/v1/analyses/{queued.id}").json()
        seen["page"] = client.get(reverse("segmenter:analysis", args=[queued.id])).content.decode()
        seen["row"] = Analysis.objects.get(pk=queued.pk)
        seen["files"] = stored_files()

    _pause(then=look)
    outcome = processing.analysis_process(analysis_id=str(queued.id))

    assert seen["api"]["status"] == "failed" and "stopped" in seen["api"]["error"]
    assert seen["api"]["slices"] == [] and seen["api"]["progress"]["done"] == 0
    assert "Processing stopped before it finished" in seen["page"]
    assert seen["row"].status == "running"  # reading it wrote nothing and deleted nothing
    assert any(f.endswith("0002-labels.png") for f in seen["files"]) and seen["row"].upload
    assert outcome == processing.Outcome.LEASE_LOST
    analysis = Analysis.objects.get(pk=queued.pk)
    assert analysis.status == "failed" and "stopped" in analysis.error  # its own worker recorded it
    assert Slice.objects.count() == 0 and stored_files() == []


def test_the_reaper_leaves_a_worker_with_a_fresh_heartbeat_alone(queued, stored_files):
    global on_third_slice
    reaped = []
    on_third_slice = lambda: reaped.append(reaper.abandoned_reap())  # noqa: E731

    assert processing.analysis_process(analysis_id=str(queued.id)) == processing.Outcome.DONE
    assert not reaped[0]
    analysis = Analysis.objects.get(pk=queued.pk)
    assert analysis.status == "done" and analysis.slices.count() == SLICES
    assert len(stored_files()) == 5 * SLICES + 1  # the upload is gone, every slice's five PNGs and provenance.json stay


def test_a_second_run_of_a_study_already_taken_touches_nothing(queued, stored_files):
    global on_third_slice
    seen = {}

    def run_again():
        seen["outcome"] = processing.analysis_process(analysis_id=str(queued.id))
        seen["row"] = Analysis.objects.values().get(pk=queued.pk)

    on_third_slice = run_again
    assert processing.analysis_process(analysis_id=str(queued.id)) == processing.Outcome.DONE
    assert seen["outcome"] == processing.Outcome.SKIPPED
    assert seen["row"]["status"] == "running"
    assert processing.analysis_process(analysis_id=str(queued.id)) == processing.Outcome.SKIPPED  # done stays done
    assert Analysis.objects.get(pk=queued.pk).slices.count() == SLICES
    assert len(stored_files()) == 5 * SLICES + 1


def test_a_task_whose_run_lost_its_lease_ends_failed_too(queued):
    _pause(then=reaper.abandoned_reap)
    with pytest.raises(processing.LeaseLost):
        tasks.process_analysis.call(str(queued.id))
    assert Analysis.objects.get(pk=queued.pk).status == "failed"
