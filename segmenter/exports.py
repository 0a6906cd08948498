"""What is downloaded of an analysis: file names, reports, the study zip, and exports for other tools.

* Download names: ``download_name`` (the upload's stem and what the file is).
* Reports: ``reports`` builds report.csv and report.json from the stored slices, with
  what ``provenance.json`` says of the model and the input (ml.results.reports writes
  the rows, for the command line too).
* The study zip: ``study_zip_write``, every slice's grey image, overlay and label map
  with both reports.
* Provenance: when a study is processed, two JSON files are stored with its slices, in
  the folder that a failed or reaped run loses whole (processing.slice_folder); no pickle:
  ``provenance.json`` (the model that made the labels: engine, version, weights hashes;
  the input's pixel spacing, slice thickness and orientation; which exports exist) and
  ``geometry.json`` (where the slices lie in the input, ml.results.exports.source_geometry).
* Exports: ``labels.nii.gz`` and ``seg.dcm`` are built from the stored label maps on their
  first download and kept as files in the analysis' folder after that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from typing import BinaryIO

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from PIL import Image

from .ml.io.imaging import CTSlice
from .ml.io.names import file_part
from .ml.results import exports as ml_exports
from .ml.results.overlay import png_bytes, read_label_png, render_overlay
from .ml.results.reports import report_csv, report_json, report_rows
from .ml.results.severity import Areas
from .models import Analysis, Slice, analysis_folder
from .reasons import caution_text

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
GEOMETRY = "geometry.json"
LABELS_NIFTI = "labels_nifti"
DICOM_SEG = "dicom_seg"
#: Each export: its file in the analysis' folder, the suffix of its download's name and
#: its content type.
EXPORTS = {
    LABELS_NIFTI: ("exports/labels.nii.gz", "labels.nii.gz", "application/gzip"),
    DICOM_SEG: ("exports/seg.dcm", "seg.dcm", "application/dicom"),
}
#: Hex digits of a model version (of the sha256 of its manifest).
VERSION_DIGITS = 12


def model_description(segmenter) -> dict:
    """The model that labels an analysis: the engine's dotted path, and for the shipped
    ensemble (anything with a ``manifest``) a version, the first digits of the sha256 of
    the manifest as canonical JSON (sorted keys, no spaces), and each network's weights
    file and sha256."""
    manifest = getattr(segmenter, "manifest", None) or {}
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    return {
        "engine": settings.SEGMENTER_ENGINE,
        "version": hashlib.sha256(canonical).hexdigest()[:VERSION_DIGITS] if manifest else None,
        "weights": {
            name: {"file": entry.get("file"), "sha256": entry.get("sha256")}
            for name, entry in manifest.get("networks", {}).items()
        },
    }


def _equal_or_none(values: set):
    return next(iter(values)) if len(values) == 1 else None


def provenance_files(*, analysis_id, slices: list[CTSlice], segmenter) -> dict[str, bytes]:
    """The JSON files an analysis of ``slices`` stores (storage name -> content)."""
    geometry = ml_exports.source_geometry(slices)
    spacing = _equal_or_none({s.pixel_spacing_mm for s in slices})
    available = []
    if geometry is not None:
        available.append(LABELS_NIFTI)
        if geometry.get("seg"):
            available.append(DICOM_SEG)
    provenance = {
        "model": model_description(segmenter),
        "input": {
            "pixel_spacing_mm": list(spacing) if spacing else None,
            "slice_thickness_mm": _equal_or_none({s.slice_thickness_mm for s in slices}),
            "hounsfield_units": all(s.calibrated for s in slices),
            "orientation": ml_exports.orientation_of(geometry),
        },
        "exports": available,
    }
    files = {_result_name(analysis_id, PROVENANCE): _json_bytes(provenance)}
    if geometry is not None:
        files[_result_name(analysis_id, GEOMETRY)] = _json_bytes(geometry)
    return files


def _result_name(analysis_id, name: str) -> str:
    return f"{analysis_folder(analysis_id)}/slices/{name}"


def _json_bytes(data: dict) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _read_json(analysis: Analysis, name: str) -> dict | None:
    try:
        with default_storage.open(_result_name(analysis.id, name), "rb") as fh:
            return json.loads(fh.read())
    except FileNotFoundError:
        return None


def geometry_read(*, analysis: Analysis) -> dict | None:
    """geometry.json of a done analysis (where its slices lie in the source); None without."""
    return _read_json(analysis, GEOMETRY)


def provenance_read(*, analysis: Analysis) -> dict:
    """provenance.json of a done analysis; {} for one stored before it existed."""
    return _read_json(analysis, PROVENANCE) or {}


def exports_available(*, analysis: Analysis) -> list[str]:
    """The exports (LABELS_NIFTI, DICOM_SEG) a done analysis has."""
    if analysis.status != Analysis.Status.DONE:
        return []
    return list(provenance_read(analysis=analysis).get("exports", []))


def export_open(*, analysis: Analysis, export: str):
    """(open file, download name, content type) of an export of a done analysis; built and
    stored on first use. Raises LookupError when the analysis has no such export."""
    if export not in EXPORTS or export not in exports_available(analysis=analysis):
        raise LookupError(f"analysis {analysis.id} has no {export} export")
    path, suffix, content_type = EXPORTS[export]
    name = f"{analysis_folder(analysis.id)}/{path}"
    if not default_storage.exists(name):
        data = _build(analysis, export)
        saved = default_storage.save(name, ContentFile(data))
        if saved != name:  # built at the same time by another request: keep the first
            default_storage.delete(saved)
    return default_storage.open(name, "rb"), download_name(analysis, suffix), content_type


def _build(analysis: Analysis, export: str) -> bytes:
    geometry = _read_json(analysis, GEOMETRY)
    if geometry is None:
        raise LookupError(f"analysis {analysis.id} has no stored geometry")
    labels = []
    for slice_ in analysis.slices.all():
        with slice_.labels.open("rb") as fh:
            labels.append(read_label_png(fh.read()))
    log.info("building the %s export of analysis %s (%d slices)", export, analysis.id, len(labels))
    if export == LABELS_NIFTI:
        return ml_exports.labels_nifti(labels, geometry)
    version = provenance_read(analysis=analysis).get("model", {}).get("version") or "unversioned"
    return ml_exports.dicom_seg(labels, geometry, version)


# --- Download names, reports and the study zip ----------------------------------------------


def download_name(analysis: Analysis, what: str) -> str:
    """A download's file name: the upload's stem and what it is ('ct-report.csv')."""
    return f"{analysis.stem}-{what}"


def slice_grey(slice_: Slice) -> np.ndarray:
    """A stored slice's grey image, uint8 (H, W). Raises FileNotFoundError if it has gone."""
    with slice_.image.open("rb") as fh:
        return np.asarray(Image.open(fh).convert("L"))


def slice_labels(slice_: Slice) -> np.ndarray:
    """A stored slice's label map, uint8 (H, W). Raises FileNotFoundError if it has gone."""
    with slice_.labels.open("rb") as fh:
        return read_label_png(fh.read())


def reports(analysis: Analysis) -> tuple[str, dict]:
    """(report.csv text, report.json object) from the stored slices; report.json also
    names the model and the input's spacing, thickness and orientation (provenance_read)."""
    slices = list(analysis.slices.all())
    rows, total = report_rows([s.name for s in slices], [Areas.from_dict(s.areas) for s in slices])
    provenance = provenance_read(analysis=analysis)
    extra = {
        "analysis": str(analysis.id),
        "source": analysis.source_name,
        "kind": analysis.kind,
        "model": provenance.get("model"),
        "input": provenance.get("input"),
        "cautions": analysis_cautions(analysis),
    }
    return report_csv(rows, total), report_json(rows, total, **extra)


def analysis_cautions(analysis: Analysis) -> list[str]:
    """The CT check's cautions on an analysis, as sentences in the active language."""
    study = analysis.kind != Analysis.Kind.SLICE
    return [caution_text(name, key, study) for name, key in analysis.cautions or []]


def json_text(data: dict) -> str:
    """A report as JSON text, indented, UTF-8 characters kept."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def study_zip_write(target: BinaryIO, analysis: Analysis) -> None:
    """Write the study zip of a done analysis to ``target``: for each slice
    ``NNNN-<stem>-slice.png``, ``-overlay.png`` (default layers) and ``-labels.png``, the
    stored files as they are, then report.csv and report.json. Raises FileNotFoundError
    when a stored file has gone."""
    with zipfile.ZipFile(target, "w") as archive:
        for slice_ in analysis.slices.all():
            prefix = f"{slice_.index:04d}-{file_part(slice_.stem, 'slice')}"
            with slice_.image.open("rb") as fh:
                archive.writestr(f"{prefix}-slice.png", fh.read())
            if slice_.overlay:  # made when the slice was processed
                with slice_.overlay.open("rb") as fh:
                    archive.writestr(f"{prefix}-overlay.png", fh.read())
            else:
                overlay = render_overlay(slice_grey(slice_), slice_labels(slice_))
                archive.writestr(f"{prefix}-overlay.png", png_bytes(overlay))
            with slice_.labels.open("rb") as fh:
                archive.writestr(f"{prefix}-labels.png", fh.read())
        text, report = reports(analysis)
        archive.writestr("report.csv", text, compress_type=zipfile.ZIP_DEFLATED)
        archive.writestr("report.json", json_text(report), compress_type=zipfile.ZIP_DEFLATED)
