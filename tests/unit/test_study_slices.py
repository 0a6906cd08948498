"""An archive's or folder's slices are decoded and checked once, then let go, and decoded
again one at a time when reached (ml.io.archive.StudySlices)."""

import io
import tempfile

import numpy as np
import pydicom
import pytest

from segmenter.ml.io import archive as archive_module
from segmenter.ml.io.archive import StudySlices, read_folder, read_zip
from segmenter.ml.io.ctcheck import STUDY_SAMPLE_AT, check_ct, check_lungs
from segmenter.ml.io.imaging import UnreadableImage, read_slices
from tests.conftest import zip_bytes
from tests.stubs import StandInSegmenter


def _dicom_series(samples, positions: list[float]) -> dict[str, bytes]:
    """The sample slices at the given positions, each a little different (so that no two
    slices are equal), named in an order that is not the body's."""
    members = {}
    for k, z in enumerate(positions):
        ds = pydicom.dcmread(io.BytesIO(samples.dicom(k % 2)))
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.InstanceNumber = k + 1
        pixels = ds.pixel_array.copy()
        pixels[0, :] = k  # a row of its own
        ds.PixelData = pixels.tobytes()
        buf = io.BytesIO()
        ds.save_as(buf)
        members[f"IM{k:03}"] = buf.getvalue()
    return members


def test_each_slice_is_decoded_again_equal_to_reading_its_file_in_body_order(samples):
    positions = [5.0, 30.0, 10.0, 25.0, 15.0, 20.0]
    members = _dicom_series(samples, positions)
    with read_zip(zip_bytes(members)) as slices:
        assert isinstance(slices, StudySlices)
        assert [s.position_mm for s in slices] == sorted(positions, reverse=True)  # head to feet
        for ct in slices:
            expected = read_slices(members[ct.name], ct.name)[0]
            assert np.array_equal(ct.pixels, expected.pixels) and np.array_equal(ct.hu, expected.hu)
            assert ct.slice_thickness_mm == 5.0  # from the positions
        # the headers hold no pixels; a slice asked for twice is made twice, alike
        assert all(h.pixels.size == 0 and h.hu is None for h in slices.headers)
        assert slices[2] is not slices[2] and np.array_equal(slices[2].pixels, slices[2].pixels)
        assert [s.name for s in slices[1:3]] == [slices.headers[1].name, slices.headers[2].name]
        assert slices[-1].name == slices.headers[-1].name
        with pytest.raises(IndexError):
            slices[len(positions)]


def test_a_study_holds_one_slice_at_a_time_however_long(samples):
    import tracemalloc

    data = zip_bytes(_dicom_series(samples, [float(z) for z in range(40)]))  # 40 x 512 x 512
    tracemalloc.start()
    try:
        slices = read_zip(data)
        for _ in slices:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        slices.close()
    # decoded whole, the 40 slices' pixels and HU alone are 30 MB
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MB traced for a 40-slice study"


def test_a_multiframe_dicom_in_a_study_gives_each_of_its_frames(samples, tmp_path):
    multi = samples.multiframe_dicom(tmp_path)
    frames = read_slices(multi, "multi.dcm")
    with read_zip(zip_bytes({"multi.dcm": multi})) as slices:
        assert [s.name for s in slices] == ["multi.dcm[1]", "multi.dcm[2]"]
        for ct, frame in zip(slices, frames, strict=True):
            assert np.array_equal(ct.pixels, frame.pixels) and np.array_equal(ct.hu, frame.hu)
        assert np.array_equal(slices[0].pixels, frames[0].pixels)  # back to the first frame


def _recording_temporary_files(monkeypatch) -> list:
    opened = []
    real = tempfile.TemporaryFile
    monkeypatch.setattr(archive_module.tempfile, "TemporaryFile", lambda *a, **k: opened.append(real(*a, **k)) or opened[-1])
    return opened


def test_the_files_wait_in_an_unnamed_temporary_file_that_closing_removes(samples, monkeypatch):
    opened = _recording_temporary_files(monkeypatch)
    slices = read_zip(zip_bytes({"a.png": samples.png(0), "b.png": samples.png(1)}))
    assert len(opened) == 1 and not opened[0].closed
    slices.close()
    assert opened[0].closed


@pytest.mark.parametrize("bad", ["damaged", "not CT"])
def test_a_refused_study_leaves_no_temporary_file_open(samples, monkeypatch, bad):
    opened = _recording_temporary_files(monkeypatch)
    last = samples.png(2)[:300] if bad == "damaged" else _blank_png()
    with pytest.raises(UnreadableImage) as caught:
        read_zip(zip_bytes({"a.png": samples.png(0), "b.png": samples.png(1), "c.png": last}), check=check_ct)
    assert caught.value.params["member"] == "c.png"
    assert opened and all(f.closed for f in opened)


def _varied(grey: np.ndarray, k: int) -> bytes:
    from .conftest import png

    grey = grey.copy()
    grey[0, :] = k
    return png(grey)


def _blank_png() -> bytes:
    from .conftest import png

    return png(np.full((128, 128), 90, np.uint8))


def test_every_slice_is_checked_once_as_it_is_first_read(samples, tmp_path):
    checked = []
    members = {f"s{k}.png": samples.png(k) for k in range(4)}
    with read_zip(zip_bytes(members), check=lambda ct: checked.append(ct.name)) as slices:
        list(slices)
    assert checked == ["s0.png", "s1.png", "s2.png", "s3.png"]
    for name, data in members.items():
        (tmp_path / name).write_bytes(data)
    checked.clear()
    folder = read_folder(tmp_path, check=lambda ct: checked.append(ct.name))
    assert checked == list(members) and len(folder) == 4
    assert np.array_equal(folder[3].pixels, read_slices(members["s3.png"], "s3.png")[0].pixels)


def test_the_lung_check_of_a_study_decodes_only_the_slices_it_samples(samples, monkeypatch):
    made = []
    real = StudySlices._slice
    monkeypatch.setattr(StudySlices, "_slice", lambda self, k: made.append(k) or real(self, k))
    members = {f"s{k:02}.png": _varied(samples.grey(k % 3), k) for k in range(20)}
    with read_zip(zip_bytes(members)) as slices:
        segmented = check_lungs(slices, StandInSegmenter(), study=True)
    assert sorted(made) == sorted({int(f * 20) for f in STUDY_SAMPLE_AT})
    assert len(segmented) == len(STUDY_SAMPLE_AT)


def _header_fields(ct) -> tuple:
    return (ct.name, ct.calibrated, ct.pixel_spacing_mm, ct.position_mm, ct.instance_number,
            ct.colour_share, ct.dicom)


def test_a_dicom_series_of_uncompressed_hu_is_read_from_its_headers_and_decoded_when_reached(samples, monkeypatch):
    from segmenter.ml.io import imaging

    decoded = []
    real = imaging._dicom_pixels
    monkeypatch.setattr(imaging, "_dicom_pixels", lambda *a: decoded.append(1) or real(*a))
    members = _dicom_series(samples, [10.0, 30.0, 20.0])
    with read_zip(zip_bytes(members), check=check_ct) as slices:
        assert decoded == []  # checked from the headers: HU from a CT header are trusted
        made = list(slices)
        assert len(decoded) == 3  # once each, when reached
        for header, ct in zip(slices.headers, made, strict=True):
            full = read_slices(members[ct.name], ct.name)[0]
            assert ct.slice_thickness_mm == 10.0  # from the positions
            assert _header_fields(header) == _header_fields(ct) == _header_fields(full)
            assert np.array_equal(ct.pixels, full.pixels) and np.array_equal(ct.hu, full.hu)


def test_a_compressed_or_short_dicom_in_a_study_is_decoded_when_it_is_read(samples, monkeypatch):
    from pydicom.uid import RLELossless

    from segmenter.ml.io import imaging

    ds = pydicom.dcmread(io.BytesIO(samples.dicom(0)))
    ds.compress(RLELossless)
    buf = io.BytesIO()
    ds.save_as(buf)
    decoded = []
    real = imaging._dicom_pixels
    monkeypatch.setattr(imaging, "_dicom_pixels", lambda *a: decoded.append(1) or real(*a))
    with read_zip(zip_bytes({"rle.dcm": buf.getvalue()})) as slices:
        assert decoded == [1] and len(slices) == 1
    short = pydicom.dcmread(io.BytesIO(samples.dicom(0)))
    short.PixelData = short.PixelData[: len(short.PixelData) // 2]
    buf = io.BytesIO()
    short.save_as(buf)
    with pytest.raises(UnreadableImage) as caught:
        read_zip(zip_bytes({"good.dcm": samples.dicom(1), "short.dcm": buf.getvalue()}))
    assert caught.value.params["member"] == "short.dcm"
