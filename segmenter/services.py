"""Services (functions that change things) and selectors (functions that read).

Upload checks live here, in one place, for the web pages, the API and the command line:
``upload_read`` decodes every slice of an upload before anything is stored, so bad input
is refused whole. ``analysis_create`` stores a valid upload and queues its processing;
``analysis_process`` (run by the task, in the request with the immediate backend or in a
worker) segments it under a lease and stores the result all at once, or nothing;
``abandoned_reap`` cleans up after workers that stopped. Selectors never write.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import math
import os
import re
import secrets
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

import numpy as np
from django.apps import apps
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q
from django.utils import timezone, translation
from django.utils.formats import number_format
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .engine import get_segmenter
from .exports import provenance_files
from .ml.io.archive import (
    ARCHIVE_SUFFIXES,
    HEAD_BYTES,
    ArchiveLimits,
    archive_kind,
    read_any_archive,
    suffix_kind,
)
from .ml.io.ctcheck import check_lungs, check_slices
from .ml.io.headers import PixelBudget
from .ml.io.imaging import DICOM_SUFFIXES, IMAGE_SUFFIXES, CTSlice, UnreadableImage, read_slices
from .ml.io.volumes import NIFTI_SUFFIXES, is_nifti_name, read_nifti
from .ml.pipeline import SliceAnalysis, grade_slice
from .ml.results.overlay import pack_hu, png_bytes, render_overlay, thumbnail
from .ml.results.severity import Areas, assess_study
from .models import Analysis, Slice, analysis_folder

log = logging.getLogger(__name__)

#: Archives read as studies (by their first bytes; see ml.archive.archive_kind).
STUDY_ARCHIVES = ("zip", "RAR", "7z", "tar")
#: Progress is written to the database at most this often (seconds).
PROGRESS_INTERVAL = 0.5
#: Slices decoded by analysis_create, handed to a task that runs in the same process.
_decoded: dict[str, list[CTSlice]] = {}
ALLOWED_SUFFIXES = (*IMAGE_SUFFIXES, *DICOM_SUFFIXES, *ARCHIVE_SUFFIXES, *NIFTI_SUFFIXES)
MB = 1024 * 1024
#: Numbers from this size up are shown with thousands separators ("16,777,216").
GROUPING_FROM = 10_000

#: Why a file could not be read, by ml.imaging.UnreadableImage.code, in the reader's
#: language. The English says what the engine's message says, less the details of the
#: library that failed (those are logged). Whole-number params are shown localised, and
#: a param named ``x_bytes`` is shown in MB as ``x_mb``. A code missing here is shown
#: with the engine's English message; tests/unit/test_web_reasons.py checks that none is.
UNREADABLE_REASONS = {
    # segmenter.ml.io.imaging
    "empty": gettext_lazy("the file is empty"),
    "unsupported_type": gettext_lazy("unsupported file type: expected a PNG, JPEG or DICOM slice"),
    "unsupported_layout": gettext_lazy("unsupported pixel layout %(shape)s"),
    "image_too_large": gettext_lazy(
        "the image is %(width)s×%(height)s pixels; the limit is %(limit)s pixels"
    ),
    "image_too_small": gettext_lazy(
        "the image is %(width)s×%(height)s pixels; each side must be at least %(min_side)s"
    ),
    "decompression_bomb": gettext_lazy("the image is too large to decode safely"),
    "not_an_image": gettext_lazy("not a PNG or JPEG image"),
    "damaged_image": gettext_lazy("the image file is damaged or incomplete"),
    "unsupported_mode": gettext_lazy("unsupported image mode %(mode)s"),
    "not_dicom": gettext_lazy("not a DICOM file"),
    "damaged_dicom": gettext_lazy("the DICOM file is damaged"),
    "dicom_without_image": gettext_lazy("the DICOM file holds no image (no Pixel Data element)"),
    "dicom_too_large": gettext_lazy("the DICOM image is too large"),
    "dicom_compression_unsupported": gettext_lazy(
        "this DICOM is compressed with %(syntax)s, which cannot be decoded here"
    ),
    "dicom_undecodable": gettext_lazy("the DICOM pixel data could not be decoded"),
    "dicom_frame_mismatch": gettext_lazy(
        "a compressed frame declares %(width)s×%(height)s pixels but the DICOM header says %(columns)s×%(rows)s"
    ),
    # segmenter.ml.io.headers
    "damaged_header": gettext_lazy("the %(kind)s header is damaged"),
    "pixel_budget": gettext_lazy(
        "%(what)s would take the upload past its decoding budget of %(limit_mpixels)s million pixels "
        "(by %(over_mpixels)s million); send fewer or smaller slices"
    ),
    "several_frames": gettext_lazy("the file holds %(frames)s frames; upload it as a study instead"),
    # segmenter.ml.io.archive
    "unreadable_member": gettext_lazy("%(member)s: %(reason)s"),
    "unsafe_path": gettext_lazy("the %(kind)s contains an unsafe path (%(path)s)"),
    "not_an_archive": gettext_lazy("not a valid %(kind)s archive"),
    "damaged_archive": gettext_lazy("the %(kind)s is damaged"),
    "archive_encrypted": gettext_lazy("the %(kind)s is encrypted; upload an unencrypted archive"),
    "archive_multi_volume": gettext_lazy(
        "the %(kind)s is one volume of several, or cut short; upload the study as one complete archive"
    ),
    "archive_link": gettext_lazy(
        "%(member)s in the %(kind)s is a link; links are not followed, so put the file itself in the archive"
    ),
    "archive_special_member": gettext_lazy("%(member)s in the %(kind)s is a device or pipe, not a file"),
    "nested_archive": gettext_lazy(
        "%(member)s in the %(kind)s is itself an archive; archives inside archives are not opened, "
        "so put its slices in the outer archive"
    ),
    "archive_too_many_files": gettext_lazy("the %(kind)s holds %(count)s files; the limit is %(limit)s"),
    "archive_too_large": gettext_lazy("the %(kind)s unpacks to more than its limit of %(limit_mb)s MB"),
    "archive_member_too_large": gettext_lazy(
        "%(member)s unpacks to %(size_mb)s MB; the limit is %(limit_mb)s MB"
    ),
    "archive_bomb": gettext_lazy("%(member)s is compressed suspiciously well (a zip bomb?)"),
    "archive_ratio": gettext_lazy("the %(kind)s unpacks to more than %(ratio)s times its size (a zip bomb?)"),
    "damaged_archive_member": gettext_lazy("%(member)s in the %(kind)s is damaged"),
    "archive_member_over_limit": gettext_lazy("%(member)s unpacks to more than %(limit_mb)s MB"),
    "archive_too_many_slices": gettext_lazy("the %(kind)s holds more than %(limit)s slices"),
    "archive_without_slices": gettext_lazy("the %(kind)s holds no PNG, JPEG or DICOM slices"),
    "folder_too_many_files": gettext_lazy("the folder holds %(count)s files; the limit is %(limit)s"),
    "folder_file_too_large": gettext_lazy("%(path)s is larger than %(limit_mb)s MB"),
    "folder_too_many_slices": gettext_lazy("the folder holds more than %(limit)s slices"),
    "folder_without_slices": gettext_lazy("%(folder)s holds no PNG, JPEG or DICOM slices"),
    # segmenter.ml.io.volumes
    "damaged_gzip": gettext_lazy("the .gz file is damaged"),
    "volume_too_large": gettext_lazy("the volume unpacks to %(size_mb)s MB; the limit is %(limit_mb)s MB"),
    "volume_too_many_slices": gettext_lazy("the volume holds %(count)s slices; the limit is %(limit)s"),
    "volume_dtype": gettext_lazy("voxels of type %(dtype)s are not CT numbers (expected integers or floats)"),
    "nifti_pair": gettext_lazy("this is the header of a .hdr/.img pair; upload a single .nii or .nii.gz file"),
    "not_nifti": gettext_lazy("not a NIfTI volume"),
    "volume_not_3d": gettext_lazy("expected a 3-D volume, got shape %(shape)s"),
    "volume_4d": gettext_lazy("expected one 3-D volume, got %(count)s volumes (4-D)"),
    "volume_orientation": gettext_lazy("the volume's affine does not describe a proper orientation"),
    "volume_slices_too_large": gettext_lazy(
        "slices of %(width)s×%(height)s pixels exceed the limit of %(limit)s pixels"
    ),
    "damaged_volume": gettext_lazy("the volume's data are damaged"),
    # segmenter.ml.io.ctcheck
    "not_ct": gettext_lazy("this does not look like a CT slice: %(why)s"),
}

#: ctcheck's reasons (the "why" of "not_ct"), in the reader's language.
NOT_CT_REASONS = {
    "it is a colour picture": gettext_lazy("it is a colour picture"),
    "it has large areas of uniform grey, like a photograph, screenshot or document": gettext_lazy(
        "it has large areas of uniform grey, like a photograph, screenshot or document"
    ),
    "its grey levels are those of a photograph, not of air, lung and tissue": gettext_lazy(
        "its grey levels are those of a photograph, not of air, lung and tissue"
    ),
    "it has no dark areas of air or lung": gettext_lazy("it has no dark areas of air or lung"),
    "it has none of the fine texture of a CT scan, like a drawing or document": gettext_lazy(
        "it has none of the fine texture of a CT scan, like a drawing or document"
    ),
    "what would be lung fills the picture": gettext_lazy("what would be lung fills the picture"),
    "what would be lung falls apart into many pieces": gettext_lazy("what would be lung falls apart into many pieces"),
    "the networks find no consistent lungs in it": gettext_lazy("the networks find no consistent lungs in it"),
}


class UploadError(ValueError):
    """An upload that cannot be analysed; ``str()`` says why, for the person who sent it,
    and ``status_code`` is the HTTP status that answers it."""

    status_code = 400


class UploadTooLarge(UploadError):
    """An upload over SEGMENTER_MAX_UPLOAD_BYTES."""

    status_code = 413


@dataclass
class ParsedUpload:
    kind: str  # Analysis.Kind value
    slices: list[CTSlice]


def clean_name(name: str) -> str:
    """The file name without any folder part, at most 200 characters, never empty."""
    base = os.path.basename((name or "").replace("\\", "/")).strip()
    base = "".join(ch for ch in base if ch.isprintable())
    return base[-200:] or "upload"


def stored_upload_name(name: str) -> str:
    """The file name an upload is stored under for a worker: a random token and the
    upload's type suffix (``.png``, ``.nii.gz``; none for other names), short and ASCII
    whatever the upload is called. The name shown stays ``clean_name(name)``."""
    lower = clean_name(name).lower()
    suffix = max((s for s in ALLOWED_SUFFIXES if lower.endswith(s)), key=len, default="")
    return f"{secrets.token_hex(8)}{suffix}"


def _suffix_allowed(name: str) -> bool:
    lower = name.lower()
    if lower.endswith(ALLOWED_SUFFIXES):
        return True
    # DICOM files often carry no extension at all (IM000001): their content decides.
    return "." not in lower or lower.rsplit(".", 1)[-1].isdigit()


def archive_limits() -> ArchiveLimits:
    return ArchiveLimits(
        max_members=settings.SEGMENTER_ZIP_MAX_MEMBERS,
        max_member_bytes=settings.SEGMENTER_ZIP_MAX_MEMBER_MB * MB,
        max_total_bytes=settings.SEGMENTER_ZIP_MAX_TOTAL_MB * MB,
        max_slices=settings.SEGMENTER_MAX_SLICES,
        max_pixels=settings.SEGMENTER_MAX_DECODED_PIXELS,
    )


def _number(value: float, decimal_pos: int | None = None) -> str:
    """A number as written in the active language ('1,5' and '16 777 216' in Russian)."""
    return number_format(value, decimal_pos=decimal_pos, force_grouping=abs(value) >= GROUPING_FROM)


def megabytes(n_bytes: int) -> str:
    """A size in MB as people read it in the active language: rounded up to a tenth, the
    tenth shown only when it is not zero ('1', '1.1'; '1,1' in Russian). Rounding up
    keeps a size over a whole-MB limit from reading as the limit itself."""
    tenths = -(-n_bytes * 10 // MB)  # integer ceiling, exact for any size
    return _number(tenths // 10) if tenths % 10 == 0 else _number(tenths / 10, decimal_pos=1)


def unreadable_reason(exc: UnreadableImage) -> str:
    """Why a file could not be read, in the active language (see UNREADABLE_REASONS)."""
    template = UNREADABLE_REASONS.get(exc.code or "")
    if template is None:
        return str(exc)
    params = {}
    for key, value in exc.params.items():
        if isinstance(value, UnreadableImage):
            params[key] = unreadable_reason(value)
        elif key.endswith("_bytes"):
            params[key.removesuffix("_bytes") + "_mb"] = megabytes(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            params[key] = _number(value)
        elif exc.code == "not_ct" and key == "why":
            params[key] = str(NOT_CT_REASONS.get(value, value))
        else:
            params[key] = value
    return str(template) % params


def upload_read(*, stream: BinaryIO, name: str, size: int) -> ParsedUpload:
    """Decode an upload completely: a slice, an archive of slices (zip, RAR, 7z, tar,
    tar.gz, tar.xz), a multi-frame DICOM or a NIfTI volume. Raises UploadError with a message for the user."""
    name = clean_name(name)
    if size <= 0:
        raise UploadError(_("The file is empty."))
    if size > settings.SEGMENTER_MAX_UPLOAD_BYTES:
        raise UploadTooLarge(
            _("The file is %(size)s MB; the limit is %(limit)s MB.")
            % {"size": megabytes(size), "limit": megabytes(settings.SEGMENTER_MAX_UPLOAD_BYTES)}
        )
    if not _suffix_allowed(name):
        raise UploadError(
            _(
                "Files of type %(suffix)s are not supported: upload PNG, JPEG, DICOM, an archive of slices "
                "(zip, RAR, 7z, tar, tar.gz, tar.xz) or NIfTI."
            )
            % {"suffix": "." + name.rsplit(".", 1)[-1]}
        )
    head = stream.read(HEAD_BYTES)
    stream.seek(0)
    try:
        if archive_kind(head, name) in STUDY_ARCHIVES or suffix_kind(name):  # a misnamed one is refused there
            slices, kind = read_any_archive(stream, name, archive_limits()), Analysis.Kind.STUDY
        elif is_nifti_name(name):
            volume = read_nifti(stream.read(), name, max_slices=settings.SEGMENTER_MAX_SLICES,
                                max_pixels=settings.SEGMENTER_MAX_DECODED_PIXELS)
            slices, kind = volume, Analysis.Kind.VOLUME
        else:
            slices = read_slices(stream.read(), name, PixelBudget(settings.SEGMENTER_MAX_DECODED_PIXELS))
            kind = Analysis.Kind.SLICE if len(slices) == 1 else Analysis.Kind.STUDY
        check_slices(slices, study=kind == Analysis.Kind.STUDY)
        if len(slices) <= settings.SEGMENTER_MAX_SLICES:  # over the limit: refused below
            check_lungs(slices, get_segmenter(), study=kind == Analysis.Kind.STUDY)
    except UnreadableImage as exc:
        log.info("%s could not be read: %s", name, exc)
        message = _("%(name)s could not be read: %(reason)s.") % {"name": name, "reason": unreadable_reason(exc)}
        raise UploadError(message) from exc
    if len(slices) > settings.SEGMENTER_MAX_SLICES:
        raise UploadError(
            _("The upload holds %(n)d slices; the limit is %(limit)d.") % {"n": len(slices), "limit": settings.SEGMENTER_MAX_SLICES}
        )
    return ParsedUpload(kind=kind, slices=slices)


# --- Services ---------------------------------------------------------------------------


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


def _is_storage_outage(exc: BaseException) -> bool:
    return isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS)


def analysis_create(*, stream: BinaryIO, name: str, size: int, browser: str = "") -> Analysis:
    """Validate an upload, store it for a worker (if one will process it) and queue its
    processing. Raises UploadError (StorageUnavailable, a 503, when the file store
    refuses the upload or, processed here, its results).

    With the immediate task backend the analysis is processed before this returns.
    """
    parsed = upload_read(stream=stream, name=name, size=size)
    stream.seek(0)
    analysis = Analysis(
        kind=parsed.kind,
        source_name=clean_name(name),
        slices_total=len(parsed.slices),
        language=translation.get_language() or "",
        browser=browser,
    )
    try:
        with transaction.atomic():
            if not _processed_in_process():  # a worker reads the upload from storage
                analysis.upload.save(stored_upload_name(name), _as_file(stream, name), save=False)
            analysis.save()
    except Exception as exc:
        _delete_folder_quietly(analysis_folder(analysis.id))
        if _is_storage_outage(exc):
            log.error("storage refused the upload of %s", analysis.id, exc_info=exc)
            raise StorageUnavailable() from exc
        raise
    # Enqueued once the row is saved (not on commit of an outer transaction, so that the
    # immediate backend has processed it when this returns, inside tests' transactions too).
    # If the task runs in this process, it takes the slices decoded above instead of
    # decoding the upload again; a worker process reads the stored upload.
    _decoded[str(analysis.id)] = parsed.slices
    try:
        outcome = _enqueue(analysis)
    finally:
        _decoded.pop(str(analysis.id), None)
    analysis.refresh_from_db()
    if outcome == Outcome.STORAGE_UNAVAILABLE:  # processed here: the study is failed, say why
        raise StorageUnavailable()
    return analysis


def _as_file(stream: BinaryIO, name: str):
    from django.core.files import File

    return File(stream, name=clean_name(name))


def _processed_in_process() -> bool:
    """Whether tasks run inside the request that enqueues them (django-tasks' immediate backend)."""
    from django_tasks.backends.immediate import ImmediateBackend

    from .tasks import process_analysis

    return isinstance(process_analysis.get_backend(), ImmediateBackend)


def _enqueue(analysis: Analysis) -> str | None:
    """Queue the analysis; the run's Outcome when it ran in this process, else None."""
    from django_tasks import TaskResultStatus

    from .tasks import process_analysis

    result = process_analysis.enqueue(str(analysis.id))
    return result.return_value if result.status == TaskResultStatus.SUCCESSFUL else None


def _delete_folder(folder: str) -> int:
    """Delete every file below ``folder`` in the default storage; how many were deleted."""
    try:
        dirs, files = default_storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    for f in files:
        default_storage.delete(f"{folder}/{f}")
    return len(files) + sum(_delete_folder(f"{folder}/{d}") for d in dirs)


def _delete_folder_quietly(folder: str) -> int:
    """_delete_folder on a clean-up path: a store that refuses is logged, never raised."""
    try:
        return _delete_folder(folder)
    except OSError as exc:
        log.warning("could not remove %s: %s", folder, exc)
        return 0


def _slice_folder(analysis_id) -> str:
    return f"{analysis_folder(analysis_id)}/slices"


def _stopped_message() -> str:
    return _("Processing stopped before it finished; please upload the file again.")


def _lease_cutoff(now):
    """Heartbeats older than this have expired."""
    return now - timedelta(seconds=settings.SEGMENTER_STALE_AFTER_SECONDS)


class _Lease:
    """One worker run's hold on a running analysis, and the files that run wrote.

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
            status=Analysis.Status.RUNNING, owner=token, heartbeat=timezone.now(), slices_done=0, error=""
        )
        return cls(analysis_id, token) if claimed else None

    def _held(self):
        return Analysis.objects.filter(pk=self.analysis_id, status=Analysis.Status.RUNNING, owner=self.token)

    def renew(self, **fields) -> None:
        """Write ``fields`` and a fresh heartbeat, if the lease still holds; else LeaseLost."""
        now = timezone.now()
        if not self._held().filter(heartbeat__gte=_lease_cutoff(now)).update(heartbeat=now, **fields):
            raise LeaseLost(f"analysis {self.analysis_id} is no longer held by run {self.token}")

    def fail(self, message: str) -> bool:
        """Mark the analysis failed, if this run still owns it (expired or not); whether it did."""
        return bool(
            self._held().update(status=Analysis.Status.FAILED, error=message, finished=timezone.now(), slices_done=0)
        )

    def store_png(self, path: str, array: np.ndarray) -> str:
        return self.store_bytes(path, png_bytes(array))

    def store_bytes(self, path: str, data: bytes) -> str:
        try:
            name = default_storage.save(path, ContentFile(data))
        except Exception as exc:
            if _is_storage_outage(exc):
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


def analysis_process(*, analysis_id: str) -> Outcome:
    """Segment a stored upload; store every slice's files and rows and the study result,
    or, if anything fails, nothing (the analysis is then marked failed with the reason).

    Only a queued analysis is processed, by the run that claims it (see _Lease); a run
    that loses its lease midway stops and removes what it wrote (Outcome.LEASE_LOST).
    """
    slices = _decoded.pop(str(analysis_id), None)
    lease = _Lease.claim(analysis_id)
    if lease is None:
        log.warning("analysis %s is not queued (taken by another run, finished or gone); skipped", analysis_id)
        return Outcome.SKIPPED
    analysis = Analysis.objects.get(pk=analysis_id)
    # In a worker, messages are written in the uploader's language, not the worker's.
    with translation.override(analysis.language or None):
        if slices is None:
            try:
                with analysis.upload.open("rb") as fh:
                    slices = upload_read(stream=fh, name=analysis.source_name, size=analysis.upload.size).slices
            except Exception as exc:
                return _fail(analysis, lease, exc)
        return _segment_into(analysis, lease, slices)


def analysis_record(
    *, source_name: str, kind: str, slices: list[CTSlice], labels: list[np.ndarray] | None = None
) -> Analysis:
    """Store slices that are already read as a finished analysis, with the label maps the
    caller computed (``labels``, one per slice), or segmented here when it has none (for
    the command line's --save; uploads go through analysis_create)."""
    if labels is not None and len(labels) != len(slices):
        raise ValueError(f"{len(labels)} label maps for {len(slices)} slices")
    analysis = Analysis.objects.create(kind=kind, source_name=clean_name(source_name), slices_total=len(slices))
    lease = _Lease.claim(analysis.pk)
    _segment_into(analysis, lease, slices, labels)
    analysis.refresh_from_db()
    return analysis


def _segment_into(
    analysis: Analysis, lease: _Lease, slices: list[CTSlice], labels: list[np.ndarray] | None = None
) -> Outcome:
    """Segment ``slices`` in order, writing each slice's PNGs as it goes and reporting
    progress; then create all Slice rows and mark the analysis done in one transaction.
    Ends the analysis failed (and without files) on any error; returns how it ended."""
    try:
        _segment_slices(analysis, lease, slices, labels)
    except LeaseLost:
        log.warning("analysis %s: lease lost; this run stops and removes what it wrote", analysis.pk)
        lease.remove_written()
        if lease.fail(_stopped_message()):
            _discard_upload(analysis)  # expired, but nobody had reaped it yet
        return Outcome.LEASE_LOST
    except Exception as exc:
        return _fail(analysis, lease, exc)
    _discard_upload(analysis)
    return Outcome.DONE


def _segment_slices(
    analysis: Analysis, lease: _Lease, slices: list[CTSlice], computed: list[np.ndarray] | None = None
) -> None:
    lease.renew(slices_done=0, slices_total=len(slices))
    folder = _slice_folder(analysis.pk)
    segmenter = get_segmenter()
    rows = []
    reported = time.monotonic()
    # Each slice's PNGs are encoded and stored on a second thread while the networks run
    # and the label map is measured (zlib and the runtime both release the GIL). On
    # failure the with-block waits for the writes, so the lease then knows every file.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slice-png") as writer:
        for k, ct in enumerate(slices, start=1):
            image = writer.submit(lease.store_png, f"{folder}/{k:04d}-image.png", ct.pixels)
            hu = None if ct.hu is None else writer.submit(lease.store_png, f"{folder}/{k:04d}-hu.png", pack_hu(ct.hu))
            if computed is None:
                labels = segmenter.segment(ct.pixels, spacing_mm=ct.pixel_spacing_mm)
            else:
                labels = computed[k - 1]
            labels_file = writer.submit(lease.store_png, f"{folder}/{k:04d}-labels.png", labels)
            # The default overlay and the gallery thumbnail, made once here, not per request.
            views = writer.submit(_store_views, lease, f"{folder}/{k:04d}", ct.pixels, labels)
            result = grade_slice(ct, labels)
            hu_file = "" if hu is None else hu.result()
            rows.append(_slice_row(analysis, k, ct, result, image.result(), labels_file.result(), hu_file,
                                   *views.result()))
            if time.monotonic() - reported >= PROGRESS_INTERVAL and k < len(slices):
                lease.renew(slices_done=k)
                reported = time.monotonic()
    total, severity = assess_study([Areas.from_dict(r.areas) for r in rows])
    # What the exports and report.json need of the input and the model (JSON files).
    for path, data in provenance_files(analysis_id=analysis.pk, slices=slices, segmenter=segmenter).items():
        lease.store_bytes(path, data)
    with transaction.atomic():  # the compare-and-set first: on PostgreSQL it locks the row
        lease.renew(
            status=Analysis.Status.DONE,
            finished=timezone.now(),
            slices_total=len(rows),
            slices_done=len(rows),
            areas=total.as_dict(),
            severity=severity.as_dict(),
        )
        Slice.objects.bulk_create(rows)


#: Longest side of a gallery thumbnail, in pixels.
THUMBNAIL_SIDE_PX = 160


def _store_views(lease: _Lease, stem: str, grey: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    """Store a slice's overlay in the default layers and its thumbnail; their names."""
    rgb = render_overlay(grey, labels)
    overlay = lease.store_png(f"{stem}-overlay.png", rgb)
    return overlay, lease.store_png(f"{stem}-thumbnail.png", thumbnail(rgb, THUMBNAIL_SIDE_PX))


def _slice_row(
    analysis: Analysis, index: int, ct: CTSlice, result: SliceAnalysis, image: str, labels: str, hu: str = "",
    overlay: str = "", thumbnail_: str = "",
) -> Slice:
    h, w = ct.pixels.shape
    return Slice(
        analysis=analysis,
        index=index,
        name=ct.name[:255],
        width=w,
        height=h,
        image=image,
        labels=labels,
        hu=hu,
        overlay=overlay,
        thumbnail=thumbnail_,
        areas=result.areas.as_dict(),
        severity=result.severity.as_dict(),
    )


def _fail(analysis: Analysis, lease: _Lease, exc: Exception) -> Outcome:
    """Record why a run failed, then remove whatever it wrote. The status is written
    first and the clean-up never raises, so a failing store cannot leave it running."""
    if isinstance(exc, UploadError):
        message = str(exc)
        if isinstance(exc, StorageUnavailable):
            log.error("analysis %s failed: the file store refused a write", analysis.pk, exc_info=exc)
    else:
        log.error("analysis %s failed", analysis.pk, exc_info=exc)
        message = _("Processing failed because of an internal error; please try again.")
    if lease.fail(message):
        _discard_upload(analysis)
    lease.remove_written()
    return Outcome.STORAGE_UNAVAILABLE if isinstance(exc, StorageUnavailable) else Outcome.FAILED


def _discard_upload(analysis: Analysis) -> None:
    """The upload is kept only until it has been processed (a refusing store is logged)."""
    if analysis.upload:
        _delete_folder_quietly(f"{analysis_folder(analysis.pk)}/upload")
        Analysis.objects.filter(pk=analysis.pk).update(upload="")


def browser_key(token: str) -> str:
    """What the database keeps of a browser's cookie token: its SHA-256, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()


def analyses_of_browser(*, browser: str, limit: int = 50) -> list[Analysis]:
    """The latest analyses uploaded from one browser (``browser_key`` of its token)."""
    if not browser:
        return []
    return list(Analysis.objects.filter(browser=browser).order_by("-created")[:limit])


def analysis_delete(*, analysis: Analysis) -> None:
    """Remove an analysis with all its files."""
    folder = analysis_folder(analysis.id)
    analysis.delete()
    _delete_folder(folder)


# --- The reaper -------------------------------------------------------------------------
# Work that lost its worker (a killed or paused process, a crashed machine) is cleaned up
# here without anyone visiting it: each `manage.py worker` reaps at start and every
# SEGMENTER_REAP_EVERY_SECONDS, each task reaps at its start (throttled the same way, so
# that the immediate backend's web processes reap too), and `manage.py reap` on demand.

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
    cutoff = _lease_cutoff(now)
    reaped_ids = set()
    expired = Analysis.objects.filter(status=Analysis.Status.RUNNING).filter(
        Q(heartbeat__lt=cutoff) | Q(heartbeat__isnull=True)
    )
    for analysis in expired:
        stopped = analysis.heartbeat + (now - cutoff) if analysis.heartbeat else now
        with translation.override(analysis.language or None):
            message = _stopped_message()
        taken = Analysis.objects.filter(
            pk=analysis.pk, status=Analysis.Status.RUNNING, heartbeat=analysis.heartbeat
        ).update(status=Analysis.Status.FAILED, error=message, finished=stopped, slices_done=0)
        if not taken:
            continue  # renewed or finished since it was read
        reaped_ids.add(str(analysis.pk))
        removed = _delete_folder_quietly(_slice_folder(analysis.pk))
        Slice.objects.filter(analysis=analysis).delete()  # none should exist; never keep any
        _discard_upload(analysis)
        silent = (now - analysis.heartbeat).total_seconds() if analysis.heartbeat else None
        reaped.analyses.append(
            f"analysis {analysis.pk} ({analysis.source_name}): running {analysis.slices_done}/{analysis.slices_total}"
            + (f", silent {silent:.0f} s" if silent is not None else ", never reported")
            + f" -> failed; {removed} files removed"
        )
    reaped.analyses += _unqueued_reap(now, cutoff)
    reaped.task_rows = _orphan_task_rows_reap(now, cutoff)
    reaped.temp_uploads = _temp_uploads_reap(now, cutoff)
    for line in (*reaped.analyses, *reaped.task_rows, *reaped.temp_uploads):
        log.warning("reaped %s", line)
    return reaped


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

        from .tasks import process_analysis

        for row in DBTaskResult.objects.filter(
            status__in=(TaskResultStatus.READY, TaskResultStatus.RUNNING), task_path=process_analysis.module_path
        ):
            args = (row.args_kwargs or {}).get("args") or []
            waiting.add(str(args[0] if args else (row.args_kwargs or {}).get("kwargs", {}).get("analysis_id")))
    lines = []
    for analysis in stale:
        if str(analysis.pk) in waiting:
            continue
        with translation.override(analysis.language or None):
            message = _stopped_message()
        taken = Analysis.objects.filter(pk=analysis.pk, status=Analysis.Status.QUEUED).update(
            status=Analysis.Status.FAILED, error=message, finished=now
        )
        if taken:
            removed = _delete_folder_quietly(analysis_folder(analysis.pk))
            lines.append(f"analysis {analysis.pk} ({analysis.source_name}): queued, no task -> failed; "
                         f"{removed} files removed")
    return lines


def _orphan_task_rows_reap(now, cutoff) -> list[str]:
    """django-tasks-db rows left running for an analysis that is not running under a live
    lease, started before the cutoff (a worker that died before it could finish them)."""
    if not apps.is_installed("django_tasks_db"):
        return []
    from django_tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    from .tasks import process_analysis

    rows = DBTaskResult.objects.filter(
        status=TaskResultStatus.RUNNING, task_path=process_analysis.module_path
    ).filter(Q(started_at__lt=cutoff) | Q(started_at__isnull=True))
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
            if not entry.is_file(follow_symlinks=False) or info.st_uid != os.getuid() or info.st_mtime >= limit:
                continue
            os.unlink(entry.path)
        except OSError as exc:
            log.warning("could not remove %s: %s", entry.path, exc)
            continue
        age = now.timestamp() - info.st_mtime
        lines.append(f"temporary upload {entry.path} ({megabytes(info.st_size)} MB, {age:.0f} s old) -> deleted")
    return lines


# --- Selectors --------------------------------------------------------------------------


def analysis_get(*, analysis_id) -> Analysis:
    """The analysis with this id, as people should see it (raises Analysis.DoesNotExist).

    A pure read: it writes nothing and deletes nothing. A running analysis whose lease
    has expired is returned as failed, because that is final: its worker can no longer
    write it (see _Lease), and the reaper will record the failure and remove its files.
    So it is never shown as running forever nor, half done, as complete.
    """
    analysis = Analysis.objects.get(pk=analysis_id)
    if analysis.status == Analysis.Status.RUNNING and _lease_expired(analysis):
        analysis.status = Analysis.Status.FAILED
        analysis.error = _stopped_message()
        analysis.slices_done = 0
        if analysis.heartbeat:
            analysis.finished = analysis.heartbeat + timedelta(seconds=settings.SEGMENTER_STALE_AFTER_SECONDS)
    return analysis


def _lease_expired(analysis: Analysis) -> bool:
    return analysis.heartbeat is None or analysis.heartbeat < _lease_cutoff(timezone.now())
