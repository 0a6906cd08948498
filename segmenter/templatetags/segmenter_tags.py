"""Template helpers for results: grades and shares as people read them, and the plot of
lesion share along a study (inline SVG, drawn on the server so it needs no JavaScript)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from django import template
from django.template.defaultfilters import floatformat
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from .. import exports
from ..ml.constants import LESION_MIN_PEAK, MIN_LESION_AREA_PX, REFERENCE_PIXEL_MM
from ..ml.results.severity import GRADES

register = template.Library()

#: Grade names as shown (the Moscow scale reads КТ-0...КТ-4 in Russian).
GRADE_LABELS = {
    "CT-0": _("CT-0"),
    "CT-1": _("CT-1"),
    "CT-2": _("CT-2"),
    "CT-3": _("CT-3"),
    "CT-4": _("CT-4"),
}
#: One line per grade: the rule of severity.GRADE_RULES, translatable.
# The rules hold "%" signs that are not placeholders:
GRADE_RULES = {
    "CT-0": _("no ground glass or consolidation"),
    # xgettext:no-python-format
    "CT-1": _("up to 25 % of the lung involved"),
    "CT-2": _("over 25 % and up to 50 % of the lung involved"),
    "CT-3": _("over 50 % and under 75 % of the lung involved"),
    # xgettext:no-python-format
    "CT-4": _("75 % of the lung or more involved"),
}
NO_GRADE = _("no grade")
NO_LUNG = _("no lung found")
MISSING = "\u2014"  # an em dash where a value does not exist


@register.filter
def grade_label(grade: str | None) -> str:
    return str(GRADE_LABELS.get(grade, NO_GRADE)) if grade else str(NO_GRADE)


@register.filter
def grade_rule(grade: str | None) -> str:
    return str(GRADE_RULES.get(grade, NO_LUNG)) if grade else str(NO_LUNG)


@register.filter
def grade_css(grade: str | None) -> str:
    """A CSS class per grade: grade-0 ... grade-4, grade-none."""
    return f"grade-{GRADES.index(grade)}" if grade in GRADES else "grade-none"


@register.simple_tag
def lesion_limits() -> dict:
    """What the engine does not count as a lesion, as people read it: ``mm``, the diameter
    of a disc of MIN_LESION_AREA_PX at the reference grid (6 for 60 px of 0.7 mm), and
    ``peak``, LESION_MIN_PEAK in percent (90)."""
    area_mm2 = MIN_LESION_AREA_PX * REFERENCE_PIXEL_MM**2
    return {"mm": round(2 * math.sqrt(area_mm2 / math.pi)), "peak": round(100 * LESION_MIN_PEAK)}


@register.filter
def percent(value: float | None) -> str:
    """12.345 -> '12.3 %' (localised, e.g. '12,3 %'); None -> an em dash."""
    if value is None:
        return MISSING
    return f"{floatformat(value, 1)}\u00a0%"


@register.filter
def millilitres(value: float | None) -> str:
    if value is None:
        return MISSING
    unit = _("mL")
    return f"{floatformat(value, 1)}\u00a0{unit}"


@register.filter
def volumes(areas: dict | None) -> dict | None:
    """{'lung', 'lesion', 'ggo', 'consolidation'} in mL from an Areas.as_dict(), or None
    unless the GGO, consolidation and lung volumes are all known (they need the pixel
    spacing and slice thickness of every slice). Lesion is GGO plus consolidation."""
    if not areas:
        return None
    ggo, consolidation, lung = (areas.get(k) for k in ("ggo_ml", "consolidation_ml", "lung_ml"))
    if ggo is None or consolidation is None or lung is None:
        return None
    return {"lung": lung, "lesion": ggo + consolidation, "ggo": ggo, "consolidation": consolidation}


@register.filter
def sides(severity: dict | None) -> dict | None:
    """{'right': {...}, 'left': {...}} of a severity dict when both shares are known,
    else None (the lungs do not lie side by side, or there is no lung)."""
    if not severity:
        return None
    right, left = severity.get("right") or {}, severity.get("left") or {}
    if right.get("lesion_percent") is None or left.get("lesion_percent") is None:
        return None
    return {"right": right, "left": left}


# --- The plot along a study --------------------------------------------------------------

PLOT_WIDTH, PLOT_HEIGHT = 800, 240
PLOT_MARGIN = {"left": 58, "right": 16, "top": 16, "bottom": 36}  # room for 17-unit text on phones
#: The y axis ends at the first of these (percent of the lung) that holds every bar,
#: with ticks this far apart.
Y_RANGES = {5: 1, 10: 2, 25: 5, 50: 10, 100: 25}
#: Grade boundaries drawn across the plot, in percent of the lung.
GRADE_BOUNDARIES = {25: "CT-1 | CT-2", 50: "CT-2 | CT-3", 75: "CT-3 | CT-4"}
X_STEPS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
MAX_X_LABELS = 12
MAX_BAR_WIDTH = 28.0


def _n(x: float) -> str:
    """A coordinate as SVG text: never localised (no decimal commas)."""
    return f"{x:.2f}".rstrip("0").rstrip(".")


def plot_geometry(points: Sequence[tuple[float, float] | None], width: int = PLOT_WIDTH, height: int = PLOT_HEIGHT) -> dict:
    """Bars of lesion share, one per slice, in SVG user units.

    points: one (GGO %, consolidation %) per slice, in order, or None for a slice without
    lung. Each bar stacks consolidation on GGO, so its height is the lesion share.
    """
    left, top = PLOT_MARGIN["left"], PLOT_MARGIN["top"]
    right, bottom = width - PLOT_MARGIN["right"], height - PLOT_MARGIN["bottom"]
    highest = max((g + c for g, c in (p for p in points if p is not None)), default=0.0)
    y_max = next((r for r in Y_RANGES if highest <= r), 100)
    tick = Y_RANGES[y_max]

    def y_of(value: float) -> float:
        return bottom - (bottom - top) * min(value, y_max) / y_max

    n = max(len(points), 1)
    slot = (right - left) / n
    bar_width = min(slot * 0.75, MAX_BAR_WIDTH)
    bars = []
    for k, point in enumerate(points):
        centre = left + slot * (k + 0.5)
        bar = {"index": k + 1, "x": _n(centre - bar_width / 2), "cx": _n(centre), "w": _n(bar_width), "point": point}
        if point is not None:
            ggo, cons = point
            bar.update(
                ggo_y=_n(y_of(ggo)),
                ggo_h=_n(bottom - y_of(ggo)),
                cons_y=_n(y_of(ggo + cons)),
                cons_h=_n(y_of(ggo) - y_of(ggo + cons)),
            )
        bars.append(bar)
    step = next((s for s in X_STEPS if math.ceil(len(points) / s) <= MAX_X_LABELS), X_STEPS[-1])
    x_ticks = [
        {"x": _n(left + slot * (k - 0.5)), "label": k}
        for k in range(1, len(points) + 1)
        if k == 1 or k % step == 0
    ]
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": right,
        "top": top,
        "bottom": bottom,
        "inner_height": bottom - top,
        "label_x": _n(left - 8),
        "label_y": _n(bottom + 22),
        "y_ticks": [{"y": _n(y_of(v)), "label": v} for v in range(0, y_max + 1, tick)],
        "boundaries": [{"y": _n(y_of(v)), "label": label} for v, label in GRADE_BOUNDARIES.items() if v < y_max],
        "x_ticks": x_ticks,
        "bars": bars,
    }


@register.inclusion_tag("segmenter/_lesion_plot.html")
def lesion_plot(analysis, slices) -> dict:
    """The plot of lesion share along a study; every bar opens its slice."""
    points = [
        None if s.severity.get("grade") is None else (s.severity["ggo_percent"], s.severity["consolidation_percent"])
        for s in slices
    ]
    geometry = plot_geometry(points)
    for bar, s in zip(geometry["bars"], slices):
        bar["slice"] = s
        bar["url"] = reverse("segmenter:slice", args=[analysis.id, s.index])
    return {"plot": geometry}


@register.simple_tag
def analysis_cautions(analysis) -> list[str]:
    """The CT check's cautions on an analysis, in the active language (exports.analysis_cautions)."""
    return exports.analysis_cautions(analysis)
