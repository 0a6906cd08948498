"""Evaluate the shipped ensemble on labelled slices, or on lesion-free scans.

    python -m segmenter.ml.evaluation.evaluate --images DIR --masks DIR [--json FILE] [--lungs]
    python -m segmenter.ml.evaluation.evaluate --images DIR --healthy [--masks DIR] [--json FILE]

Images are any file the application reads (PNG/JPEG of any depth, DICOM in Hounsfield
units, NIfTI volumes: every frame is a slice, named ``stem-k``); each mask is a PNG in
--masks with the image's stem.

--healthy: the scans are lesion-free (masks, if given, are lung masks). The report gives
the share of slices graded CT-0 (or "no lung found"), all lesion pixels as a share of all
lung pixels, the five worst slices and, with masks, the lung Dice. Without --lungs the masks hold MedSeg
values (0 background, 1 GGO, 2 consolidation) and the report gives, for GGO,
consolidation and infection (GGO or consolidation), pooled Dice and IoU over all pixels
of all slices at the mask's resolution, the mean per-slice Dice over slices holding the
class, and pixel accuracy. With --lungs the masks are lung masks (non-zero = lung) and
the report gives lung Dice.

The labels come from exactly the path the application serves (``Ensemble.segment``); when
a mask's size differs from its image, the class probabilities are resized to the mask
before the labels are taken. Each file is first checked as the application checks an
upload of it (``ctcheck.check_slices``, then ``ctcheck.check_lungs``): a file the
application would refuse ("this does not look like a CT slice: ...") counts as nothing
found (every pixel background) in the scores, so they are what a user would get, and the
report lists it under ``refused`` with the reason (--healthy: its slices are left out of
the shares and counted there). --no-checks scores the networks' labels on every file.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..constants import BACKGROUND
from ..io.ctcheck import check_lungs, check_slices
from ..io.imaging import UnreadableImage, read_slices
from ..io.names import SLICE_SUFFIXES, slice_stem
from ..io.volumes import NIFTI_SUFFIXES
from ..model.ensemble import Ensemble
from ..model.postprocess import postprocess
from ..model.preprocess import resize_probabilities
from ..pipeline import Remembered
from ..model.weights import DEFAULT_WEIGHTS_DIR
from .metrics import HealthyScores, InfectionScores, LesionScores, LungScores

log = logging.getLogger("segmenter.evaluate")


#: The files --images reads: single slices and NIfTI volumes (what the application reads, less archives).
IMAGE_SUFFIXES = (*SLICE_SUFFIXES, *NIFTI_SUFFIXES)


def _stem(name: str) -> str:
    return slice_stem(name)


def read_any(path: Path):
    """Every slice of a PNG/JPEG, DICOM or NIfTI file, as the application reads it."""
    from ..io.volumes import is_nifti_name, read_nifti

    data = path.read_bytes()
    return read_nifti(data, path.name) if is_nifti_name(path.name) else read_slices(data, path.name)


def image_files(images: Path) -> list[Path]:
    from ..io.archive import natural_key

    return [
        p for p in sorted(images.iterdir(), key=lambda p: natural_key(p.name))
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)
    ]


def pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by stem, in natural order; images without a mask are skipped."""
    found = []
    for image in image_files(images):
        mask = masks / f"{_stem(image.name)}.png"
        if mask.is_file():
            found.append((image, mask))
        else:
            log.warning("no mask for %s; skipped", image.name)
    return found


def _read_mask(path: Path) -> np.ndarray:
    mask = np.asarray(Image.open(path))
    return mask[..., 0] if mask.ndim == 3 else mask


def refusal(ensemble: Ensemble, path: Path, slices: list) -> tuple[str | None, list]:
    """Why the application would refuse an upload of the file at ``path`` (read into
    ``slices``), or None; and the (pixels, labels) the check segmented on the way, for
    ``segment_at`` to reuse. Volumes (NIfTI) are not checked, as in the application."""
    from ..io.volumes import is_nifti_name

    if is_nifti_name(path.name):
        return None, []
    try:
        check_slices(slices, study=len(slices) > 1)
        return None, check_lungs(slices, ensemble, study=len(slices) > 1)
    except UnreadableImage as exc:
        return str(exc), []


def evaluate_healthy(
    ensemble: Ensemble, images: Path, masks: Path | None = None, checks: bool = True
) -> dict:
    """HealthyScores over every slice of every file in ``images`` (lung masks optional);
    with ``checks``, files the application would refuse are left out and listed."""
    files = image_files(Path(images))
    if not files:
        raise SystemExit(f"no slice files in {images}")
    scores, refused = HealthyScores(), []
    for path in files:
        slices = read_any(path)
        why, known = refusal(ensemble, path, slices) if checks else (None, [])
        if why:
            refused.append({"name": path.name, "slices": len(slices), "why": why})
            continue
        for ct in slices:
            mask_path = Path(masks) / f"{_stem(ct.name)}.png" if masks else None
            lung = _read_mask(mask_path) > 0 if mask_path is not None and mask_path.is_file() else None
            shape = ct.pixels.shape if lung is None else lung.shape
            scores.add(segment_at(ensemble, ct.pixels, shape, ct.pixel_spacing_mm, known), lung, ct.name)
    return {**scores.result(), "refused": refused}


def segment_at(
    ensemble: Ensemble, pixels: np.ndarray, shape: tuple[int, int], spacing_mm=None, known=()
) -> np.ndarray:
    """The served label map of a slice, taken at ``shape`` (the mask's size); at the
    slice's own size, from ``known`` (pixels, labels) where the CT check segmented it."""
    if pixels.shape == shape:
        return Remembered(ensemble, known).segment(pixels, spacing_mm=spacing_mm)
    probs = resize_probabilities(ensemble.probabilities(pixels, spacing_mm), *shape)
    interpolation = cv2.INTER_AREA if shape[0] < pixels.shape[0] else cv2.INTER_LINEAR
    return postprocess(probs, cv2.resize(pixels, shape[::-1], interpolation=interpolation))


def evaluate(
    ensemble: Ensemble, images: Path, masks: Path, lungs: bool = False, checks: bool = True,
    expert: bool = False, groups: dict[str, str] | None = None,
) -> dict:
    """Lesion (or lung) scores of the first slice of each image against its mask; with
    ``checks``, an image the application would refuse scores as nothing found. ``expert``:
    the masks are expert masks (0 outside the lung, 1 lung, 2 infection), scored by
    ``InfectionScores``, per patient by ``groups`` (image stem -> patient; default: one)."""
    matched = pairs(Path(images), Path(masks))
    if not matched:
        raise SystemExit(f"no image in {images} has a mask with the same stem in {masks}")
    scores = InfectionScores() if expert else LungScores() if lungs else LesionScores()
    refused = []
    for image_path, mask_path in matched:
        mask = _read_mask(mask_path)
        ct = read_any(image_path)[0]
        why, known = refusal(ensemble, image_path, [ct]) if checks else (None, [])
        if why:
            refused.append({"name": image_path.name, "slices": 1, "why": why})
            labels = np.full(mask.shape, BACKGROUND, np.uint8)
        else:
            labels = segment_at(ensemble, ct.pixels, mask.shape, ct.pixel_spacing_mm, known)
        if expert:
            scores.add(labels, mask, (groups or {}).get(_stem(image_path.name), ""))
        elif lungs:
            scores.add(labels, mask > 0)
        else:
            if mask.max() > 2:
                raise SystemExit(f"{mask_path} holds values above 2; is it a lung mask? (use --lungs)")
            scores.add(labels, mask)
    return {**scores.result(), "refused": refused}


def _refused_lines(result: dict, counted: str) -> list[str]:
    refused = result.get("refused") or []
    lines = [f"refused by the CT check: {len(refused)} file(s), {counted}"] if refused else []
    return lines + [f"  refused: {r['name']}: {r['why']}" for r in refused]


def format_table(result: dict) -> str:
    if "area_ratio" in result:
        grades = result["grades"]
        lines = [
            f"infection Dice {result['infection']['dice']:.4f}   lung Dice {result['lung']['dice']:.4f}",
            f"predicted / true infection area {result['area_ratio'] or 0:.3f}",
            f"slice grades ({grades['slices']}): agree {grades['agree'] or 0:.1%}, too low {grades['lower'] or 0:.1%}, "
            f"too high {grades['higher'] or 0:.1%}",
            f"per-patient lesion share error {result['patient_share_error'] or 0:.2f} points (mean absolute)",
        ]
        lines += [f"  {g or 'all'}: expert {p['true_share']} % -> shown {p['predicted_share']} %"
                  for g, p in result["patients"].items()]
        return "\n".join(lines + _refused_lines(result, "scored as nothing found"))
    if "ct0_share" in result:
        share = "-" if result["ct0_share"] is None else f"{result['ct0_share']:.1%}"  # no slice accepted
        lines = [
            f"slices {result['slices']} (no lung found: {result['no_lung_slices']})",
            f"graded CT-0 or no lung  {share}",
            f"lesion share of lung    {result['lesion_share_of_lung'] or 0:.2%}",
        ]
        if result["lung"]:
            lines.append(f"lung Dice               {result['lung']['dice']:.4f}")
        lines += [f"  worst: {w['name']} {w['lesion_share']:.1%}" for w in result["worst_slices"]]
        return "\n".join(lines + _refused_lines(result, "not in the figures above"))
    if "lung" in result:
        r = result["lung"]
        lines = [f"slices {result['slices']}",
                 f"lung  Dice {r['dice']:.4f}  IoU {r['iou']:.4f}  per-slice Dice {r['dice_per_slice']:.4f}"]
        return "\n".join(lines + _refused_lines(result, "scored as no lung found"))
    lines = [f"slices {result['slices']}", f"{'class':<14}{'Dice':>8}{'IoU':>8}{'Dice/slice':>12}"]
    for name in ("ggo", "consolidation", "infection"):
        r = result[name]
        per = "-" if r["dice_per_slice"] is None else f"{r['dice_per_slice']:.4f}"
        lines.append(f"{name:<14}{r['dice']:>8.4f}{r['iou']:>8.4f}{per:>12}")
    lines.append(f"pixel accuracy {result['pixel_accuracy']:.4f}")
    return "\n".join(lines + _refused_lines(result, "scored as nothing found"))


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
    parser = argparse.ArgumentParser(prog="python -m segmenter.ml.evaluation.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of slices")
    parser.add_argument("--masks", type=Path, help="folder of mask PNGs with the images' stems")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--lungs", action="store_true", help="masks are lung masks: report lung Dice")
    parser.add_argument("--expert", action="store_true",
                        help="masks are expert masks (0 outside, 1 lung, 2 infection): infection and lung Dice, "
                             "area ratio, slice grades, per-patient shares")
    parser.add_argument("--cases", type=Path,
                        help="with --expert: a CSV with columns stem and case (zenodo-covid-expert/cases.csv)")
    parser.add_argument("--healthy", action="store_true",
                        help="lesion-free scans: report CT-0 share and lesion share (masks optional, lung masks)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR, help="weights directory (default: weights/)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--ensemble-weights", type=float, nargs="+", metavar="W",
        help="override the manifest's weight of each network, in the manifest's order (for choosing them)",
    )
    parser.add_argument("--networks", nargs="+", help="evaluate only these networks of the ensemble")
    parser.add_argument("--no-checks", dest="checks", action="store_false",
                        help="score every file, also those the application's CT check would refuse")
    args = parser.parse_args(argv)
    if not args.healthy and args.masks is None:
        parser.error("--masks is required (except with --healthy)")
    for folder in (args.images, args.masks):
        if folder is not None and not folder.is_dir():
            parser.error(f"{folder} is not a folder")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        ensemble = Ensemble.load(args.weights)
        if args.ensemble_weights or args.networks:
            ensemble = _reweighted(ensemble, args.ensemble_weights, args.networks, parser)
        if args.healthy:
            result = evaluate_healthy(ensemble, args.images, args.masks, checks=args.checks)
        else:
            groups = None
            if args.cases:
                with args.cases.open(newline="") as f:
                    groups = {row["stem"]: row["case"] for row in csv.DictReader(f)}
            result = evaluate(ensemble, args.images, args.masks, lungs=args.lungs, checks=args.checks,
                              expert=args.expert, groups=groups)
    except UnreadableImage as exc:
        sys.exit(f"error: {exc}")
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
