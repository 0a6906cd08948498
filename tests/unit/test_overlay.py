import io

import numpy as np
import pytest
from PIL import Image

from segmenter.ml.constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG
from segmenter.ml.results.overlay import (
    DEFAULT_STYLES,
    HU_PNG_OFFSET,
    LAYERS,
    LayerStyle,
    hu_png_bytes,
    pack_hu,
    parse_style,
    png_bytes,
    read_label_png,
    render_overlay,
    unpack_hu,
)


@pytest.fixture
def scene():
    pixels = np.full((4, 4), 100, np.uint8)
    labels = np.array([[GGO, CONSOLIDATION, OTHER_LUNG, BACKGROUND]] * 4, np.uint8)
    return pixels, labels


def test_visible_layers_blend_their_colour_at_their_opacity(scene):
    pixels, labels = scene
    styles = {"ggo": LayerStyle(True, "#ff0000", 0.5)}
    out = render_overlay(pixels, labels, styles)
    assert out[0, 0].tolist() == [178, 50, 50]  # 0.5 * 100 + 0.5 * (255, 0, 0)
    assert out[0, 3].tolist() == [100, 100, 100]  # background untouched


def test_a_hidden_layer_leaves_the_slice_as_it_is(scene):
    pixels, labels = scene
    out = render_overlay(pixels, labels, {"consolidation": LayerStyle(False, "#00ff00", 1.0)})
    assert out[0, 1].tolist() == [100, 100, 100]


def test_mask_only_draws_on_black(scene):
    pixels, labels = scene
    out = render_overlay(pixels, labels, {"ggo": LayerStyle(True, "#ffffff", 1.0)}, mask_only=True)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 3].tolist() == [0, 0, 0]


def test_parse_style_reads_colour_opacity_and_visibility():
    assert parse_style("00FF00,0.3,0", DEFAULT_STYLES["ggo"]) == LayerStyle(False, "#00ff00", 0.3)
    assert parse_style("", DEFAULT_STYLES["ggo"]) == DEFAULT_STYLES["ggo"]


@pytest.mark.parametrize("text", ["red", "12345", "ff0000,2", "ff0000,0.5,yes", "ff0000,nan"])
def test_parse_style_refuses_bad_values(text):
    with pytest.raises(ValueError):
        parse_style(text, DEFAULT_STYLES["ggo"])


def test_label_maps_round_trip_through_png(scene):
    _, labels = scene
    assert np.array_equal(read_label_png(png_bytes(labels)), labels)


def test_hounsfield_units_pack_into_two_bytes_of_an_rgb_png_exactly():
    hu = np.array([[-32768, -1024, -1000, -600], [0, 40, 3071, 32767]], np.int16)
    packed = pack_hu(hu)
    assert packed.dtype == np.uint8 and packed.shape == (2, 4, 3)
    assert tuple(packed[0, 2]) == ((-1000 + HU_PNG_OFFSET) >> 8, (-1000 + HU_PNG_OFFSET) & 255, 0) == (124, 24, 0)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(packed))).convert("RGB"))
    assert np.array_equal(unpack_hu(decoded), hu)
    decoded = np.asarray(Image.open(io.BytesIO(hu_png_bytes(hu))).convert("RGB"))
    assert np.array_equal(unpack_hu(decoded), hu)


def test_pack_hu_takes_only_int16_planes():
    with pytest.raises(ValueError):
        pack_hu(np.zeros((2, 2), np.float32))


def _blended(pixels, labels, styles, mask_only):
    """The overlay formula of the module docstring, pixel by pixel in float."""
    styles = {**DEFAULT_STYLES, **styles}
    out = np.repeat((np.zeros_like(pixels) if mask_only else pixels).astype(np.float32)[..., None], 3, axis=2)
    for name, cls in LAYERS.items():
        style = styles[name]
        if style.visible and style.opacity > 0:
            where = labels == cls
            out[where] = (1 - style.opacity) * out[where] + style.opacity * np.asarray(style.rgb, np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mask_only", [False, True])
@pytest.mark.parametrize(
    "styles",
    [{}, {"ggo": LayerStyle(False, "#000000", 0.5), "other_lung": LayerStyle(True, "#123456", 0.07)},
     {"consolidation": LayerStyle(True, "#ffffff", 1.0), "ggo": LayerStyle(True, "#00ff00", 0.0)}],
)
def test_the_lookup_table_gives_exactly_the_blend_of_the_formula(styles, mask_only):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (64, 48), dtype=np.uint8)
    labels = rng.integers(0, 4, (64, 48), dtype=np.uint8)
    out = render_overlay(pixels, labels, styles, mask_only)
    assert out.shape == (64, 48, 3) and out.dtype == np.uint8
    assert np.array_equal(out, _blended(pixels, labels, styles, mask_only))


def test_overlays_round_trip_through_png():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (33, 17, 3), dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(rgb))).convert("RGB"))
    assert np.array_equal(decoded, rgb)


@pytest.mark.parametrize("shape", [(1, 1), (7, 300), (512, 512), (3, 5, 3), (512, 384, 3)])
def test_pngs_are_valid_files_that_decode_to_the_same_bytes(shape):
    import cv2

    array = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    data = png_bytes(array)
    Image.open(io.BytesIO(data)).verify()  # chunk layout and every CRC
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), array)
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded if decoded.ndim == 2 else decoded[..., ::-1], array)


@pytest.mark.parametrize("bad", [np.zeros((4, 4), np.uint16), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 4), np.uint8)])
def test_png_bytes_refuses_what_it_cannot_write(bad):
    with pytest.raises(ValueError):
        png_bytes(bad)
