"""headers.check_dicom_pixel_module: the layouts real slices come in pass; the ones pydicom
cannot decode as declared are refused with their code."""

from __future__ import annotations

import pytest

from segmenter.ml.io.headers import DicomPixelModule, check_dicom_pixel_module
from segmenter.ml.io.imaging import UnreadableImage

CT = dict(rows=512, columns=512, frames=1, samples=1, bits_allocated=16, bits_stored=12,
          pixel_representation=1, photometric="MONOCHROME2", planar=None, data_bytes=512 * 512 * 2)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"photometric": "MONOCHROME1", "pixel_representation": 0},
        {"photometric": None},  # missing: pydicom decides
        {"bits_allocated": 8, "bits_stored": 8, "data_bytes": 512 * 512},
        {"bits_allocated": 8, "bits_stored": 8, "rows": 5, "columns": 3, "data_bytes": 16},  # padded to even
        {"bits_allocated": 32, "bits_stored": 32, "data_bytes": 512 * 512 * 4},
        {"frames": 3, "data_bytes": 3 * 512 * 512 * 2},
        {"samples": 3, "photometric": "RGB", "planar": 0, "bits_allocated": 8, "bits_stored": 8,
         "data_bytes": 512 * 512 * 3},
        {"samples": 3, "photometric": "YBR_FULL_422", "planar": 0, "bits_allocated": 8, "bits_stored": 8,
         "data_bytes": 512 * 512 * 2},
        {"samples": 3, "photometric": "YBR_FULL_422", "planar": 0, "bits_allocated": 8, "bits_stored": 8,
         "data_bytes": None},  # compressed: its codestream is checked instead
    ],
)
def test_the_layouts_of_real_slices_pass(changes):
    check_dicom_pixel_module(DicomPixelModule(**{**CT, **changes}))


@pytest.mark.parametrize(
    "changes, code",
    [
        ({"bits_allocated": 1, "bits_stored": 1, "data_bytes": 512 * 512 // 8}, "dicom_bits_allocated"),
        ({"bits_allocated": 12}, "dicom_bits_allocated"),
        ({"bits_stored": 17}, "dicom_bits_stored"),
        ({"bits_stored": 0}, "dicom_bits_stored"),
        ({"pixel_representation": 3}, "dicom_pixel_representation"),
        ({"photometric": "PALETTE COLOR"}, "dicom_palette"),
        ({"samples": 3}, "dicom_samples"),
        ({"samples": 2, "photometric": None}, "dicom_samples"),
        ({"photometric": "RGB"}, "dicom_samples"),
        ({"samples": 3, "photometric": "RGB", "planar": None, "data_bytes": 512 * 512 * 6}, "dicom_planar"),
        ({"data_bytes": 512 * 512 * 4}, "dicom_pixel_data_length"),  # pydicom: a second frame
        ({"data_bytes": 100}, "dicom_pixel_data_length"),
    ],
)
def test_an_undecodable_layout_is_refused_with_its_code(changes, code):
    with pytest.raises(UnreadableImage) as caught:
        check_dicom_pixel_module(DicomPixelModule(**{**CT, **changes}))
    assert caught.value.code == code
