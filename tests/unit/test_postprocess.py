import numpy as np

from segmenter.ml.constants import (
    BACKGROUND,
    CONSOLIDATION,
    GGO,
    LESION_MIN_PEAK,
    MIN_LESION_AREA_PX,
    OTHER_LUNG,
)
from segmenter.ml.model.postprocess import (
    labels_from_probabilities,
    min_lesion_area,
    remove_faint_lesions,
    remove_small_lesions,
)


def test_small_lesion_specks_become_other_lung_and_large_regions_stay():
    labels = np.full((64, 64), OTHER_LUNG, np.uint8)
    labels[0:3, 0:3] = GGO  # 9 px speck
    labels[20:30, 20:30] = GGO  # 100 px region
    labels[20:30, 30:32] = CONSOLIDATION  # touching the GGO region: one lesion together
    labels[50:52, 50:52] = CONSOLIDATION  # 4 px speck
    out = remove_small_lesions(labels)
    assert (out[0:3, 0:3] == OTHER_LUNG).all()
    assert (out[50:52, 50:52] == OTHER_LUNG).all()
    assert (out[20:30, 20:30] == GGO).all() and (out[20:30, 30:32] == CONSOLIDATION).all()
    assert labels[0, 0] == GGO  # input untouched


def test_a_healthy_slice_with_noise_reads_no_lesion():
    rng = np.random.default_rng(0)
    labels = np.full((256, 256), OTHER_LUNG, np.uint8)
    ys, xs = rng.integers(0, 256, 30), rng.integers(0, 256, 30)
    labels[ys, xs] = GGO
    assert not (remove_small_lesions(labels) == GGO).any()


def test_the_minimum_area_scales_with_larger_slices():
    assert min_lesion_area((512, 512)) == MIN_LESION_AREA_PX
    assert min_lesion_area((300, 200)) == MIN_LESION_AREA_PX
    assert min_lesion_area((1024, 1024)) == 4 * MIN_LESION_AREA_PX


def test_labels_are_the_most_probable_class():
    probs = np.zeros((4, 1, 3), np.float32)
    probs[GGO, 0, 0] = probs[BACKGROUND, 0, 1] = probs[CONSOLIDATION, 0, 2] = 1
    assert labels_from_probabilities(probs).tolist() == [[GGO, BACKGROUND, CONSOLIDATION]]


def test_a_lesion_of_the_minimum_area_stays_and_one_pixel_smaller_goes():
    for area, kept in ((MIN_LESION_AREA_PX, True), (MIN_LESION_AREA_PX - 1, False)):
        labels = np.full((64, 64), OTHER_LUNG, np.uint8)
        labels.reshape(-1)[64 * 10 : 64 * 10 + area] = GGO  # one connected run of `area` pixels
        assert ((remove_small_lesions(labels) == GGO).sum() == area) == kept


def test_postprocess_drops_lesions_under_the_area_it_is_given_at_the_reference_grid():
    from segmenter.ml.model.postprocess import postprocess

    probs = np.zeros((4, 128, 128), np.float32)
    probs[OTHER_LUNG, 20:110, 20:110] = 1.0  # one lung, cropped to the thorax (no body rule)
    probs[BACKGROUND] = 1.0 - probs[OTHER_LUNG]
    probs[GGO, 60:66, 60:66], probs[OTHER_LUNG, 60:66, 60:66] = 2.0, 0.0  # a 36 px lesion
    pixels = np.full((128, 128), 60, np.uint8)  # lung-dark: no density split
    ggo = {px: int((postprocess(probs, pixels, 1.0, None, px) == GGO).sum()) for px in (20, 36, 37)}
    assert ggo == {20: 36, 36: 36, 37: 0}
    # at a reference factor of 0.5 (the slice is halved to reach the reference grid) the
    # same lesion counts 9 reference px
    assert (postprocess(probs, pixels, 0.5, None, 9) == GGO).sum() == 36
    assert (postprocess(probs, pixels, 0.5, None, 10) == GGO).sum() == 0


def lesion_probabilities(*peaks: tuple[tuple[slice, slice], float]) -> np.ndarray:
    """(C, 64, 64) probabilities: other lung everywhere, and in each region a lesion whose
    p(GGO) + p(consolidation) is 0.6, except at its centre pixel, where it is the peak given."""
    probs = np.zeros((4, 64, 64), np.float32)
    probs[OTHER_LUNG] = 1.0
    for (rows, cols), peak in peaks:
        probs[GGO, rows, cols], probs[CONSOLIDATION, rows, cols] = 0.4, 0.2
        probs[OTHER_LUNG, rows, cols] = 0.4
        r, c = (rows.start + rows.stop) // 2, (cols.start + cols.stop) // 2
        probs[GGO, r, c], probs[CONSOLIDATION, r, c], probs[OTHER_LUNG, r, c] = peak - 0.05, 0.05, 1.0 - peak
    return probs


def test_a_lesion_region_stays_whole_only_where_it_is_sure_somewhere():
    sure, faint = (slice(5, 25), slice(5, 25)), (slice(35, 55), slice(35, 55))
    probs = lesion_probabilities((sure, 0.95), (faint, 0.85))
    labels = labels_from_probabilities(probs)
    out = remove_faint_lesions(labels, probs)
    assert (out[sure] == GGO).all()  # the whole region, not only its sure pixel
    assert (out[faint] == OTHER_LUNG).all()
    assert (remove_faint_lesions(labels, probs, 0.8)[faint] == GGO).all()
    assert (remove_faint_lesions(labels, probs, 0.0) == labels).all()
    assert (labels[faint] == GGO).all()  # input untouched


def test_postprocess_drops_faint_lesions_at_the_shipped_peak():
    from segmenter.ml.model.postprocess import postprocess

    region = (slice(20, 40), slice(20, 40))
    pixels = np.full((64, 64), 60, np.uint8)  # lung-dark: no density split
    for peak, kept in ((LESION_MIN_PEAK + 0.02, True), (LESION_MIN_PEAK - 0.02, False)):
        labels = postprocess(lesion_probabilities((region, peak)), pixels, 1.0, None)
        assert (labels[region] == GGO).all() == kept
        assert (labels[region] == OTHER_LUNG).all() != kept


def test_a_lesion_grows_over_connected_lung_down_to_the_lower_edge_and_no_further():
    from segmenter.ml.model.postprocess import grow_lesions

    probs = np.zeros((4, 40, 40), np.float32)
    probs[OTHER_LUNG] = 1.0
    # a sure GGO core, a halo at lesion 0.45 (GGO 0.25 + consolidation 0.2) around it, and a
    # separate patch at 0.45 that touches no core
    probs[:, 8:24, 8:24] = np.array([0.25, 0.2, 0.55, 0.0])[:, None, None]
    probs[:, 12:20, 12:20] = np.array([0.9, 0.05, 0.05, 0.0])[:, None, None]
    probs[:, 30:36, 30:36] = np.array([0.25, 0.2, 0.55, 0.0])[:, None, None]
    probs[:, :, 0] = np.array([0.2, 0.3, 0.0, 0.5])[:, None]  # background column: never lung
    labels = labels_from_probabilities(probs)
    assert (labels[8:24, 8:24] != GGO).sum() == 16 * 16 - 8 * 8  # the halo starts as other lung
    grown = grow_lesions(labels, probs, 0.4)
    assert (grown[8:24, 8:24] == GGO).all()  # GGO is the more probable lesion class there
    assert (grown[30:36, 30:36] == OTHER_LUNG).all()  # no core: nothing created
    assert (grown[:, 0] == BACKGROUND).all()
    assert (grow_lesions(labels, probs, 0.5) == labels).all()  # the halo is under 0.5
    assert (grow_lesions(labels, probs, 1.0) == labels).all()
    assert (labels[8:12, 8:24] == OTHER_LUNG).all()  # input untouched


def test_grown_pixels_take_the_more_probable_lesion_class():
    from segmenter.ml.model.postprocess import grow_lesions

    probs = np.zeros((4, 20, 20), np.float32)
    probs[:, :, :] = np.array([0.1, 0.3, 0.6, 0.0])[:, None, None]
    probs[:, 8:12, 8:12] = np.array([0.9, 0.05, 0.05, 0.0])[:, None, None]
    grown = grow_lesions(labels_from_probabilities(probs), probs, 0.35)
    assert (grown[8:12, 8:12] == GGO).all()
    assert (grown[:8] == CONSOLIDATION).all()


def test_a_slice_without_lesions_keeps_none_whatever_the_lower_edge():
    from segmenter.ml.model.postprocess import postprocess

    probs = np.zeros((4, 64, 64), np.float32)
    probs[OTHER_LUNG] = 0.6
    probs[GGO] = 0.4  # lesion probability 0.4 everywhere, no pixel sure of it
    pixels = np.full((64, 64), 60, np.uint8)  # lung-dark: no density split
    assert (postprocess(probs, pixels, 1.0, None, lesion_low=0.3) == OTHER_LUNG).all()


def test_a_density_split_reads_dense_lesion_as_consolidation_and_leaves_other_classes():
    from segmenter.ml.model.postprocess import split_by_density

    labels = np.full((40, 40), OTHER_LUNG, np.uint8)
    labels[:, :4] = BACKGROUND
    labels[5:35, 5:20] = CONSOLIDATION
    labels[5:35, 20:35] = GGO
    pixels = np.full((40, 40), 60, np.uint8)
    pixels[:, :20] = 100  # faint where the networks said consolidation
    pixels[:, 20:] = 200  # dense where they said GGO
    out = split_by_density(labels, pixels, 150)
    assert (out[10:30, 8:16] == GGO).all() and (out[10:30, 24:32] == CONSOLIDATION).all()
    assert (out[labels == OTHER_LUNG] == OTHER_LUNG).all() and (out[:, :4] == BACKGROUND).all()


def test_postprocess_reads_dense_lesion_as_consolidation_at_the_shipped_grey_level():
    from segmenter.ml.constants import CONSOLIDATION_MIN_GREY
    from segmenter.ml.model.postprocess import postprocess

    region = (slice(20, 40), slice(20, 40))
    probs = lesion_probabilities((region, 0.95))  # GGO by the networks
    for grey, expected in ((CONSOLIDATION_MIN_GREY + 5, CONSOLIDATION), (CONSOLIDATION_MIN_GREY - 5, GGO)):
        pixels = np.full((64, 64), int(grey), np.uint8)
        labels = postprocess(probs, pixels, 1.0, None)
        assert (labels[region] == expected).all()
        assert (postprocess(probs, pixels, 1.0, None, dense_grey=None)[region] == GGO).all()
