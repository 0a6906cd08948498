"""Pure steps from class probabilities to the label map that users see and grades count.

Arrays: probabilities float32 (C, H, W); label maps uint8 (H, W) with the values of
``constants`` (0 GGO, 1 consolidation, 2 other lung, 3 background).
"""

from __future__ import annotations

import cv2
import numpy as np

from .constants import (
    CONSOLIDATION,
    GGO,
    MIN_LESION_AREA_PX,
    OTHER_LUNG,
    REFERENCE_SIDE_PX,
)


def labels_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """float32 (C, H, W) -> uint8 (H, W), the most probable class per pixel."""
    return np.argmax(probs, axis=0).astype(np.uint8)


def min_lesion_area(shape: tuple[int, int]) -> int:
    """MIN_LESION_AREA_PX, scaled from a 512 x 512 slice to a slice of this shape.

    Slices up to 512 px on the long side share the pixel scale of a 512 x 512 CT (the
    MedSeg crops do); larger ones are taken as the same field of view at finer pixels.
    """
    factor = max(1.0, max(shape) / REFERENCE_SIDE_PX)
    return int(round(MIN_LESION_AREA_PX * factor * factor))


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
