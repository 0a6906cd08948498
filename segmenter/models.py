"""Stored analyses. Arrays never enter the database: images and label maps are PNG files
in the default storage, under a folder named by the analysis' UUID."""

from __future__ import annotations

import uuid

from django.db import models
from django.utils.translation import gettext_lazy as _

from .ml.io.names import slice_stem, strip_suffix


def analysis_folder(analysis_id: uuid.UUID | str) -> str:
    """Storage folder of one analysis; everything it owns lives below it."""
    return f"analyses/{analysis_id}"


def _upload_to(instance: Analysis, filename: str) -> str:
    return f"{analysis_folder(instance.id)}/upload/{filename}"


class Analysis(models.Model):
    """One upload (a slice, a study or a volume) and, once processed, its study result."""

    class Kind(models.TextChoices):
        SLICE = "slice", _("slice")
        STUDY = "study", _("study")
        VOLUME = "volume", _("volume")

    class Status(models.TextChoices):
        QUEUED = "queued", _("queued")
        RUNNING = "running", _("running")
        DONE = "done", _("done")
        FAILED = "failed", _("failed")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    created = models.DateTimeField(auto_now_add=True)
    finished = models.DateTimeField(null=True, blank=True)
    # The lease of the worker run processing it (see processing._Lease): the run's token and
    # its last report. A running analysis whose heartbeat is older than
    # SEGMENTER_STALE_AFTER_SECONDS has lost its worker, which can then no longer write it.
    owner = models.CharField(max_length=32, blank=True)
    heartbeat = models.DateTimeField(null=True, blank=True)
    # How many runs have claimed it: a run that stopped (its lease expired) sends it back
    # to the queue until SEGMENTER_MAX_ATTEMPTS runs have (processing.stopped_run_settle).
    attempts = models.PositiveIntegerField(default=0)
    kind = models.CharField(max_length=8, choices=Kind.choices)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    # The uploader's language: what a worker writes for them (a failure's reason) uses it.
    language = models.CharField(max_length=16, blank=True)
    source_name = models.CharField(max_length=255)  # the uploaded file's (sanitised) name
    # The browser that uploaded it through the web form: a hash of the random token in its
    # signed cookie (selectors.browser_key), so that it alone can list and delete it.
    # Empty for API and command-line uploads.
    browser = models.CharField(max_length=64, blank=True, db_index=True)
    upload = models.FileField(upload_to=_upload_to, max_length=500, blank=True)  # kept until processed
    slices_total = models.PositiveIntegerField(default=0)
    slices_done = models.PositiveIntegerField(default=0)
    areas = models.JSONField(null=True, blank=True)  # severity.Areas summed over slices
    severity = models.JSONField(null=True, blank=True)  # severity.Severity.as_dict() of the sums
    # [slice name, ctcheck caution key] of the slices the CT check let through with a caution
    # (reasons.caution_text words them in the reader's language).
    cautions = models.JSONField(default=list, blank=True)
    # A series read from the PACS (segmenter.pacs): {"root", "study", "series", "choice"}; null
    # for uploads. Whether its results are to be sent back when done, when they were, and
    # why the last send failed. No patient or study attribute is ever stored here.
    pacs_source = models.JSONField(null=True, blank=True)
    pacs_send = models.BooleanField(default=False)
    pacs_sent = models.DateTimeField(null=True, blank=True)
    pacs_error = models.TextField(blank=True)

    class Meta:
        ordering = ("-created",)
        indexes = [models.Index(fields=("status", "heartbeat"), name="analysis_status_heartbeat")]  # the reaper

    def __str__(self) -> str:
        return f"{self.source_name} ({self.id})"

    @property
    def is_finished(self) -> bool:
        return self.status in (self.Status.DONE, self.Status.FAILED)

    @property
    def retrying(self) -> bool:
        """Whether a run of it stopped and it is queued again or running again."""
        return (self.status == self.Status.QUEUED and self.attempts >= 1) or (
            self.status == self.Status.RUNNING and self.attempts >= 2
        )

    @property
    def stem(self) -> str:
        """The uploaded name without its extension ('ct.nii.gz' -> 'ct'), for download file names."""
        return strip_suffix(self.source_name) or "analysis"


class Slice(models.Model):
    """One segmented slice of an analysis."""

    analysis = models.ForeignKey(Analysis, on_delete=models.CASCADE, related_name="slices")
    index = models.PositiveIntegerField()  # 1-based position along the study
    name = models.CharField(max_length=255)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    image = models.FileField(max_length=500)  # the slice as an 8-bit grey PNG (lung window)
    labels = models.FileField(max_length=500)  # label map PNG: 0 GGO, 1 consolidation, 2 other lung, 3 background
    # Hounsfield units as an RGB PNG (ml.overlay.pack_hu), for the viewer's window/level;
    # empty for slices whose source carried none (8-bit images, uncalibrated CT numbers).
    hu = models.FileField(max_length=500, blank=True)
    # Made once when the slice is processed (empty for slices stored before): the overlay
    # in the default layers, and its gallery thumbnail.
    overlay = models.FileField(max_length=500, blank=True)
    thumbnail = models.FileField(max_length=500, blank=True)
    areas = models.JSONField()  # severity.Areas of this slice
    severity = models.JSONField()  # severity.Severity.as_dict()

    class Meta:
        ordering = ("index",)
        constraints = [models.UniqueConstraint(fields=("analysis", "index"), name="unique_slice_index")]

    def __str__(self) -> str:
        return f"{self.analysis_id}#{self.index} {self.name}"

    @property
    def stem(self) -> str:
        """The name without folders and extension, for download file names; a frame of a
        multi-frame DICOM or volume as 'x-003' (see ml.io.names.slice_stem)."""
        return slice_stem(self.name) or f"slice-{self.index:04d}"
