"""Pure numpy/OpenCV steps between a CTSlice's pixels and the networks' tensors.

Axis order is (H, W) for single-channel arrays and (C, H, W) for class probabilities;
row 0 is the top of the displayed image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..constants import (
    CROP_MIN_SIDE_PX,
    MODEL_SCALE,
    REFERENCE_BODY_PX,
    REFERENCE_PIXEL_MM,
    REFERENCE_SIDE_PX,
    SIZE_MULTIPLE,
)

#: Grey level (0..255) above which a pixel counts as "not air" when finding the body.
#: In the lung window, air is about 60 and aerated lung 70-100; skin, fat, muscle, bone
#: and vessels lie far above.
BODY_THRESHOLD = 110
#: Margin kept around the body box, in model-scale pixels.
BODY_MARGIN_PX = 16
#: body_mask: gaps closed over this share of the slice's long side; an image edge the body
#: runs along for over BODY_EDGE_RUN of its length counts as body (a wide patient); a body
#: reaching BODY_CROPPED_SIDES or more edges is a slice cropped to the thorax.
BODY_CLOSE_FRACTION = 0.02
BODY_EDGE_RUN = 0.2
BODY_CROPPED_SIDES = 3
#: ... and the body must hold this share of all bright pixels, else it is not found.
BODY_MIN_SHARE = 0.9
#: reference_factor trusts a body only if it spans this share of the image's long side.
BODY_MIN_EXTENT = 0.5


def model_scale(height: int, width: int, scale: float = MODEL_SCALE) -> float:
    """The factor by which a slice of this size is resized for a network that works at
    ``scale`` (MODEL_SCALE unless the network's spec says otherwise).

    Slices up to REFERENCE_SIDE_PX on the long side are resized by ``scale`` (a 512 x 512
    CT becomes 256 x 256 at 0.5); larger ones so that the long side becomes
    REFERENCE_SIDE_PX * scale.
    """
    return scale * REFERENCE_SIDE_PX / max(REFERENCE_SIDE_PX, height, width)


def _scaled_size(shape: tuple[int, int], scale: float, factor: float | None = None) -> tuple[int, int]:
    h, w = shape
    s = model_scale(h, w, scale) if factor is None else scale * factor
    return max(1, round(w * s)), max(1, round(h * s))


def resize_to_model(pixels: np.ndarray, scale: float = MODEL_SCALE, factor: float | None = None) -> np.ndarray:
    """uint8 (H, W) at the slice's size -> uint8 (h, w) at a network's scale (area-averaged
    when shrinking, bilinear when enlarging; the same array when the size is kept).

    factor: the slice's reference factor (see ``reference_factor``); None: by its size,
    as ``model_scale`` says."""
    size = _scaled_size(pixels.shape, scale, factor)
    if size == (pixels.shape[1], pixels.shape[0]):
        return pixels
    shrink = size[0] < pixels.shape[1]
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_labels_to_model(labels: np.ndarray, scale: float = MODEL_SCALE) -> np.ndarray:
    """uint8 (H, W) label/code map -> (h, w) at a network's scale, nearest neighbour."""
    size = _scaled_size(labels.shape, scale)
    if size == (labels.shape[1], labels.shape[0]):
        return labels
    return cv2.resize(labels, size, interpolation=cv2.INTER_NEAREST)


#: Limits of the reference factor: a slice is never resized by more than this.
FACTOR_RANGE = (0.1, 10.0)


_UNSET = object()


def reference_factor(pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None, body=_UNSET) -> float:
    """How much a uint8 (H, W) slice must be resized to reach the reference grid (the
    pixel size of a 512 x 512 chest CT, REFERENCE_PIXEL_MM), before each network's scale.

    * With the pixel spacing (DICOM, NIfTI): mean spacing / REFERENCE_PIXEL_MM; a 64 px
      slice of 4 mm pixels is enlarged 5.7 times, a 630 px slice of 0.6 mm pixels shrunk
      to 540 px.
    * Without it (PNG, JPEG), where the whole body lies in the image (``body_mask``) and
      spans at least BODY_MIN_EXTENT of its long side: the body's long extent is brought
      to REFERENCE_BODY_PX.
    * Otherwise (a slice cropped to the thorax, like MedSeg's): ``model_scale``'s rule,
      the rule the networks were trained with, except that a crop under CROP_MIN_SIDE_PX
      on its long side is enlarged to it.

    The factor is kept within FACTOR_RANGE. ``body``: the slice's ``body_mask``, when the
    caller has it already.
    """
    h, w = pixels.shape
    if spacing_mm is not None and all(np.isfinite(spacing_mm)) and min(spacing_mm) > 0:
        factor = float(np.mean(spacing_mm)) / REFERENCE_PIXEL_MM
    else:
        if body is _UNSET:
            body = body_mask(pixels)
        extent = 0
        if body is not None and body.any():
            rows, cols = np.flatnonzero(body.any(axis=1)), np.flatnonzero(body.any(axis=0))
            extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
        if extent >= BODY_MIN_EXTENT * max(h, w):
            factor = REFERENCE_BODY_PX / extent
        else:
            factor = max(model_scale(h, w, 1.0), CROP_MIN_SIDE_PX / max(h, w))
    return float(np.clip(factor, *FACTOR_RANGE))


def padded_size(n: int, multiple: int = SIZE_MULTIPLE) -> int:
    """The smallest multiple of ``multiple`` that is >= n (and >= multiple)."""
    return max(multiple, -(-n // multiple) * multiple)


def pad_to_multiple(image: np.ndarray, multiple: int = SIZE_MULTIPLE, value: int = 0) -> np.ndarray:
    """Pad (H, W) at the bottom and right to multiples of ``multiple``."""
    h, w = image.shape[:2]
    ph, pw = padded_size(h, multiple) - h, padded_size(w, multiple) - w
    if ph == 0 and pw == 0:
        return image
    return cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=value)


@dataclass(frozen=True)
class Box:
    """A rectangle of rows [top, bottom) and columns [left, right)."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def body_box(pixels: np.ndarray, margin: int = BODY_MARGIN_PX) -> Box:
    """The box around everything brighter than air on a uint8 slice, with a margin.

    Every pixel brighter than BODY_THRESHOLD -- skin, fat, muscle, bone, and the vessels
    inside the lungs -- lies in the box, so only margins of air or out-of-field padding
    are cut, never anatomy (not even on slices cropped through the chest wall, where the
    body is not one connected region). If there is hardly anything bright, the whole
    slice is returned.
    """
    h, w = pixels.shape
    bright = pixels > BODY_THRESHOLD
    rows, cols = np.flatnonzero(bright.any(axis=1)), np.flatnonzero(bright.any(axis=0))
    if rows.size == 0 or (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) < 0.02 * h * w:
        return Box(0, h, 0, w)
    return Box(
        top=max(0, int(rows[0]) - margin),
        bottom=min(h, int(rows[-1]) + 1 + margin),
        left=max(0, int(cols[0]) - margin),
        right=min(w, int(cols[-1]) + 1 + margin),
    )


def body_mask(pixels: np.ndarray) -> np.ndarray | None:
    """bool (H, W) body of a uint8 slice in the model's window, holes (lungs) filled; None
    when the body reaches BODY_CROPPED_SIDES or more sides of the image (a slice cropped
    to the thorax, like MedSeg's, where lungs run into the image's edge and nothing
    tells them from the air outside).

    Where the body runs along an edge of the image for more than BODY_EDGE_RUN of it (a
    wide patient, or a slice cropped through the chest wall), that edge is taken as body
    too, so that lungs cut by the crop still count as inside. A slice cut on all four
    sides is all body: the rule that needs it then keeps every lung region.
    """
    h, w = pixels.shape
    bright = (pixels > BODY_THRESHOLD).astype(np.uint8)
    k = max(3, int(round(BODY_CLOSE_FRACTION * max(h, w))) | 1)
    bright = cv2.morphologyEx(bright, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, components, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < BODY_MIN_SHARE * stats[1:, cv2.CC_STAT_AREA].sum():
        return None  # the bright pixels are scattered pieces, not one body
    body = (components == largest).astype(np.uint8)
    if int(body[0].any()) + int(body[-1].any()) + int(body[:, 0].any()) + int(body[:, -1].any()) >= BODY_CROPPED_SIDES:
        return None
    padded = np.pad(body, 1)
    if body[0].mean() > BODY_EDGE_RUN:
        padded[0] = 1
    if body[-1].mean() > BODY_EDGE_RUN:
        padded[-1] = 1
    if body[:, 0].mean() > BODY_EDGE_RUN:
        padded[:, 0] = 1
    if body[:, -1].mean() > BODY_EDGE_RUN:
        padded[:, -1] = 1
    n, holes = cv2.connectedComponents((padded == 0).astype(np.uint8), connectivity=4)
    ring = np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
    outside = np.isin(holes, np.unique(ring[ring > 0]))
    return ~outside[1:-1, 1:-1]


def normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> float32 (H, W) in [-1, 1], the networks' input scaling."""
    return pixels.astype(np.float32) * (2.0 / 255.0) - 1.0


def resize_probabilities(probs: np.ndarray, height: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """float32 (C, h, w) -> (C, height, width), bilinear, channel by channel, into ``out``
    when given (one array at the full size and nothing more: a 4096 x 4096 slice's
    probabilities are 268 MB)."""
    if probs.shape[1:] == (height, width):
        if out is None:
            return probs
        out[...] = probs
        return out
    if out is None:
        out = np.empty((probs.shape[0], height, width), np.float32)
    for k, channel in enumerate(probs):
        cv2.resize(channel, (width, height), dst=out[k], interpolation=cv2.INTER_LINEAR)
    return out