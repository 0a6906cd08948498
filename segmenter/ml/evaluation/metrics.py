"""Overlap metrics for lesion and lung segmentation, pooled and per slice.

Predictions are label maps in the engine's classes (0 GGO, 1 consolidation, 2 other
lung, 3 background); MedSeg masks use 0 background, 1 GGO, 2 consolidation. Both are
uint8 (H, W) at the mask's resolution.

* pooled Dice / IoU: true and false positives summed over all pixels of all slices;
* dice_per_slice: the mean of per-slice Dice over the slices whose mask holds the class;
* pixel_accuracy: agreement of the three MedSeg values over all pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..constants import CONSOLIDATION, GGO, LUNG_CLASSES
from ..results.severity import GRADES, grade_for

MEDSEG_BACKGROUND, MEDSEG_GGO, MEDSEG_CONSOLIDATION = 0, 1, 2


def dice_score(tp: int, fp: int, fn: int) -> float:
    """2 TP / (2 TP + FP + FN); 1.0 when prediction and truth are both empty."""
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def iou_score(tp: int, fp: int, fn: int) -> float:
    """TP / (TP + FP + FN); 1.0 when prediction and truth are both empty."""
    denom = tp + fp + fn
    return 1.0 if denom == 0 else tp / denom


def to_medseg(labels: np.ndarray) -> np.ndarray:
    """Engine label map -> MedSeg values (GGO 1, consolidation 2, everything else 0)."""
    out = np.zeros(labels.shape, np.uint8)
    out[labels == GGO] = MEDSEG_GGO
    out[labels == CONSOLIDATION] = MEDSEG_CONSOLIDATION
    return out


@dataclass
class _Overlap:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    per_slice: list[float] = field(default_factory=list)

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        tp = int(np.count_nonzero(pred & truth))
        fp = int(np.count_nonzero(pred & ~truth))
        fn = int(np.count_nonzero(~pred & truth))
        self.tp, self.fp, self.fn = self.tp + tp, self.fp + fp, self.fn + fn
        if tp + fn > 0:
            self.per_slice.append(dice_score(tp, fp, fn))

    def result(self) -> dict[str, float | int | None]:
        return {
            "dice": dice_score(self.tp, self.fp, self.fn),
            "iou": iou_score(self.tp, self.fp, self.fn),
            "dice_per_slice": float(np.mean(self.per_slice)) if self.per_slice else None,
            "slices_with_class": len(self.per_slice),
        }


class LesionScores:
    """Accumulates lesion metrics over slices; ``result()`` gives the evaluate JSON."""

    def __init__(self) -> None:
        self.ggo, self.consolidation, self.infection = _Overlap(), _Overlap(), _Overlap()
        self.correct = self.total = self.slices = 0

    def add(self, labels: np.ndarray, mask: np.ndarray) -> None:
        """labels: engine classes; mask: MedSeg values; same (H, W)."""
        if labels.shape != mask.shape:
            raise ValueError(f"prediction {labels.shape} and mask {mask.shape} differ in shape")
        pred = to_medseg(labels)
        self.ggo.add(pred == MEDSEG_GGO, mask == MEDSEG_GGO)
        self.consolidation.add(pred == MEDSEG_CONSOLIDATION, mask == MEDSEG_CONSOLIDATION)
        self.infection.add(pred != MEDSEG_BACKGROUND, mask != MEDSEG_BACKGROUND)
        self.correct += int(np.count_nonzero(pred == mask))
        self.total += mask.size
        self.slices += 1

    def result(self) -> dict:
        return {
            "slices": self.slices,
            "ggo": self.ggo.result(),
            "consolidation": self.consolidation.result(),
            "infection": self.infection.result(),
            "pixel_accuracy": self.correct / self.total if self.total else None,
        }


class LungScores:
    """Accumulates lung Dice (all lung classes against a boolean lung mask)."""

    def __init__(self) -> None:
        self.lung = _Overlap()
        self.slices = 0

    def add(self, labels: np.ndarray, lung_mask: np.ndarray) -> None:
        if labels.shape != lung_mask.shape:
            raise ValueError(f"prediction {labels.shape} and mask {lung_mask.shape} differ in shape")
        self.lung.add(np.isin(labels, LUNG_CLASSES), lung_mask.astype(bool))
        self.slices += 1

    def result(self) -> dict:
        return {"slices": self.slices, "lung": self.lung.result()}


class HealthyScores:
    """For lesion-free slices: how often they read CT-0, and how much lesion they get.

    ``lesion_share`` is all lesion pixels over all lung pixels (pooled over slices);
    ``ct0_share`` the share of slices whose lesion area is zero (or that have no lung,
    which reads "no lung found", also a correct answer for a lesion-free slice). With
    lung masks, the lung Dice is pooled as in LungScores.
    """

    def __init__(self) -> None:
        self.lung = _Overlap()
        self.slices = self.ct0 = self.no_lung = 0
        self.lesion_px = self.lung_px = 0
        self.worst: list[tuple[float, str]] = []

    def add(self, labels: np.ndarray, lung_mask: np.ndarray | None = None, name: str = "") -> None:
        lesion = int(np.count_nonzero((labels == GGO) | (labels == CONSOLIDATION)))
        lung = int(np.count_nonzero(np.isin(labels, LUNG_CLASSES)))
        self.slices += 1
        self.lesion_px += lesion
        self.lung_px += lung
        if lung == 0:
            self.no_lung += 1
        if lesion == 0:
            self.ct0 += 1
        self.worst.append((lesion / lung if lung else 0.0, name))
        if lung_mask is not None:
            if labels.shape != lung_mask.shape:
                raise ValueError(f"prediction {labels.shape} and mask {lung_mask.shape} differ in shape")
            self.lung.add(np.isin(labels, LUNG_CLASSES), lung_mask.astype(bool))

    def result(self) -> dict:
        worst = sorted(self.worst, reverse=True)[:5]
        return {
            "slices": self.slices,
            "ct0_share": self.ct0 / self.slices if self.slices else None,
            "no_lung_slices": self.no_lung,
            "lesion_share_of_lung": self.lesion_px / self.lung_px if self.lung_px else None,
            "lung": self.lung.result() if self.lung.tp + self.lung.fn else None,
            "worst_slices": [{"name": n, "lesion_share": round(v, 4)} for v, n in worst if v > 0],
        }


EXPERT_OUTSIDE, EXPERT_LUNG, EXPERT_INFECTION = 0, 1, 2


class InfectionScores:
    """Against expert masks of diseased lungs (0 outside the lung, 1 lung, 2 infection: GGO
    and consolidation together): what decides a grade, which is computed from areas.

    * infection and lung Dice, pooled over all slices;
    * ``area_ratio``: predicted over true infection area, all slices together;
    * slice grades: CT-0...CT-4 of the label map against that of the mask (infection over
      lung, each from its own areas), the share that agree, are lower, are higher (slices
      whose mask has no lung are left out);
    * per patient (``group``): the lesion share of the lung summed over the patient's slices,
      true and predicted, and the error in percentage points; ``patient_share_error``
      is the mean absolute error over patients.
    """

    def __init__(self) -> None:
        self.infection, self.lung = _Overlap(), _Overlap()
        self.pred_px = self.true_px = 0
        self.grades = {"agree": 0, "lower": 0, "higher": 0}
        self.patients: dict[str, list[int]] = {}  # group -> [true lesion, true lung, pred lesion, pred lung]

    def add(self, labels: np.ndarray, mask: np.ndarray, group: str = "") -> None:
        if labels.shape != mask.shape:
            raise ValueError(f"prediction {labels.shape} and mask {mask.shape} differ in shape")
        pred_lesion = (labels == GGO) | (labels == CONSOLIDATION)
        pred_lung = np.isin(labels, LUNG_CLASSES)
        true_lesion, true_lung = mask == EXPERT_INFECTION, mask != EXPERT_OUTSIDE
        self.infection.add(pred_lesion, true_lesion)
        self.lung.add(pred_lung, true_lung)
        counts = [int(np.count_nonzero(a)) for a in (true_lesion, true_lung, pred_lesion, pred_lung)]
        self.true_px += counts[0]
        self.pred_px += counts[2]
        patient = self.patients.setdefault(group, [0, 0, 0, 0])
        for k, c in enumerate(counts):
            patient[k] += c
        truth = grade_for(counts[0], counts[1])
        if truth is None:
            return
        pred = grade_for(counts[2], counts[3])
        t, p = GRADES.index(truth), (GRADES.index(pred) if pred else 0)
        self.grades["agree" if p == t else "lower" if p < t else "higher"] += 1

    def result(self) -> dict:
        graded = sum(self.grades.values())
        patients = {
            g: {
                "true_share": round(100 * tl / tn, 2) if tn else None,
                "predicted_share": round(100 * pl / pn, 2) if pn else None,
            }
            for g, (tl, tn, pl, pn) in sorted(self.patients.items())
        }
        errors = [
            abs(p["predicted_share"] - p["true_share"])
            for p in patients.values() if p["true_share"] is not None and p["predicted_share"] is not None
        ]
        for p in patients.values():
            if p["true_share"] is not None and p["predicted_share"] is not None:
                p["error_points"] = round(p["predicted_share"] - p["true_share"], 2)
        return {
            "infection": self.infection.result(),
            "lung": self.lung.result(),
            "area_ratio": self.pred_px / self.true_px if self.true_px else None,
            "grades": {k: (v / graded if graded else None) for k, v in self.grades.items()} | {"slices": graded},
            "patients": patients,
            "patient_share_error": float(np.mean(errors)) if errors else None,
        }
