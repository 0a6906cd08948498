"""Reading and checking an upload: the one place for the web form, the API, the worker and the command line.

* The size gate: ``body_length_check`` refuses a request body whose declared length is
  over the limit before it is read (the web form and the API call it), and
  ``upload_read`` refuses a file over SEGMENTER_MAX_UPLOAD_BYTES; both raise
  ``UploadTooLarge`` (413), with the messages of ``too_large_message`` (the browser's
  script says the same before it sends anything) and ``file_too_large_message``.
* ``upload_read`` decodes and checks an upload whole before anything is stored, so that
  bad input is refused before any work: a slice, an archive of slices, a multi-frame
  DICOM or a NIfTI volume. An archive's slices are decoded and checked once, then let go
  and decoded again one at a time as they are segmented (``ml.io.archive.StudySlices``);
  a volume's are made one at a time from the start (``ml.io.volumes.VolumeSlices``).

Every refusal is an ``UploadError`` whose ``str()`` is the message for the person who
sent the file, in their language, and whose ``status_code`` answers it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
from django.conf import settings
from django.utils.translation import gettext as _

from .engine import get_segmenter
from .ml.io.archive import HEAD_BYTES, ArchiveLimits, archive_kind, read_any_archive, read_folder, suffix_kind
from .ml.io.ctcheck import check_ct, check_lungs, check_slices
from .ml.io.headers import PixelBudget
from .ml.io.imaging import CTSlice, UnreadableImage, read_slices
from .ml.io.names import clean_name, known_suffix
from .ml.io.volumes import is_nifti_name, read_nifti
from .models import Analysis
from .reasons import MB, megabytes, unreadable_reason

log = logging.getLogger(__name__)

#: Archives read as studies (by their first bytes; see ml.io.archive.archive_kind).
STUDY_ARCHIVES = ("zip", "RAR", "7z", "tar")
#: Room for the multipart framing, headers and form fields around the file itself: a
#: body declared longer than the limit plus this is refused before it is read.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class UploadError(ValueError):
    """An upload that cannot be analysed; ``str()`` says why, for the person who sent it,
    and ``status_code`` is the HTTP status that answers it."""

    status_code = 400


class UploadTooLarge(UploadError):
    """An upload over SEGMENTER_MAX_UPLOAD_BYTES."""

    status_code = 413


@dataclass
class ParsedUpload:
    """A read and checked upload: its Analysis.Kind value and its slices in study order
    (a list, or a LazySlices — an archive's StudySlices, a volume's VolumeSlices — that
    makes each slice when it is reached)."""

    kind: str
    slices: Sequence[CTSlice]
    #: (pixels, labels) of the slices the CT check already segmented (pipeline.Remembered).
    segmented: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: (slice name, caution) of the slices the CT check let through with a caution.
    cautions: list[tuple[str, str]] = field(default_factory=list)

    def close(self) -> None:
        """Let go of what the slices are read from (a volume's temporary file); a volume's
        upload file is the caller's to close, after this."""
        close = getattr(self.slices, "close", None)
        if close is not None:
            close()


# --- The size gate ---------------------------------------------------------------------


def too_large_message() -> str:
    """What anyone sending more than the limit is told when the file's own size is not
    known yet (a request body, the browser before it sends)."""
    return _("The file is larger than the limit of %(limit)s MB.") % {
        "limit": megabytes(settings.SEGMENTER_MAX_UPLOAD_BYTES)
    }


def file_too_large_message(size: int) -> str:
    return _("The file is %(size)s MB; the limit is %(limit)s MB.") % {
        "size": megabytes(size),
        "limit": megabytes(settings.SEGMENTER_MAX_UPLOAD_BYTES),
    }


def body_length_check(content_length: str | None) -> None:
    """Refuse a request body before it is read: UploadTooLarge when its declared length
    (the Content-Length header's value) is over the limit and the multipart overhead,
    UploadError when the header is not a number. A missing header passes (the body is
    then limited as it is read, and the file by upload_read)."""
    try:
        declared = int(content_length or 0)
    except ValueError:
        raise UploadError(_("The Content-Length header is not a number.")) from None
    if declared > settings.SEGMENTER_MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES:
        raise UploadTooLarge(too_large_message())


def _size_check(size: int) -> None:
    if size <= 0:
        raise UploadError(_("The file is empty."))
    if size > settings.SEGMENTER_MAX_UPLOAD_BYTES:
        raise UploadTooLarge(file_too_large_message(size))


# --- Names ------------------------------------------------------------------------------


def stored_upload_name(name: str) -> str:
    """The file name an upload is stored under for a worker: a random token and the
    upload's type suffix (``.png``, ``.nii.gz``; none for other names), short and ASCII
    whatever the upload is called. The name shown stays ``clean_name(name)``."""
    return f"{secrets.token_hex(8)}{known_suffix(clean_name(name)).lower()}"


def _suffix_allowed(name: str) -> bool:
    if known_suffix(name):
        return True
    # DICOM files often carry no extension at all (IM000001): their content decides.
    lower = name.lower()
    return "." not in lower or lower.rsplit(".", 1)[-1].isdigit()


# --- Reading ----------------------------------------------------------------------------


def archive_limits() -> ArchiveLimits:
    """The limits on an archive or folder of slices, from the settings."""
    return ArchiveLimits(
        max_members=settings.SEGMENTER_ZIP_MAX_MEMBERS,
        max_member_bytes=settings.SEGMENTER_ZIP_MAX_MEMBER_MB * MB,
        max_total_bytes=settings.SEGMENTER_ZIP_MAX_TOTAL_MB * MB,
        max_slices=settings.SEGMENTER_MAX_SLICES,
        max_pixels=settings.SEGMENTER_MAX_DECODED_PIXELS,
    )


def upload_read(*, stream: BinaryIO, name: str, size: int) -> ParsedUpload:
    """Read and check an upload completely: a slice, an archive of slices (zip, RAR, 7z,
    tar, tar.gz, tar.xz), a multi-frame DICOM or a NIfTI volume. Every slice is decoded
    and checked (``ctcheck``) before this returns, except a volume's, which are Hounsfield
    units by construction and are made as they are reached, from ``stream`` (which must
    then stay open while they are). An archive's slices are decoded again when reached,
    from an unnamed temporary file. ParsedUpload.close lets go of what the slices are
    read from (not of ``stream``). Raises UploadError with a message for the user."""
    name = clean_name(name)
    _size_check(size)
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
            # Each slice is checked as it is first decoded, then made again when reached.
            slices = read_any_archive(stream, name, archive_limits(), check=check_ct)
            kind = Analysis.Kind.STUDY
        elif is_nifti_name(name):
            slices = read_nifti(  # reads from the stream as each slice is reached: keep it open
                stream,
                name,
                max_slices=settings.SEGMENTER_MAX_SLICES,
                max_pixels=settings.SEGMENTER_MAX_DECODED_PIXELS,
            )
            kind = Analysis.Kind.VOLUME
        else:
            slices = read_slices(stream.read(), name, PixelBudget(settings.SEGMENTER_MAX_DECODED_PIXELS))
            kind = Analysis.Kind.SLICE if len(slices) == 1 else Analysis.Kind.STUDY
        parsed = ParsedUpload(kind=kind, slices=slices)
        try:
            # An archive's slices were checked as they were read; a volume's are calibrated
            # and grey, which both checks pass without looking (and looking would make
            # every slice of it here). Only the slices of one file are checked here.
            if isinstance(slices, list):
                check_slices(slices, study=kind == Analysis.Kind.STUDY)
            if len(slices) > settings.SEGMENTER_MAX_SLICES:
                raise UploadError(
                    _("The upload holds %(n)d slices; the limit is %(limit)d.")
                    % {"n": len(slices), "limit": settings.SEGMENTER_MAX_SLICES}
                )
            if kind != Analysis.Kind.VOLUME:
                parsed.segmented = check_lungs(
                    slices, get_segmenter(), study=kind == Analysis.Kind.STUDY, cautions=parsed.cautions
                )
        except BaseException:
            parsed.close()
            raise
    except UnreadableImage as exc:
        raise _unreadable(name, exc) from exc
    return parsed


def folder_read(folder: Path) -> ParsedUpload:
    """Every PNG, JPEG and DICOM slice below a folder (the command line's input), read,
    limited and checked like an archive's. Raises UploadError."""
    try:
        slices = read_folder(folder, archive_limits(), check=check_ct)
        cautions: list[tuple[str, str]] = []
        segmented = check_lungs(slices, get_segmenter(), study=True, cautions=cautions)
    except UnreadableImage as exc:
        raise _unreadable(folder.name, exc) from exc
    return ParsedUpload(kind=Analysis.Kind.STUDY, slices=slices, segmented=segmented, cautions=cautions)


def _unreadable(name: str, exc: UnreadableImage) -> UploadError:
    log.info("%s could not be read: %s", name, exc)
    return UploadError(
        _("%(name)s could not be read: %(reason)s.") % {"name": name, "reason": unreadable_reason(exc)}
    )
