"""Pure steps from class probabilities to the label map that users see and grades count.

Arrays: probabilities float32 (C, H, W); label maps uint8 (H, W) with the values of
``constants`` (0 GGO, 1 consolidation, 2 other lung, 3 background).
"""

from __future__ import annotations

import cv2
import numpy as np

from ..constants import (
    BACKGROUND,
    CONSOLIDATION,
    CONSOLIDATION_MIN_GREY,
    GGO,
    LESION_LOW,
    LESION_MIN_PEAK,
    MIN_LESION_AREA_PX,
    OTHER_LUNG,
    REFERENCE_SIDE_PX,
)
from .preprocess import body_mask


def labels_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """float32 (C, H, W) -> uint8 (H, W), the most probable class per pixel."""
    return np.argmax(probs, axis=0).astype(np.uint8)


def min_lesion_area(shape: tuple[int, int], reference_px: int = MIN_LESION_AREA_PX) -> int:
    """``reference_px`` (MIN_LESION_AREA_PX), scaled from a 512 x 512 slice to a slice of this shape.

    Slices up to 512 px on the long side share the pixel scale of a 512 x 512 CT (the
    MedSeg crops do); larger ones are taken as the same field of view at finer pixels.
    """
    factor = max(1.0, max(shape) / REFERENCE_SIDE_PX)
    return int(round(reference_px * factor * factor))


def remove_small_lesions(labels: np.ndarray, min_area: int | None = None) -> np.ndarray:
    """Relabel connected lesion regions (GGO and consolidation together, 8-connected)
    smaller than ``min_area`` pixels as other lung. Returns a new array."""
    if min_area is None:
        min_area = min_lesion_area(labels.shape)
    lesion = ((labels == GGO) | (labels == CONSOLIDATION)).astype(np.uint8)
    out = labels.copy()
    if min_area <= 1 or not lesion.any():
        return out
    n, components, stats, _ = cv2.connectedComponentsWithStats(lesion, connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < min_area)
    small = small[small > 0]
    if small.size:
        out[np.isin(components, small)] = OTHER_LUNG
    return out


def remove_faint_lesions(
    labels: np.ndarray, probs: np.ndarray, min_peak: float = LESION_MIN_PEAK
) -> np.ndarray:
    """Relabel as other lung each connected lesion region (GGO and consolidation together,
    8-connected) in which no pixel has p(GGO) + p(consolidation) >= ``min_peak``; probs:
    float32 (C, H, W) at the labels' size. Returns a new array."""
    lesion = ((labels == GGO) | (labels == CONSOLIDATION)).astype(np.uint8)
    out = labels.copy()
    if min_peak <= 0 or not lesion.any():
        return out
    n, components = cv2.connectedComponents(lesion, connectivity=8)
    sure = lesion.astype(bool) & (probs[GGO] + probs[CONSOLIDATION] >= min_peak)
    keep = np.zeros(n, bool)
    keep[components[sure]] = True
    faint = np.flatnonzero(~keep[1:]) + 1
    if faint.size:
        out[np.isin(components, faint)] = OTHER_LUNG
    return out


def grow_lesions(labels: np.ndarray, probs: np.ndarray, low: float) -> np.ndarray:
    """Extend each lesion region of ``labels`` (GGO and consolidation together) over the
    connected lung pixels (8-connected through pixels at least ``low``) where
    p(GGO) + p(consolidation) >= ``low``; a pixel taken in becomes GGO or consolidation,
    whichever of the two is the more probable. A hysteresis: the regions kept by the
    rules before it are the confident cores, this is their lower edge. No region is
    created, so a slice with no lesion keeps none. probs: float32 (C, H, W) at the
    labels' size; low >= 1: nothing grows. Returns a new array."""
    core = (labels == GGO) | (labels == CONSOLIDATION)
    out = labels.copy()
    if low >= 1.0 or not core.any():
        return out
    lesion_p = probs[GGO] + probs[CONSOLIDATION]
    lung = core | (labels == OTHER_LUNG)
    candidate = (core | (lung & (lesion_p >= low))).astype(np.uint8)
    n, components = cv2.connectedComponents(candidate, connectivity=8)
    reached = np.zeros(n, bool)
    reached[components[core]] = True
    reached[0] = False
    grown = reached[components] & ~core
    if grown.any():
        out[grown] = np.where(probs[GGO][grown] >= probs[CONSOLIDATION][grown], GGO, CONSOLIDATION)
    return out


def split_by_density(
    labels: np.ndarray, pixels: np.ndarray, dense: float, keep_networks: bool = False, sigma: float = 2.0
) -> np.ndarray:
    """Re-split the lesion pixels by density: where the slice, smoothed (Gaussian, ``sigma``
    px) so that a vessel's bright line does not count, is at least ``dense`` grey levels,
    consolidation (dense enough to hide the vessels in it); below, ground glass, or with
    ``keep_networks`` the networks' own class (so consolidation is what either calls it).
    pixels: the uint8 (H, W) slice of the labels. Returns a new array."""
    lesion = (labels == GGO) | (labels == CONSOLIDATION)
    out = labels.copy()
    if not lesion.any():
        return out
    smooth = cv2.GaussianBlur(pixels.astype(np.float32), (0, 0), sigma)
    below = labels[lesion] if keep_networks else GGO
    out[lesion] = np.where(smooth[lesion] >= dense, CONSOLIDATION, below)
    return out


# --- Anatomy ----------------------------------------------------------------------------
# Lungs lie inside the body, as one or two large regions. The rules, in the order applied
# (``keep_anatomical_lung``):
#
# 1. The body (``preprocess.body_mask``) is the largest region brighter than
#    BODY_THRESHOLD (tissue in the model's window: soft tissue is ~215, lung ~44, air
#    outside the body ~25), closed over gaps of BODY_CLOSE_FRACTION of the slice's long
#    side and with its holes (the lungs) filled.
#    An image edge along which the body runs for over BODY_EDGE_RUN of its length (a
#    wide patient) counts as body. Where the body reaches three or more edges (a slice
#    cropped to the thorax, like every MedSeg slice), lungs run into the edge and cannot
#    be told from outside air: rule 2 is skipped.
# 2. A lung region (8-connected, all lung classes together) whose pixels lie mostly
#    (over half) outside the body is air outside the patient, or a limb: background.
# 3. A lung region smaller than LUNG_MIN_SHARE of the largest one is a speck (bowel gas,
#    the trachea's edge, noise in the air): background.
#
# Lesions are lung classes, so they go with the region they belong to: no lesion is left
# outside the kept lung.
LUNG_MIN_SHARE = 0.05


_UNSET = object()


def keep_anatomical_lung(labels: np.ndarray, pixels: np.ndarray, body=_UNSET) -> np.ndarray:
    """Relabel as background the lung regions that break the rules above; a new array.

    labels: uint8 (H, W) engine classes; pixels: the uint8 (H, W) slice they came from.
    """
    lung = np.isin(labels, (GGO, CONSOLIDATION, OTHER_LUNG)).astype(np.uint8)
    out = labels.copy()
    if not lung.any():
        return out
    n, components, stats, _ = cv2.connectedComponentsWithStats(lung, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    drop = set((1 + np.flatnonzero(areas < LUNG_MIN_SHARE * areas.max())).tolist())
    if pixels.shape != labels.shape:
        body = None
    elif body is _UNSET:
        body = body_mask(pixels)
    if body is not None:
        inside = np.bincount(components[body], minlength=n)
        for k in range(1, n):
            if inside[k] * 2 < stats[k, cv2.CC_STAT_AREA]:
                drop.add(k)
    if drop:
        out[np.isin(components, sorted(drop))] = BACKGROUND
    return out


def postprocess(
    probs: np.ndarray,
    pixels: np.ndarray,
    factor: float | None = None,
    body=_UNSET,
    min_lesion_px: int = MIN_LESION_AREA_PX,
    min_lesion_peak: float = LESION_MIN_PEAK,
    lesion_low: float = LESION_LOW,
    dense_grey: float | None = CONSOLIDATION_MIN_GREY,
) -> np.ndarray:
    """float32 (C, H, W) probabilities of a uint8 (H, W) slice -> the label map users see:
    the most probable class, the anatomy rules, small and faint lesions removed, then the
    lesions that remain grown down to ``lesion_low`` (``grow_lesions``; 1: not grown), and
    their dense pixels (``dense_grey``, ``split_by_density``; None: not) consolidation.

    factor: the slice's reference factor (``preprocess.reference_factor``), which turns
    MIN_LESION_AREA_PX at the reference grid into this slice's pixels; None: by shape.
    body: the slice's ``preprocess.body_mask``, when the caller has it already.
    min_lesion_px: the smallest lesion region kept, in pixels at the reference grid
    (validation scores other values beside the shipped MIN_LESION_AREA_PX).
    min_lesion_peak: the p(GGO) + p(consolidation) a lesion region must reach at its
    surest pixel to be kept (LESION_MIN_PEAK; ``remove_faint_lesions``; 0: all kept).
    """
    labels = keep_anatomical_lung(labels_from_probabilities(probs), pixels, body)
    if factor is None:
        min_area = min_lesion_area(labels.shape, min_lesion_px)
    else:
        min_area = max(1, int(round(min_lesion_px / (factor * factor))))
    labels = remove_faint_lesions(remove_small_lesions(labels, min_area), probs, min_lesion_peak)
    labels = grow_lesions(labels, probs, lesion_low)
    if dense_grey is None or pixels.shape != labels.shape:
        return labels
    return split_by_density(labels, pixels, dense_grey, keep_networks=True)
