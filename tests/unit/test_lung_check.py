"""The second CT check, on what the real networks find (slow: the served ensemble). Grey
photographs that pass the pixel rules are refused by it; every real CT slice we have,
sent the ways users send it, still passes."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from segmenter.ml.constants import LUNG_CLASSES
from segmenter.ml.io.ctcheck import LungEvidence, check_lungs, why_not_ct, why_not_lungs
from segmenter.ml.io.dicomwrite import write_ct_dicom
from segmenter.ml.io.imaging import UnreadableImage, read_slice, window
from segmenter.ml.training.data import kmader_to_hu

skimage_data = pytest.importorskip("skimage.data")

pytestmark = pytest.mark.slow


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, "PNG")
    return buf.getvalue()


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb[..., :3]).convert("L"))


#: Grey pictures the pixel rules let through (asserted below), refused on the lungs.
PHOTOGRAPHS = {
    "portrait (astronaut, grey)": lambda: grey(skimage_data.astronaut()),
    "portrait, inverted": lambda: 255 - grey(skimage_data.astronaut()),
    "coins on a tray": lambda: skimage_data.coins(),
    "camera man, cropped": lambda: skimage_data.camera()[100:400, 50:450],
    "street scene (motorcycle, grey)": lambda: grey(skimage_data.stereo_motorcycle()[0]),
    "coins, inverted": lambda: 255 - skimage_data.coins(),
    # refused because their lungs change when the picture is mirrored (FLIP_AGREE_MIN)
    "micrograph (immunohistochemistry, grey)": lambda: grey(skimage_data.immunohistochemistry()),
    # refused because what would be lung is smoother than the rest (LUNG_TEXTURE_MIN)
    "micrograph, inverted": lambda: 255 - grey(skimage_data.immunohistochemistry()),
}
# (the star field and the scanned page, also inverted, are refused before the networks run:
# test_ctcheck)


def lung_reason(served, ct) -> str | None:
    return why_not_lungs(served.segment_checked(ct.pixels, spacing_mm=ct.pixel_spacing_mm)[1])


@pytest.mark.parametrize("what", sorted(PHOTOGRAPHS))
def test_grey_photographs_that_pass_the_pixel_rules_are_refused_on_their_lungs(served, what):
    ct = read_slice(png(PHOTOGRAPHS[what]()), "photo.png")
    assert why_not_ct(ct) is None  # else this picture tests nothing here
    with pytest.raises(UnreadableImage) as caught:
        check_lungs([ct], served, study=False)
    assert caught.value.code == "not_ct"
    assert str(caught.value).startswith("this does not look like a CT slice: ")


def test_every_medseg_slice_and_the_sample_dicoms_pass(served, data_root):
    paths = sorted((data_root / "medseg-covid" / "images").glob("*.jpg"))
    paths += sorted((data_root / "dicom-samples").glob("*.dcm"))
    refused = [(p.name, r) for p in paths if (r := lung_reason(served, read_slice(p)))]
    assert len(paths) == 59 and refused == []


def test_zenodo_slices_pass(served, data_root):
    paths = sorted((data_root / "zenodo-covid-unlabelled" / "images").glob("*.jpg"))[5::30]
    refused = [(p.name, r) for p in paths if (r := lung_reason(served, read_slice(p)))]
    assert len(paths) >= 40 and refused == []  # every slice: test_every_real_slice


def test_lesion_free_slices_pass_as_png_and_as_dicom(served, data_root, tmp_path):
    values = np.load(data_root / "kmader-lungs" / "images.npz")["images"][1::10]
    refused = []
    for k, v in enumerate(values):
        hu = kmader_to_hu(v)
        for ct in (read_slice(png(window(hu, 1500, -600)), f"{k}.png"), read_slice(write_ct_dicom(hu, tmp_path / f"{k}.dcm"))):
            if r := lung_reason(served, ct):
                refused.append((k, r))
    assert refused == []


@pytest.mark.parametrize("side", [96, 160])
def test_medseg_crops_shrunk_for_a_slide_pass_and_find_the_same_lung(served, data_root, side):
    # A thorax crop has no body outline to take the scale from: under the training crops'
    # size it is enlarged to it (preprocess.CROP_MIN_SIDE_PX), else its lungs reach the
    # networks a third of their size and are refused ("fills the picture", "no consistent lungs").
    refused, dice = [], []
    for path in sorted((data_root / "medseg-covid" / "images").glob("*.jpg"))[::6]:
        full = read_slice(path).pixels
        h, w = full.shape
        size = (max(1, round(w * side / max(h, w))), max(1, round(h * side / max(h, w))))
        ct = read_slice(png(cv2.resize(full, size, interpolation=cv2.INTER_AREA)), f"{path.stem}.png")
        labels, evidence = served.segment_checked(ct.pixels)
        if reason := why_not_lungs(evidence):
            refused.append((path.name, reason))
        lung = np.isin(labels, LUNG_CLASSES)
        truth = np.isin(cv2.resize(served.segment(full), size, interpolation=cv2.INTER_NEAREST), LUNG_CLASSES)
        dice.append(2 * (lung & truth).sum() / (lung.sum() + truth.sum()))
    assert refused == [] and len(dice) == 10
    assert np.mean(dice) >= 0.93


def test_a_study_is_refused_only_when_most_of_its_checked_slices_fail(served, data_root):
    medseg = [read_slice(p) for p in sorted((data_root / "medseg-covid" / "images").glob("*.jpg"))[:5]]
    photo = read_slice(png(skimage_data.coins()), "coins.png")
    check_lungs(medseg[:4] + [photo], served, study=True)  # one picture among CT slices: graded
    with pytest.raises(UnreadableImage) as caught:
        check_lungs([photo, photo, photo, medseg[0]], served, study=True)
    assert caught.value.params["reason"].code == "not_ct"


@pytest.mark.parametrize(
    "evidence, refused",
    [
        # real CT's extremes with the weights of 2026-12-07 (every real slice, ctcheck_measure --every)
        (LungEvidence(lung_share=0.69, two_regions=0.93, agreement=0.76, confidence=0.886), False),
        (LungEvidence(lung_share=0.5, two_regions=1.0, agreement=0.93, confidence=0.842, flip_agreement=0.90), False),
        (LungEvidence(lung_share=0.0, two_regions=1.0, agreement=1.0, confidence=1.0), False),  # no lung: graded as such
        (LungEvidence(lung_share=0.95, two_regions=1.0, agreement=0.99, confidence=0.99), True),
        (LungEvidence(lung_share=0.3, two_regions=0.6, agreement=0.9, confidence=0.9, flip_agreement=0.9), True),
        (LungEvidence(lung_share=0.3, two_regions=1.0, agreement=0.5, confidence=0.9, flip_agreement=0.9), True),
        (LungEvidence(lung_share=0.3, two_regions=1.0, agreement=0.9, confidence=0.78), True),
        (LungEvidence(lung_share=0.3, two_regions=1.0, agreement=0.9, confidence=0.9, flip_agreement=0.925), False),
        (LungEvidence(lung_share=0.3, two_regions=1.0, agreement=0.9, confidence=0.9, flip_agreement=0.86), True),
        (LungEvidence(lung_share=0.3, two_regions=1.0, agreement=0.9, confidence=0.9, texture_ratio=0.86), False),
        (LungEvidence(lung_share=0.3, two_regions=1.0, agreement=0.9, confidence=0.9, texture_ratio=0.78), True),
    ],
)
def test_the_lung_rules(evidence, refused):
    assert (why_not_lungs(evidence) is not None) == refused


def test_the_texture_ratio_compares_the_lung_with_its_surroundings():
    rng = np.random.default_rng(0)
    pixels = np.full((128, 128), 200, np.uint8)
    lung = np.zeros((128, 128), bool)
    lung[32:96, 16:56] = True
    pixels[lung] = rng.integers(20, 80, int(lung.sum()))  # textured dark lung, smooth tissue
    masks, top = [lung, lung], [np.ones((128, 128), np.float32)] * 2
    textured_lung = LungEvidence.measure(lung, masks, top, pixels)
    pixels[lung], pixels[~lung] = 50, rng.integers(150, 250, int((~lung).sum()))  # the other way round
    smooth_lung = LungEvidence.measure(lung, masks, top, pixels)
    assert textured_lung.texture_ratio > 1.5 and smooth_lung.texture_ratio < 0.5
    assert LungEvidence.measure(lung, masks, top).texture_ratio == 1.0  # not measured without pixels
    small = (slice(None, None, 2),) * 2  # 64 px: a chest's vessels would be under a pixel
    shrunk = LungEvidence.measure(
        lung[small], [m[small] for m in masks], [t[small] for t in top], pixels[small]
    )
    assert shrunk.texture_ratio == 1.0
