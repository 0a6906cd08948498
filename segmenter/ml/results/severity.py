"""Severity on the Moscow CT-0...CT-4 scale, from lesion and lung areas.

involved share = lesion / lung, lesion = GGO + consolidation, lung = GGO + consolidation
+ other lung. Every share gets exactly one grade:

    share == 0          CT-0
    0 < share <= 25 %   CT-1
    25 < share <= 50 %  CT-2
    50 < share < 75 %   CT-3
    share >= 75 %       CT-4

A study is graded from its summed lesion and lung areas over all slices, never from an
average of slice grades. Where a slice has no lung pixels there is no share and no grade:
the result says "no lung found". Left and right are in the patient's frame under the
radiological convention (the patient's right lung on the image's left), and are reported
only when the two lungs lie side by side in the image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ..constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG

GRADES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
#: One line per grade, for people reading a result.
GRADE_RULES = {
    "CT-0": "no ground glass or consolidation",
    "CT-1": "up to 25 % of the lung involved",
    "CT-2": "over 25 % and up to 50 % of the lung involved",
    "CT-3": "over 50 % and under 75 % of the lung involved",
    "CT-4": "75 % of the lung or more involved",
}
NO_LUNG = "no lung found"


def grade_for(lesion: float, lung: float) -> str | None:
    """The grade for a lesion area within a lung area (any unit); None without lung.

    Compares areas, not rounded percentages, so each boundary is exact:
    4 * lesion <= lung is CT-1, 4 * lesion >= 3 * lung is CT-4.
    """
    if lung <= 0:
        return None
    if lesion < 0 or lesion > lung:
        raise ValueError(f"lesion area {lesion} must lie within 0..lung area {lung}")
    if lesion == 0:
        return "CT-0"
    if 4 * lesion <= lung:
        return "CT-1"
    if 2 * lesion <= lung:
        return "CT-2"
    if 4 * lesion < 3 * lung:
        return "CT-3"
    return "CT-4"


def split_column(lung: np.ndarray) -> int | None:
    """The image column that parts the right lung from the left in a boolean (H, W) lung
    mask, or None.

    The split is the column with the fewest lung pixels in the middle 40 % of the lungs'
    bounding box; the patient's right lies left of it. None when there is no lung or the
    lungs' box is taller than wide (the lungs do not lie side by side, e.g. the rotated
    MedSeg slices).
    """
    columns = lung.sum(axis=0)
    cols = np.flatnonzero(columns)
    if not cols.size:
        return None
    rows = np.flatnonzero(lung.any(axis=1))
    left, right = cols[0], cols[-1] + 1
    if rows[-1] + 1 - rows[0] > right - left:
        return None
    width = right - left
    lo, hi = left + int(0.3 * width), left + int(0.7 * width) + 1
    profile = columns[lo:hi]
    candidates = np.flatnonzero(profile == profile.min())
    centre = (hi - lo) / 2
    return lo + int(candidates[np.argmin(np.abs(candidates - centre))])


def split_sides(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Boolean (H, W) masks (right lung, left lung) of a label map, or None
    (see ``split_column``)."""
    lung = labels != BACKGROUND
    split = split_column(lung)
    if split is None:
        return None
    right_side = np.zeros_like(lung)
    right_side[:, :split] = True
    return lung & right_side, lung & ~right_side


@dataclass(frozen=True)
class Areas:
    """Pixel counts of one slice (or sums over a study), plus volumes when known.

    The *_ml volumes are set when the pixel spacing and slice thickness are known; a
    study sums each slice's volumes (None as soon as one slice lacks them). sides_known
    is False when some slice's lungs do not lie side by side.
    """

    ggo: int = 0
    consolidation: int = 0
    other_lung: int = 0
    right_lung: int = 0
    right_lesion: int = 0
    left_lung: int = 0
    left_lesion: int = 0
    sides_known: bool = False
    ggo_ml: float | None = None
    consolidation_ml: float | None = None
    lung_ml: float | None = None

    @property
    def lesion(self) -> int:
        return self.ggo + self.consolidation

    @property
    def lung(self) -> int:
        return self.ggo + self.consolidation + self.other_lung

    @property
    def lesion_ml(self) -> float | None:
        if self.ggo_ml is None or self.consolidation_ml is None:
            return None
        return self.ggo_ml + self.consolidation_ml

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Areas:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def __add__(self, other: Areas) -> Areas:
        def add_ml(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else a + b

        return Areas(
            ggo=self.ggo + other.ggo,
            consolidation=self.consolidation + other.consolidation,
            other_lung=self.other_lung + other.other_lung,
            right_lung=self.right_lung + other.right_lung,
            right_lesion=self.right_lesion + other.right_lesion,
            left_lung=self.left_lung + other.left_lung,
            left_lesion=self.left_lesion + other.left_lesion,
            sides_known=self.sides_known and other.sides_known,
            ggo_ml=add_ml(self.ggo_ml, other.ggo_ml),
            consolidation_ml=add_ml(self.consolidation_ml, other.consolidation_ml),
            lung_ml=add_ml(self.lung_ml, other.lung_ml),
        )


def measure(
    labels: np.ndarray,
    pixel_spacing_mm: tuple[float, float] | None = None,
    slice_thickness_mm: float | None = None,
) -> Areas:
    """Count the classes of a uint8 (H, W) label map; volumes (mL) when both the pixel
    spacing and the slice thickness are known."""
    counts = np.bincount(labels.ravel(), minlength=4)
    ggo, cons, other = int(counts[GGO]), int(counts[CONSOLIDATION]), int(counts[OTHER_LUNG])
    lung = labels != BACKGROUND
    split = split_column(lung)
    side_counts = {}
    no_lung = ggo + cons + other == 0
    if split is not None:
        # Per-column counts: the sides are the columns before and after the split.
        lung_columns = lung.sum(axis=0)
        lesion_columns = ((labels == GGO) | (labels == CONSOLIDATION)).sum(axis=0)
        side_counts = dict(
            right_lung=int(lung_columns[:split].sum()),
            right_lesion=int(lesion_columns[:split].sum()),
            left_lung=int(lung_columns[split:].sum()),
            left_lesion=int(lesion_columns[split:].sum()),
        )
    volumes = {}
    if pixel_spacing_mm and slice_thickness_mm:
        voxel_ml = pixel_spacing_mm[0] * pixel_spacing_mm[1] * slice_thickness_mm / 1000.0
        volumes = dict(ggo_ml=ggo * voxel_ml, consolidation_ml=cons * voxel_ml, lung_ml=(ggo + cons + other) * voxel_ml)
    return Areas(
        ggo=ggo, consolidation=cons, other_lung=other, sides_known=no_lung or split is not None, **side_counts, **volumes
    )


def _percent(part: float, whole: float) -> float | None:
    return None if whole <= 0 else 100.0 * part / whole


@dataclass(frozen=True)
class Severity:
    """The grade and shares of one slice or one study. Percentages are of the lung."""

    grade: str | None
    lesion_percent: float | None
    ggo_percent: float | None
    consolidation_percent: float | None
    right_percent: float | None
    right_grade: str | None
    left_percent: float | None
    left_grade: str | None
    message: str

    @property
    def lung_found(self) -> bool:
        return self.grade is not None

    def as_dict(self) -> dict:
        return {
            "grade": self.grade,
            "lesion_percent": self.lesion_percent,
            "ggo_percent": self.ggo_percent,
            "consolidation_percent": self.consolidation_percent,
            "right": {"lesion_percent": self.right_percent, "grade": self.right_grade},
            "left": {"lesion_percent": self.left_percent, "grade": self.left_grade},
            "message": self.message,
        }


def assess(areas: Areas) -> Severity:
    """Grade one slice's or one study's (summed) areas."""
    grade = grade_for(areas.lesion, areas.lung)
    sides = areas.sides_known and areas.lung > 0
    return Severity(
        grade=grade,
        lesion_percent=_percent(areas.lesion, areas.lung),
        ggo_percent=_percent(areas.ggo, areas.lung),
        consolidation_percent=_percent(areas.consolidation, areas.lung),
        right_percent=_percent(areas.right_lesion, areas.right_lung) if sides else None,
        right_grade=grade_for(areas.right_lesion, areas.right_lung) if sides else None,
        left_percent=_percent(areas.left_lesion, areas.left_lung) if sides else None,
        left_grade=grade_for(areas.left_lesion, areas.left_lung) if sides else None,
        message=GRADE_RULES[grade] if grade else NO_LUNG,
    )


def assess_study(slice_areas: list[Areas]) -> tuple[Areas, Severity]:
    """Sum the slices' areas and grade the sum."""
    if not slice_areas:
        return Areas(), assess(Areas())
    total = slice_areas[0]
    for a in slice_areas[1:]:
        total = total + a
    return total, assess(total)
