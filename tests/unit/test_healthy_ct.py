"""Healthy lung reads healthy (slow: the real networks). Lesion-free kmader slices from the
groups the shipped weights were validated on, calibrated to Hounsfield units and written
as CT DICOM the way a scanner sends them, go through the reader and the served ensemble;
the sample LIDC slice (healthy lungs) too, and the same slice at other pixel grids."""

import cv2
import numpy as np
import pytest

from segmenter.ml.constants import CONSOLIDATION, GGO, LUNG_CLASSES
from segmenter.ml.evaluation.metrics import HealthyScores
from segmenter.ml.io.dicomwrite import write_ct_dicom
from segmenter.ml.io.imaging import read_slice
from segmenter.ml.results.severity import assess, measure

pytestmark = pytest.mark.slow

#: The test fails when lesion pixels exceed this share of all lung pixels.
MAX_LESION_SHARE = 0.03


@pytest.fixture(scope="module")
def held_out_kmader(data_root):
    from segmenter.ml.training.train import TrainConfig, load_datasets

    cfg = TrainConfig(data_root=str(data_root), holdout=True, val_fraction_medseg=0.0, zenodo_limit=1)
    return load_datasets(cfg).val_kmader


def test_lesion_free_slices_sent_as_dicom_read_healthy(served, held_out_kmader, tmp_path):
    scores = HealthyScores()
    for s in held_out_kmader[::4]:
        ct = read_slice(write_ct_dicom(s.hu, tmp_path / f"{s.name}.dcm"))
        assert ct.calibrated
        scores.add(served.segment(ct.pixels, spacing_mm=ct.pixel_spacing_mm), s.mask, s.name)
    result = scores.result()
    assert result["slices"] >= 8
    assert result["lesion_share_of_lung"] <= MAX_LESION_SHARE, result
    assert result["ct0_share"] >= 0.5, result
    assert result["lung"]["dice"] >= 0.95, result


def test_the_lidc_slice_with_healthy_lungs_reads_ct_0_or_ct_1_with_few_lesion_pixels(served, dicom_path):
    ct = read_slice(dicom_path)
    labels = served.segment(ct.pixels, spacing_mm=ct.pixel_spacing_mm)
    lesion = np.isin(labels, (GGO, CONSOLIDATION)).sum()
    # it has a nodule and faint dependent densities at both bases: 11.3 % with the weights of
    # 2026-12-07, whose lesions grow to their lower edge and whose dense lesion is consolidation
    # (4.4 % with the weights before, 44.7 % with the first ones; model card, Limitations)
    assert lesion <= 0.12 * np.isin(labels, LUNG_CLASSES).sum()
    assert assess(measure(labels)).grade in {"CT-0", "CT-1"}


@pytest.mark.parametrize("side", [64, 630])
def test_the_same_slice_at_another_pixel_grid_finds_the_same_lung(served, dicom_hu, tmp_path, side):
    # dicom_hu is 512 px of 0.625 mm; resampled to `side` px with the spacing that keeps its size.
    spacing = 0.625 * 512 / side
    hu = cv2.resize(dicom_hu.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA if side < 512 else cv2.INTER_LINEAR)
    ct = read_slice(write_ct_dicom(hu, tmp_path / f"{side}.dcm", (spacing, spacing)))
    labels = served.segment(ct.pixels, spacing_mm=ct.pixel_spacing_mm)
    reference = served.segment(read_slice(write_ct_dicom(dicom_hu, tmp_path / "512.dcm", (0.625, 0.625))).pixels,
                               spacing_mm=(0.625, 0.625))
    lung = np.isin(cv2.resize(labels, (512, 512), interpolation=cv2.INTER_NEAREST), LUNG_CLASSES)
    truth = np.isin(reference, LUNG_CLASSES)
    dice = 2 * (lung & truth).sum() / (lung.sum() + truth.sum())
    assert dice >= (0.85 if side == 64 else 0.95)
