"""Evaluate the shipped ensemble on labelled slices.

    python -m segmenter.ml.evaluate --images DIR --masks DIR [--json FILE] [--lungs]

Images are slices of any size that ``imaging.read_slice`` reads (8-bit PNG/JPEG, DICOM);
each mask is a PNG in --masks with the same stem. Without --lungs the masks hold MedSeg
values (0 background, 1 GGO, 2 consolidation) and the report gives, for GGO,
consolidation and infection (GGO or consolidation), pooled Dice and IoU over all pixels
of all slices at the mask's resolution, the mean per-slice Dice over slices holding the
class, and pixel accuracy. With --lungs the masks are lung masks (non-zero = lung) and
the report gives lung Dice.

The labels come from exactly the path the application serves (``Ensemble.segment``); when
a mask's size differs from its image, the class probabilities are resized to the mask
before the labels are taken.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .ensemble import Ensemble
from .imaging import UnreadableImage, read_slice
from .metrics import LesionScores, LungScores
from .postprocess import labels_from_probabilities, remove_small_lesions
from .preprocess import resize_probabilities
from .weights import DEFAULT_WEIGHTS_DIR

log = logging.getLogger("segmenter.evaluate")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by stem, in natural order; images without a mask are skipped."""
    from .archive import natural_key

    found = []
    for image in sorted(images.iterdir(), key=lambda p: natural_key(p.name)):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        mask = masks / f"{image.stem}.png"
        if mask.is_file():
            found.append((image, mask))
        else:
            log.warning("no mask for %s; skipped", image.name)
    return found


def segment_at(ensemble: Ensemble, pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The served label map of a slice, taken at ``shape`` (the mask's size)."""
    if pixels.shape == shape:
        return ensemble.segment(pixels)
    probs = resize_probabilities(ensemble.probabilities(pixels), *shape)
    return remove_small_lesions(labels_from_probabilities(probs))


def evaluate(ensemble: Ensemble, images: Path, masks: Path, lungs: bool = False) -> dict:
    matched = pairs(Path(images), Path(masks))
    if not matched:
        raise SystemExit(f"no image in {images} has a mask with the same stem in {masks}")
    scores = LungScores() if lungs else LesionScores()
    for image_path, mask_path in matched:
        mask = np.asarray(Image.open(mask_path))
        if mask.ndim == 3:
            mask = mask[..., 0]
        ct = read_slice(image_path)
        labels = segment_at(ensemble, ct.pixels, mask.shape)
        if lungs:
            scores.add(labels, mask > 0)
        else:
            if mask.max() > 2:
                raise SystemExit(f"{mask_path} holds values above 2; is it a lung mask? (use --lungs)")
            scores.add(labels, mask)
    return scores.result()


def format_table(result: dict) -> str:
    if "lung" in result:
        r = result["lung"]
        return f"slices {result['slices']}\nlung  Dice {r['dice']:.4f}  IoU {r['iou']:.4f}  per-slice Dice {r['dice_per_slice']:.4f}"
    lines = [f"slices {result['slices']}", f"{'class':<14}{'Dice':>8}{'IoU':>8}{'Dice/slice':>12}"]
    for name in ("ggo", "consolidation", "infection"):
        r = result[name]
        per = "-" if r["dice_per_slice"] is None else f"{r['dice_per_slice']:.4f}"
        lines.append(f"{name:<14}{r['dice']:>8.4f}{r['iou']:>8.4f}{per:>12}")
    lines.append(f"pixel accuracy {result['pixel_accuracy']:.4f}")
    return "\n".join(lines)


def _reweighted(ensemble: Ensemble, weights, networks, parser) -> Ensemble:
    """The same networks with other averaging weights, or a subset of them."""
    names = ensemble.names
    if weights and len(weights) != len(names):
        parser.error(f"--ensemble-weights needs {len(names)} numbers ({', '.join(names)})")
    if networks and set(networks) - set(names):
        parser.error(f"unknown networks {sorted(set(networks) - set(names))}; the ensemble has {names}")
    return ensemble.subset(networks or names, dict(zip(names, weights)) if weights else None)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m segmenter.ml.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of slices")
    parser.add_argument("--masks", type=Path, required=True, help="folder of mask PNGs with the images' stems")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--lungs", action="store_true", help="masks are lung masks: report lung Dice")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR, help="weights directory (default: weights/)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--ensemble-weights", type=float, nargs="+", metavar="W",
        help="override the manifest's weight of each network, in the manifest's order (for choosing them)",
    )
    parser.add_argument("--networks", nargs="+", help="evaluate only these networks of the ensemble")
    args = parser.parse_args(argv)
    for folder in (args.images, args.masks):
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        ensemble = Ensemble.load(args.weights)
        if args.ensemble_weights or args.networks:
            ensemble = _reweighted(ensemble, args.ensemble_weights, args.networks, parser)
        result = evaluate(ensemble, args.images, args.masks, lungs=args.lungs)
    except UnreadableImage as exc:
        sys.exit(f"error: {exc}")
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
