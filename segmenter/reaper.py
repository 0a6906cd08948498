"""The reaper: cleaning up after runs that stopped, without anyone visiting their work.

Work that lost its worker (a killed or paused process, a crashed machine) is cleaned up
here: each `manage.py worker` reaps at start and every SEGMENTER_REAP_EVERY_SECONDS, each
task reaps at its start (throttled the same way, so that the immediate backend's web
processes reap too), and `manage.py reap` on demand. Every change is a compare-and-set,
so a live run and a second reaper are never disturbed.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from django.apps import apps
from django.conf import settings
from django.db.models import Q
from django.utils import timezone, translation
from django.utils.module_loading import import_string

from .models import Analysis, analysis_folder
from .processing import (
    LeaseLost,
    delete_folder_quietly,
    lease_cutoff,
    retry_allowed,
    stopped_message,
    stopped_run_settle,
)
from .reasons import megabytes

log = logging.getLogger(__name__)

#: The dotted path of the task that processes an analysis (tasks.process_analysis; a
#: test checks they agree), whose django-tasks-db rows the reaper looks at. Named here,
#: not imported, because the task module imports this one.
PROCESS_TASK_PATH = "segmenter.tasks.process_analysis"

#: How Django names an upload it spools to disk (TemporaryUploadedFile): tmp*.upload<.ext>.
_TEMP_UPLOAD = re.compile(r"^tmp[^/]*\.upload(\.[^/]*)?$")
_last_reap = -math.inf  # time.monotonic() of this process' last reap


@dataclass
class Reaped:
    """What one pass of the reaper cleaned, as lines for people."""

    analyses: list[str] = field(default_factory=list)
    task_rows: list[str] = field(default_factory=list)
    temp_uploads: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.analyses or self.task_rows or self.temp_uploads)


def abandoned_reap() -> Reaped:
    """Clean up after workers that stopped: running analyses whose lease expired become
    failed and lose their files and upload; task rows left running for an analysis no
    longer running become failed; Django's spooled uploads older than the stale timeout
    are deleted. Safe to run anywhere, any number of times at once: every change is a
    compare-and-set, so a live worker and a second reaper are never disturbed."""
    now = timezone.now()
    reaped = Reaped()
    cutoff = lease_cutoff(now)
    expired = Analysis.objects.filter(status=Analysis.Status.RUNNING).filter(
        Q(heartbeat__lt=cutoff) | Q(heartbeat__isnull=True)
    )
    for analysis in expired:
        line = analysis_mark_stale(analysis=analysis, now=now)
        if line:
            reaped.analyses.append(line)
    reaped.analyses += _unqueued_reap(now, cutoff)
    reaped.task_rows = _orphan_task_rows_reap(now, cutoff)
    reaped.temp_uploads = _temp_uploads_reap(now, cutoff)
    for line in (*reaped.analyses, *reaped.task_rows, *reaped.temp_uploads):
        log.warning("reaped %s", line)
    return reaped


def analysis_mark_stale(*, analysis: Analysis, now=None) -> str | None:
    """Settle a running analysis whose lease has expired (processing.stopped_run_settle):
    back to the queue, its upload kept, while it has runs left; else failed with the
    message of a run that stopped, in the uploader's language, its upload deleted. The
    stopped run's files and rows are removed either way. A compare-and-set on the
    heartbeat that was read: a run that renewed since, or finished, is left alone (None);
    else a line for people saying what was done."""
    now = now or timezone.now()
    cutoff = lease_cutoff(now)
    if analysis.status != Analysis.Status.RUNNING or (analysis.heartbeat and analysis.heartbeat >= cutoff):
        return None
    stopped = analysis.heartbeat + (now - cutoff) if analysis.heartbeat else now
    held = Analysis.objects.filter(
        pk=analysis.pk, status=Analysis.Status.RUNNING, heartbeat=analysis.heartbeat
    )
    settled = stopped_run_settle(analysis=analysis, held=held, enqueue=_enqueue, finished=stopped)
    if settled is None:
        return None  # renewed or finished since it was read
    silent = (now - analysis.heartbeat).total_seconds() if analysis.heartbeat else None
    return (
        f"analysis {analysis.pk} ({analysis.source_name}): running {analysis.slices_done}/{analysis.slices_total}"
        f" (run {analysis.attempts} of {settings.SEGMENTER_MAX_ATTEMPTS})"
        + (f", silent {silent:.0f} s" if silent is not None else ", never reported")
        + f" -> {settled}"
    )


def _enqueue(analysis_id: str) -> None:
    """A task for the next run of an analysis (the task, named by PROCESS_TASK_PATH, is
    looked up when it is needed: its module imports this one)."""
    import_string(PROCESS_TASK_PATH).enqueue(analysis_id)


def abandoned_reap_if_due() -> Reaped | None:
    """abandoned_reap, at most once per SEGMENTER_REAP_EVERY_SECONDS in this process;
    a failing reap is logged, never raised (it must not stop the work that called it)."""
    global _last_reap
    if time.monotonic() - _last_reap < settings.SEGMENTER_REAP_EVERY_SECONDS:
        return None
    _last_reap = time.monotonic()
    try:
        return abandoned_reap()
    except Exception:
        log.exception("the reaper failed")
        return None


def _unqueued_reap(now, cutoff) -> list[str]:
    """Analyses still queued since before the cutoff with no task waiting for them (the
    process that saved the row died before it enqueued or ran it): failed, files removed."""
    stale = list(Analysis.objects.filter(status=Analysis.Status.QUEUED, created__lt=cutoff))
    if not stale:
        return []
    waiting: set[str] = set()
    if apps.is_installed("django_tasks_db"):
        from django_tasks import TaskResultStatus
        from django_tasks_db.models import DBTaskResult

        for row in DBTaskResult.objects.filter(
            status__in=(TaskResultStatus.READY, TaskResultStatus.RUNNING), task_path=PROCESS_TASK_PATH
        ):
            args = (row.args_kwargs or {}).get("args") or []
            waiting.add(
                str(args[0] if args else (row.args_kwargs or {}).get("kwargs", {}).get("analysis_id"))
            )
    lines = []
    for analysis in stale:
        if str(analysis.pk) in waiting:
            continue
        if retry_allowed(analysis):  # its upload is kept: give it the task it never got
            _enqueue(str(analysis.pk))
            lines.append(f"analysis {analysis.pk} ({analysis.source_name}): queued, no task -> task enqueued")
            continue
        with translation.override(analysis.language or None):
            message = stopped_message()
        taken = Analysis.objects.filter(pk=analysis.pk, status=Analysis.Status.QUEUED).update(
            status=Analysis.Status.FAILED, error=message, finished=now
        )
        if taken:
            removed = delete_folder_quietly(analysis_folder(analysis.pk))
            lines.append(
                f"analysis {analysis.pk} ({analysis.source_name}): queued, no task -> failed; "
                f"{removed} files removed"
            )
    return lines


def _orphan_task_rows_reap(now, cutoff) -> list[str]:
    """django-tasks-db rows left running for an analysis that is not running under a live
    lease, started before the cutoff (a worker that died before it could finish them)."""
    if not apps.is_installed("django_tasks_db"):
        return []
    from django_tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    rows = DBTaskResult.objects.filter(status=TaskResultStatus.RUNNING, task_path=PROCESS_TASK_PATH).filter(
        Q(started_at__lt=cutoff) | Q(started_at__isnull=True)
    )
    lines = []
    for row in rows:
        args = (row.args_kwargs or {}).get("args") or []
        analysis_id = args[0] if args else (row.args_kwargs or {}).get("kwargs", {}).get("analysis_id")
        live = Analysis.objects.filter(pk=analysis_id, status=Analysis.Status.RUNNING, heartbeat__gte=cutoff)
        if _valid_uuid(analysis_id) and live.exists():
            continue
        taken = DBTaskResult.objects.filter(pk=row.pk, status=TaskResultStatus.RUNNING).update(
            status=TaskResultStatus.FAILED,
            finished_at=now,
            exception_class_path=f"{LeaseLost.__module__}.{LeaseLost.__qualname__}",
            traceback=f"Reaped at {now.isoformat()}: its worker stopped (workers {', '.join(row.worker_ids)}).",
        )
        if taken:
            lines.append(f"task {row.pk} (analysis {analysis_id}): running since {row.started_at} -> failed")
    return lines


def _valid_uuid(value) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _temp_uploads_reap(now, cutoff) -> list[str]:
    """Django's spooled uploads (FILE_UPLOAD_TEMP_DIR, else the system's temporary folder)
    of this user untouched since the cutoff: left by a web process killed mid-request."""
    folder = Path(settings.FILE_UPLOAD_TEMP_DIR or tempfile.gettempdir())
    limit = cutoff.timestamp()
    lines = []
    try:
        entries = list(os.scandir(folder))
    except OSError as exc:
        log.warning("could not list %s: %s", folder, exc)
        return lines
    for entry in entries:
        if not _TEMP_UPLOAD.match(entry.name):
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if (
                not entry.is_file(follow_symlinks=False)
                or info.st_uid != os.getuid()
                or info.st_mtime >= limit
            ):
                continue
            os.unlink(entry.path)
        except OSError as exc:
            log.warning("could not remove %s: %s", entry.path, exc)
            continue
        age = now.timestamp() - info.st_mtime
        lines.append(
            f"temporary upload {entry.path} ({megabytes(info.st_size)} MB, {age:.0f} s old) -> deleted"
        )
    return lines
