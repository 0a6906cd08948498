import numpy as np
import pytest

from segmenter.ml.model.preprocess import (
    Box,
    body_box,
    model_scale,
    normalise,
    pad_to_multiple,
    resize_probabilities,
    resize_to_model,
)


@pytest.mark.parametrize("shape, scale", [((512, 512), 0.5), ((369, 273), 0.5), ((1024, 768), 0.25), ((128, 128), 0.5)])
def test_model_scale_halves_ct_sized_slices_and_caps_large_ones(shape, scale):
    assert model_scale(*shape) == pytest.approx(scale)


def test_resize_to_model_keeps_the_aspect_ratio():
    assert resize_to_model(np.zeros((369, 273), np.uint8)).shape == (184, 136)
    assert resize_to_model(np.zeros((2000, 1000), np.uint8)).shape == (256, 128)


def test_padding_reaches_multiples_of_32_at_the_bottom_right():
    a = np.ones((100, 33), np.float32)
    p = pad_to_multiple(a, value=-1.0)
    assert p.shape == (128, 64)
    assert (p[:100, :33] == 1).all() and (p[100:] == -1).all()


def test_normalise_maps_0_255_onto_minus_one_one():
    assert normalise(np.array([0, 255], np.uint8)).tolist() == pytest.approx([-1.0, 1.0])


def test_body_box_surrounds_the_body_with_a_margin():
    img = np.full((256, 256), 40, np.uint8)  # air
    img[60:200, 30:230] = 220  # body
    box = body_box(img, margin=8)
    assert box == Box(52, 208, 22, 238)


def test_body_box_keeps_a_chest_wall_split_in_two_by_the_crop():
    img = np.full((200, 120), 30, np.uint8)  # dark lung everywhere
    img[:, :10] = 200  # chest wall on the left edge
    img[95:105, 60] = 220  # a vessel in the middle of the lung
    img[:, 110:] = 180  # and on the right edge
    assert body_box(img, margin=0) == Box(0, 200, 0, 120)


def test_body_box_falls_back_to_the_whole_slice():
    img = np.full((64, 80), 40, np.uint8)
    assert body_box(img) == Box(0, 64, 0, 80)


def test_probabilities_resize_to_any_shape_and_still_sum_to_one():
    rng = np.random.default_rng(0)
    p = rng.random((4, 17, 23)).astype(np.float32)
    p /= p.sum(axis=0, keepdims=True)
    out = resize_probabilities(p, 101, 67)
    assert out.shape == (4, 101, 67)
    assert np.allclose(out.sum(axis=0), 1.0, atol=1e-5)


def test_a_network_at_full_scale_sees_ct_sized_slices_unchanged():
    pixels = np.arange(300 * 200, dtype=np.uint32).reshape(300, 200).astype(np.uint8)
    assert resize_to_model(pixels, 1.0) is pixels
    assert resize_to_model(np.zeros((1024, 512), np.uint8), 1.0).shape == (512, 256)
