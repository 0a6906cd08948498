"""Write the held-out validation split to PNG folders that ``evaluate`` reads.

    python -m segmenter.ml.training.split --out DIR [--data-root ../shared/data]

DIR/medseg/images + DIR/medseg/masks: the held-out MedSeg slices (original JPEG bytes
and MedSeg masks); DIR/kmader/images + DIR/kmader/masks: the held-out kmader slices as
8-bit PNG in the model's window with their lung masks (255 = lung), and
DIR/kmader/dicom: the same slices calibrated to Hounsfield units and written as CT
DICOM, as a scanner would send them. The split is the one
``python -m segmenter.ml.training.train --holdout`` validates on with the same seed, group
thresholds and fractions, so the model card's validation numbers can be recomputed:

    python -m segmenter.ml.evaluation.evaluate --images DIR/medseg/images --masks DIR/medseg/masks
    python -m segmenter.ml.evaluation.evaluate --images DIR/kmader/images --masks DIR/kmader/masks --lungs
    python -m segmenter.ml.evaluation.evaluate --images DIR/kmader/dicom --masks DIR/kmader/masks --healthy

(the shipped weights come from such a --holdout run, so they never saw these slices).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ..io.dicomwrite import write_ct_dicom
from ..paths import DEFAULT_DATA_ROOT
from .train import TrainConfig, load_datasets

log = logging.getLogger("segmenter.split")


def write_split(cfg: TrainConfig, out: Path) -> dict[str, int]:
    cfg.holdout = True  # with the fractions given: the run's own held-out groups
    cfg.zenodo_limit = 1
    data = load_datasets(cfg)
    root = Path(cfg.data_root)
    for sub in ("medseg/images", "medseg/masks", "kmader/images", "kmader/masks", "kmader/dicom"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for s in data.val_medseg:
        shutil.copyfile(root / "medseg-covid" / "images" / f"{s.name}.jpg", out / "medseg/images" / f"{s.name}.jpg")
        shutil.copyfile(root / "medseg-covid" / "masks" / f"{s.name}.png", out / "medseg/masks" / f"{s.name}.png")
    for s in data.val_kmader:
        Image.fromarray(s.full).save(out / "kmader/images" / f"{s.name}.png")
        write_ct_dicom(s.hu, out / "kmader/dicom" / f"{s.name}.dcm")
        Image.fromarray(np.where(s.mask, 255, 0).astype(np.uint8)).save(out / "kmader/masks" / f"{s.name}.png")
    return {"medseg": len(data.val_medseg), "kmader": len(data.val_kmader)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segmenter.ml.training.split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data-root", default=str(DEFAULT_DATA_ROOT))
    parser.add_argument("--seed", type=int, default=TrainConfig().seed)
    parser.add_argument("--val-fraction-medseg", type=float, default=TrainConfig().val_fraction_medseg)
    parser.add_argument("--val-fraction-kmader", type=float, default=TrainConfig().val_fraction_kmader)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = TrainConfig(data_root=args.data_root, seed=args.seed, val_fraction_medseg=args.val_fraction_medseg,
                      val_fraction_kmader=args.val_fraction_kmader)
    counts = write_split(cfg, args.out)
    log.info("wrote %d MedSeg and %d kmader validation slices to %s", counts["medseg"], counts["kmader"], args.out)


if __name__ == "__main__":
    main()
