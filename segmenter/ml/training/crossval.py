"""Grouped k-fold cross-validation of the training recipe:
``python -m segmenter.ml.training.crossval --folds 3 --out RUN [train options ...]``.

Each fold is one ``segmenter.ml.training.train`` run in ``RUN/fold-K`` that trains on the other
folds and validates on fold K: MedSeg and kmader are cut into folds by look-alike groups
(``data.grouped_folds``), so no slice is scored by a network that saw its neighbours.
Finished folds (a ``validation.json``) are skipped and an interrupted one resumes from its
checkpoint, so the same command can be run again; ``--revalidate`` validates finished
folds again from their checkpoints (when validation has gained members, such as the
mirrored ensembles). ``RUN/crossval.json`` then holds, for the ensemble at each averaging
weight, with and without mirroring, and for each network alone, every headline number
per fold and as mean ± standard deviation over the folds: the numbers the model card
quotes and the ones the ensemble weights are chosen on.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

from .train import parse_args, revalidate, train

log = logging.getLogger("segmenter.crossval")

#: headline name -> how to read it from one member's validation results
HEADLINES = {
    "ggo_dice": lambda r: r["lesion"] and r["lesion"]["ggo"]["dice"],
    "consolidation_dice": lambda r: r["lesion"] and r["lesion"]["consolidation"]["dice"],
    "healthy_ct0_share": lambda r: r["healthy"]["ct0_share"],
    "healthy_lesion_share_of_lung": lambda r: r["healthy"]["lesion_share_of_lung"],
    "healthy_lung_dice": lambda r: r["healthy"]["lung"] and r["healthy"]["lung"]["dice"],
}


def summarise(per_fold: list[dict]) -> dict:
    """member -> headline -> {"folds": [...], "mean": m, "sd": s} over the folds' results."""
    out: dict = {}
    for member in per_fold[0]:
        out[member] = {}
        for name, read in HEADLINES.items():
            values = [read(fold[member]) for fold in per_fold if member in fold]
            values = [float(v) for v in values if v is not None]
            if values:
                out[member][name] = {
                    "folds": [round(v, 4) for v in values],
                    "mean": round(statistics.fmean(values), 4),
                    "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                }
    return out


def table(summary: dict) -> str:
    """A plain-text table of means ± sd, one row per member."""
    names = list(HEADLINES)
    lines = ["member".ljust(20) + "".join(n.ljust(30) for n in names)]
    for member, headlines in summary.items():
        cells = [f"{h['mean']:.3f} ± {h['sd']:.3f}" if (h := headlines.get(n)) else "-" for n in names]
        lines.append(member.ljust(20) + "".join(c.ljust(30) for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m segmenter.ml.training.crossval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="folder of the fold runs (outside the repository)")
    parser.add_argument("--revalidate", action="store_true",
                        help="validate finished folds again from their checkpoints (after validation gained members)")
    args, rest = parser.parse_known_args(argv)
    per_fold = []
    for fold in range(args.folds):
        run = args.out / f"fold-{fold}"
        done = run / "validation.json"
        cfg = parse_args([*rest, "--folds", str(args.folds), "--fold", str(fold), "--out", str(run)])
        if cfg.export:
            raise SystemExit("cross-validation runs export nothing; train the shipped weights with train --export")
        if not done.is_file():
            log.info("fold %d of %d -> %s", fold + 1, args.folds, run)
            train(cfg)
        elif args.revalidate:
            log.info("fold %d of %d: validating %s again", fold + 1, args.folds, run)
            revalidate(cfg)
        per_fold.append(json.loads(done.read_text()))
    summary = {"folds": args.folds, "train_options": rest, "members": summarise(per_fold)}
    (args.out / "crossval.json").write_text(json.dumps(summary, indent=2))
    log.info("cross-validation over %d folds (mean ± sd):\n%s", args.folds, table(summary["members"]))


if __name__ == "__main__":
    main()
