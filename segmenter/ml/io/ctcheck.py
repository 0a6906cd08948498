"""Is this picture an axial CT slice? Cheap rules on the decoded pixels, before any network runs.

Photographs, screenshots and documents must be refused, not graded. Each rule below was
measured on every real CT slice in ``../shared/data`` (MedSeg JPEG, Zenodo JPEG, kmader
and the sample DICOMs, in the model's window) and on the photographs, scans of text and
drawings that scikit-image ships (``tests/unit/test_ctcheck.py`` checks both directions):

* colour: CT is grey. A picture in which more than COLOUR_MAX_SHARE of the pixels have a
  chroma (max - min of R, G, B) above 24 (``imaging.colour_share``) is a colour picture. Real CT: 0 %
  (grey files); a grey CT saved as RGB JPEG stays under 1 %.
* flat areas: CT is noisy everywhere but where it is clipped to black or white. The share
  of 8 x 8 blocks of uniform mid grey (std < FLAT_STD, mean in FLAT_MEAN_RANGE) is at
  most 0.082 on real CT (Zenodo) and 0.21-0.43 on a photograph with smooth sky or
  background; interfaces and documents are mostly such blocks. Limit FLAT_MAX_SHARE.
* mid tones: in any window that shows the lungs, a chest slice is mostly dark (air, lung)
  or bright (tissue, bone); the share of grey levels between MID_RANGE is at most 0.54 on
  real CT (Zenodo's wider window) and 0.75-0.96 on photographs of texture, text scans and
  astronomy. Limit MID_MAX_SHARE.
* texture: CT has noise and fine structure everywhere; the median absolute Laplacian is
  at least 2 grey levels on real CT and 0-1 on drawings, rendered documents and
  smooth microscopy. Limit TEXTURE_MIN.
* two classes: a chest slice is air and lung against tissue, so Otsu's two classes
  explain most of the grey-level variance (eta = between-class / total variance: at
  least 0.728 on real CT, 0.65-0.72 on photographs of coffee, grass, gravel and a
  scanned page). Limit BIMODAL_MIN, a little under the lowest CT value.
* large regions: air and lung, and the body, are large regions, so each of Otsu's two
  classes lies mostly in 8-connected regions of at least REGION_MIN_AREA of the picture:
  at least 0.846 of each class on real CT (one MedSeg slice; the next 0.910, Zenodo
  0.933, kmader 0.915), 0.788 on a scanned page, whose dark class is the strokes of its
  letters (0.51-0.63 on scikit-image's scan of text). Limit REGIONS_MIN_SHARE.
* dark share: a chest slice has air or lung below DARK_LEVEL: at least 0.02 of the pixels
  on real CT (a tightly cropped MedSeg slice); limit DARK_MIN_SHARE. A white page with a
  little text, or a bright drawing, has almost none.

Some grey photographs pass all of these (a portrait, coins, a street scene). A second
check, ``why_not_lungs``, looks at what the two networks found (``LungEvidence``) on an
uncalibrated slice (``check_lungs``: a single slice, or a study's slices at
STUDY_SAMPLE_AT). ``python -m segmenter.ml.evaluation.ctcheck_measure`` measures it with
the shipped weights on 259 real CT slices (every MedSeg slice, every 16th Zenodo slice,
every 4th kmader slice as W1500/L-600 PNG and as HU DICOM, the sample DICOMs) and on the
24 grey pictures, inversions and crops from scikit-image's data that pass the pixel rules
(31 before the large-regions rule, which refuses the scanned page and the star field):

* the lung would fill the picture: lung on more than LUNG_MAX_SHARE of the pixels. Real
  CT: at most 0.70 (a tightly cropped MedSeg slice); a star field 0.91-1.0.
* the lung falls apart: the two largest lung regions hold less than LUNG_TWO_REGIONS_MIN
  of the lung. Real CT: at least 0.94 (two lungs, a third piece at most); a portrait,
  coins inverted, a street scene inverted 0.15-0.79.
* the networks disagree: the Dice of the UNet's and the PSPNet's lung masks is below
  NETWORKS_AGREE_MIN. Real CT: at least 0.72 (median 0.95); portraits, crops of a
  photograph, coins 0.44-0.58.
* the networks are unsure: their mean top-class probability inside the lung is below
  CONFIDENCE_MIN. Real CT: at least 0.84; coins and a street scene 0.76-0.80.
* the lungs change when the picture is mirrored: the networks segment the picture
  mirrored left-right and mirrored top-bottom (trained with flips and turns, they find
  the same lungs in a mirrored chest), and the lower Dice of either lung mask, mirrored
  back, with the picture's own is below FLIP_AGREE_MIN. Real CT: at least 0.925 (a
  Zenodo slice mirrored top-bottom; MedSeg at least 0.930); three immunohistochemistry
  micrographs and crops of the camera man and of coins 0.64-0.86, refused.
* what would be lung is smoother than what surrounds it: lung parenchyma carries vessels
  and noise, the tissue and air around it are smoother, so the median fine texture
  (``fine_texture``) inside the lung over that outside it is LUNG_TEXTURE_MIN or more on
  real CT (at least 0.96, a Zenodo slice; MedSeg 1.04, kmader 1.09); the inverted
  immunohistochemistry micrograph scores 0.72, crops of the camera man, of coins and of
  coffee 0.50-0.90 (dark smooth areas against a textured rest). Not measured on pictures
  under TEXTURE_MIN_SIDE_PX on their long side, where a chest's vessels are under a pixel
  (a lesion-free slice shrunk to 96 px scores 0.80).

All 259 CT slices pass; 23 of the 24 pictures are refused (measured 2026-12-06). Still
graded: one cropped immunohistochemistry micrograph (lung share 0.69, mirror agreement
0.89, texture ratio 1.34, each inside real CT's range or the margin kept below it); the
model card says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .imaging import CTSlice, UnreadableImage

COLOUR_MAX_SHARE = 0.05
FLAT_STD = 0.8
FLAT_MEAN_RANGE = (8.0, 247.0)
FLAT_BLOCK = 8
FLAT_MAX_SHARE = 0.15
MID_RANGE = (90, 160)
MID_MAX_SHARE = 0.65
DARK_LEVEL = 90
DARK_MIN_SHARE = 0.01
TEXTURE_MIN = 1.5
BIMODAL_MIN = 0.70
REGION_MIN_AREA = 0.002
REGIONS_MIN_SHARE = 0.82
LUNG_MAX_SHARE = 0.85
LUNG_TWO_REGIONS_MIN = 0.85
NETWORKS_AGREE_MIN = 0.65
CONFIDENCE_MIN = 0.80
FLIP_AGREE_MIN = 0.88
LUNG_TEXTURE_MIN = 0.80
DISPUTE_AGREE_MIN = 0.45
AGREE_SURE_MIN = 0.85
SURE_CONFIDENCE_MIN = 0.85
SURE_FLIP_AGREE_MIN = 0.92
TEXTURE_SIGMA_PX = 1.0
TEXTURE_EPS = 0.01  # grey levels: a perfectly smooth side gives a finite ratio
TEXTURE_MIN_SIDE_PX = 128  # below this, a chest's vessels are under a pixel: not measured


def texture(pixels: np.ndarray) -> float:
    """Median absolute Laplacian (grey levels) of a uint8 (H, W) slice."""
    import cv2

    return float(np.median(np.abs(cv2.Laplacian(pixels, cv2.CV_16S))))


def fine_texture(pixels: np.ndarray) -> np.ndarray:
    """float32 (H, W) absolute Laplacian of a uint8 (H, W) slice after a Gaussian blur of
    TEXTURE_SIGMA_PX (grey levels per pixel squared): vessels and noise, not JPEG grain."""
    import cv2

    blurred = cv2.GaussianBlur(pixels.astype(np.float32), (0, 0), TEXTURE_SIGMA_PX)
    return np.abs(cv2.Laplacian(blurred, cv2.CV_32F))


def bimodality(pixels: np.ndarray) -> float:
    """Otsu's eta of a uint8 (H, W) slice: the best two-class split's share of the variance."""
    p = np.bincount(pixels.ravel(), minlength=256).astype(np.float64)
    p /= p.sum()
    levels = np.arange(256)
    w0, m0 = np.cumsum(p), np.cumsum(p * levels)
    total_mean = m0[-1]
    variance = float((p * (levels - total_mean) ** 2).sum())
    if variance <= 0:
        return 0.0
    between = (total_mean * w0 - m0) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(between.max() / variance)


def region_share(pixels: np.ndarray, min_area: float = REGION_MIN_AREA) -> float:
    """The lower, over Otsu's two classes of a uint8 (H, W) slice, of the class's share that
    lies in 8-connected regions of at least ``min_area`` of the picture."""
    import cv2

    _, dark = cv2.threshold(pixels, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    shares = []
    for mask in (dark, 1 - dark):
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        total = int(areas.sum())
        shares.append(float(areas[areas >= min_area * mask.size].sum() / total) if total else 1.0)
    return min(shares)


def flat_share(pixels: np.ndarray, block: int = FLAT_BLOCK) -> float:
    """Share of block x block tiles of a uint8 (H, W) slice that are uniform mid grey."""
    h, w = pixels.shape
    if h < block or w < block:
        return 0.0
    tiles = pixels[: h // block * block, : w // block * block].astype(np.float32)
    tiles = tiles.reshape(h // block, block, w // block, block)
    std, mean = tiles.std(axis=(1, 3)), tiles.mean(axis=(1, 3))
    flat = (std < FLAT_STD) & (mean > FLAT_MEAN_RANGE[0]) & (mean < FLAT_MEAN_RANGE[1])
    return float(flat.mean())


def why_not_ct(ct: CTSlice) -> str | None:
    """None when ``ct`` could be an axial CT slice, else the reason (a short phrase)."""
    if ct.colour_share > COLOUR_MAX_SHARE:
        return "it is a colour picture"
    if ct.calibrated:
        return None  # Hounsfield units from a CT header: the scanner said so
    g = ct.pixels
    if flat_share(g) > FLAT_MAX_SHARE:
        return "it has large areas of uniform grey, like a photograph, screenshot or document"
    mid = float(np.count_nonzero((g >= MID_RANGE[0]) & (g <= MID_RANGE[1]))) / g.size
    if mid > MID_MAX_SHARE:
        return "its grey levels are those of a photograph, not of air, lung and tissue"
    if float(np.count_nonzero(g < DARK_LEVEL)) / g.size < DARK_MIN_SHARE:
        return "it has no dark areas of air or lung"
    if texture(g) < TEXTURE_MIN:
        return "it has none of the fine texture of a CT scan, like a drawing or document"
    if bimodality(g) < BIMODAL_MIN:
        return "its grey levels are those of a photograph, not of air, lung and tissue"
    if region_share(g) < REGIONS_MIN_SHARE:
        return "its dark and bright areas break into many small pieces, like printed text"
    return None


def check_slices(slices: list[CTSlice], study: bool) -> None:
    """check_ct for every slice; in a study, the error names the slice's file."""
    from .archive import in_member

    for ct in slices:
        try:
            check_ct(ct)
        except UnreadableImage as exc:
            raise in_member(ct.name, exc) if study else exc from None


def check_ct(ct: CTSlice) -> None:
    """Raise UnreadableImage (code "not_ct") when ``ct`` does not look like a CT slice."""
    reason = why_not_ct(ct)
    if reason:
        raise UnreadableImage(
            f"this does not look like a CT slice: {reason}", code="not_ct", params={"why": reason}
        )


@dataclass(frozen=True)
class LungEvidence:
    """What the networks found on a slice, for ``why_not_lungs``.

    lung_share: the labelled lung's share of the pixels; two_regions: the share of the
    lung in its two largest 8-connected regions; agreement: Dice of the networks' lung
    masks (1.0 for a single network); confidence: mean top-class probability inside them;
    flip_agreement: the lower Dice of the lung mask with the lung mask of the picture
    mirrored left-right, and of it mirrored top-bottom, each mirrored back (1.0 when not
    measured); texture_ratio: median ``fine_texture`` inside the lung over that outside it
    (1.0 when not measured: no pixels given, a picture under TEXTURE_MIN_SIDE_PX, or an
    empty lung or surround).
    """

    lung_share: float
    two_regions: float
    agreement: float
    confidence: float
    flip_agreement: float = 1.0
    texture_ratio: float = 1.0

    @classmethod
    def measure(
        cls,
        lung: np.ndarray,
        network_lungs: list[np.ndarray],
        top_probability: list[np.ndarray],
        pixels: np.ndarray | None = None,
    ) -> LungEvidence:
        """From the final lung mask (bool (H, W)), each network's lung mask and its top-class
        probability (float (H, W)), all at the slice's size, and the uint8 (H, W) slice
        itself (for texture_ratio; None: not measured)."""
        import cv2

        n, _, stats, _ = cv2.connectedComponentsWithStats(lung.astype(np.uint8), connectivity=8)
        areas = np.sort(stats[1:, cv2.CC_STAT_AREA])[::-1]
        two = float(areas[:2].sum() / areas.sum()) if n > 1 else 1.0
        union = np.logical_or.reduce(network_lungs)
        if len(network_lungs) > 1:
            a, b = network_lungs[0], network_lungs[1]
            total = int(a.sum()) + int(b.sum())
            agreement = 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0
        else:
            agreement = 1.0
        confidence = float(np.mean([p[union].mean() for p in top_probability])) if union.any() else 1.0
        ratio = 1.0
        if pixels is not None and max(pixels.shape) >= TEXTURE_MIN_SIDE_PX and lung.any() and not lung.all():
            texture = fine_texture(pixels)
            inside, outside = float(np.median(texture[lung])), float(np.median(texture[~lung]))
            ratio = (inside + TEXTURE_EPS) / (outside + TEXTURE_EPS)
        return cls(float(lung.mean()), two, agreement, confidence, texture_ratio=ratio)


def sure_of_lungs(evidence: LungEvidence) -> bool:
    """Whether the networks are sure of the lungs they found, on the evidence that no grey
    picture measured reaches together: they are confident inside them, find the same lungs
    in the slice mirrored, and the lungs carry the texture of parenchyma. Real lungs fall
    apart (a basal slice, the bases around the liver and the heart; the liver dome; a lung
    mostly consolidated, its aerated parts islands) and the two networks can disagree on a
    diseased or unusually windowed one; where they are sure of them otherwise, neither
    refuses a real scan (see the module docstring for the measurements)."""
    return (
        evidence.agreement >= DISPUTE_AGREE_MIN
        and evidence.confidence >= SURE_CONFIDENCE_MIN
        and evidence.flip_agreement >= SURE_FLIP_AGREE_MIN
        and evidence.texture_ratio >= LUNG_TEXTURE_MIN
    )


def lung_verdict(evidence: LungEvidence) -> tuple[str | None, str | None]:
    """(refusal, caution): why what the networks found cannot be the lungs of an axial chest
    CT slice (None: it can), and, for a slice that is not refused, why its result may
    deserve a second look (None: no reason). Each is a short phrase."""
    if evidence.lung_share > LUNG_MAX_SHARE:
        return "what would be lung fills the picture", None
    if evidence.lung_share == 0:
        return None, None  # no lung found, which the result says: a slice below or above the lungs
    sure = sure_of_lungs(evidence)
    if evidence.lung_share > 0 and evidence.two_regions < LUNG_TWO_REGIONS_MIN and not (
        sure and evidence.agreement >= AGREE_SURE_MIN
    ):
        return "what would be lung falls apart into many pieces", None
    caution = None
    if evidence.agreement < NETWORKS_AGREE_MIN:
        if not sure:
            return "the networks find no consistent lungs in it", None
        caution = "the two networks disagree about where the lungs are"
    if evidence.confidence < CONFIDENCE_MIN or evidence.flip_agreement < FLIP_AGREE_MIN:
        return "the networks find no consistent lungs in it", None
    if evidence.confidence < SURE_CONFIDENCE_MIN and evidence.agreement < AGREE_SURE_MIN:
        return "the networks find no consistent lungs in it", None  # unsure, and not of one mind
    if evidence.texture_ratio < LUNG_TEXTURE_MIN:
        return "what would be lung is smoother than what surrounds it", None
    return None, caution


def why_not_lungs(evidence: LungEvidence) -> str | None:
    """None when what the networks found could be the lungs of an axial chest CT slice, else
    the reason (a short phrase; ``lung_verdict``). For uncalibrated slices: a scanner's HU
    slice is CT."""
    return lung_verdict(evidence)[0]


#: In a study, the uncalibrated slices whose lungs are checked: at these fractions of its length
#: (mid-thorax, where a chest CT has its largest lungs), refused when most fail.
STUDY_SAMPLE_AT = (0.3, 0.5, 0.7)


def check_lungs(
    slices: Sequence[CTSlice], segmenter, study: bool, cautions: list[tuple[str, str]] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Raise UnreadableImage (code "not_ct") when what ``segmenter`` (an object with
    ``segment_checked``, like the Ensemble) finds in the uncalibrated slices is not a chest
    CT's lungs (``why_not_lungs``). A single slice must pass; a study is refused when most
    of the slices at STUDY_SAMPLE_AT fail. Calibrated slices (HU from a CT header) pass.
    A checked slice that passes with a caution (``lung_verdict``) adds (its name, the
    caution) to ``cautions`` when given.

    Returns (pixels, labels) of each slice it segmented, for the pipeline to reuse
    (``pipeline.Remembered``) instead of running the networks on it again."""
    from .archive import in_member

    headers = getattr(slices, "headers", slices)  # a LazySlices: decode only the sample
    uncalibrated = [k for k, ct in enumerate(headers) if not ct.calibrated]
    if not uncalibrated:
        return []
    if len(uncalibrated) == 1:
        picks = uncalibrated
    else:
        picks = [uncalibrated[k] for k in sorted(
            {min(len(uncalibrated) - 1, int(f * len(uncalibrated))) for f in STUDY_SAMPLE_AT}
        )]
    failed, segmented = [], []
    for k in picks:
        ct = slices[k]
        labels, evidence = segmenter.segment_checked(ct.pixels, spacing_mm=ct.pixel_spacing_mm)
        segmented.append((ct.pixels, labels))
        reason, caution = lung_verdict(evidence)
        if reason:
            failed.append((ct, reason))
        elif caution and cautions is not None:
            cautions.append((ct.name, caution))
    if len(failed) * 2 > len(picks):
        ct, reason = failed[0]
        exc = UnreadableImage(
            f"this does not look like a CT slice: {reason}", code="not_ct", params={"why": reason}
        )
        raise in_member(ct.name, exc) if study else exc
    return segmented
