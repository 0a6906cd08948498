"""The front door: what the web pages, the API and the command line ask of the application.

Each use case lives in the module of its concern; this one ties them together where a
request needs several:

* ``analysis_create``: read and check an upload (``uploads.upload_read``), store it, and
  process it here (immediate task backend) or queue it for a worker (``tasks``);
* ``analysis_delete``: remove an analysis with all its files.

Elsewhere: reading an upload and the size gate (``uploads``), processing under a lease
(``processing``), cleaning up after stopped runs (``reaper``), reads (``selectors``),
reports, downloads and exports (``exports``).
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from django.core.files import File
from django.db import transaction
from django.utils import translation

from . import processing, reaper, tasks
from .ml.io.names import clean_name
from .models import Analysis, analysis_folder
from .processing import Outcome, StorageUnavailable
from .uploads import ParsedUpload, stored_upload_name, upload_read

log = logging.getLogger(__name__)


def analysis_create(*, stream: BinaryIO, name: str, size: int, browser: str = "") -> Analysis:
    """Read and check an upload, then process it: here, with the slices just read, when
    tasks run in the request (django-tasks' immediate backend); else store the upload
    and queue it for a worker, which reads it from storage. Raises UploadError
    (StorageUnavailable, a 503, when the file store refuses the upload or, processed
    here, its results). The analysis as it is when this returns."""
    parsed = upload_read(stream=stream, name=name, size=size)
    try:
        return _create(parsed, stream=stream, name=name, browser=browser)
    finally:
        parsed.close()


def analysis_create_from_pacs(*, url: str, send: bool = False, browser: str = "") -> Analysis:
    """Read and check a series (or the series picked from a study) on the configured PACS,
    then process it as an upload is processed (a worker reads it from the PACS again);
    ``send``: store its SEG and SR back on the PACS when done (pacs.send_if_asked).
    Raises UploadError."""
    from . import pacs

    address = pacs.address_parse(url, configured_only=True)
    parsed = pacs.address_read(address=address)
    try:
        source = pacs.source_of(address, parsed.study)
        return _create(parsed, stream=None, name=f"pacs-{source['series']}", browser=browser,
                       pacs_source=source, pacs_send=send)
    finally:
        parsed.close()


def _create(parsed: ParsedUpload, *, stream: BinaryIO | None, name: str, browser: str, **fields) -> Analysis:
    if stream is not None:
        stream.seek(0)
    here = _processed_here()
    analysis = Analysis(
        kind=parsed.kind,
        source_name=clean_name(name),
        slices_total=len(parsed.slices),
        language=translation.get_language() or "",
        browser=browser,
        cautions=[list(c) for c in parsed.cautions],
        **fields,
    )
    try:
        with transaction.atomic():
            if not here and stream is not None:  # a worker reads the upload from storage
                analysis.upload.save(
                    stored_upload_name(name), File(stream, name=clean_name(name)), save=False
                )
            analysis.save()
    except Exception as exc:
        processing.delete_folder_quietly(analysis_folder(analysis.id))
        if processing.is_storage_outage(exc):
            log.error("storage refused the upload of %s", analysis.id, exc_info=exc)
            raise StorageUnavailable() from exc
        raise
    # Processed or enqueued once the row is saved (not on commit of an outer transaction,
    # so that it is processed when this returns, inside tests' transactions too).
    if here:
        reaper.abandoned_reap_if_due()  # as the task does before each run
        outcome = processing.analysis_process(analysis_id=analysis.id, parsed=parsed)
    else:
        tasks.process_analysis.enqueue(str(analysis.id))
        outcome = None
    analysis.refresh_from_db()
    if outcome == Outcome.STORAGE_UNAVAILABLE:  # processed here: the study is failed, say why
        raise StorageUnavailable()
    return analysis


def _processed_here() -> bool:
    """Whether tasks run inside the request that enqueues them (django-tasks' immediate backend)."""
    from django_tasks.backends.immediate import ImmediateBackend

    return isinstance(tasks.process_analysis.get_backend(), ImmediateBackend)


def analysis_delete(*, analysis: Analysis) -> None:
    """Remove an analysis with all its files."""
    folder = analysis_folder(analysis.id)
    analysis.delete()
    processing.delete_folder(folder)
