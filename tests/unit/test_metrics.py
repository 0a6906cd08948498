import numpy as np
import pytest

from segmenter.ml.constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG
from segmenter.ml.evaluation.metrics import LesionScores, LungScores, dice_score, iou_score, to_medseg


def test_dice_and_iou_of_known_counts():
    assert dice_score(3, 1, 1) == pytest.approx(6 / 8)
    assert iou_score(3, 1, 1) == pytest.approx(3 / 5)
    assert dice_score(0, 0, 0) == 1.0 and iou_score(0, 0, 0) == 1.0
    assert dice_score(0, 5, 5) == 0.0


def test_engine_labels_map_onto_medseg_values():
    labels = np.array([[GGO, CONSOLIDATION, OTHER_LUNG, BACKGROUND]], np.uint8)
    assert to_medseg(labels).tolist() == [[1, 2, 0, 0]]


def test_lesion_scores_pool_over_slices_and_average_per_slice():
    scores = LesionScores()
    # slice 1: GGO predicted on 2 of 4 true GGO pixels, no false positives
    mask1 = np.array([[1, 1, 1, 1, 0, 0]], np.uint8)
    pred1 = np.array([[GGO, GGO, OTHER_LUNG, OTHER_LUNG, BACKGROUND, BACKGROUND]], np.uint8)
    # slice 2: no GGO in the mask, 1 false positive; consolidation perfect
    mask2 = np.array([[0, 2, 2, 0, 0, 0]], np.uint8)
    pred2 = np.array([[GGO, CONSOLIDATION, CONSOLIDATION, BACKGROUND, BACKGROUND, BACKGROUND]], np.uint8)
    scores.add(pred1, mask1)
    scores.add(pred2, mask2)
    r = scores.result()
    assert r["slices"] == 2
    assert r["ggo"]["dice"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))  # tp 2, fp 1, fn 2
    assert r["ggo"]["dice_per_slice"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2))  # only slice 1 holds GGO
    assert r["consolidation"]["dice"] == pytest.approx(1.0)
    assert r["consolidation"]["slices_with_class"] == 1
    assert r["infection"]["dice"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    assert r["pixel_accuracy"] == pytest.approx(9 / 12)


def test_lung_scores_count_every_lung_class_as_lung():
    scores = LungScores()
    pred = np.array([[GGO, CONSOLIDATION, OTHER_LUNG, BACKGROUND]], np.uint8)
    scores.add(pred, np.array([[1, 1, 1, 0]], bool))
    assert scores.result()["lung"]["dice"] == 1.0


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        LesionScores().add(np.zeros((2, 2), np.uint8), np.zeros((3, 3), np.uint8))


def test_infection_scores_give_area_ratio_grades_and_patient_shares():
    from segmenter.ml.evaluation.metrics import InfectionScores

    mask = np.zeros((10, 10), np.uint8)
    mask[:, :8] = 1  # 80 px lung
    mask[:, :4] = 2  # 40 px infection: 50 % -> CT-2
    labels = np.full((10, 10), BACKGROUND, np.uint8)
    labels[:, :8] = OTHER_LUNG
    labels[:, :2] = GGO  # 20 px lesion: 25 % -> CT-1 (too low)
    scores = InfectionScores()
    scores.add(labels, mask, "p1")
    labels2 = labels.copy()
    labels2[:, :6] = CONSOLIDATION  # 60 px: 75 % -> CT-4 (too high)
    scores.add(labels2, mask, "p2")
    r = scores.result()
    assert r["area_ratio"] == pytest.approx((20 + 60) / 80)
    assert r["grades"] == {"agree": 0.0, "lower": 0.5, "higher": 0.5, "slices": 2}
    assert r["patients"]["p1"] == {"true_share": 50.0, "predicted_share": 25.0, "error_points": -25.0}
    assert r["patient_share_error"] == pytest.approx(25.0)
    assert r["infection"]["dice"] == pytest.approx(2 * (20 + 40) / (80 + 80))
    assert r["lung"]["dice"] == 1.0
