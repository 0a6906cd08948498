"""Sizes are read from headers and charged to the decoding budget before anything is decoded:
a small file that declares a huge image is refused at once, whatever kind of file it is."""

import io
import struct
import time
import zipfile

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit

from segmenter.ml.io import imaging
from segmenter.ml.io.archive import ArchiveLimits, read_zip
from segmenter.ml.io.headers import PixelBudget, codestream_size, j2k_size, jpeg_size, png_size
from segmenter.ml.io.imaging import UnreadableImage, read_slices
from tests.conftest import zip_bytes

from .conftest import png


def _jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", quality=90)
    return out.getvalue()


def _with_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    k = jpeg.index(b"\xff\xc0")
    return jpeg[: k + 5] + struct.pack(">HH", height, width) + jpeg[k + 9 :]


def _saved(ds) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_headers_give_the_size_each_kind_of_file_declares():
    grey = np.zeros((40, 70), np.uint8)
    assert png_size(png(grey)) == (70, 40)
    assert jpeg_size(_jpeg(grey)) == (70, 40)
    assert jpeg_size(_with_sof_size(_jpeg(grey), 60000, 60000)) == (60000, 60000)
    siz = b"\xff\x4f\xff\x51" + struct.pack(">HHIIII", 41, 0, 40100, 40200, 100, 200)
    assert j2k_size(siz) == (40000, 40000)
    assert codestream_size(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 30 + siz) == (40000, 40000)
    assert codestream_size(b"DICM") is None
    with pytest.raises(UnreadableImage) as caught:
        jpeg_size(b"\xff\xd8\xff\xe0\x00\x01")  # a segment length below its own size
    assert caught.value.code == "damaged_header"


def test_the_budget_refuses_the_charge_that_would_pass_it_and_says_by_how_much():
    budget = PixelBudget(limit=10_000_000)
    budget.charge(6_000_000, "a.png")
    with pytest.raises(UnreadableImage) as caught:
        budget.charge(6_000_000, "b.png")
    assert caught.value.code == "pixel_budget"
    assert caught.value.params == {"what": "b.png", "limit_mpixels": 10, "over_mpixels": 2.0}
    assert "budget of 10 million pixels (by 2.0 million)" in str(caught.value)
    assert budget.used == 6_000_000


def test_a_jpeg2000_dicom_whose_codestream_declares_40000_squared_is_refused_at_once(dicom_path):
    ds = pydicom.dcmread(dicom_path)
    ds.compress(JPEG2000Lossless)
    data = _saved(ds)
    assert read_slices(data, "ok.dcm")[0].shape == (512, 512)  # the honest file reads
    k = data.index(b"\xff\x4f\xff\x51")
    bomb = data[: k + 8] + struct.pack(">II", 40000, 40000) + data[k + 16 :]
    start = time.perf_counter()
    with pytest.raises(UnreadableImage) as caught:
        read_slices(bomb, "bomb.dcm")
    assert caught.value.code == "dicom_frame_mismatch"
    assert caught.value.params == {"width": 40000, "height": 40000, "columns": 512, "rows": 512}
    assert time.perf_counter() - start < 5  # refused from the header, not after decoding


def test_a_jpeg_baseline_dicom_whose_frame_header_declares_60000_squared_is_refused(dicom_path):
    ds = pydicom.dcmread(dicom_path)
    grey = imaging.window(ds.pixel_array.astype(np.float32) - 1024)
    ds.PixelData = encapsulate([_with_sof_size(_jpeg(grey), 60000, 60000)])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds["PixelData"].VR = "OB"
    with pytest.raises(UnreadableImage) as caught:
        read_slices(_saved(ds), "bomb.dcm")
    assert caught.value.code == "dicom_frame_mismatch"


def test_a_deflated_dicom_that_inflates_past_the_limit_is_refused_before_pydicom_reads_it(dicom_path, monkeypatch):
    ds = pydicom.dcmread(dicom_path)
    ds.add_new(0x00091010, "OB", b"\0" * (4 * 1024 * 1024))  # a private element that deflates to a few KB
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = _saved(ds)
    assert len(data) < 600_000  # the image's own bytes, and the 4 MB element as a few KB
    assert read_slices(data, "deflated.dcm")[0].shape == (512, 512)  # under the limit it reads
    monkeypatch.setattr(imaging, "MAX_DEFLATED_BYTES", 1024 * 1024)
    with pytest.raises(UnreadableImage) as caught:
        read_slices(data, "deflated.dcm")
    assert caught.value.code == "dicom_too_large"


def test_a_zip_of_stored_large_pngs_stops_at_the_budget_naming_the_slice_that_passes_it(monkeypatch):
    big = png(np.zeros((2048, 2048), np.uint8))  # 4.2 million pixels in a few KB
    archive = zip_bytes({f"s{k}.png": big for k in range(5)}, compression=zipfile.ZIP_STORED)
    decoded: list = []  # the images themselves, so that no id is reused while the test runs
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: (any(self is d for d in decoded) or decoded.append(self)) or real_load(self))
    with pytest.raises(UnreadableImage) as caught:
        read_zip(archive, ArchiveLimits(max_pixels=10_000_000))
    reason = caught.value.params["reason"]
    assert (caught.value.params["member"], reason.code) == ("s2.png", "pixel_budget")
    assert len(decoded) == 2  # the third was refused from its header, never decoded


def test_a_multiframe_dicom_is_charged_for_every_frame(samples, tmp_path):
    data = samples.multiframe_dicom(tmp_path)
    frames = len(read_slices(data, "mf.dcm"))
    with pytest.raises(UnreadableImage) as caught:
        read_slices(data, "mf.dcm", PixelBudget(512 * 512 * (frames - 1)))
    assert caught.value.code == "pixel_budget"
