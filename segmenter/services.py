"""Services (functions that change things) and selectors (functions that read).

Upload checks live here, in one place, for the web pages, the API and the command line:
``upload_read`` decodes every slice of an upload before anything is stored, so bad input
is refused whole. ``analysis_create`` stores a valid upload and queues its processing;
``analysis_process`` (run by the task, in the request with the immediate backend or in a
db_worker) segments it and stores the result all at once, or nothing.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import BinaryIO

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone, translation
from django.utils.formats import number_format
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from .engine import get_segmenter
from .ml.archive import ArchiveLimits, read_zip
from .ml.ctcheck import check_slices
from .ml.imaging import DICOM_SUFFIXES, IMAGE_SUFFIXES, CTSlice, UnreadableImage, read_slices
from .ml.overlay import png_bytes
from .ml.pipeline import SliceAnalysis, grade_slice
from .ml.severity import Areas, assess_study
from .ml.volumes import NIFTI_SUFFIXES, is_nifti_name, read_nifti
from .models import Analysis, Slice, analysis_folder

log = logging.getLogger(__name__)

ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
#: Progress is written to the database at most this often (seconds).
PROGRESS_INTERVAL = 0.5
#: Slices decoded by analysis_create, handed to a task that runs in the same process.
_decoded: dict[str, list[CTSlice]] = {}
ALLOWED_SUFFIXES = (*IMAGE_SUFFIXES, *DICOM_SUFFIXES, ".zip", *NIFTI_SUFFIXES)
MB = 1024 * 1024
#: Numbers from this size up are shown with thousands separators ("16,777,216").
GROUPING_FROM = 10_000

#: Why a file could not be read, by ml.imaging.UnreadableImage.code, in the reader's
#: language. The English says what the engine's message says, less the details of the
#: library that failed (those are logged). Whole-number params are shown localised, and
#: a param named ``x_bytes`` is shown in MB as ``x_mb``. A code missing here is shown
#: with the engine's English message; tests/unit/test_web_reasons.py checks that none is.
UNREADABLE_REASONS = {
    # segmenter.ml.imaging
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
    "several_frames": gettext_lazy("the file holds %(frames)s frames; upload it as a study instead"),
    # segmenter.ml.archive
    "unreadable_member": gettext_lazy("%(member)s: %(reason)s"),
    "unsafe_path": gettext_lazy("the zip contains an unsafe path (%(path)s)"),
    "not_a_zip": gettext_lazy("not a valid zip archive"),
    "encrypted_zip": gettext_lazy("the zip is encrypted; upload an unencrypted archive"),
    "zip_too_many_files": gettext_lazy("the zip holds %(count)s files; the limit is %(limit)s"),
    "zip_too_large": gettext_lazy("the zip unpacks to %(size_mb)s MB; the limit is %(limit_mb)s MB"),
    "zip_member_too_large": gettext_lazy(
        "%(member)s unpacks to %(size_mb)s MB; the limit is %(limit_mb)s MB"
    ),
    "zip_bomb": gettext_lazy("%(member)s is compressed suspiciously well (a zip bomb?)"),
    "damaged_zip_member": gettext_lazy("%(member)s in the zip is damaged"),
    "zip_member_over_limit": gettext_lazy("%(member)s unpacks to more than %(limit_mb)s MB"),
    "zip_too_many_slices": gettext_lazy("the zip holds more than %(limit)s slices"),
    "zip_without_slices": gettext_lazy("the zip holds no PNG, JPEG or DICOM slices"),
    "folder_too_many_files": gettext_lazy("the folder holds %(count)s files; the limit is %(limit)s"),
    "folder_file_too_large": gettext_lazy("%(path)s is larger than %(limit_mb)s MB"),
    "folder_too_many_slices": gettext_lazy("the folder holds more than %(limit)s slices"),
    "folder_without_slices": gettext_lazy("%(folder)s holds no PNG, JPEG or DICOM slices"),
    # segmenter.ml.volumes
    "damaged_gzip": gettext_lazy("the .gz file is damaged"),
    "volume_too_large": gettext_lazy("the volume unpacks to more than %(limit_mb)s MB"),
    "not_nifti": gettext_lazy("not a NIfTI volume"),
    "volume_not_3d": gettext_lazy("expected a 3-D volume, got shape %(shape)s"),
    "volume_4d": gettext_lazy("expected one 3-D volume, got %(count)s volumes (4-D)"),
    "volume_orientation": gettext_lazy("the volume's affine does not describe a proper orientation"),
    "volume_slices_too_large": gettext_lazy(
        "slices of %(width)s×%(height)s pixels exceed the limit of %(limit)s pixels"
    ),
    "damaged_volume": gettext_lazy("the volume's data are damaged"),
    # segmenter.ml.ctcheck
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
    """Decode an upload completely: a slice, a zip of slices, a multi-frame DICOM or a
    NIfTI volume. Raises UploadError with a message for the user."""
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
            _("Files of type %(suffix)s are not supported: upload PNG, JPEG, DICOM, a zip of slices or NIfTI.")
            % {"suffix": "." + name.rsplit(".", 1)[-1]}
        )
    head = stream.read(132)
    stream.seek(0)
    try:
        if head.startswith(ZIP_MAGICS):
            slices, kind = read_zip(stream, archive_limits()), Analysis.Kind.STUDY
        elif is_nifti_name(name):
            slices, kind = read_nifti(stream.read(), name), Analysis.Kind.VOLUME
        elif name.lower().endswith(".zip"):
            raise UnreadableImage("not a valid zip archive", code="not_a_zip")
        else:
            slices = read_slices(stream.read(), name)
            kind = Analysis.Kind.SLICE if len(slices) == 1 else Analysis.Kind.STUDY
        check_slices(slices, study=kind == Analysis.Kind.STUDY)
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


def analysis_create(*, stream: BinaryIO, name: str, size: int) -> Analysis:
    """Validate an upload, store it for a worker (if one will process it) and queue its
    processing. Raises UploadError.

    With the immediate task backend the analysis is processed before this returns.
    """
    parsed = upload_read(stream=stream, name=name, size=size)
    stream.seek(0)
    analysis = Analysis(
        kind=parsed.kind,
        source_name=clean_name(name),
        slices_total=len(parsed.slices),
        language=translation.get_language() or "",
    )
    try:
        with transaction.atomic():
            if not _processed_in_process():  # a worker reads the upload from storage
                analysis.upload.save(stored_upload_name(name), _as_file(stream, name), save=False)
            analysis.save()
    except Exception:
        _delete_folder(analysis_folder(analysis.id))
        raise
    # Enqueued once the row is saved (not on commit of an outer transaction, so that the
    # immediate backend has processed it when this returns, inside tests' transactions too).
    # If the task runs in this process, it takes the slices decoded above instead of
    # decoding the upload again; a worker process reads the stored upload.
    _decoded[str(analysis.id)] = parsed.slices
    try:
        _enqueue(analysis)
    finally:
        _decoded.pop(str(analysis.id), None)
    analysis.refresh_from_db()
    return analysis


def _as_file(stream: BinaryIO, name: str):
    from django.core.files import File

    return File(stream, name=clean_name(name))


def _processed_in_process() -> bool:
    """Whether tasks run inside the request that enqueues them (django-tasks' immediate backend)."""
    from django_tasks.backends.immediate import ImmediateBackend

    from .tasks import process_analysis

    return isinstance(process_analysis.get_backend(), ImmediateBackend)


def _enqueue(analysis: Analysis) -> None:
    from .tasks import process_analysis

    process_analysis.enqueue(str(analysis.id))


def _delete_folder(folder: str) -> None:
    """Delete every file below ``folder`` in the default storage."""
    try:
        dirs, files = default_storage.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return
    for f in files:
        default_storage.delete(f"{folder}/{f}")
    for d in dirs:
        _delete_folder(f"{folder}/{d}")


def _slice_folder(analysis: Analysis) -> str:
    return f"{analysis_folder(analysis.id)}/slices"


def analysis_process(*, analysis_id: str) -> None:
    """Segment a stored upload; store every slice's files and rows and the study result,
    or, if anything fails, nothing (the analysis is then marked failed with the reason)."""
    try:
        analysis = Analysis.objects.get(pk=analysis_id)
    except Analysis.DoesNotExist:
        log.warning("analysis %s vanished before processing", analysis_id)
        return
    if analysis.status == Analysis.Status.DONE:
        return
    # In a worker, messages are written in the uploader's language, not the worker's.
    with translation.override(analysis.language or None):
        try:
            slices = _decoded.pop(str(analysis.id), None)
            if slices is None:
                with analysis.upload.open("rb") as fh:
                    slices = upload_read(stream=fh, name=analysis.source_name, size=analysis.upload.size).slices
            _segment_into(analysis, slices)
        except Exception as exc:
            _fail(analysis, exc)
        finally:
            _discard_upload(analysis)


def analysis_record(*, source_name: str, kind: str, slices: list[CTSlice]) -> Analysis:
    """Segment slices that are already read and store them as a finished analysis
    (for the command line's --save; uploads go through analysis_create)."""
    analysis = Analysis.objects.create(
        kind=kind, source_name=clean_name(source_name), slices_total=len(slices)
    )
    try:
        _segment_into(analysis, slices)
    except Exception as exc:
        _fail(analysis, exc)
    analysis.refresh_from_db()
    return analysis


def _segment_into(analysis: Analysis, slices: list[CTSlice]) -> None:
    """Segment ``slices`` in order, writing each slice's PNGs as it goes and reporting
    progress; then create all Slice rows and mark the analysis done in one transaction."""
    Analysis.objects.filter(pk=analysis.pk).update(
        status=Analysis.Status.RUNNING, heartbeat=timezone.now(), slices_done=0, slices_total=len(slices), error=""
    )
    folder = _slice_folder(analysis)
    _delete_folder(folder)  # leftovers of an interrupted earlier run
    segmenter = get_segmenter()
    rows = []
    reported = time.monotonic()
    # Each slice's PNGs are encoded and stored on a second thread while the networks run
    # and the label map is measured (zlib and the runtime both release the GIL). On
    # failure the with-block waits for the writes, so _fail then finds and removes them.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="slice-png") as writer:
        for k, ct in enumerate(slices, start=1):
            image = writer.submit(_store_png, f"{folder}/{k:04d}-image.png", ct.pixels)
            labels = segmenter.segment(ct.pixels, spacing_mm=ct.pixel_spacing_mm)
            labels_file = writer.submit(_store_png, f"{folder}/{k:04d}-labels.png", labels)
            result = grade_slice(ct, labels)
            rows.append(_slice_row(analysis, k, ct, result, image.result(), labels_file.result()))
            if time.monotonic() - reported >= PROGRESS_INTERVAL and k < len(slices):
                Analysis.objects.filter(pk=analysis.pk).update(slices_done=k, heartbeat=timezone.now())
                reported = time.monotonic()
    total, severity = assess_study([Areas.from_dict(r.areas) for r in rows])
    with transaction.atomic():
        Slice.objects.filter(analysis=analysis).delete()
        Slice.objects.bulk_create(rows)
        Analysis.objects.filter(pk=analysis.pk).update(
            status=Analysis.Status.DONE,
            finished=timezone.now(),
            slices_total=len(rows),
            slices_done=len(rows),
            areas=total.as_dict(),
            severity=severity.as_dict(),
        )



def _store_png(path: str, array: np.ndarray) -> str:
    return default_storage.save(path, ContentFile(png_bytes(array)))


def _slice_row(analysis: Analysis, index: int, ct: CTSlice, result: SliceAnalysis, image: str, labels: str) -> Slice:
    h, w = ct.pixels.shape
    return Slice(
        analysis=analysis,
        index=index,
        name=ct.name[:255],
        width=w,
        height=h,
        image=image,
        labels=labels,
        areas=result.areas.as_dict(),
        severity=result.severity.as_dict(),
    )


def _fail(analysis: Analysis, exc: Exception) -> None:
    """Remove whatever a failed run wrote and record why it failed."""
    if isinstance(exc, UploadError):
        message = str(exc)
    else:
        log.error("analysis %s failed", analysis.pk, exc_info=exc)
        message = _("Processing failed because of an internal error; please try again.")
    _delete_folder(_slice_folder(analysis))
    Slice.objects.filter(analysis=analysis).delete()
    Analysis.objects.filter(pk=analysis.pk).update(
        status=Analysis.Status.FAILED, error=message, finished=timezone.now(), slices_done=0
    )


def _discard_upload(analysis: Analysis) -> None:
    """The upload is kept only until it has been processed."""
    if analysis.upload:
        _delete_folder(f"{analysis_folder(analysis.id)}/upload")
        Analysis.objects.filter(pk=analysis.pk).update(upload="")


def analysis_delete(*, analysis: Analysis) -> None:
    """Remove an analysis with all its files."""
    folder = analysis_folder(analysis.id)
    analysis.delete()
    _delete_folder(folder)


# --- Selectors --------------------------------------------------------------------------


def analysis_get(*, analysis_id) -> Analysis:
    """The analysis with this id (raises Analysis.DoesNotExist). A running analysis whose
    worker stopped reporting is marked failed first, so it is never shown as running
    forever nor, half done, as complete."""
    analysis = Analysis.objects.get(pk=analysis_id)
    if analysis.status == Analysis.Status.RUNNING and analysis.heartbeat:
        limit = timedelta(seconds=settings.SEGMENTER_STALE_AFTER_SECONDS)
        if timezone.now() - analysis.heartbeat > limit:
            _delete_folder(_slice_folder(analysis))
            Analysis.objects.filter(pk=analysis.pk, status=Analysis.Status.RUNNING).update(
                status=Analysis.Status.FAILED,
                error=_("Processing stopped before it finished; please upload the file again."),
                finished=timezone.now(),
                slices_done=0,
            )
            _discard_upload(analysis)
            analysis.refresh_from_db()
    return analysis
