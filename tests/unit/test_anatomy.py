"""The anatomy rules of postprocess: lung only inside the body and in large regions."""

import cv2
import numpy as np

from segmenter.ml.constants import BACKGROUND, GGO, OTHER_LUNG
from segmenter.ml.model.postprocess import body_mask, keep_anatomical_lung, postprocess


def chest(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic slice in the model's window (air 25, tissue 215, lungs 44) and its labels."""
    pixels = np.full((size, size), 25, np.uint8)
    cv2.ellipse(pixels, (size // 2, size // 2), (size * 4 // 10, size * 3 // 10), 0, 0, 360, 215, -1)
    labels = np.full((size, size), BACKGROUND, np.uint8)
    for cx in (size // 2 - size // 6, size // 2 + size // 6):
        cv2.ellipse(pixels, (cx, size // 2), (size // 10, size // 6), 0, 0, 360, 44, -1)
        cv2.ellipse(labels, (cx, size // 2), (size // 10, size // 6), 0, 0, 360, OTHER_LUNG, -1)
    return pixels, labels


def test_the_body_holds_the_lungs():
    pixels, labels = chest()
    body = body_mask(pixels)
    assert body is not None and body[labels == OTHER_LUNG].all() and not body[0, 0]


def test_lung_in_the_air_outside_the_body_becomes_background():
    pixels, labels = chest()
    labels[5:40, 5:40] = GGO  # "lung" painted in the air in a corner
    out = keep_anatomical_lung(labels, pixels)
    assert (out[5:40, 5:40] == BACKGROUND).all()
    assert (out == OTHER_LUNG).sum() == (labels == OTHER_LUNG).sum()


def test_lung_specks_become_background_and_large_regions_stay():
    pixels, labels = chest()
    labels[128:131, 128:131] = OTHER_LUNG  # a 9-pixel speck between the lungs, inside the body
    out = keep_anatomical_lung(labels, pixels)
    assert (out[128:131, 128:131] == BACKGROUND).all()
    assert (out == OTHER_LUNG).sum() == (labels == OTHER_LUNG).sum() - 9


def test_a_slice_cropped_to_the_thorax_keeps_lungs_that_run_into_its_edge():
    pixels, labels = chest()
    crop_p, crop_l = pixels[60:200, 40:216], labels[60:200, 40:216].copy()
    crop_l[:, :12] = np.where(crop_p[:, :12] < 100, OTHER_LUNG, crop_l[:, :12])
    assert body_mask(crop_p) is None
    out = keep_anatomical_lung(crop_l, crop_p)
    big = (crop_l == OTHER_LUNG).sum()
    assert (out == OTHER_LUNG).sum() >= big - 0.05 * big


def test_postprocess_takes_the_most_probable_class_then_applies_the_rules():
    pixels, labels = chest()
    probs = np.zeros((4, *labels.shape), np.float32)
    probs[labels, *np.indices(labels.shape)] = 1.0
    probs[GGO, 5:40, 5:40], probs[BACKGROUND, 5:40, 5:40] = 2.0, 0.0
    assert (postprocess(probs, pixels) == labels).all()
