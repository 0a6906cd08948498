"""Pure numpy/OpenCV steps between a CTSlice's pixels and the networks' tensors.

Axis order is (H, W) for single-channel arrays and (C, H, W) for class probabilities;
row 0 is the top of the displayed image.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .constants import MODEL_SCALE, REFERENCE_SIDE_PX, SIZE_MULTIPLE

#: Grey level (0..255) above which a pixel counts as "not air" when finding the body.
#: In the lung window, air is about 60 and aerated lung 70-100; skin, fat, muscle, bone
#: and vessels lie far above.
BODY_THRESHOLD = 110
#: Margin kept around the body box, in model-scale pixels.
BODY_MARGIN_PX = 16


def model_scale(height: int, width: int, scale: float = MODEL_SCALE) -> float:
    """The factor by which a slice of this size is resized for a network that works at
    ``scale`` (MODEL_SCALE unless the network's spec says otherwise).

    Slices up to REFERENCE_SIDE_PX on the long side are resized by ``scale`` (a 512 x 512
    CT becomes 256 x 256 at 0.5); larger ones so that the long side becomes
    REFERENCE_SIDE_PX * scale.
    """
    return scale * REFERENCE_SIDE_PX / max(REFERENCE_SIDE_PX, height, width)


def _scaled_size(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    h, w = shape
    s = model_scale(h, w, scale)
    return max(1, round(w * s)), max(1, round(h * s))


def resize_to_model(pixels: np.ndarray, scale: float = MODEL_SCALE) -> np.ndarray:
    """uint8 (H, W) at the slice's size -> uint8 (h, w) at a network's scale (area-averaged
    when shrinking, bilinear when enlarging; the same array when the size is kept)."""
    size = _scaled_size(pixels.shape, scale)
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


def normalise(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> float32 (H, W) in [-1, 1], the networks' input scaling."""
    return pixels.astype(np.float32) * (2.0 / 255.0) - 1.0


def resize_probabilities(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 (C, h, w) -> (C, height, width), bilinear, channel by channel."""
    c = probs.shape[0]
    if probs.shape[1:] == (height, width):
        return probs
    hwc = np.ascontiguousarray(probs.transpose(1, 2, 0))
    if c <= 4:
        out = cv2.resize(hwc, (width, height), interpolation=cv2.INTER_LINEAR)
        return np.ascontiguousarray(out.reshape(height, width, c).transpose(2, 0, 1))
    return np.stack(
        [cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probs]
    )
