"""Deterministic stand-ins for the segmentation engine.

Tests install one through the engine's single seam, ``settings.SEGMENTER_ENGINE`` (see the
``stand_in_engine`` and ``use_engine`` fixtures in conftest.py). Each class here is the
zero-argument callable that setting names, and its instances have ``segment()``.
"""

from __future__ import annotations

import cv2
import numpy as np

from segmenter.ml.constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG
from segmenter.ml.io.ctcheck import LungEvidence

#: Lung-window grey values below this are air (aerated lung sits near 85-130, soft tissue near 236).
AIR_BELOW = 150
#: Of the lung's bounding box, the leftmost columns up to these fractions of its width
#: become consolidation, then GGO; the rest stays other lung.
CONSOLIDATION_UNTIL = 0.15
GGO_UNTIL = 0.35


def stand_in_labels(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W) slice -> uint8 (H, W) label map in which every class appears.

    Lung is air enclosed by the body (dark pixels not connected to the image border); on
    a slice cropped to the chest, where the lungs touch the border, it is the dark pixels
    away from the border; failing both, the middle half of the image. Lesions are
    vertical bands at the left of the lung's bounding box (the patient's right lung).
    """
    h, w = pixels.shape
    dark = (pixels < AIR_BELOW).astype(np.uint8)
    _, parts = cv2.connectedComponents(dark, connectivity=4)
    outside = np.unique(np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]]))
    lung = dark.astype(bool) & ~np.isin(parts, outside)
    if lung.sum() < 0.05 * pixels.size:
        inner = np.zeros(pixels.shape, bool)
        inner[h // 10 : h - h // 10, w // 10 : w - w // 10] = True
        lung = dark.astype(bool) & inner
    if lung.sum() < 0.01 * pixels.size:
        lung = np.zeros(pixels.shape, bool)
        lung[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    labels = np.full(pixels.shape, BACKGROUND, np.uint8)
    labels[lung] = OTHER_LUNG
    cols = np.flatnonzero(lung.any(axis=0))
    left, width = cols[0], cols[-1] + 1 - cols[0]
    column = np.arange(pixels.shape[1])[None, :]
    consolidation_band = column < left + max(1, int(CONSOLIDATION_UNTIL * width))
    ggo_band = ~consolidation_band & (column < left + max(2, int(GGO_UNTIL * width)))
    labels[lung & consolidation_band] = CONSOLIDATION
    labels[lung & ggo_band] = GGO
    return labels


#: What the real networks find on a chest CT slice (see ctcheck.why_not_lungs): it passes.
LUNGS_FOUND = LungEvidence(lung_share=0.3, two_regions=1.0, agreement=0.95, confidence=0.95)


class StandInSegmenter:
    """Fast and deterministic: the labels depend on the pixels alone. Its lung check
    (``segment_checked``) passes every slice and segments it, as the ensemble's does."""

    evidence = LUNGS_FOUND

    def segment(self, pixels: np.ndarray, spacing_mm=None) -> np.ndarray:
        if pixels.dtype != np.uint8 or pixels.ndim != 2:
            raise ValueError(f"expected uint8 (H, W), got {pixels.dtype} {pixels.shape}")
        return stand_in_labels(pixels)

    def segment_checked(self, pixels: np.ndarray, spacing_mm=None) -> tuple[np.ndarray, LungEvidence]:
        return self.segment(pixels, spacing_mm), self.evidence


class NoConsistentLungs(StandInSegmenter):
    """Its networks disagree about the lungs on every slice, as on a photograph."""

    evidence = LungEvidence(lung_share=0.3, two_regions=1.0, agreement=0.5, confidence=0.95, flip_agreement=0.8)


class DisagreeingButSure(StandInSegmenter):
    """Its networks disagree about the lungs, but are sure of them otherwise (confident, the
    same lungs mirrored): a real scan let through with a caution."""

    evidence = LungEvidence(lung_share=0.3, two_regions=1.0, agreement=0.55, confidence=0.95, flip_agreement=0.98)


class FailingOnThirdSlice(StandInSegmenter):
    """Segments two slices, then raises: a failure halfway through a study."""

    def __init__(self) -> None:
        self.calls = 0

    def segment(self, pixels: np.ndarray, spacing_mm=None) -> np.ndarray:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("stand-in failure on the third slice")
        return super().segment(pixels)


class NoLungSegmenter:
    """Finds no lung anywhere: every pixel is background."""

    def segment(self, pixels: np.ndarray, spacing_mm=None) -> np.ndarray:
        return np.full(pixels.shape, BACKGROUND, np.uint8)

    def segment_checked(self, pixels: np.ndarray, spacing_mm=None) -> tuple[np.ndarray, LungEvidence]:
        return self.segment(pixels), LungEvidence(0.0, 1.0, 1.0, 1.0)


class StandInWithManifest(StandInSegmenter):
    """The stand-in, carrying the shipped weights' manifest as the real ensemble does (read
    as JSON; no network is built)."""

    def __init__(self) -> None:
        import json
        from pathlib import Path

        self.manifest = json.loads((Path(__file__).resolve().parents[1] / "weights" / "manifest.json").read_text())


def dotted_path(cls: type) -> str:
    """The value of SEGMENTER_ENGINE that builds ``cls`` (whatever name this module got)."""
    return f"{cls.__module__}.{cls.__qualname__}"

