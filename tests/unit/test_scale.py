"""The scale rule (preprocess.reference_factor): slices reach the reference grid from their
pixel spacing, else from the body's size, else (cropped slices) by the training rule, with
small crops enlarged to the training crops' size."""

import cv2
import numpy as np
import pytest

from segmenter.ml.constants import CROP_MIN_SIDE_PX, REFERENCE_BODY_PX, REFERENCE_PIXEL_MM
from segmenter.ml.model.preprocess import reference_factor, resize_to_model


def body_slice(side: int, body_fraction: float = 0.9) -> np.ndarray:
    pixels = np.full((side, side), 25, np.uint8)
    axes = (int(side * body_fraction / 2), int(side * body_fraction / 3))
    cv2.ellipse(pixels, (side // 2, side // 2), axes, 0, 0, 360, 215, -1)
    for cx in (side // 2 - side // 6, side // 2 + side // 6):
        cv2.ellipse(pixels, (cx, side // 2), (side // 10, side // 6), 0, 0, 360, 44, -1)
    return pixels


@pytest.mark.parametrize("side, spacing", [(64, 4.0), (630, 0.6), (512, 0.7)])
def test_a_known_spacing_brings_the_slice_to_the_reference_pixel(side, spacing):
    pixels = body_slice(side)
    factor = reference_factor(pixels, (spacing, spacing))
    assert factor == pytest.approx(spacing / REFERENCE_PIXEL_MM)
    # physical size at the network's scale is the same whatever the input grid
    scaled = resize_to_model(pixels, 0.5, factor)
    assert scaled.shape[0] * (REFERENCE_PIXEL_MM / 0.5) == pytest.approx(side * spacing, rel=0.02)


def test_without_spacing_a_whole_body_is_brought_to_the_reference_width():
    small, large = body_slice(64), body_slice(1024)
    for pixels in (small, large):
        factor = reference_factor(pixels)
        rows = np.flatnonzero((pixels > 110).any(axis=0))
        assert (rows[-1] - rows[0] + 1) * factor == pytest.approx(REFERENCE_BODY_PX, rel=0.02)


def test_a_slice_cropped_to_the_thorax_keeps_the_training_rule():
    cropped = body_slice(512)[150:360, 40:470]
    assert reference_factor(cropped) == 1.0
    assert reference_factor(np.ascontiguousarray(cv2.resize(body_slice(1024), (900, 900))[200:700, 60:840])) == pytest.approx(512 / 780)


@pytest.mark.parametrize("side", [96, 160])
def test_a_thorax_crop_shrunk_below_the_training_sizes_is_enlarged_to_them(side):
    crop = body_slice(512)[150:360, 40:470]
    size = (side, round(side * crop.shape[0] / crop.shape[1]))
    shrunk = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    factor = reference_factor(shrunk)
    assert factor == pytest.approx(CROP_MIN_SIDE_PX / side)
    assert max(resize_to_model(shrunk, 1.0, factor).shape) == CROP_MIN_SIDE_PX


def test_nonsense_spacing_falls_back_and_the_factor_is_bounded():
    pixels = body_slice(128)
    assert reference_factor(pixels, (float("nan"), 1.0)) == reference_factor(pixels)
    assert reference_factor(pixels, (1000.0, 1000.0)) == 10.0
