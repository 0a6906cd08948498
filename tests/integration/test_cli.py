"""`manage.py segment`: slices, zips, folders and volumes, without a server."""

from __future__ import annotations

import csv
import io
import json
import zipfile

import nibabel as nib
import numpy as np
import pytest
from django.core.management import CommandError, call_command
from PIL import Image

from segmenter.ml.io.imaging import read_slice
from segmenter.models import Analysis


def _run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("segment", *map(str, args), "--no-progress", stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def _labels(path) -> np.ndarray:
    image = Image.open(path)
    assert image.mode == "L"
    return np.asarray(image)


@pytest.mark.usefixtures("stand_in_engine")
def test_it_segments_a_dicom_slice_without_touching_the_database(data_root, tmp_path):
    # No django_db mark: any database access would fail this test.
    out, err = _run(data_root / "dicom-samples" / "0.dcm", "--out", tmp_path)
    target = tmp_path / "0"
    labels = _labels(target / "0001-0-labels.png")
    assert labels.shape == (512, 512) and set(np.unique(labels)) <= {0, 1, 2, 3}
    overlay = Image.open(target / "0001-0-overlay.png")
    assert overlay.mode == "RGB" and overlay.size == (512, 512)
    report = json.loads((target / "report.json").read_text())
    assert report["study"]["grade"] in out and "CT-" in report["study"]["grade"]
    assert report["slices"][0]["lung_ml"] > 0  # spacing and thickness come from the DICOM
    assert "not for diagnosis" in err


@pytest.mark.usefixtures("stand_in_engine")
def test_it_segments_a_zip_and_a_folder_as_studies(data_root, tmp_path):
    images = sorted((data_root / "medseg-covid" / "images").glob("*.jpg"))[:3]
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in images:
            zf.writestr(f"slices/{p.name}", p.read_bytes())
    folder = tmp_path / "folder"
    folder.mkdir()
    for p in images:
        (folder / p.name).write_bytes(p.read_bytes())
    out, _ = _run(archive, folder, "--out", tmp_path / "out")
    for name in ("study", "folder"):
        rows = list(csv.DictReader((tmp_path / "out" / name / "report.csv").open()))
        assert [r["index"] for r in rows] == ["1", "2", "3", "study"]
        assert len(list((tmp_path / "out" / name).glob("*-labels.png"))) == 3
    assert out.count("CT-") == 2


@pytest.mark.usefixtures("stand_in_engine")
def test_it_segments_a_nifti_volume_built_from_real_slices(data_root, tmp_path):
    slices = [read_slice(data_root / "dicom-samples" / f"{k}.dcm") for k in (0, 1)]
    # RAS+ voxels: x runs to the patient's right... see test_volumes for the mapping
    vol = np.stack([np.flipud(np.fliplr(s.pixels.astype(np.int16) * 6 - 1350)).T for s in reversed(slices)], -1)
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(vol, np.diag([0.625, 0.625, 2.0, 1.0])), path)
    out, _ = _run(path, "--out", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "ct" / "report.json").read_text())
    assert len(report["slices"]) == 2
    written = sorted(p.name for p in (tmp_path / "out" / "ct").glob("*.png"))
    assert written == [
        "0001-ct-001-labels.png",
        "0001-ct-001-overlay.png",
        "0002-ct-002-labels.png",
        "0002-ct-002-overlay.png",
    ]
    assert report["study"]["lung_ml"] == pytest.approx(
        sum(r["lung_ml"] for r in report["slices"]), rel=1e-3
    )
    assert "CT-" in out


@pytest.mark.usefixtures("stand_in_engine")
def test_each_frame_of_a_multiframe_dicom_is_written_under_the_files_name_and_frame(tmp_path, samples):
    path = tmp_path / "x.dcm"
    path.write_bytes(samples.multiframe_dicom(tmp_path))
    _run(path, "--out", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "x").glob("*-labels.png")) == [
        "0001-x-001-labels.png",
        "0002-x-002-labels.png",
    ]


@pytest.mark.django_db
@pytest.mark.usefixtures("stand_in_engine")
def test_save_stores_the_result_as_an_analysis(data_root, tmp_path, segment_calls):
    calls = segment_calls
    out, _ = _run(data_root / "dicom-samples" / "1.dcm", "--out", tmp_path, "--save")
    analysis = Analysis.objects.get()
    assert analysis.status == Analysis.Status.DONE and analysis.slices.count() == 1
    assert str(analysis.id) in out
    assert len(calls) == 1  # the networks ran once: --save stores what the command computed
    with analysis.slices.get().labels.open("rb") as fh:
        stored = fh.read()
    written = next(tmp_path.glob("*/*-labels.png")).read_bytes()
    assert stored == written


@pytest.mark.usefixtures("stand_in_engine")
@pytest.mark.parametrize(
    "name, data, message",
    [("notes.txt", b"hello", "not supported"), ("empty.png", b"", "empty"), ("bad.zip", b"PK\x03\x04xx", "zip")],
)
def test_bad_input_exits_with_a_clear_message(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(CommandError, match=message):
        _run(path, "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.usefixtures("stand_in_engine")
def test_a_photograph_alone_or_in_a_folder_is_refused_as_not_ct(tmp_path, samples):
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "a.dcm").write_bytes(samples.dicom(0))
    Image.fromarray(skimage_data.camera()).save(folder / "camera.png")
    with pytest.raises(CommandError, match="camera.png: this does not look like a CT slice"):
        _run(folder, "--out", tmp_path / "out")
    with pytest.raises(CommandError, match="this does not look like a CT slice"):
        _run(folder / "camera.png", "--out", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_missing_path_is_an_error(tmp_path):
    with pytest.raises(CommandError, match="does not exist"):
        _run(tmp_path / "nothing.dcm", "--out", tmp_path)


@pytest.mark.slow
@pytest.mark.real_engine
def test_the_real_ensemble_finds_lung_on_the_dicom_sample(data_root, tmp_path):
    out, _ = _run(data_root / "dicom-samples" / "0.dcm", "--out", tmp_path)
    labels = _labels(tmp_path / "0" / "0001-0-labels.png")
    lung = np.isin(labels, (0, 1, 2)).mean()
    assert 0.08 < lung < 0.5, lung
    report = json.loads((tmp_path / "0" / "report.json").read_text())
    assert report["study"]["right_lesion_percent"] is not None  # both lungs found, side by side


@pytest.mark.django_db
@pytest.mark.usefixtures("stand_in_engine")
def test_save_of_a_study_runs_the_networks_once_per_slice_and_stores_what_it_wrote(samples, tmp_path, segment_calls):
    calls = segment_calls
    archive = tmp_path / "study.zip"
    archive.write_bytes(samples.zip({f"s/{k}.jpg": samples.jpeg(k) for k in range(4)}))
    out, _ = _run(archive, "--out", tmp_path / "out", "--save")
    assert len(calls) == 4  # one pass feeds the folder and the database
    analysis = Analysis.objects.get()
    assert analysis.status == Analysis.Status.DONE and str(analysis.id) in out
    report = json.loads((tmp_path / "out" / "study" / "report.json").read_text())
    assert analysis.severity["grade"] == report["study"]["grade"]
    assert analysis.areas["ggo"] == report["study"]["ggo_px"] and analysis.areas["ggo"] > 0
    written = sorted((tmp_path / "out" / "study").glob("*-labels.png"))
    stored = list(analysis.slices.all())
    assert [s.index for s in stored] == [1, 2, 3, 4] and len(written) == 4
    for slice_, path in zip(stored, written):
        with slice_.labels.open("rb") as fh:
            assert np.array_equal(np.asarray(Image.open(fh)), _labels(path))
        assert slice_.overlay and slice_.thumbnail  # made once, as for an upload


@pytest.mark.django_db
def test_a_save_that_fails_halfway_leaves_a_failed_analysis_without_files(samples, tmp_path, use_engine, stored_files):
    from tests.stubs import FailingOnThirdSlice

    use_engine(FailingOnThirdSlice)
    archive = tmp_path / "study.zip"
    archive.write_bytes(samples.zip({f"s/{k}.jpg": samples.jpeg(k) for k in range(4)}))
    with pytest.raises(RuntimeError, match="third slice"):
        _run(archive, "--out", tmp_path / "out", "--save")
    analysis = Analysis.objects.get()
    assert analysis.status == Analysis.Status.FAILED and analysis.slices.count() == 0
    assert stored_files() == []
