"""Processing an analysis: segmenting its slices under a lease and storing the result, all or nothing.

``analysis_process`` (run by the task in a worker, or by ``services.analysis_create`` in
the request with the immediate backend) claims a queued analysis (``_Lease``), runs
the study pipeline (``ml.pipeline.run_study``) into a ``_Recording`` -- the sink that
stores each slice's PNGs, default overlay and thumbnail on a writer thread and collects
its row -- and then stores every row and the study result in one transaction. On any
failure the analysis ends failed, with the reason, and without files.
``analysis_recording`` is the same sink for slices processed elsewhere (the command
line's ``--save``). The reaper (``segmenter.reaper``) cleans up after runs that stopped.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from enum import StrEnum
from typing import Self

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import F
from django.utils import timezone, translation
from django.utils.translation import gettext as _

from .engine import get_segmenter
from .exports import provenance_files
from .ml.io.imaging import CTSlice
from .ml.io.names import clean_name
from .ml.pipeline import Remembered, Segmenter, SliceAnalysis, StudySummary, run_study
from .ml.results.overlay import hu_png_bytes, png_bytes, render_overlay, thumbnail
from .models import Analysis, Slice, analysis_folder
from .uploads import ParsedUpload, UploadError, upload_read

log = logging.getLogger(__name__)

#: Progress is written to the database at most this often (seconds).
PROGRESS_INTERVAL = 0.5
#: The PNG writer thread's niceness (0 the normal priority, 19 the lowest): see _yield_to_networks.
WRITER_NICENESS = 19
#: Longest side of a gallery thumbnail, in pixels.
THUMBNAIL_SIDE_PX = 160


class StorageUnavailable(UploadError):
    """The file store refused a write (read-only, full, no permission): nothing is wrong
    with the upload, and the same request may work later."""

    status_code = 503

    def __init__(self) -> None:
        super().__init__(_("Storage is unavailable; please try again later."))


class LeaseLost(RuntimeError):
    """A worker run no longer holds the analysis it was writing: the analysis went stale
    (no heartbeat for SEGMENTER_STALE_AFTER_SECONDS) or was marked failed meanwhile."""


class Outcome(StrEnum):
    """How one run of analysis_process ended (the task's return value)."""

    DONE = "done"
    FAILED = "failed"
    STORAGE_UNAVAILABLE = "storage unavailable"
    LEASE_LOST = "lease lost"
    SKIPPED = "skipped"  # not queued: already taken by another run, finished, or gone


#: Errors of a file store that mean "try again later", not "this upload is bad".
_STORAGE_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO})


#: An object store's answers that mean the same (S3 error codes, through boto3).
_S3_OUTAGE_CODES = frozenset({
    "AccessDenied", "NoSuchBucket", "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
    "QuotaExceeded", "InvalidAccessKeyId", "SignatureDoesNotMatch",
})


def is_storage_outage(exc: BaseException) -> bool:
    if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS):
        return True
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no S3 backend installed
        return False
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code") in _S3_OUTAGE_CODES
    return isinstance(exc, BotoCoreError)  # the endpoint unreachable, credentials missing, ...


# --- Files and leases --------------------------------------------------------------------


def delete_folder(folder: str) -> int:
    """Delete every file below ``folder`` in the default storage; how many were deleted."""
    try:
        dirs, files = default_storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for f in files:
        default_storage.delete(f"{folder}/{f}")
    return len(files) + sum(delete_folder(f"{folder}/{d}") for d in dirs)


def delete_folder_quietly(folder: str) -> int:
    """delete_folder on a clean-up path: a store that refuses is logged, never raised."""
    try:
        return delete_folder(folder)
    except OSError as exc:
        log.warning("could not remove %s: %s", folder, exc)
        return 0


def slice_folder(analysis_id) -> str:
    """Where a run stores an analysis' slices and result files (lost whole on failure)."""
    return f"{analysis_folder(analysis_id)}/slices"


def stopped_message(attempts: int = 1) -> str:
    """Why an analysis whose runs stopped failed (after ``attempts`` runs)."""
    if attempts > 1:
        return _(
            "Processing stopped before it finished, %(attempts)s times; please upload the file again."
        ) % {"attempts": attempts}
    return _("Processing stopped before it finished; please upload the file again.")


def retry_allowed(analysis: Analysis) -> bool:
    """Whether an analysis whose run stopped goes back to the queue: its upload is kept
    (a worker reads it from storage; an upload processed in its request never is), tasks
    run in a worker, and it has had fewer than SEGMENTER_MAX_ATTEMPTS runs."""
    from django_tasks import DEFAULT_TASK_BACKEND_ALIAS, task_backends
    from django_tasks.backends.immediate import ImmediateBackend

    return (
        bool(analysis.upload)
        and analysis.attempts < settings.SEGMENTER_MAX_ATTEMPTS
        and not isinstance(task_backends[DEFAULT_TASK_BACKEND_ALIAS], ImmediateBackend)
    )


def stopped_run_settle(*, analysis: Analysis, held, enqueue, finished=None) -> str | None:
    """Settle an analysis whose run stopped (killed, paused past its lease, cut off):
    back to the queue with its upload, and ``enqueue(analysis_id)`` called for another
    worker to run it from the start, while retry_allowed; else failed with the reason, its
    upload deleted. ``held`` is the queryset that matches it only while the stopped run
    still holds it (a compare-and-set on its token or on the heartbeat that was read), so
    a live run, a second reaper or a retry already under way is never disturbed. Files of
    the stopped run are removed either way. What was done, for people ('queued again; 2
    files removed', 'failed; ...'), or None when someone else settled it first."""
    if retry_allowed(analysis):
        taken = held.update(status=Analysis.Status.QUEUED, owner="", heartbeat=None, slices_done=0, error="")
        if not taken:
            return None
        removed = delete_folder_quietly(slice_folder(analysis.pk))
        Slice.objects.filter(analysis_id=analysis.pk).delete()  # none should exist; never keep any
        enqueue(str(analysis.pk))
        log.warning("analysis %s: run %s of %s stopped; queued again", analysis.pk, analysis.attempts,
                    settings.SEGMENTER_MAX_ATTEMPTS)
        return f"queued again; {removed} files removed"
    with translation.override(analysis.language or None):
        message = stopped_message(analysis.attempts)
    taken = held.update(
        status=Analysis.Status.FAILED, error=message, finished=finished or timezone.now(), slices_done=0
    )
    if not taken:
        return None
    removed = delete_folder_quietly(slice_folder(analysis.pk))
    Slice.objects.filter(analysis_id=analysis.pk).delete()
    discard_upload(analysis)
    return f"failed; {removed} files removed"


def lease_cutoff(now):
    """Heartbeats older than this have expired."""
    return now - timedelta(seconds=settings.SEGMENTER_STALE_AFTER_SECONDS)


def lease_expired(analysis: Analysis) -> bool:
    return analysis.heartbeat is None or analysis.heartbeat < lease_cutoff(timezone.now())


def discard_upload(analysis: Analysis) -> None:
    """The upload is kept only until it has been processed (a refusing store is logged)."""
    if analysis.upload:
        delete_folder_quietly(f"{analysis_folder(analysis.pk)}/upload")
        Analysis.objects.filter(pk=analysis.pk).update(upload="")


class _Lease:
    """One run's hold on a running analysis, and the files that run wrote.

    A run claims a queued analysis (status queued -> running, with a fresh token in
    ``owner``); every later write of the running analysis (progress, heartbeat, done) is
    a compare-and-set on status running, this token and a heartbeat younger than
    SEGMENTER_STALE_AFTER_SECONDS. So once a lease has expired, or the analysis was
    marked failed, the run can write nothing more: renew() raises LeaseLost, and the run
    removes what it wrote (only that: the names storage gave its own saves).
    """

    def __init__(self, analysis_id, token: str) -> None:
        self.analysis_id = analysis_id
        self.token = token
        self.written: list[str] = []  # appended from the PNG writer thread too

    @classmethod
    def claim(cls, analysis_id) -> _Lease | None:
        """The lease on a queued analysis, now running; None if it is not queued."""
        token = uuid.uuid4().hex
        claimed = Analysis.objects.filter(pk=analysis_id, status=Analysis.Status.QUEUED).update(
            status=Analysis.Status.RUNNING, owner=token, heartbeat=timezone.now(), slices_done=0, error="",
            attempts=F("attempts") + 1,
        )
        return cls(analysis_id, token) if claimed else None

    def _held(self):
        return Analysis.objects.filter(pk=self.analysis_id, status=Analysis.Status.RUNNING, owner=self.token)

    def renew(self, **fields) -> None:
        """Write ``fields`` and a fresh heartbeat, if the lease still holds; else LeaseLost."""
        now = timezone.now()
        if not self._held().filter(heartbeat__gte=lease_cutoff(now)).update(heartbeat=now, **fields):
            raise LeaseLost(f"analysis {self.analysis_id} is no longer held by run {self.token}")

    def fail(self, message: str) -> bool:
        """Mark the analysis failed, if this run still owns it (expired or not); whether it did."""
        return bool(
            self._held().update(
                status=Analysis.Status.FAILED, error=message, finished=timezone.now(), slices_done=0
            )
        )

    def store_png(self, path: str, array: np.ndarray) -> str:
        return self.store_bytes(path, png_bytes(array))

    def store_bytes(self, path: str, data: bytes) -> str:
        try:
            name = default_storage.save(path, ContentFile(data))
        except Exception as exc:
            if is_storage_outage(exc):
                raise StorageUnavailable() from exc
            raise
        self.written.append(name)
        return name

    def remove_written(self) -> None:
        """Delete the files this run stored; a store that refuses is logged, never raised."""
        for name in self.written:
            try:
                default_storage.delete(name)
            except OSError as exc:
                log.warning("could not remove %s: %s", name, exc)
        self.written.clear()


# --- The sink that stores a study ----------------------------------------------------------


class _Recording:
    """The pipeline's sink for an analysis held under ``lease``: each slice's PNGs (grey
    image, HU when known, labels, the default overlay and its thumbnail) are encoded and
    stored on a writer thread while the networks run on the next slice (ISA-L and the
    runtime both release the GIL); its Slice row is kept, and of the slice itself only
    its header (for provenance.json). ``finish`` stores the rows and the study result.

    Used as a context manager: leaving it waits for the writer, so that after a failure
    the lease knows every file this run wrote.
    """

    def __init__(self, analysis: Analysis, lease: _Lease, segmenter: Segmenter) -> None:
        self.analysis = analysis
        self.lease = lease
        self.segmenter = segmenter
        self.folder = slice_folder(analysis.pk)
        self.rows: list[Slice] = []
        self.headers: list[CTSlice] = []
        self.finished = False
        self._pending: tuple | None = None  # the last slice added: its row waits for its files
        self._writer: ThreadPoolExecutor | None = None
        self._reported = time.monotonic()

    def __enter__(self) -> Self:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slice-png", initializer=_yield_to_networks)
        return self

    def __exit__(self, *exc_info) -> None:
        self._writer.shutdown(wait=True)

    def add(self, index: int, result: SliceAnalysis) -> None:
        ct, labels, stem = result.source, result.labels, f"{self.folder}/{index:04d}"
        submit, store = self._writer.submit, self.lease.store_png
        files = (
            submit(store, f"{stem}-image.png", ct.pixels),
            None if ct.hu is None else submit(_store_hu, self.lease, f"{stem}-hu.png", ct.hu),
            submit(store, f"{stem}-labels.png", labels),
            submit(_store_views, self.lease, stem, ct.pixels, labels),
        )
        self._collect()  # the previous slice's files were written meanwhile
        self._pending = (index, ct.without_pixels(), ct.pixels.shape, result.areas, result.severity, files)

    def _collect(self) -> None:
        """The row of the slice added last, once its files are stored."""
        if self._pending is None:
            return
        index, header, (h, w), areas, severity, (image, hu, labels, views) = self._pending
        self._pending = None
        overlay, thumbnail_ = views.result()
        self.rows.append(
            Slice(
                analysis=self.analysis,
                index=index,
                name=header.name[:255],
                width=w,
                height=h,
                image=image.result(),
                labels=labels.result(),
                hu="" if hu is None else hu.result(),
                overlay=overlay,
                thumbnail=thumbnail_,
                areas=areas.as_dict(),
                severity=severity.as_dict(),
            )
        )
        self.headers.append(header)

    def progress(self, done: int, total: int | None) -> None:
        """Write progress (and so the heartbeat) at most every PROGRESS_INTERVAL seconds;
        raises LeaseLost when the lease has gone."""
        if time.monotonic() - self._reported >= PROGRESS_INTERVAL and (total is None or done < total):
            self.lease.renew(slices_done=done)
            self._reported = time.monotonic()

    def finish(self, summary: StudySummary) -> None:
        """Store the result files of the study (provenance.json, geometry.json), then every
        Slice row and the study's result, marking it done, in one transaction."""
        self._collect()
        if summary.slices != len(self.rows):
            raise RuntimeError(f"{len(self.rows)} slices stored for a summary of {summary.slices}")
        files = provenance_files(analysis_id=self.analysis.pk, slices=self.headers, segmenter=self.segmenter)
        for path, data in files.items():
            self.lease.store_bytes(path, data)
        with transaction.atomic():  # the compare-and-set first: on PostgreSQL it locks the row
            self.lease.renew(
                status=Analysis.Status.DONE,
                finished=timezone.now(),
                slices_total=len(self.rows),
                slices_done=len(self.rows),
                areas=summary.areas.as_dict(),
                severity=summary.severity.as_dict(),
            )
            Slice.objects.bulk_create(self.rows)
        self.finished = True


def _yield_to_networks() -> None:
    """Lower the calling (writer) thread's scheduling priority, so that it encodes in the
    time the networks leave a core idle (their pre- and post-processing run on one
    thread) instead of slowing them down; add() waits for the slice before, so it never
    falls more than a slice behind. Linux only: elsewhere the priority stays."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not allowed: the writer just competes
        pass


def _store_hu(lease: _Lease, path: str, hu: np.ndarray) -> str:
    return lease.store_bytes(path, hu_png_bytes(hu))


def _store_views(lease: _Lease, stem: str, grey: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    """Store a slice's overlay in the default layers and its thumbnail; their names."""
    rgb = render_overlay(grey, labels)
    overlay = lease.store_png(f"{stem}-overlay.png", rgb)
    return overlay, lease.store_png(f"{stem}-thumbnail.png", thumbnail(rgb, THUMBNAIL_SIDE_PX))


# --- Use cases ---------------------------------------------------------------------------


def analysis_process(*, analysis_id, parsed: ParsedUpload | None = None) -> Outcome:
    """Segment a queued analysis; store every slice's files and rows and the study result,
    or, if anything fails, nothing (the analysis is then marked failed with the reason).

    ``parsed`` is the upload already read in this process (services.analysis_create with
    the immediate backend); without it the stored upload is read, once. Only a queued
    analysis is processed, by the run that claims it (see _Lease); a run that loses its
    lease midway stops and removes what it wrote (Outcome.LEASE_LOST).
    """
    get_segmenter()  # loaded before the claim, so that a first start does not eat into the lease
    lease = _Lease.claim(analysis_id)
    if lease is None:
        log.warning(
            "analysis %s is not queued (taken by another run, finished or gone); skipped", analysis_id
        )
        return Outcome.SKIPPED
    analysis = Analysis.objects.get(pk=analysis_id)
    # In a worker, messages are written in the uploader's language, not the worker's.
    # A volume's slices are read from the open upload as they are reached: it stays open
    # until the run ends.
    with translation.override(analysis.language or None), ExitStack() as upload:
        if parsed is None:
            try:
                if analysis.pacs_source:  # a PACS series: read from the PACS again
                    from .pacs import source_read

                    parsed = source_read(analysis)
                else:
                    fh = upload.enter_context(analysis.upload.open("rb"))
                    parsed = upload_read(stream=fh, name=analysis.source_name, size=analysis.upload.size)
            except Exception as exc:  # noqa: BLE001 - any error ends the analysis failed, with its reason
                return _fail(analysis, lease, exc)
        upload.callback(parsed.close)
        outcome = _segment_into(analysis, lease, parsed)
    if outcome == Outcome.DONE:
        discard_upload(analysis)
        from .pacs import send_if_asked

        send_if_asked(analysis)  # a PACS series' results back to the PACS, when asked
    return outcome


def _segment_into(analysis: Analysis, lease: _Lease, parsed: ParsedUpload) -> Outcome:
    """Run the pipeline over the upload's slices into a _Recording and finish it (the
    slices the CT check segmented are not segmented again); on any error end the
    analysis failed (and without files). How it ended."""
    segmenter = get_segmenter()
    slices = parsed.slices
    try:
        with _Recording(analysis, lease, segmenter) as recording:
            lease.renew(slices_done=0, slices_total=len(slices))
            engine = Remembered(segmenter, parsed.segmented)
            recording.finish(run_study(slices, engine, recording, progress=recording.progress))
    except LeaseLost:
        log.warning("analysis %s: lease lost; this run stops and removes what it wrote", analysis.pk)
        lease.remove_written()
        try:
            analysis.refresh_from_db()
        except Analysis.DoesNotExist:  # deleted meanwhile
            return Outcome.LEASE_LOST
        if not retry_allowed(analysis):  # expired, but nobody had reaped it yet: failed now
            stopped_run_settle(analysis=analysis, held=lease._held(), enqueue=None)
        # else the task queues it again (tasks.process_analysis), or the reaper does
        return Outcome.LEASE_LOST
    except Exception as exc:  # noqa: BLE001 - any error ends the analysis failed, with its reason
        return _fail(analysis, lease, exc)
    return Outcome.DONE


@contextmanager
def analysis_recording(
    *, source_name: str, kind: str, slices_total: int, segmenter: Segmenter
) -> Iterator[_Recording]:
    """A new analysis, stored from slices processed by the caller (the command line's
    ``--save``, which feeds the pipeline's results to this sink and its folder at once):
    the caller adds every slice and calls ``finish(summary)`` inside the block. If the
    block raises, or ends without finish, the analysis ends failed and without files,
    and the exception propagates."""
    analysis = Analysis.objects.create(
        kind=kind, source_name=clean_name(source_name), slices_total=slices_total
    )
    lease = _Lease.claim(analysis.pk)
    try:
        with _Recording(analysis, lease, segmenter) as recording:
            lease.renew(slices_done=0)
            yield recording
            if not recording.finished:
                raise RuntimeError("the recording ended before finish()")
    except BaseException as exc:
        _fail(analysis, lease, exc)
        raise
    analysis.refresh_from_db()


def _fail(analysis: Analysis, lease: _Lease, exc: BaseException) -> Outcome:
    """Record why a run failed, then remove whatever it wrote. The status is written
    first and the clean-up never raises, so a failing store cannot leave it running."""
    if isinstance(exc, UploadError):
        message = str(exc)
        if isinstance(exc, StorageUnavailable):
            log.error("analysis %s failed: the file store refused a write", analysis.pk, exc_info=exc)
    else:
        log.error("analysis %s failed", analysis.pk, exc_info=exc)
        message = _("Processing failed because of an internal error; please try again.")
    held = lease.fail(message)
    if held:
        discard_upload(analysis)
    lease.remove_written()
    if not held:  # failed or reaped meanwhile: whatever went wrong, this run had lost its lease
        log.warning("analysis %s: the run erred after losing its lease; it stops", analysis.pk)
        return Outcome.LEASE_LOST
    return Outcome.STORAGE_UNAVAILABLE if isinstance(exc, StorageUnavailable) else Outcome.FAILED
