"""From slices to a study result and its reports: the path every front end shares.

The web pages, the JSON API and the command line all call ``analyse`` and write the
same ``report_rows`` as CSV and JSON, so a result reads the same wherever it came from.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .io.imaging import DICOM_SUFFIXES, IMAGE_SUFFIXES, CTSlice
from .io.volumes import NIFTI_SUFFIXES
from .results.severity import Areas, Severity, assess, assess_study, measure

DISCLAIMER = "For research and demonstration only; not for diagnosis."


class Segmenter:
    """Anything with ``segment(uint8 (H, W), spacing_mm=None) -> uint8 (H, W) labels``,
    where spacing_mm is the slice's (row, column) pixel spacing when known; the Ensemble
    is one."""

    def segment(self, pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError


@dataclass
class SliceAnalysis:
    source: CTSlice
    labels: np.ndarray  # uint8 (H, W), see constants
    areas: Areas
    severity: Severity


@dataclass
class StudyAnalysis:
    slices: list[SliceAnalysis]
    areas: Areas  # summed over slices
    severity: Severity  # graded from the sums


def analyse_slice(ct: CTSlice, segmenter: Segmenter) -> SliceAnalysis:
    return grade_slice(ct, segmenter.segment(ct.pixels, spacing_mm=ct.pixel_spacing_mm))


def grade_slice(ct: CTSlice, labels: np.ndarray) -> SliceAnalysis:
    """Measure and grade a slice's label map."""
    areas = measure(labels, ct.pixel_spacing_mm, ct.slice_thickness_mm)
    return SliceAnalysis(ct, labels, areas, assess(areas))


def analyse(
    slices: Sequence[CTSlice],
    segmenter: Segmenter,
    progress: Callable[[int, int], None] | None = None,
) -> StudyAnalysis:
    """Segment and grade each slice in order, then grade the study from summed areas.

    ``progress(done, total)`` is called after each slice.
    """
    results = []
    for k, ct in enumerate(slices):
        results.append(analyse_slice(ct, segmenter))
        if progress:
            progress(k + 1, len(slices))
    return study_from(results)


def study_from(results: list[SliceAnalysis]) -> StudyAnalysis:
    total, severity = assess_study([r.areas for r in results])
    return StudyAnalysis(results, total, severity)


# --- Names of what is written ---------------------------------------------------------

#: A frame of a multi-frame DICOM or a NIfTI volume is named "file[k]" (imaging, volumes).
FRAME_SUFFIX = re.compile(r"\[(\d+)\]$")
#: Digits of a frame number in a file name ('ct-012'), so that names sort in frame order.
FRAME_DIGITS = 3
STEM_SUFFIXES = (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES, *DICOM_SUFFIXES)


def slice_stem(name: str) -> str:
    """A slice's name (CTSlice.name) as the start of a file name: no folders, no extension,
    and a frame's number zero-padded after a dash.

    'study/a.dcm' -> 'a', 'x.dcm[3]' -> 'x-003', 'ct.nii.gz[12]' -> 'ct-012'. The result
    may be empty (a name that is only an extension); callers pick a fallback.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    frame = ""
    match = FRAME_SUFFIX.search(base)
    if match:
        base, frame = base[: match.start()], f"{int(match.group(1)):0{FRAME_DIGITS}d}"
    for suffix in STEM_SUFFIXES:
        if base.lower().endswith(suffix):
            base = base[: -len(suffix)]
            break
    return "-".join(part for part in (base, frame) if part)


# --- Reports ----------------------------------------------------------------------------

REPORT_FIELDS = (
    "index",
    "name",
    "grade",
    "lesion_percent",
    "ggo_percent",
    "consolidation_percent",
    "right_lesion_percent",
    "left_lesion_percent",
    "ggo_px",
    "consolidation_px",
    "lung_px",
    "ggo_ml",
    "consolidation_ml",
    "lung_ml",
    "note",
)


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits)


def report_row(index: int | str, name: str, areas: Areas, severity: Severity) -> dict:
    return {
        "index": index,
        "name": name,
        "grade": severity.grade,
        "lesion_percent": _round(severity.lesion_percent),
        "ggo_percent": _round(severity.ggo_percent),
        "consolidation_percent": _round(severity.consolidation_percent),
        "right_lesion_percent": _round(severity.right_percent),
        "left_lesion_percent": _round(severity.left_percent),
        "ggo_px": areas.ggo,
        "consolidation_px": areas.consolidation,
        "lung_px": areas.lung,
        "ggo_ml": _round(areas.ggo_ml, 3),
        "consolidation_ml": _round(areas.consolidation_ml, 3),
        "lung_ml": _round(areas.lung_ml, 3),
        "note": severity.message,
    }


def report_rows(names: Sequence[str], areas: Sequence[Areas]) -> tuple[list[dict], dict]:
    """(one row per slice, the study row) from each slice's name and areas."""
    rows = [report_row(k + 1, n, a, assess(a)) for k, (n, a) in enumerate(zip(names, areas))]
    total, severity = assess_study(list(areas))
    return rows, report_row("study", "study total", total, severity)


#: A text cell starting with one of these is a formula to a spreadsheet (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value) -> str | int | float:
    """A report value as a CSV cell: empty for None, text that a spreadsheet would run as
    a formula prefixed with an apostrophe (OWASP's advice), numbers as they are."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def report_csv(rows: list[dict], total: dict) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=REPORT_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in [*rows, total]:
        writer.writerow({k: csv_cell(row[k]) for k in REPORT_FIELDS})
    return buf.getvalue()


def report_json(rows: list[dict], total: dict, **extra) -> dict:
    return {"disclaimer": DISCLAIMER, **extra, "study": total, "slices": rows}
