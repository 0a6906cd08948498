import numpy as np
import pytest

from segmenter.ml.constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG
from segmenter.ml.results.severity import (
    NO_LUNG,
    Areas,
    assess,
    assess_study,
    grade_for,
    measure,
    split_sides,
)


@pytest.mark.parametrize(
    "lesion, lung, grade",
    [
        (0, 100, "CT-0"),
        (1, 1000, "CT-1"),
        (25, 100, "CT-1"),  # exactly 25 % is still CT-1
        (2501, 10000, "CT-2"),
        (50, 100, "CT-2"),  # exactly 50 % is still CT-2
        (5001, 10000, "CT-3"),
        (7499, 10000, "CT-3"),
        (75, 100, "CT-4"),  # exactly 75 % is CT-4
        (100, 100, "CT-4"),
        (1, 3, "CT-2"),  # 33.3 %
        (0.25, 1.0, "CT-1"),  # areas in mm^2 or mL work as well as pixel counts
    ],
)
def test_each_share_of_involved_lung_gets_exactly_one_grade(lesion, lung, grade):
    assert grade_for(lesion, lung) == grade


def test_a_slice_without_lung_gets_no_grade_and_says_so():
    severity = assess(Areas(ggo=0, consolidation=0, other_lung=0))
    assert severity.grade is None
    assert severity.lesion_percent is None
    assert severity.message == NO_LUNG
    assert not severity.lung_found


def test_pure_ground_glass_between_50_and_75_percent_is_ct3():
    # The seed left this case without a grade.
    severity = assess(Areas(ggo=60, consolidation=0, other_lung=40))
    assert severity.grade == "CT-3"
    assert severity.ggo_percent == pytest.approx(60.0)


def test_a_little_consolidation_is_graded_by_its_share_not_as_ct3():
    # The seed graded any consolidation as CT-3.
    assert assess(Areas(ggo=0, consolidation=5, other_lung=95)).grade == "CT-1"


def test_lesion_larger_than_lung_is_an_error():
    with pytest.raises(ValueError):
        grade_for(5, 4)


def test_a_study_is_graded_from_summed_areas_not_from_slice_grades():
    mild = Areas(ggo=10, other_lung=90)  # 10 % -> CT-1
    severe = Areas(ggo=80, consolidation=10, other_lung=10)  # 90 % -> CT-4
    total, severity = assess_study([mild, severe, Areas()])  # plus a slice without lung
    assert (total.lesion, total.lung) == (100, 200)
    assert severity.grade == "CT-2"  # 50 % overall
    assert severity.lesion_percent == pytest.approx(50.0)


def test_an_empty_study_has_no_grade():
    total, severity = assess_study([])
    assert total.lung == 0 and severity.grade is None


def _two_lungs(rotate: bool = False) -> np.ndarray:
    labels = np.full((100, 160), BACKGROUND, np.uint8)
    labels[20:80, 20:70] = OTHER_LUNG  # image left = patient's right
    labels[20:80, 90:140] = OTHER_LUNG
    labels[30:50, 30:60] = GGO  # 600 px of lesion in the right lung
    labels[30:40, 100:110] = CONSOLIDATION  # 100 px in the left lung
    return labels.T.copy() if rotate else labels


def test_left_and_right_lungs_are_reported_in_the_radiological_convention():
    areas = measure(_two_lungs())
    severity = assess(areas)
    assert areas.sides_known
    assert (areas.right_lung, areas.right_lesion) == (3000, 600)
    assert (areas.left_lung, areas.left_lesion) == (3000, 100)
    assert severity.right_percent == pytest.approx(20.0) and severity.right_grade == "CT-1"
    assert severity.left_percent == pytest.approx(100 / 30)


def test_sides_are_not_guessed_when_the_lungs_are_stacked_vertically():
    assert split_sides(_two_lungs(rotate=True)) is None
    severity = assess(measure(_two_lungs(rotate=True)))
    assert severity.right_percent is None and severity.grade == "CT-1"


def test_volumes_need_spacing_and_thickness():
    labels = _two_lungs()
    assert measure(labels).lung_ml is None
    areas = measure(labels, pixel_spacing_mm=(0.5, 0.5), slice_thickness_mm=2.0)
    assert areas.lung_ml == pytest.approx(6000 * 0.5 * 0.5 * 2.0 / 1000)
    assert areas.lesion_ml == pytest.approx(700 * 0.5e-3)


def test_study_volumes_sum_only_when_every_slice_has_them():
    with_ml = measure(_two_lungs(), (1.0, 1.0), 1.0)
    total, _ = assess_study([with_ml, with_ml])
    assert total.lung_ml == pytest.approx(12.0)
    total, _ = assess_study([with_ml, measure(_two_lungs())])
    assert total.lung_ml is None


def test_areas_round_trip_through_a_dict():
    areas = measure(_two_lungs(), (0.7, 0.7), 1.25)
    assert Areas.from_dict(areas.as_dict()) == areas
