"""Exports for other tools: labels.nii.gz on the input's grid and a DICOM SEG of a series,
each opened by a real reader (nibabel; pydicom and highdicom), and what report.json says
of the model and the input."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid

from segmenter.ml.io.dicomwrite import write_ct_dicom
from segmenter.ml.results.exports import export_labels
from tests import stubs

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("stand_in_engine")]

URL = "/api/v1/analyses"
#: A volume stored with its axes in an unusual order and direction: array axis 0 runs to
#: the feet, axis 1 to the front, axis 2 to the patient's left (I, A, L), 0.625 mm voxels
#: in plane, 1 mm between slices, and an offset origin.
AFFINE = np.array([[0.0, 0.0, -0.625, 160.0], [0.0, 0.625, 0.0, -150.0], [-1.0, 0.0, 0.0, 40.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture
def post(client, django_capture_on_commit_callbacks):
    def send(name: str, data: bytes):
        with django_capture_on_commit_callbacks(execute=True):
            response = client.post(URL, {"file": SimpleUploadedFile(name, data)})
        assert response.status_code == 201, response.content
        return response.json()

    return send


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def _download(client, url: str, content_type: str) -> bytes:
    response = client.get(url)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == content_type
    return _body(response)


def _hu(samples, k: int) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(samples.dicom(k)))
    return apply_modality_lut(ds.pixel_array, ds).astype(np.int16)


def _stored_labels(analysis_id: str) -> list[np.ndarray]:
    from segmenter.models import Analysis

    planes = []
    for s in Analysis.objects.get(pk=analysis_id).slices.all():
        with s.labels.open("rb") as fh:
            planes.append(np.asarray(Image.open(fh)))
    return planes


@pytest.fixture
def volume(samples) -> nib.Nifti1Image:
    """A NIfTI volume of the two real DICOM slices, stored (I, A, L) (see AFFINE)."""
    # Array axis 0 runs to the feet, so the first plane is the upper slice (1.dcm's).
    planes = [_hu(samples, 1), _hu(samples, 0)]
    # Each plane is stored with rows running to the front (axis 1) and columns to the
    # patient's left (axis 2): display rows run to the back, so the rows are flipped.
    data = np.stack([plane[::-1, :] for plane in planes])
    return nib.Nifti1Image(data, AFFINE)


@pytest.fixture
def series(samples, tmp_path) -> dict[str, pydicom.Dataset]:
    """A CT series as a scanner writes it, from the two real slices: shared study, series and
    frame of reference UIDs, positions 1 mm apart. Member name -> the written data set."""
    shared = {
        "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(),
        "FrameOfReferenceUID": generate_uid(),
        "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "SliceThickness": 1.0,
        "PatientName": "Test^Patient",
        "PatientID": "EXPORT-1",
    }
    files = {}
    for k in (0, 1):
        attributes = {**shared, "ImagePositionPatient": [-160.0, -160.0, -100.0 + k]}
        path = write_ct_dicom(_hu(samples, k), tmp_path / f"{k}.dcm", (0.625, 0.625), k + 1, attributes=attributes)
        files[f"series/IM{k:04d}"] = pydicom.dcmread(path)
    return files


def _series_zip(samples, series) -> bytes:
    members = {}
    for name, ds in series.items():
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        members[name] = buf.getvalue()
    return samples.zip(members)


# --- NIfTI ------------------------------------------------------------------------------


def test_a_nifti_volume_links_a_label_volume_with_the_inputs_shape_and_affine(client, post, volume):
    body = post("chest.nii.gz", gzip.compress(volume.to_bytes()))
    assert body["links"]["dicom_seg"] is None
    url = body["links"]["labels_nifti"]
    assert url.endswith(f"/a/{body['id']}/labels.nii.gz")
    response = client.get(url)
    assert response["Content-Disposition"] == 'attachment; filename="chest-labels.nii.gz"'
    data = _download(client, url, "application/gzip")
    labels = nib.Nifti1Image.from_bytes(gzip.decompress(data))  # nibabel reads it
    assert labels.shape == volume.shape
    assert np.array_equal(labels.affine, volume.affine)
    assert labels.get_data_dtype() == np.uint8 and labels.header.get_intent()[0] == "label"


def test_the_label_volume_puts_each_displayed_slice_back_on_the_inputs_voxels(client, post, volume):
    body = post("chest.nii.gz", gzip.compress(volume.to_bytes()))
    data = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(
        _download(client, body["links"]["labels_nifti"], "application/gzip"))).dataobj)
    # The stored label maps are in display order (head to feet, rows to the back, the
    # patient's right on the left); the volume stores (I, A, L) with rows flipped as above.
    expected = np.stack([export_labels(plane)[::-1, :] for plane in _stored_labels(body["id"])])
    assert np.array_equal(data, expected)
    assert set(np.unique(data)) == {0, 1, 2, 3}


def test_report_json_names_the_inputs_spacing_thickness_and_orientation(client, post, volume):
    body = post("chest.nii.gz", gzip.compress(volume.to_bytes()))
    report = json.loads(_download(client, body["links"]["report_json"], "application/json"))
    assert report["input"]["pixel_spacing_mm"] == [0.625, 0.625]
    assert report["input"]["slice_thickness_mm"] == 1.0
    assert report["input"]["orientation"] == {"source": "nifti", "axis_codes": ["I", "A", "L"]}
    assert report["input"]["hounsfield_units"] is True


# --- DICOM ------------------------------------------------------------------------------


def test_a_zip_of_a_dicom_series_links_a_seg_that_pydicom_reads_referencing_every_instance(client, post, samples, series):
    body = post("series.zip", _series_zip(samples, series))
    url = body["links"]["dicom_seg"]
    assert url.endswith(f"/a/{body['id']}/seg.dcm")
    response = client.get(url)
    assert response["Content-Disposition"] == 'attachment; filename="series-seg.dcm"'
    seg = pydicom.dcmread(io.BytesIO(_download(client, url, "application/dicom")))
    assert seg.Modality == "SEG"
    assert seg.SOPClassUID == pydicom.uid.SegmentationStorage
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [
        (1, "Ground-glass opacity"), (2, "Consolidation")
    ]
    assert [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence] == [
        "Ground glass opacity", "Lung consolidation"
    ]
    (referenced,) = seg.ReferencedSeriesSequence
    sources = list(series.values())
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in sources
    }
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert str(seg.PatientName) == ""  # patient details are not kept, only the UIDs


def test_the_seg_holds_the_stored_lesions_frame_by_frame_as_highdicom_reads_them(client, post, samples, series):
    body = post("series.zip", _series_zip(samples, series))
    seg = hd.seg.segread(io.BytesIO(_download(client, body["links"]["dicom_seg"], "application/dicom")))
    stored = _stored_labels(body["id"])
    from segmenter.models import Analysis

    names = [s.name for s in Analysis.objects.get(pk=body["id"]).slices.all()]
    for name, labels in zip(names, stored):
        uid = series[name].SOPInstanceUID
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid], segment_numbers=[1, 2], assert_missing_frames_are_empty=True
        )
        assert np.array_equal(frames[0, ..., 0], export_labels(labels) == 1)
        assert np.array_equal(frames[0, ..., 1], export_labels(labels) == 2)


def test_a_dicom_series_label_volume_has_the_series_geometry(client, post, samples, series):
    body = post("series.zip", _series_zip(samples, series))
    image = nib.Nifti1Image.from_bytes(gzip.decompress(_download(client, body["links"]["labels_nifti"], "application/gzip")))
    assert image.shape == (512, 512, 2)  # (columns, rows, slices), slices head to feet
    first = [ds for ds in series.values() if ds.InstanceNumber == 2][0]  # the upper slice
    lps = np.asarray(first.ImagePositionPatient, float)
    assert np.allclose(image.affine @ [0, 0, 0, 1], [-lps[0], -lps[1], lps[2], 1])  # RAS = LPS with x, y negated
    assert np.allclose(image.affine @ [1, 0, 0, 1] - image.affine @ [0, 0, 0, 1], [-0.625, 0, 0, 0])
    assert np.allclose(image.affine @ [0, 0, 1, 1] - image.affine @ [0, 0, 0, 1], [0, 0, -1.0, 0])
    data = np.asarray(image.dataobj)
    for k, labels in enumerate(_stored_labels(body["id"])):
        assert np.array_equal(data[:, :, k].T, export_labels(labels))
    report = json.loads(_download(client, body["links"]["report_json"], "application/json"))
    assert report["input"]["orientation"] == {
        "source": "dicom", "axis_codes": ["L", "P", "I"], "image_orientation_patient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    }


def test_a_dicom_without_a_frame_of_reference_links_a_label_volume_but_no_seg(client, post, samples):
    body = post("0.dcm", samples.dicom(0))  # the sample names no FrameOfReferenceUID, which a SEG must share
    assert body["links"]["labels_nifti"] is not None and body["links"]["dicom_seg"] is None
    assert client.get(reverse("segmenter:dicom_seg", args=[body["id"]])).status_code == 404
    image = nib.Nifti1Image.from_bytes(gzip.decompress(_download(client, body["links"]["labels_nifti"], "application/gzip")))
    assert image.shape == (512, 512, 1)


def test_images_and_mixed_studies_have_no_exports(client, post, samples):
    for name, data in (
        ("a.png", samples.png()),
        ("mixed.zip", samples.zip({"a.dcm": samples.dicom(0), "b.jpg": samples.jpeg(3)})),
    ):
        body = post(name, data)
        assert body["links"]["labels_nifti"] is None and body["links"]["dicom_seg"] is None
        assert client.get(reverse("segmenter:labels_nifti", args=[body["id"]])).status_code == 404
        report = json.loads(_download(client, body["links"]["report_json"], "application/json"))
        assert report["input"]["orientation"] is None


# --- Model, pages and storage -------------------------------------------------------------


def test_report_json_carries_the_model_version_and_its_weights_hashes(client, post, samples, use_engine):
    use_engine(stubs.StandInWithManifest)
    body = post("0.dcm", samples.dicom(0))
    model = json.loads(_download(client, body["links"]["report_json"], "application/json"))["model"]
    manifest = json.loads((Path(__file__).resolve().parents[2] / "weights" / "manifest.json").read_text())
    assert model["weights"] == {
        name: {"file": entry["file"], "sha256": entry["sha256"]} for name, entry in manifest["networks"].items()
    }
    assert len(model["version"]) == 12 and int(model["version"], 16) >= 0
    assert model["engine"].endswith("StandInWithManifest")


def test_report_json_says_when_the_engine_has_no_versioned_weights(client, post, samples):
    body = post("0.dcm", samples.dicom(0))
    model = json.loads(_download(client, body["links"]["report_json"], "application/json"))["model"]
    assert model == {"engine": "tests.stubs.StandInSegmenter", "version": None, "weights": {}}


def test_the_study_page_offers_the_exports_it_has(client, post, samples, series):
    body = post("series.zip", _series_zip(samples, series))
    content = client.get(reverse("segmenter:analysis", args=[body["id"]])).content.decode()
    for name in ("labels_nifti", "dicom_seg"):
        assert f'href="{reverse(f"segmenter:{name}", args=[body["id"]])}" download>' in content
    other = post("study.zip", samples.zip({"a.jpg": samples.jpeg(1), "b.jpg": samples.jpeg(2)}))
    content = client.get(reverse("segmenter:analysis", args=[other["id"]])).content.decode()
    assert "labels.nii.gz" not in content and "DICOM SEG" not in content


def test_the_slice_page_of_a_dicom_offers_its_label_volume(client, post, samples):
    body = post("0.dcm", samples.dicom(0))
    content = client.get(reverse("segmenter:slice", args=[body["id"], 1])).content.decode()
    assert f'href="{reverse("segmenter:labels_nifti", args=[body["id"]])}" download>' in content


def test_an_export_is_built_once_then_served_from_its_stored_file(client, post, volume, stored_files, monkeypatch):
    from segmenter import exports

    body = post("chest.nii.gz", gzip.compress(volume.to_bytes()))
    first = _download(client, body["links"]["labels_nifti"], "application/gzip")
    assert f"analyses/{body['id']}/exports/labels.nii.gz" in stored_files()
    monkeypatch.setattr(exports, "_build", lambda *a: pytest.fail("built again"))
    assert _download(client, body["links"]["labels_nifti"], "application/gzip") == first


def test_deleting_an_analysis_removes_its_exports(client, post, volume, stored_files):
    from segmenter import services
    from segmenter.models import Analysis

    body = post("chest.nii.gz", gzip.compress(volume.to_bytes()))
    _download(client, body["links"]["labels_nifti"], "application/gzip")
    services.analysis_delete(analysis=Analysis.objects.get(pk=body["id"]))
    assert stored_files() == []
