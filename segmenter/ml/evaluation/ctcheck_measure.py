"""python -m segmenter.ml.evaluation.ctcheck_measure [--data DIR] [--every] [--weights DIR] [--json FILE]

What the CT check's second stage (``ctcheck.why_not_lungs``) sees: the ``LungEvidence``
of the served ensemble on real CT slices (every MedSeg slice, every 16th Zenodo slice,
every 4th kmader slice calibrated and sent as W1500/L-600 PNG and as HU DICOM, the sample
DICOMs; with ``--every``, every slice of each) and on the grey pictures from scikit-image
(with inversions and random crops) that pass the pixel rules. Real slices refused by the
pixel rules are listed too (``refused`` starts with "pixels: "). Prints each group's range per feature and every picture, so
the thresholds in ctcheck can be checked against the weights that are shipped.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.ctcheck import why_not_ct, why_not_lungs
from ..io.dicomwrite import write_ct_dicom
from ..io.imaging import read_slice, window
from ..model.ensemble import Ensemble
from ..model.weights import DEFAULT_WEIGHTS_DIR
from ..paths import DEFAULT_DATA_ROOT
from ..training.data import kmader_to_hu

PICTURES = ("astronaut", "camera", "coins", "hubble_deep_field", "immunohistochemistry", "moon", "page",
            "text", "brick", "grass", "gravel", "clock", "horse", "retina", "cell", "chelsea", "coffee",
            "rocket", "stereo_motorcycle")
FEATURES = ("lung_share", "two_regions", "agreement", "confidence", "flip_agreement", "texture_ratio")

log = logging.getLogger(__name__)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, "PNG")
    return buf.getvalue()


def _pictures(seed: int = 0):
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in PICTURES:
        picture = getattr(skimage.data, name)()
        picture = np.asarray(picture[0] if isinstance(picture, tuple) else picture)  # a stereo pair: the left
        if picture.dtype != np.uint8:  # boolean or integer pictures: stretched to 0-255
            picture = picture.astype(np.float64)
            picture = np.round(255 * (picture - picture.min()) / max(np.ptp(picture), 1e-9)).astype(np.uint8)
        grey = np.asarray(Image.fromarray(picture[..., :3]).convert("L")) if picture.ndim == 3 else picture
        yield name, grey
        yield f"{name} inverted", 255 - grey
        h, w = grey.shape
        for k in range(3):
            ch, cw = rng.integers(h // 2, h + 1), rng.integers(w // 2, w + 1)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            yield f"{name} crop {k}", grey[y : y + ch, x : x + cw]


def _ct_slices(data: Path, folder: Path, every: bool = False):
    for p in sorted((data / "dicom-samples").glob("*.dcm")):
        yield "dicom", p.name, read_slice(p)
    for p in sorted((data / "medseg-covid" / "images").glob("*.jpg")):
        yield "medseg", p.name, read_slice(p)
    for p in sorted((data / "zenodo-covid-unlabelled" / "images").glob("*.jpg"))[:: 1 if every else 16]:
        yield "zenodo", p.name, read_slice(p)
    for k, values in enumerate(np.load(data / "kmader-lungs" / "images.npz")["images"][:: 1 if every else 4]):
        hu = kmader_to_hu(values)
        yield "kmader png", str(k), read_slice(_png(window(hu, 1500, -600)), f"{k}.png")
        yield "kmader dicom", str(k), read_slice(write_ct_dicom(hu, folder / f"{k}.dcm"))


def measure(ensemble: Ensemble, data: Path, every: bool = False) -> list[dict]:
    rows = []

    def add(group: str, name: str, ct) -> None:
        if reason := why_not_ct(ct):
            if group != "picture":  # a real slice refused on its pixels: listed
                rows.append({"group": group, "name": name, **{f: None for f in FEATURES},
                             "refused": f"pixels: {reason}"})
            return  # refused by the pixel rules already
        evidence = ensemble.segment_checked(ct.pixels, spacing_mm=ct.pixel_spacing_mm)[1]
        rows.append({"group": group, "name": name, **{f: getattr(evidence, f) for f in FEATURES},
                     "refused": why_not_lungs(evidence)})

    with tempfile.TemporaryDirectory() as folder:
        for group, name, ct in _ct_slices(data, Path(folder), every):
            add(group, name, ct)
    for name, grey in _pictures():
        add("picture", name, read_slice(_png(grey), "picture.png"))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_ROOT)
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--every", action="store_true", help="every real slice, not a sample")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR, help="the weights to measure")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = measure(Ensemble.load(args.weights), args.data, args.every)
    for group in dict.fromkeys(r["group"] for r in rows):
        mine = [r for r in rows if r["group"] == group]
        seen = [r for r in mine if r[FEATURES[0]] is not None]  # not refused on its pixels
        ranges = "  ".join(
            f"{f} {min(r[f] for r in seen):.3f}-{max(r[f] for r in seen):.3f}" for f in FEATURES if seen
        )
        log.info("%-13s %4d slices, %3d refused  %s", group, len(mine), sum(bool(r["refused"]) for r in mine), ranges)
        for r in mine:
            if r["refused"] and group != "picture":
                log.info("  REFUSED %s %s: %s", group, r["name"], r["refused"])
    for r in rows:
        if r["group"] == "picture":
            values = " ".join(f"{r[f]:.3f}" for f in FEATURES)
            log.info("  %-32s %s  %s", r["name"], values, r["refused"] or "GRADED")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
