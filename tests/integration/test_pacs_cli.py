"""`manage.py segment` against a real PACS (a throwaway Orthanc, tests/pacs.py): a series read
over DICOMweb, analysed, and its DICOM SEG and SR measurement report sent back and read back
from Orthanc; each fault of a server once."""

from __future__ import annotations

import io
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from segmenter.ml.results.exports import export_labels
from segmenter.ml.results.sr import sr_numbers
from tests.pacs import PASSWORD, FaultyProxy, free_port, kmader_series

pytestmark = pytest.mark.usefixtures("stand_in_engine")


def _run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("segment", *map(str, args), "--no-progress", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _stored(pacs, data_root, count=12, **kwargs) -> list[pydicom.Dataset]:
    files = kmader_series(data_root, count, **kwargs)
    pacs.store(files)
    return [pydicom.dcmread(io.BytesIO(f)) for f in files]


def _series_url(root: str, source: list[pydicom.Dataset]) -> str:
    return f"{root}/studies/{source[0].StudyInstanceUID}/series/{source[0].SeriesInstanceUID}"


def test_a_series_is_read_analysed_and_its_seg_and_sr_sent_back_under_the_same_patient(
    pacs, data_root, tmp_path
):
    source = _stored(pacs, data_root)
    out, err = _run(_series_url(pacs.root, source), "--out", tmp_path / "out", "--send")
    assert "not for diagnosis" in err
    (target,) = (tmp_path / "out").iterdir()
    report = json.loads((target / "report.json").read_text())
    assert len(report["slices"]) == 12
    assert "sent 2 objects" in out

    held = pacs.series_of_study(source[0].StudyInstanceUID)
    assert sorted(held) == ["CT", "SEG", "SR"] and len(held["SEG"]) == len(held["SR"]) == 1
    for result in (held["SEG"][0], held["SR"][0]):
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "AccessionNumber",
            "StudyInstanceUID",
        ):
            assert result.get(keyword) == source[0].get(keyword), keyword

    seg = hd.seg.Segmentation.from_dataset(held["SEG"][0])
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == [
        "Ground-glass opacity",
        "Consolidation",
    ]
    (referenced,) = held["SEG"][0].ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in source
    }
    # Slices are written head to feet: the source's positions fall by 5 mm per instance.
    labels = [np.asarray(Image.open(p)) for p in sorted(target.glob("*-labels.png"))]
    for ds, plane in zip(source, labels):
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[ds.SOPInstanceUID],
            segment_numbers=[1, 2],
            assert_missing_frames_are_empty=True,
        )
        assert np.array_equal(frames[0, ..., 0], export_labels(plane) == 1)
        assert np.array_equal(frames[0, ..., 1], export_labels(plane) == 2)

    sr = held["SR"][0]
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert "not for diagnosis" in sr.SeriesDescription
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in source}
    numbers = sr_numbers(sr)
    study = report["study"]
    lungs = numbers["lungs"]
    assert lungs["Volume"] == pytest.approx(study["lung_ml"], rel=0.01)
    assert lungs["Lesion share of the lung"] == pytest.approx(study["lesion_percent"], abs=0.1)
    assert lungs["Ground-glass opacity volume"] == pytest.approx(study["ggo_ml"], rel=0.01)
    assert lungs["Consolidation volume"] == pytest.approx(study["consolidation_ml"], rel=0.01)
    assert lungs["CT severity grade (CT-0 to CT-4)"] == study["grade"]
    assert numbers["right lung"]["Lesion share of the lung"] == pytest.approx(
        study["right_lesion_percent"], abs=0.1
    )
    assert numbers["left lung"]["Lesion share of the lung"] == pytest.approx(
        study["left_lesion_percent"], abs=0.1
    )
    assert numbers["right lung"]["Volume"] + numbers["left lung"]["Volume"] == pytest.approx(
        study["lung_ml"], rel=1e-3
    )
    text = [i.TextValue for i in sr.ContentSequence if i.ValueType == "TEXT"]
    assert any("not for diagnosis" in t for t in text)


def test_sending_twice_stores_nothing_twice(pacs, data_root, tmp_path):
    source = _stored(pacs, data_root, count=3, first=12)
    url = _series_url(pacs.root, source)
    _run(url, "--out", tmp_path / "one", "--send")
    _run(url, "--out", tmp_path / "two", "--send")
    held = pacs.series_of_study(source[0].StudyInstanceUID)
    assert len(held["SEG"]) == 1 and len(held["SR"]) == 1


def test_a_study_address_picks_its_axial_ct_series_and_says_why(pacs, data_root, tmp_path):
    source = _stored(pacs, data_root, count=4, first=15)
    # A coronal reformat and a localizer in the same study are passed over.
    other = kmader_series(data_root, 5, first=20)
    for kind, orientation, files in (
        ("REFORMAT", [1, 0, 0, 0, 0, -1], other[:3]),
        ("LOCALIZER", None, other[3:]),
    ):
        series = pydicom.uid.generate_uid()
        for data in files:
            ds = pydicom.dcmread(io.BytesIO(data))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = source[0].StudyInstanceUID, series
            ds.ImageType = ["DERIVED", "SECONDARY", kind]
            if orientation:
                ds.ImageOrientationPatient = orientation
            buf = io.BytesIO()
            ds.save_as(buf)
            pacs.store([buf.getvalue()])
    out, _ = _run(f"{pacs.root}/studies/{source[0].StudyInstanceUID}", "--out", tmp_path / "out")
    assert (
        f"({source[0].SeriesInstanceUID}): axial CT, the most slices (4) of the study's 3 CT series (1 axial)"
        in out
    )
    report = json.loads(next((tmp_path / "out").glob("*/report.json")).read_text())
    assert report["series"].endswith(source[0].SeriesInstanceUID) and len(report["slices"]) == 4


def test_a_bearer_token_is_sent_instead_of_basic_auth(pacs, settings, data_root, tmp_path):
    settings.SEGMENTER_DICOMWEB_TOKEN = "not-a-token-orthanc-knows"
    source = _stored(pacs, data_root, count=1, first=25)
    with pytest.raises(CommandError, match=r"refused the credentials \(HTTP 401\)"):
        _run(_series_url(pacs.root, source), "--out", tmp_path)


# --- Faults ---------------------------------------------------------------------------------


@pytest.fixture
def proxy(pacs):
    server = FaultyProxy(pacs.http)
    yield server
    server.close()


def _fails(url: str, tmp_path: Path, *extra) -> str:
    with pytest.raises(CommandError) as caught:
        _run(url, "--out", tmp_path, *extra)
    return str(caught.value)


def test_faults_of_the_server_end_with_a_clear_message(pacs, settings, proxy, data_root, tmp_path):
    source = _stored(pacs, data_root, count=2, first=26)
    url = _series_url(pacs.root, source)

    down = _series_url(f"http://127.0.0.1:{free_port()}/dicom-web", source)
    assert "cannot be reached" in _fails(down, tmp_path)

    unknown = f"{pacs.root}/studies/1.2.3.4/series/5.6.7.8"
    assert "does not know this study or series" in _fails(unknown, tmp_path)

    settings.SEGMENTER_DICOMWEB_PASSWORD = "wrong"
    assert "refused the credentials (HTTP 401)" in _fails(url, tmp_path)
    settings.SEGMENTER_DICOMWEB_PASSWORD = PASSWORD

    settings.SEGMENTER_MAX_SLICES = 1
    assert "the series holds 2 instances; the limit is 1" in _fails(url, tmp_path)
    settings.SEGMENTER_MAX_SLICES = 1000

    proxy.mode, proxy.delay, settings.SEGMENTER_DICOMWEB_TIMEOUT = "slow", 3.0, 1
    assert "did not answer in time" in _fails(_series_url(proxy.root(pacs.root), source), tmp_path)
    settings.SEGMENTER_DICOMWEB_TIMEOUT = 10

    proxy.mode = "cut"
    assert "broke off" in _fails(_series_url(proxy.root(pacs.root), source), tmp_path)

    proxy.mode = "pass"  # and the same series through the proxy, working again
    out, _ = _run(_series_url(proxy.root(pacs.root), source), "--out", tmp_path / "ok")
    assert "CT-" in out


def test_a_series_that_is_not_ct_is_refused(pacs, data_root, tmp_path):
    source = _stored(pacs, data_root, count=1, first=28, modality="MR")
    assert "the series is MR, not CT" in _fails(_series_url(pacs.root, source), tmp_path)


def test_a_failed_send_stores_nothing_and_a_retry_sends_once(pacs, proxy, data_root, tmp_path):
    source = _stored(pacs, data_root, count=2, first=29)
    proxy.mode = "fail-store"
    message = _fails(_series_url(proxy.root(pacs.root), source), tmp_path / "one", "--send")
    assert "could not be sent to the PACS" in message and "HTTP 503" in message
    assert sorted(pacs.series_of_study(source[0].StudyInstanceUID)) == ["CT"]
    out, _ = _run(_series_url(pacs.root, source), "--out", tmp_path / "two", "--send")
    assert "sent 2 objects" in out
    held = pacs.series_of_study(source[0].StudyInstanceUID)
    assert len(held["SEG"]) == 1 and len(held["SR"]) == 1
