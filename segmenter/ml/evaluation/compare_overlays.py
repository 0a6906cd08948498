"""Render slices side by side under two sets of weights, for looking at, not for scoring:
``python -m segmenter.ml.evaluation.compare_overlays --before DIR --after DIR --out FILE.jpg
IMAGE [IMAGE ...] [--masks DIR]``.

One row per slice: the slice as the application reads it; the expert's infection outlined
in white over it (with ``--masks``: a PNG of the image's stem, expert values 0 outside the
lung, 1 lung, 2 infection); the overlay of the ``--before`` weights; the overlay of the
``--after`` weights (GGO and consolidation in the application's default colours, other lung
faint), each captioned with the grade and lesion share the application would report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ..io.imaging import read_slice
from ..model.ensemble import Ensemble
from ..results.overlay import render_overlay
from ..results.severity import assess, measure
from .metrics import EXPERT_INFECTION

TILE = 320


def _tile(rgb: np.ndarray, caption: str) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = TILE / max(h, w)
    rgb = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_NEAREST)
    tile = np.zeros((TILE + 22, TILE, 3), np.uint8)
    tile[22 : 22 + rgb.shape[0], : rgb.shape[1]] = rgb
    cv2.putText(tile, caption, (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _caption(labels: np.ndarray, pixel_mm) -> str:
    severity = assess(measure(labels, pixel_mm))
    if severity.lesion_percent is None:
        return "no lung found"
    return f"{severity.grade}  {severity.lesion_percent:.1f} % of lung"


def row(path: Path, before: Ensemble, after: Ensemble, masks: Path | None) -> np.ndarray:
    ct = read_slice(path)
    pixels = ct.pixels
    grey = cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    tiles = [_tile(grey, path.stem[-28:])]
    mask_path = masks / f"{path.stem}.png" if masks else None
    if mask_path and mask_path.is_file():
        mask = np.asarray(Image.open(mask_path))
        outlined = grey.copy()
        contours, _ = cv2.findContours((mask == EXPERT_INFECTION).astype(np.uint8), cv2.RETR_LIST,
                                       cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outlined, contours, -1, (255, 255, 255), 1)
        lesion, lung = int((mask == EXPERT_INFECTION).sum()), int((mask > 0).sum())
        tiles.append(_tile(outlined, f"expert: {100 * lesion / lung:.1f} % of lung" if lung else "expert"))
    for name, ens in (("before", before), ("after", after)):
        labels = ens.segment(pixels, spacing_mm=ct.pixel_spacing_mm)
        tiles.append(_tile(render_overlay(pixels, labels), f"{name}: {_caption(labels, ct.pixel_spacing_mm)}"))
    return np.concatenate(tiles, axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segmenter.ml.evaluation.compare_overlays",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--before", type=Path, required=True, help="weights folder (manifest.json)")
    parser.add_argument("--after", type=Path, required=True, help="weights folder (manifest.json)")
    parser.add_argument("--masks", type=Path, help="expert masks (0 outside, 1 lung, 2 infection) by stem")
    parser.add_argument("--out", type=Path, required=True, help="a .jpg or .png file")
    args = parser.parse_args(argv)
    before, after = Ensemble.load(args.before), Ensemble.load(args.after)
    rows = [row(p, before, after, args.masks) for p in args.images]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, quality=88)


if __name__ == "__main__":
    main()
