"""A result as a report: one row per slice and the study row, written as CSV and JSON.

The web pages, the JSON API and the command line write the same rows, so a result reads
the same wherever it came from.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

from .severity import Areas, Severity, assess, assess_study

DISCLAIMER = "For research and demonstration only; not for diagnosis."

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
