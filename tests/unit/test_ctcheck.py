"""The CT check, both directions: every real CT slice we have passes; pictures that are not
CT (photographs, a screenshot-like interface, documents) are refused with a reason."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from segmenter.ml.io.ctcheck import REGIONS_MIN_SHARE, check_ct, region_share, why_not_ct
from segmenter.ml.io.dicomwrite import write_ct_dicom
from segmenter.ml.io.imaging import UnreadableImage, read_slice, window
from segmenter.ml.training.data import kmader_to_hu

skimage_data = pytest.importorskip("skimage.data")


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt)
    return buf.getvalue()


def test_every_medseg_and_sample_dicom_slice_passes(data_root):
    paths = sorted((data_root / "medseg-covid" / "images").glob("*.jpg"))
    paths += sorted((data_root / "dicom-samples").glob("*.dcm"))
    refused = [(p.name, why_not_ct(read_slice(p))) for p in paths if why_not_ct(read_slice(p))]
    assert len(paths) == 59 and refused == []


def test_every_zenodo_slice_passes(data_root):
    paths = sorted((data_root / "zenodo-covid-unlabelled" / "images").glob("*.jpg"))
    refused = [p.name for p in paths if why_not_ct(read_slice(p))]
    assert len(paths) == 1231 and refused == []


def test_kmader_slices_pass_as_png_in_either_window_and_as_dicom(data_root, tmp_path):
    values = np.load(data_root / "kmader-lungs" / "images.npz")["images"][::10]
    for k, v in enumerate(values):
        hu = kmader_to_hu(v)
        for width, level in ((1400, -435), (1500, -600)):
            assert why_not_ct(read_slice(encode(window(hu, width, level)), "k.png")) is None
        path = write_ct_dicom(hu, tmp_path / f"{k}.dcm")
        assert why_not_ct(read_slice(path)) is None


def interface() -> np.ndarray:
    ui = Image.new("RGB", (800, 500), (240, 240, 240))
    draw = ImageDraw.Draw(ui)
    draw.rectangle([0, 0, 800, 40], fill=(50, 90, 160))
    draw.rectangle([20, 60, 380, 480], fill=(255, 255, 255), outline=(180, 180, 180))
    for k in range(12):
        draw.text((30, 70 + k * 30), f"Menu item number {k}", fill=(20, 20, 20))
    draw.rectangle([400, 60, 780, 300], fill=(30, 30, 30))
    draw.ellipse([450, 90, 730, 280], fill=(120, 120, 120))
    return np.asarray(ui)


def document() -> np.ndarray:
    page = Image.new("L", (600, 800), 255)
    draw = ImageDraw.Draw(page)
    for k in range(60):
        draw.text((40, 20 + k * 12), "Lorem ipsum dolor sit amet, consectetur adipiscing elit", fill=0)
    return np.asarray(page)


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb[..., :3]).convert("L"))


PICTURES = {
    "colour photograph (astronaut)": lambda: skimage_data.astronaut(),
    "colour photograph (coffee)": lambda: skimage_data.coffee(),
    "colour photograph (cat)": lambda: skimage_data.chelsea(),
    "colour photograph (rocket)": lambda: skimage_data.rocket(),
    "grey photograph (camera man)": lambda: skimage_data.camera(),
    "grey photograph (moon)": lambda: skimage_data.moon(),
    "grey photograph (cat)": lambda: grey(skimage_data.chelsea()),
    "grey photograph (rocket)": lambda: grey(skimage_data.rocket()),
    "grey photograph (coffee)": lambda: grey(skimage_data.coffee()),
    "grey photograph (bricks)": lambda: skimage_data.brick(),
    "a scan of text": lambda: skimage_data.text(),
    "a scanned page": lambda: skimage_data.page(),
    "a scanned page, inverted": lambda: 255 - skimage_data.page(),
    "a star field": lambda: grey(skimage_data.hubble_deep_field()),
    "a rendered document": document,
    "a logo": lambda: skimage_data.logo()[..., :3],
    "a screenshot-like interface": interface,
    "the same interface in grey": lambda: grey(interface()),
}


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("what", sorted(PICTURES))
def test_pictures_that_are_not_ct_are_refused(what, fmt):
    ct = read_slice(encode(PICTURES[what](), fmt), f"picture.{fmt.lower()}")
    with pytest.raises(UnreadableImage) as caught:
        check_ct(ct)
    assert caught.value.code == "not_ct"
    assert str(caught.value).startswith("this does not look like a CT slice: ")


def test_hounsfield_units_from_a_ct_header_are_trusted(tmp_path):
    # A uniform phantom would fail the picture rules; a calibrated CT DICOM is not judged by them.
    hu = np.full((64, 64), 40.0)
    hu[16:48, 16:48] = -850.0
    assert why_not_ct(read_slice(write_ct_dicom(hu, tmp_path / "p.dcm"))) is None


def test_a_scanned_page_is_refused_because_its_letters_are_small_pieces(data_root):
    # The page passes every other pixel rule; its dark class is the strokes of its letters.
    page = read_slice(encode(skimage_data.page()), "page.png")
    assert region_share(page.pixels) < REGIONS_MIN_SHARE
    assert why_not_ct(page) == "its dark and bright areas break into many small pieces, like printed text"
    # while on real CT both classes lie in large regions (air and lungs, the body)
    medseg = sorted((data_root / "medseg-covid" / "images").glob("*.jpg"))
    assert min(region_share(read_slice(p).pixels) for p in medseg) > REGIONS_MIN_SHARE


def test_lungs_in_pieces_or_disputed_by_the_networks_pass_where_the_networks_are_sure_of_them():
    from segmenter.ml.io.ctcheck import LungEvidence, lung_verdict

    sure = dict(lung_share=0.3, confidence=0.93, flip_agreement=0.97, texture_ratio=1.2)
    # a basal slice: the lungs in several pieces, the networks agreeing and sure of them
    assert lung_verdict(LungEvidence(two_regions=0.6, agreement=0.9, **sure)) == (None, None)
    # two networks that disagree on a real scan: graded, with a caution
    assert lung_verdict(LungEvidence(two_regions=1.0, agreement=0.55, **sure)) == (
        None, "the two networks disagree about where the lungs are")
    # the same without the mirror's agreement (as on photographs): refused
    unsure = {**sure, "flip_agreement": 0.89}
    assert lung_verdict(LungEvidence(two_regions=0.6, agreement=0.9, **unsure))[0] == (
        "what would be lung falls apart into many pieces")
    assert lung_verdict(LungEvidence(two_regions=1.0, agreement=0.55, **unsure))[0] == (
        "the networks find no consistent lungs in it")
    # far apart networks are refused however sure each is
    assert lung_verdict(LungEvidence(two_regions=1.0, agreement=0.3, **sure))[0] == (
        "the networks find no consistent lungs in it")
    # smooth "lungs" are never sure
    assert lung_verdict(LungEvidence(two_regions=0.6, agreement=0.9, **{**sure, "texture_ratio": 0.75}))[0]


def test_a_lung_the_networks_are_only_fairly_sure_of_must_be_one_they_agree_on():
    from segmenter.ml.io.ctcheck import LungEvidence, lung_verdict

    fair = dict(lung_share=0.5, two_regions=1.0, confidence=0.82, flip_agreement=0.93, texture_ratio=3.0)
    # a street scene's crops: fairly confident, the networks only roughly of one mind: refused
    assert lung_verdict(LungEvidence(agreement=0.82, **fair))[0] == "the networks find no consistent lungs in it"
    # a heavily diseased MedSeg slice shrunk for a slide: as unsure, but the networks agree
    assert lung_verdict(LungEvidence(agreement=0.92, **fair)) == (None, None)


def test_a_slice_in_which_the_networks_find_no_lung_is_not_refused_on_its_lungs():
    from segmenter.ml.io.ctcheck import LungEvidence, lung_verdict

    # a kmader slice below the lungs: one network finds a speck the anatomy rules remove
    none = LungEvidence(lung_share=0.0, two_regions=1.0, agreement=0.0, confidence=0.76, flip_agreement=0.0)
    assert lung_verdict(none) == (None, None)  # it reads "no lung found"
