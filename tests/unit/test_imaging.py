import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from segmenter.ml.io.imaging import (
    MAX_SLICE_PIXELS,
    UnreadableImage,
    calibrate_uncalibrated_ct,
    read_slice,
    read_slices,
    window,
)

from .conftest import png


def test_window_maps_the_model_window_onto_0_to_255():
    hu = np.array([-2000, -1135, -435, 265, 3000], np.float32)
    assert window(hu).tolist() == [0, 0, 128, 255, 255]


def test_window_takes_any_other_window():
    hu = np.array([-2000, -1350, -600, 150, 3000], np.float32)
    assert window(hu, 1500, -600).tolist() == [0, 0, 128, 255, 255]


def test_it_reads_an_8_bit_grey_png_unchanged():
    a = np.arange(64 * 48, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    ct = read_slice(png(a), "x.png")
    assert ct.pixels.dtype == np.uint8 and ct.pixels.shape == (48, 64)
    assert np.array_equal(ct.pixels, a)
    assert not ct.calibrated
    assert ct.hu is None  # 8-bit inputs keep their own grey: no HU to window


def test_it_turns_rgb_into_luma_and_composites_alpha_onto_black():
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    assert read_slice(png(rgb), "c.png").pixels[0, 0] == round(200 * 0.299)
    rgba = np.dstack([np.full((32, 32, 3), 200, np.uint8), np.full((32, 32), 128, np.uint8)])
    assert abs(int(read_slice(png(rgba), "a.png").pixels[0, 0]) - round(200 * 128 / 255)) <= 1


def test_it_reads_a_real_medseg_jpeg(data_root):
    ct = read_slice(data_root / "medseg-covid" / "images" / "0.jpg")
    assert ct.pixels.shape == (369, 273)
    assert ct.name == "0.jpg"


def test_it_reads_a_jpeg_named_jpeg_from_bytes(data_root):
    data = (data_root / "medseg-covid" / "images" / "1.jpg").read_bytes()
    assert read_slice(data, "slice.jpeg").pixels.ndim == 2


def test_it_reads_the_real_dicom_in_hounsfield_units(dicom_path, dicom_hu):
    ct = read_slice(dicom_path)
    assert ct.calibrated
    assert ct.pixels.shape == (512, 512)
    assert ct.pixel_spacing_mm == (0.625, 0.625)
    assert ct.slice_thickness_mm == 1.0
    assert np.array_equal(ct.pixels, window(dicom_hu))
    assert ct.hu.dtype == np.int16 and np.array_equal(ct.hu, np.rint(dicom_hu))  # the HU, carried beside


def _without_preamble_or_meta(path) -> bytes:
    ds = pydicom.dcmread(path)
    ds.preamble = None
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def test_it_reads_a_dicom_without_preamble_or_meta(dicom_path, dicom_hu):
    data = _without_preamble_or_meta(dicom_path)
    assert data[128:132] != b"DICM"
    assert np.array_equal(read_slice(data, "nopreamble.dcm").pixels, window(dicom_hu))


def test_a_file_without_dicom_preamble_needs_a_dicom_name(dicom_path):
    with pytest.raises(UnreadableImage, match="unsupported file type"):
        read_slice(_without_preamble_or_meta(dicom_path), "mystery.bin")


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_it_decodes_compressed_dicom(dicom_path, dicom_hu, syntax):
    ds = pydicom.dcmread(dicom_path)
    ds.compress(syntax)
    buf = io.BytesIO()
    ds.save_as(buf)
    assert np.array_equal(read_slice(buf.getvalue(), "c.dcm").pixels, window(dicom_hu))


def test_an_undecodable_compressed_dicom_fails_with_a_clear_message():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("JPEG-lossy.dcm")  # a malformed 12-bit JPEG no decoder accepts
    with pytest.raises(UnreadableImage, match="compressed with JPEG Extended"):
        read_slice(path)


def test_a_dicom_without_pixels_is_refused():
    from pydicom.data import get_testdata_file

    with pytest.raises(UnreadableImage, match="no image"):
        read_slice(get_testdata_file("rtplan.dcm"))


def test_a_multiframe_dicom_gives_one_slice_per_frame():
    from pydicom.data import get_testdata_file

    slices = read_slices(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert len(slices) == 2 and slices[1].instance_number == 2
    with pytest.raises(UnreadableImage, match="2 frames"):
        read_slice(get_testdata_file("SC_rgb_rle_2frame.dcm"))


def test_a_16_bit_png_of_hu_plus_1024_lands_near_the_dicom_window(dicom_hu):
    stored = np.clip(dicom_hu + 1024, 0, 65535).astype(np.uint16)
    ct = read_slice(png(stored), "ct16.png")
    body = (dicom_hu > -1350) & (dicom_hu < 150)
    error = np.abs(ct.pixels.astype(int) - window(dicom_hu).astype(int))[body]
    assert ct.pixels.dtype == np.uint8
    assert error.mean() < 30  # grey levels; the calibration is approximate by design


def test_hu_int16_rounds_clips_and_fills_nan_with_air():
    from segmenter.ml.io.imaging import hu_int16

    hu = hu_int16(np.array([-1000.4, 39.6, 1e6, -1e6, np.nan], np.float32))
    assert hu.dtype == np.int16
    assert hu.tolist() == [-1000, 40, 32767, -32768, -1000]


def test_uncalibrated_16_bit_pngs_carry_no_hu(dicom_hu):
    values = np.clip(dicom_hu + 1024, 0, 65535).astype(np.uint16)
    assert read_slice(png(values), "x.png").hu is None


def test_calibration_finds_air_and_tissue_despite_out_of_field_padding(dicom_hu):
    shifted = dicom_hu * 0.7 - 200.0  # another offset and slope
    shifted[:40] = -4000.0  # out-of-field band
    hu = calibrate_uncalibrated_ct(shifted)
    lung = (dicom_hu > -950) & (dicom_hu < -700)
    assert abs(float(np.median(hu[lung]) - np.median(dicom_hu[lung]))) < 150


def test_calibration_of_a_flat_image_does_not_divide_by_zero():
    hu = calibrate_uncalibrated_ct(np.full((20, 20), 7.0))
    assert np.isfinite(hu).all()


def test_calibrated_kmader_lungs_look_like_lung(data_root):
    from segmenter.ml.training.data import kmader_to_u8

    images = np.load(data_root / "kmader-lungs" / "images.npz")["images"][:40]
    masks = np.load(data_root / "kmader-lungs" / "lung_masks.npz")["masks"][:40]
    medians = [np.median(kmader_to_u8(im)[m]) for im, m in zip(images, masks)]
    # aerated lung (-950..-700 HU) sits at 34..76 in the lung window
    assert np.mean([(20 <= v <= 110) for v in medians]) >= 0.9


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is not an image at all", "unsupported file type"),
        (b"GIF89a" + b"\0" * 200, "unsupported file type"),
    ],
)
def test_it_refuses_what_is_not_a_slice(data, message):
    with pytest.raises(UnreadableImage, match=message):
        read_slice(data, "upload.png")


def test_it_refuses_a_truncated_png():
    data = png(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8))
    with pytest.raises(UnreadableImage, match="damaged or incomplete"):
        read_slice(data[: len(data) // 2], "cut.png")


def test_it_refuses_a_truncated_dicom(dicom_path):
    data = dicom_path.read_bytes()
    with pytest.raises(UnreadableImage):
        read_slice(data[:5000], "cut.dcm")


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


def test_it_refuses_a_decompression_bomb_before_decoding():
    side = int(MAX_SLICE_PIXELS**0.5) + 100
    with pytest.raises(UnreadableImage, match="limit"):
        read_slice(_png_header_only(side, side), "bomb.png")


def test_it_refuses_a_tiny_image():
    with pytest.raises(UnreadableImage, match="at least"):
        read_slice(png(np.zeros((4, 4), np.uint8)), "tiny.png")


def test_grey_png_with_alpha_and_palette_images_read():
    la = Image.new("LA", (40, 30), (100, 255))
    buf = io.BytesIO()
    la.save(buf, format="PNG")
    assert read_slice(buf.getvalue(), "la.png").pixels[0, 0] == 100
    p = Image.new("P", (40, 30))
    p.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buf = io.BytesIO()
    p.save(buf, format="PNG")
    assert read_slice(buf.getvalue(), "p.png").pixels.shape == (30, 40)


@pytest.mark.parametrize("spacing, thickness", [(["1e200", "1e200"], "inf"), (["-1", "0.7"], "0"), (["nan", "1"], "1e300")])
def test_nonsense_geometry_is_ignored_not_carried(tmp_path, dicom_hu, spacing, thickness):
    import pydicom

    from segmenter.ml.io.dicomwrite import write_ct_dicom

    path = write_ct_dicom(dicom_hu, tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    ds.PixelSpacing, ds.SliceThickness = spacing, thickness
    ds.ImagePositionPatient, ds.ImageOrientationPatient = ["1e308", "1e308", "1e308"], [1, 0, 0, 0, 1, 0]
    ds.save_as(path)
    ct = read_slice(path)
    assert ct.pixel_spacing_mm is None and ct.slice_thickness_mm is None and ct.position_mm is None


@pytest.mark.parametrize("tag, raw", [((0x0028, 0x0008), b"ab"), ((0x0028, 0x1053), b"x "), ((0x0028, 0x0010), b"\xff")])
def test_damaged_element_values_read_as_a_damaged_dicom(tmp_path, tag, raw):
    import pydicom
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    from segmenter.ml.io.dicomwrite import write_ct_dicom
    from segmenter.ml.io.imaging import UnreadableImage

    path = write_ct_dicom(np.full((32, 32), -500.0), tmp_path / "x.dcm")
    ds = pydicom.dcmread(path)
    vr = {0x00280008: "IS", 0x00281053: "DS", 0x00280010: "US"}[Tag(*tag)]
    ds._dict[Tag(*tag)] = RawDataElement(Tag(*tag), vr, len(raw), raw, 0, False, True)
    ds.save_as(path)
    with pytest.raises(UnreadableImage) as caught:
        read_slice(path)
    assert caught.value.code in {"damaged_dicom", "dicom_undecodable", "image_too_small"}
