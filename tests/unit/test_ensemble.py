"""The shipped ensemble on real slices (slow: it runs the real networks)."""

import json

import numpy as np
import pytest

from segmenter.ml.constants import BACKGROUND, CONSOLIDATION, GGO, LUNG_CLASSES, OTHER_LUNG
from segmenter.ml.evaluation.evaluate import main as evaluate_main
from segmenter.ml.io.imaging import read_slice
from segmenter.ml.model.ensemble import REFERENCE, Ensemble
from segmenter.ml.results.severity import assess, measure

pytestmark = pytest.mark.slow


def test_it_finds_both_lungs_on_the_real_dicom(served, dicom_path):
    labels = served.segment(read_slice(dicom_path).pixels)
    assert labels.shape == (512, 512) and labels.dtype == np.uint8
    lung = np.isin(labels, LUNG_CLASSES)
    assert 0.08 < lung.mean() < 0.5
    areas = measure(labels)
    assert areas.sides_known and areas.right_lung > 0.3 * areas.lung and areas.left_lung > 0.3 * areas.lung
    assert (labels[:20, :20] == BACKGROUND).all()  # the air in the corner is not lung


def test_it_finds_lesions_on_a_labelled_covid_slice(served, data_root):
    from PIL import Image

    mask = np.asarray(Image.open(data_root / "medseg-covid" / "masks" / "1.png"))
    labels = served.segment(read_slice(data_root / "medseg-covid" / "images" / "1.jpg").pixels)
    lesion = np.isin(labels, (GGO, CONSOLIDATION))
    truth = mask > 0
    assert 2 * (lesion & truth).sum() / (lesion.sum() + truth.sum()) > 0.5  # a slice it trained on
    assert assess(measure(labels)).grade in {"CT-2", "CT-3", "CT-4"}


def test_probabilities_sum_to_one_at_any_input_size(served):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (301, 157), dtype=np.uint8)
    probs = served.probabilities(pixels)
    assert probs.shape == (4, 301, 157)
    assert np.allclose(probs.sum(axis=0), 1.0, atol=1e-4)
    assert set(np.unique(served.segment(pixels))) <= {GGO, CONSOLIDATION, OTHER_LUNG, BACKGROUND}


def test_the_served_path_agrees_with_the_reference_path(weights_dir, served, dicom_path):
    reference = Ensemble.load(weights_dir, REFERENCE)
    pixels = read_slice(dicom_path).pixels
    assert (served.segment(pixels) == reference.segment(pixels)).mean() > 0.995


def test_a_blank_slice_has_no_lesion(served):
    labels = served.segment(np.zeros((256, 256), np.uint8))
    assert not np.isin(labels, (GGO, CONSOLIDATION)).any()


def test_evaluate_reports_the_documented_keys(data_root, weights_dir, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for n in (0, 1, 2):
        (images / f"{n}.jpg").write_bytes((data_root / "medseg-covid" / "images" / f"{n}.jpg").read_bytes())
        (masks / f"{n}.png").write_bytes((data_root / "medseg-covid" / "masks" / f"{n}.png").read_bytes())
    (images / "99.jpg").write_bytes((data_root / "medseg-covid" / "images" / "3.jpg").read_bytes())  # no mask
    out = tmp_path / "result.json"
    evaluate_main(["--images", str(images), "--masks", str(masks), "--json", str(out), "--weights", str(weights_dir)])
    result = json.loads(out.read_text())
    assert result["slices"] == 3
    for name in ("ggo", "consolidation", "infection"):
        assert {"dice", "iou", "dice_per_slice"} <= set(result[name])
        assert 0.0 <= result[name]["dice"] <= 1.0
    assert 0.5 < result["pixel_accuracy"] <= 1.0


def test_evaluate_scores_a_file_the_app_would_refuse_as_nothing_found(data_root, weights_dir, tmp_path):
    import skimage.data
    from PIL import Image

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    for n in (0, 1):
        (images / f"{n}.jpg").write_bytes((data_root / "medseg-covid" / "images" / f"{n}.jpg").read_bytes())
        (masks / f"{n}.png").write_bytes((data_root / "medseg-covid" / "masks" / f"{n}.png").read_bytes())
    # a photograph "labelled" with slice 1's lesions: refused, it finds none of them
    Image.fromarray(skimage.data.camera()).save(images / "camera.png")
    Image.open(masks / "1.png").resize((512, 512), Image.NEAREST).save(masks / "camera.png")
    runs = {}
    for flags in ((), ("--no-checks",)):
        out = tmp_path / f"result{len(flags)}.json"
        evaluate_main(["--images", str(images), "--masks", str(masks), "--json", str(out),
                       "--weights", str(weights_dir), *flags])
        runs[flags] = json.loads(out.read_text())
    checked, unchecked = runs[()], runs[("--no-checks",)]
    assert [r["name"] for r in checked["refused"]] == ["camera.png"] and unchecked["refused"] == []
    assert "does not look like a CT slice" in checked["refused"][0]["why"]
    assert checked["slices"] == unchecked["slices"] == 3  # the refused picture still counts, as nothing found
    assert checked["infection"]["dice"] != unchecked["infection"]["dice"]

    # --healthy: a refused file is left out of the shares and listed
    (images / "0.jpg").unlink(), (images / "1.jpg").unlink()
    out = tmp_path / "healthy.json"
    evaluate_main(["--images", str(images), "--healthy", "--json", str(out), "--weights", str(weights_dir)])
    healthy = json.loads(out.read_text())
    assert healthy["slices"] == 0 and [r["name"] for r in healthy["refused"]] == ["camera.png"]


def test_evaluate_measures_lung_dice_with_lung_masks(data_root, weights_dir, tmp_path):
    from PIL import Image

    from segmenter.ml.training.data import kmader_to_u8

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir(), masks.mkdir()
    values = np.load(data_root / "kmader-lungs" / "images.npz")["images"][:3]
    lungs = np.load(data_root / "kmader-lungs" / "lung_masks.npz")["masks"][:3]
    for k, (v, m) in enumerate(zip(values, lungs)):
        Image.fromarray(kmader_to_u8(v)).save(images / f"{k}.png")
        Image.fromarray((m * 255).astype(np.uint8)).save(masks / f"{k}.png")
    out = tmp_path / "lung.json"
    evaluate_main(["--images", str(images), "--masks", str(masks), "--lungs", "--json", str(out), "--weights", str(weights_dir)])
    assert json.loads(out.read_text())["lung"]["dice"] > 0.9


def test_a_stream_of_real_slices_gives_exactly_what_segment_gives(served, data_root):
    paths = [data_root / "dicom-samples" / "0.dcm", data_root / "dicom-samples" / "1.dcm",
             data_root / "medseg-covid" / "images" / "1.jpg", data_root / "medseg-covid" / "images" / "2.jpg"]
    slices = [read_slice(p) for p in paths]
    one_by_one = [served.segment(ct.pixels, spacing_mm=ct.pixel_spacing_mm) for ct in slices]
    streamed = list(served.segment_stream((ct.pixels, ct.pixel_spacing_mm) for ct in slices))
    assert len(streamed) == len(slices)
    for a, b in zip(streamed, one_by_one, strict=True):
        np.testing.assert_array_equal(a, b)


def test_evaluate_scores_expert_masks_per_patient(data_root, weights_dir, tmp_path):
    import csv
    import shutil

    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    expert = data_root / "zenodo-covid-expert"
    rows = list(csv.DictReader((expert / "cases.csv").open()))
    picked = [r for r in rows if r["case"] == "coronacases_org_001"][:2]
    picked += [r for r in rows if r["case"] == "coronacases_org_008"][:2]
    for r in picked:
        shutil.copy(data_root / "zenodo-covid-unlabelled" / "images" / f"{r['stem']}.jpg", images)
        shutil.copy(expert / "masks" / f"{r['stem']}.png", masks)
    out = tmp_path / "r.json"
    evaluate_main(["--images", str(images), "--masks", str(masks), "--expert", "--cases", str(expert / "cases.csv"),
                   "--json", str(out), "--weights", str(weights_dir)])
    result = json.loads(out.read_text())
    assert set(result["patients"]) == {"coronacases_org_001", "coronacases_org_008"}
    assert result["grades"]["slices"] == 4 and 0.0 < result["area_ratio"]
    assert result["lung"]["dice"] > 0.9  # the lungs of these slices are found
