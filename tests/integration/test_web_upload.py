"""The home page and its upload: every kind of input, and every bad one refused whole."""

from __future__ import annotations

import html
import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from segmenter.models import Analysis

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]


def _the_analysis() -> Analysis:
    analysis = Analysis.objects.get()
    assert analysis.status == Analysis.Status.DONE, analysis.error
    return analysis


def _stored_grey(slice_) -> np.ndarray:
    with slice_.image.open("rb") as fh:
        image = Image.open(fh)
        image.load()
    assert image.mode == "L"
    return np.asarray(image)


# --- The page ----------------------------------------------------------------------------


def test_it_shows_the_upload_form(client):
    response = client.get(reverse("segmenter:home"))
    assert response.status_code == 200
    content = response.content.decode()
    assert 'enctype="multipart/form-data"' in content
    assert 'type="file" name="file"' in content
    assert 'id="upload-config"' in content  # the script's settings, via json_script
    assert "csrfmiddlewaretoken" in content


def test_it_passes_the_size_limit_to_the_script(client, settings):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 3 * 1024 * 1024
    response = client.get(reverse("segmenter:home"))
    assert response.context["upload_config"]["maxBytes"] == 3 * 1024 * 1024


# --- Each kind of upload -----------------------------------------------------------------


def test_it_analyses_an_8_bit_png_slice_and_redirects_to_its_result(upload, samples):
    response = upload("slice.png", samples.png())
    analysis = _the_analysis()
    assert response.status_code == 302
    assert response["Location"] == reverse("segmenter:slice", args=[analysis.id, 1])  # straight to the result
    assert analysis.kind == Analysis.Kind.SLICE
    slice_ = analysis.slices.get()
    assert (slice_.height, slice_.width) == samples.grey().shape
    assert np.array_equal(_stored_grey(slice_), samples.grey())


def test_it_analyses_a_jpeg_slice(upload, samples):
    upload("0.jpg", samples.jpeg())
    assert _the_analysis().slices.get().name == "0.jpg"


def test_it_analyses_a_16_bit_png_by_calibrating_it(upload, samples):
    upload("slice16.png", samples.png16())
    grey = _stored_grey(_the_analysis().slices.get())
    assert grey.shape == (512, 512)
    # Calibrated into the lung window: dark air and lung, bright body, not one flat value.
    assert grey.min() < 60 and grey.max() > 200


def test_it_analyses_an_rgb_png_as_grey(upload, samples):
    upload("colour.png", samples.rgb_png())
    grey = _stored_grey(_the_analysis().slices.get())
    assert np.abs(grey.astype(int) - samples.grey().astype(int)).max() <= 1


def test_it_analyses_a_dicom_slice(upload, samples):
    upload("0.dcm", samples.dicom())
    slice_ = _the_analysis().slices.get()
    assert (slice_.width, slice_.height) == (512, 512)
    assert slice_.areas["lung_ml"] is not None  # pixel spacing and thickness were read


def test_it_analyses_a_zip_with_folders_and_skips_macos_and_hidden_files(upload, samples):
    archive = samples.zip(
        {
            "study/b/2.jpg": samples.jpeg(1),
            "study/a/1.png": samples.png(0),
            "__MACOSX/study/a/._1.png": b"\x00\x05\x16\x07 not an image",
            "study/.DS_Store": b"\x00\x00\x00\x01Bud1",
            ".hidden.png": samples.png(2),
            "study/notes.txt": b"slice thickness 1 mm",
        }
    )
    response = upload("case-7.zip", archive)
    analysis = _the_analysis()
    assert response.status_code == 302
    assert analysis.kind == Analysis.Kind.STUDY
    assert [s.name for s in analysis.slices.all()] == ["study/a/1.png", "study/b/2.jpg"]


def test_it_analyses_a_zip_of_dicoms_in_body_order_not_name_order(upload, samples):
    upload("dicoms.zip", samples.zip({"z/a.dcm": samples.dicom(0), "z/b.dcm": samples.dicom(1)}))
    analysis = _the_analysis()
    assert analysis.slices_total == 2
    # Head to feet: 1.dcm lies 1 mm nearer the head than 0.dcm.
    assert [s.name for s in analysis.slices.all()] == ["z/b.dcm", "z/a.dcm"]


def test_it_analyses_a_nifti_volume(upload, samples):
    import nibabel as nib
    import pydicom
    from pydicom.pixels import apply_modality_lut

    planes = []
    for k in (0, 1):
        ds = pydicom.dcmread(io.BytesIO(samples.dicom(k)))
        planes.append(apply_modality_lut(ds.pixel_array, ds).astype(np.int16).T)
    volume = nib.Nifti1Image(np.stack(planes, axis=2), np.diag([-0.7, -0.7, 1.0, 1.0]))
    upload("chest.nii", volume.to_bytes())
    analysis = _the_analysis()
    assert analysis.kind == Analysis.Kind.VOLUME
    assert analysis.slices_total == 2


def test_it_answers_a_script_with_the_result_address_as_json(upload, samples):
    response = upload("slice.png", samples.png(), xhr=True)
    assert response.status_code == 200
    assert response.json() == {"url": reverse("segmenter:slice", args=[_the_analysis().id, 1])}


# --- Bad input ---------------------------------------------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _encrypted(archive: bytes) -> bytes:
    """The archive with the 'encrypted' flag set on its member (what the reader checks)."""
    data = bytearray(archive)
    data[6] |= 0x01  # local file header: general purpose flags
    central = data.find(b"PK\x01\x02")
    data[central + 8] |= 0x01  # central directory header: general purpose flags
    return bytes(data)


def _zip_bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("slice.png", b"\x00" * (20 * 1024 * 1024))
    return buf.getvalue()


BAD_UPLOADS = {
    "not an image": ("scan.png", lambda s: b"this is not a picture\n" * 20, "could not be read"),
    "an empty file": ("scan.png", lambda s: b"", "The file is empty."),
    "a truncated png": ("scan.png", lambda s: s.png()[: len(s.png()) // 2], "damaged or incomplete"),
    "a truncated jpeg": ("scan.jpg", lambda s: s.jpeg()[: len(s.jpeg()) // 2], "damaged or incomplete"),
    "a truncated dicom": ("scan.dcm", lambda s: s.dicom()[:4096], "could not be read"),
    "a decompression bomb": ("bomb.png", lambda s: _png_claiming(40000, 40000), "too large"),
    "a zip with a path outside the archive": (
        "study.zip",
        lambda s: s.zip({"../../x.png": s.png()}),
        "unsafe path",
    ),
    "a zip with an absolute path": ("study.zip", lambda s: s.zip({"/etc/x.png": s.png()}), "unsafe path"),
    "a zip bomb": ("study.zip", lambda s: _zip_bomb(), "zip bomb"),
    "an encrypted zip": ("study.zip", lambda s: _encrypted(s.zip({"a.png": s.png()})), "encrypted"),
    "a broken zip": ("study.zip", lambda s: b"PK\x03\x04" + b"\x17" * 300, "not a valid zip archive"),
    "a zip cut short": ("study.zip", lambda s: s.zip({"a.png": s.png()})[:-40], "could not be read"),
    "a file called zip that is none": ("study.zip", lambda s: s.png(), "not a valid zip archive"),
    "a zip with no slices": (
        "study.zip",
        lambda s: s.zip({"readme.txt": b"hello", "__MACOSX/._a.png": s.png()}),
        "no PNG, JPEG or DICOM slices",
    ),
    "an unknown extension": ("notes.txt", lambda s: b"hello", "are not supported"),
    "an unknown compound extension": ("scan.png.exe", lambda s: b"MZ" + b"\x00" * 100, "are not supported"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS.values(), ids=list(BAD_UPLOADS))
def test_it_refuses_bad_input_with_a_message_and_stores_nothing(upload, samples, stored_files, case):
    name, make, expected = case
    response = upload(name, make(samples))
    assert response.status_code == 400
    message = response.context["error"]
    assert expected in message
    assert html.escape(message) in response.content.decode()
    assert 'role="alert"' in response.content.decode()
    assert Analysis.objects.count() == 0
    assert stored_files() == []


@pytest.mark.parametrize("case", [BAD_UPLOADS["not an image"], BAD_UPLOADS["a zip bomb"]], ids=["image", "zip"])
def test_it_answers_a_script_with_the_reason_as_json(upload, samples, stored_files, case):
    name, make, expected = case
    response = upload(name, make(samples), xhr=True)
    assert response.status_code == 400
    assert expected in response.json()["error"]
    assert Analysis.objects.count() == 0 and stored_files() == []


def test_it_refuses_a_body_over_the_limit_before_reading_it(client, settings, stored_files, monkeypatch):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 1024 * 1024

    def unexpected(*args, **kwargs):
        raise AssertionError("the body was parsed although its declared length is over the limit")

    monkeypatch.setattr("django.http.request.HttpRequest._load_post_and_files", unexpected)
    response = client.post(
        reverse("segmenter:home"), b"x" * 100, content_type="multipart/form-data; boundary=b", CONTENT_LENGTH=str(50 * 1024 * 1024)
    )
    assert response.status_code == 413
    assert response.context["error"] == "The file is larger than the limit of 1 MB."
    assert Analysis.objects.count() == 0 and stored_files() == []


def test_it_refuses_a_real_file_over_the_limit(upload, settings, stored_files):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 1024 * 1024
    response = upload("big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (2 * 1024 * 1024), xhr=True)
    assert response.status_code == 413
    assert "larger than the limit" in response.json()["error"]
    assert Analysis.objects.count() == 0 and stored_files() == []


def test_it_refuses_a_file_just_over_the_limit_that_the_framing_hid(upload, settings, stored_files):
    settings.SEGMENTER_MAX_UPLOAD_BYTES = 1024 * 1024
    response = upload("big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (1024 * 1024))
    assert response.status_code == 413
    assert response.context["error"] == "The file is 1.1 MB; the limit is 1 MB."  # 8 bytes over, rounded up
    assert Analysis.objects.count() == 0 and stored_files() == []


def test_it_refuses_a_malformed_multipart_body(client, stored_files):
    response = client.generic("POST", reverse("segmenter:home"), b"--x\r\ngarbage", content_type="multipart/form-data")
    assert response.status_code == 400
    assert "could not be read" in response.context["error"]
    assert Analysis.objects.count() == 0 and stored_files() == []


def test_it_asks_for_a_file_when_the_field_is_missing(client, stored_files):
    response = client.post(reverse("segmenter:home"), {"comment": "no file"})
    assert response.status_code == 400
    assert response.context["error"] == "Choose a file to upload."
    assert Analysis.objects.count() == 0 and stored_files() == []


def test_it_asks_for_a_file_when_the_body_is_not_a_form(client):
    response = client.post(reverse("segmenter:home"), b'{"file": 1}', content_type="application/json")
    assert response.status_code == 400
    assert response.context["error"] == "Choose a file to upload."


def test_it_refuses_an_upload_without_the_csrf_token(samples, stored_files):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    response = strict.post(reverse("segmenter:home"), {"file": SimpleUploadedFile("s.png", samples.png())})
    assert response.status_code == 403
    assert Analysis.objects.count() == 0 and stored_files() == []


def test_it_accepts_an_upload_with_the_csrf_token(samples, django_capture_on_commit_callbacks):
    from django.core.files.uploadedfile import SimpleUploadedFile
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.get(reverse("segmenter:home"))
    token = strict.cookies["csrftoken"].value
    with django_capture_on_commit_callbacks(execute=True):
        response = strict.post(
            reverse("segmenter:home"), {"file": SimpleUploadedFile("s.png", samples.png()), "csrfmiddlewaretoken": token}
        )
    assert response.status_code == 302
    assert _the_analysis().kind == Analysis.Kind.SLICE


def test_it_allows_only_get_and_post(client):
    assert client.put(reverse("segmenter:home")).status_code == 405
