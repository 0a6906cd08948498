"""Downloads: overlay, label map, slice, study zip and reports, checked byte by byte."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from segmenter.ml.constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG
from segmenter.ml.results.reports import DISCLAIMER, REPORT_FIELDS

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]


def _body(response) -> bytes:
    # Reading a streamed body to its end closes the response through the test client's
    # wrapper; closing it again here would fire request_finished and close the test's
    # database connection (PostgreSQL).
    return b"".join(response.streaming_content) if response.streaming else response.content


def _png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


def _get(client, name, *args, query=None):
    response = client.get(reverse(f"segmenter:{name}", args=list(args)), query or {})
    assert response.status_code == 200, response.content
    return response


@pytest.fixture
def sliced(analyse, samples):
    """(analysis, grey pixels, labels) of the DICOM sample."""
    analysis = analyse("0.dcm", samples.dicom())
    slice_ = analysis.slices.get()
    with slice_.image.open("rb") as fh:
        grey = np.asarray(Image.open(fh))
    with slice_.labels.open("rb") as fh:
        labels = np.asarray(Image.open(fh))
    return analysis, grey, labels


def _blend(grey: np.ndarray, colour: tuple[int, int, int], opacity: float) -> np.ndarray:
    return np.rint((1 - opacity) * grey[:, None].astype(np.float32) + opacity * np.asarray(colour, np.float32))


# --- One slice --------------------------------------------------------------------------


def test_the_overlay_has_the_default_layers_and_a_name_from_the_upload(client, sliced):
    analysis, grey, labels = sliced
    response = _get(client, "slice_overlay", analysis.id, 1)
    assert response["Content-Type"] == "image/png"
    assert response["Content-Disposition"] == 'attachment; filename="0-overlay.png"'
    rgb = np.asarray(_png(_body(response)))
    assert rgb.shape == (512, 512, 3)
    for cls, colour, opacity in ((GGO, (255, 214, 10), 0.55), (CONSOLIDATION, (255, 59, 48), 0.65), (OTHER_LUNG, (47, 128, 237), 0.25)):
        where = labels == cls
        assert where.any()
        assert np.abs(rgb[where].astype(int) - _blend(grey[where], colour, opacity)).max() <= 1
    outside = labels == BACKGROUND
    assert np.array_equal(rgb[outside], np.repeat(grey[outside][:, None], 3, axis=1))


def test_the_overlay_follows_the_chosen_layers_colours_and_opacity(client, sliced):
    analysis, grey, labels = sliced
    query = {"ggo": "ffd60a,0.55,0", "consolidation": "00ff00,1,1", "other_lung": "#0000ff,0.5,1", "mask": "0"}
    rgb = np.asarray(_png(_body(_get(client, "slice_overlay", analysis.id, 1, query=query))))
    ggo = labels == GGO
    assert np.array_equal(rgb[ggo], np.repeat(grey[ggo][:, None], 3, axis=1))  # switched off
    assert (rgb[labels == CONSOLIDATION] == [0, 255, 0]).all()  # opaque green
    other = labels == OTHER_LUNG
    assert np.abs(rgb[other].astype(int) - _blend(grey[other], (0, 0, 255), 0.5)).max() <= 1


def test_the_mask_only_overlay_has_a_black_background(client, sliced):
    analysis, _grey, labels = sliced
    rgb = np.asarray(_png(_body(_get(client, "slice_overlay", analysis.id, 1, query={"mask": "1"}))))
    assert (rgb[labels == BACKGROUND] == 0).all()
    assert np.abs(rgb[labels == CONSOLIDATION].astype(int) - np.rint(0.65 * np.array([255, 59, 48]))).max() <= 1


@pytest.mark.parametrize(
    "query",
    [
        {"ggo": "zzzzzz"},
        {"ggo": "ff0000,2"},
        {"ggo": "ff0000,-0.1"},
        {"ggo": "ff0000,nan"},
        {"consolidation": "ff0000,0.5,7"},
        {"other_lung": "ff00,0.5,1"},
        {"mask": "yes"},
    ],
)
def test_the_overlay_refuses_malformed_settings(client, sliced, query):
    analysis, _grey, _labels = sliced
    response = client.get(reverse("segmenter:slice_overlay", args=[analysis.id, 1]), query)
    assert response.status_code == 400
    assert b"Invalid overlay settings" in response.content


def test_the_label_map_holds_the_four_class_values(client, sliced):
    analysis, _grey, labels = sliced
    response = _get(client, "slice_labels", analysis.id, 1)
    assert response["Content-Disposition"] == 'attachment; filename="0-labels.png"'
    image = _png(_body(response))
    assert image.mode == "L"
    values = np.asarray(image)
    assert set(np.unique(values)) == {GGO, CONSOLIDATION, OTHER_LUNG, BACKGROUND}
    assert np.array_equal(values, labels)


def test_the_slice_download_is_the_grey_slice(client, sliced):
    analysis, grey, _labels = sliced
    response = _get(client, "slice_image", analysis.id, 1)
    assert response["Content-Disposition"] == 'attachment; filename="0-slice.png"'
    image = _png(_body(response))
    assert image.mode == "L"
    assert np.array_equal(np.asarray(image), grey)


def test_the_thumbnail_is_a_small_overlay(client, sliced):
    analysis, _grey, _labels = sliced
    image = _png(_body(_get(client, "slice_thumbnail", analysis.id, 1)))
    assert image.mode == "RGB" and max(image.size) == 160


def test_a_dicom_slice_serves_its_hounsfield_units_as_a_packed_rgb_png(client, sliced, samples):
    from segmenter.ml.io.imaging import read_slice
    from segmenter.ml.results.overlay import unpack_hu

    analysis, _grey, _labels = sliced
    response = _get(client, "slice_hu", analysis.id, 1)
    assert response["Content-Disposition"] == 'attachment; filename="0-hu.png"'
    image = _png(_body(response))
    assert image.mode == "RGB"
    assert np.array_equal(unpack_hu(np.asarray(image)), read_slice(samples.dicom(), "0.dcm").hu)


def test_an_8_bit_slice_has_no_hounsfield_units_to_serve(client, analyse, samples):
    analysis = analyse("3.jpg", samples.jpeg(3))
    assert analysis.slices.get().hu == ""
    response = client.get(reverse("segmenter:slice_hu", args=[analysis.id, 1]))
    assert response.status_code == 404


def test_the_slice_page_links_each_download(client, sliced):
    analysis, _grey, _labels = sliced
    content = client.get(reverse("segmenter:slice", args=[analysis.id, 1])).content.decode()
    for name in ("slice_labels", "slice_image"):
        assert f'href="{reverse(f"segmenter:{name}", args=[analysis.id, 1])}" download>' in content
    assert f'id="download-overlay" href="{reverse("segmenter:slice_overlay", args=[analysis.id, 1])}?ggo=' in content
    assert f'href="{reverse("segmenter:report_csv", args=[analysis.id])}" download>' in content
    assert "0 ground-glass opacity, 1 consolidation, 2 other lung, 3 outside the lungs" in content


def test_a_download_name_keeps_non_ascii_upload_names(client, analyse, samples):
    analysis = analyse("лёгкие 1.dcm", samples.dicom())
    response = _get(client, "slice_overlay", analysis.id, 1)
    _body(response)
    assert response["Content-Disposition"] == "attachment; filename*=utf-8''%D0%BB%D1%91%D0%B3%D0%BA%D0%B8%D0%B5%201-overlay.png"


@pytest.fixture
def nifti_gz(samples) -> bytes:
    """A gzipped NIfTI volume of the two DICOM slices."""
    import nibabel as nib
    import pydicom
    from pydicom.pixels import apply_modality_lut

    planes = []
    for k in (0, 1):
        ds = pydicom.dcmread(io.BytesIO(samples.dicom(k)))
        planes.append(apply_modality_lut(ds.pixel_array, ds).astype(np.int16).T)
    volume = nib.Nifti1Image(np.stack(planes, axis=2), np.diag([-0.7, -0.7, 1.0, 1.0]))
    return gzip.compress(volume.to_bytes())


def test_a_volumes_slice_downloads_under_the_volumes_name_and_its_number(client, analyse, nifti_gz):
    analysis = analyse("ct.nii.gz", nifti_gz)
    assert [s.name for s in analysis.slices.all()] == ["ct.nii.gz[1]", "ct.nii.gz[2]"]
    for name, suffix in (("slice_overlay", "overlay"), ("slice_labels", "labels"), ("slice_image", "slice")):
        response = _get(client, name, analysis.id, 2)
        _body(response)
        assert response["Content-Disposition"] == f'attachment; filename="ct-002-{suffix}.png"'
    with zipfile.ZipFile(io.BytesIO(_body(_get(client, "study_zip", analysis.id)))) as archive:
        assert archive.namelist()[:3] == ["0001-ct-001-slice.png", "0001-ct-001-overlay.png", "0001-ct-001-labels.png"]


def test_a_frame_of_a_multiframe_dicom_downloads_under_the_files_name_and_frame(client, analyse, samples, tmp_path):
    analysis = analyse("x.dcm", samples.multiframe_dicom(tmp_path))
    assert [s.stem for s in analysis.slices.all()] == ["x-001", "x-002"]  # frames are numbered from 1
    response = _get(client, "slice_overlay", analysis.id, 2)
    _body(response)
    assert response["Content-Disposition"] == 'attachment; filename="x-002-overlay.png"'


# --- A study ----------------------------------------------------------------------------


@pytest.fixture
def study(analyse, samples):
    archive = samples.zip({"case/a.dcm": samples.dicom(0), "case/b.dcm": samples.dicom(1), "case/x y/c.jpg": samples.jpeg(3)})
    return analyse("case 12.zip", archive)


def test_the_study_zip_holds_each_slices_grey_image_overlay_and_labels_and_the_reports(client, study):
    response = _get(client, "study_zip", study.id)
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="case 12-study.zip"'
    with zipfile.ZipFile(io.BytesIO(_body(response))) as archive:
        assert archive.testzip() is None
        slices = list(study.slices.all())
        expected = []
        for s in slices:
            prefix = f"{s.index:04d}-{s.stem.replace(' ', '_')}"
            expected += [f"{prefix}-slice.png", f"{prefix}-overlay.png", f"{prefix}-labels.png"]
        assert archive.namelist() == [*expected, "report.csv", "report.json"]
        for s in slices:
            prefix = f"{s.index:04d}-{s.stem.replace(' ', '_')}"
            with s.image.open("rb") as fh:
                assert archive.read(f"{prefix}-slice.png") == fh.read()  # the grey slice as stored
            labels = _png(archive.read(f"{prefix}-labels.png"))
            with s.labels.open("rb") as fh:
                assert np.array_equal(np.asarray(labels), np.asarray(Image.open(fh)))
            overlay = _png(archive.read(f"{prefix}-overlay.png"))
            assert overlay.mode == "RGB" and overlay.size == (s.width, s.height)
        rows = list(csv.DictReader(io.StringIO(archive.read("report.csv").decode())))
        report = json.loads(archive.read("report.json"))
    assert [r["name"] for r in rows] == [s.name for s in slices] + ["study total"]
    assert tuple(rows[0]) == REPORT_FIELDS
    assert rows[-1]["grade"] == study.severity["grade"]
    assert report["disclaimer"] == DISCLAIMER
    assert report["analysis"] == str(study.id)
    assert report["study"]["grade"] == study.severity["grade"]
    assert [r["grade"] for r in report["slices"]] == [s.severity["grade"] for s in slices]


def test_the_reports_download_alone_with_the_same_contents(client, study):
    csv_response = _get(client, "report_csv", study.id)
    assert csv_response["Content-Type"] == "text/csv; charset=utf-8"
    assert csv_response["Content-Disposition"] == 'attachment; filename="case 12-report.csv"'
    json_response = _get(client, "report_json", study.id)
    assert json_response["Content-Disposition"] == 'attachment; filename="case 12-report.json"'
    with zipfile.ZipFile(io.BytesIO(_body(_get(client, "study_zip", study.id)))) as archive:
        assert _body(csv_response) == archive.read("report.csv")
        assert _body(json_response) == archive.read("report.json")


def test_the_study_page_links_its_downloads(client, study):
    content = client.get(reverse("segmenter:analysis", args=[study.id])).content.decode()
    for name in ("study_zip", "report_csv", "report_json"):
        assert f'href="{reverse(f"segmenter:{name}", args=[study.id])}" download>' in content


# --- Separation -------------------------------------------------------------------------


def test_two_uploads_never_see_each_others_files(client, analyse, samples, media_root):
    first = analyse("0.dcm", samples.dicom(0))
    second = analyse("3.jpg", samples.jpeg(3))
    for analysis in (first, second):
        slice_ = analysis.slices.get()
        with slice_.image.open("rb") as fh:
            stored = fh.read()
        assert _body(_get(client, "slice_image", analysis.id, 1)) == stored
        folder = media_root / "analyses" / str(analysis.id)
        assert (media_root / slice_.image.name).parent.parent == folder
        assert (media_root / slice_.labels.name).parent.parent == folder
    first_image = _png(_body(_get(client, "slice_image", first.id, 1)))
    second_image = _png(_body(_get(client, "slice_image", second.id, 1)))
    assert first_image.size != second_image.size
    assert sorted(p.name for p in (media_root / "analyses").iterdir()) == sorted([str(first.id), str(second.id)])


def test_a_file_missing_from_storage_is_not_found_rather_than_an_error(client, sliced, media_root):
    analysis, _grey, _labels = sliced
    slice_ = analysis.slices.get()
    for field in (slice_.labels, slice_.overlay, slice_.thumbnail):
        (media_root / field.name).unlink()
    for name in ("slice_labels", "slice_overlay", "slice_thumbnail"):
        assert client.get(reverse(f"segmenter:{name}", args=[analysis.id, 1])).status_code == 404
    assert client.get(reverse("segmenter:study_zip", args=[analysis.id])).status_code == 404


def test_the_default_overlay_and_thumbnail_are_the_files_made_at_processing(client, sliced, media_root):
    analysis, grey, labels = sliced
    slice_ = analysis.slices.get()
    assert slice_.overlay.name.endswith("-overlay.png") and slice_.thumbnail.name.endswith("-thumbnail.png")
    stored = (media_root / slice_.overlay.name).read_bytes()
    response = client.get(reverse("segmenter:slice_overlay", args=[analysis.id, 1]))
    assert b"".join(response.streaming_content) == stored
    assert b"".join(client.get(reverse("segmenter:slice_thumbnail", args=[analysis.id, 1])).streaming_content) == (
        media_root / slice_.thumbnail.name
    ).read_bytes()
    (media_root / slice_.overlay.name).write_bytes(b"not used")  # other layers are rendered, not read
    custom = client.get(reverse("segmenter:slice_overlay", args=[analysis.id, 1]) + "?mask=1")
    assert b"".join(custom.streaming_content).startswith(b"\x89PNG")
    thumb = Image.open(media_root / slice_.thumbnail.name)
    assert max(thumb.size) == 160 and thumb.mode == "RGB"


def test_downloads_answer_head_requests(client, sliced):
    analysis, _grey, _labels = sliced
    response = client.head(reverse("segmenter:slice_image", args=[analysis.id, 1]))
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="0-slice.png"'
