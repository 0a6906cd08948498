"""Score the held-out slices of finished fold runs under many ways of reading the
probabilities, each network run once per slice:
``python -m segmenter.ml.training.foldscore RUN/fold-0 RUN/fold-1 ... [--json FILE]``.

Each run (``train --folds K --fold k``, possibly ``--no-final-validation``) is rebuilt
from its ``config.json`` and ``checkpoint.pt``; its held-out slices are the ones training
left out (``train.load_datasets``): whole patients of the expert-masked Zenodo slices,
look-alike groups of MedSeg and kmader. Per slice each network's probabilities are
computed once (``Ensemble.parts``) and every *member*, an averaging share of the first
network and a lower lesion edge (``postprocess.grow_lesions``; 1.00: none), labels them
through the served post-processing. Reported per fold and as mean ± sd over folds:

* expert (Zenodo, unseen patients): infection and lung Dice, predicted / true infection
  area, slice grades agreeing / too low / too high, mean per-patient lesion-share error;
* medseg: GGO, consolidation and infection Dice, predicted / true area of each;
* healthy (kmader, lesion-free): share read CT-0, lesion share of lung, lung Dice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
from pathlib import Path

import numpy as np
import torch

from ..evaluation.metrics import HealthyScores, InfectionScores, LesionScores, MEDSEG_CONSOLIDATION, MEDSEG_GGO
from ..constants import CONSOLIDATION_MIN_GREY, LESION_LOW, LESION_MIN_PEAK
from ..model.ensemble import Ensemble, InferenceOptions
from ..model.networks import TorchOptions
from ..model.postprocess import postprocess, split_by_density
from .augment import AugmentConfig
from .train import TrainConfig, build_training_networks, load_datasets

log = logging.getLogger("segmenter.foldscore")

DEFAULT_SHARES = (0.5, 0.7)
DEFAULT_LOWS = (1.0, 0.4, 0.3, 0.2, 0.15, 0.1)
#: Grey levels (model window) above which a lesion pixel is read as consolidation, scored
#: beside the networks' own split (``postprocess.split_by_density``).
DEFAULT_DENSITIES = (120.0, 130.0, 140.0)


def load_run(run: Path) -> tuple[TrainConfig, dict[str, torch.nn.Module]]:
    """A fold run's config and its networks at the last checkpoint (eval mode, CPU)."""
    saved = json.loads((run / "config.json").read_text())
    augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.pop("augment").items()})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields})
    cfg.augment, cfg.device = augment, "cpu"
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    if int(ckpt["step"]) != cfg.steps:
        raise SystemExit(f"{run} is at step {ckpt['step']} of {cfg.steps}: finish it first")
    nets = build_training_networks(cfg)
    for k in nets:
        nets[k].load_state_dict(ckpt["nets"][k])
        nets[k].eval()
    return cfg, nets


def _area_ratio(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    return int(np.count_nonzero(pred)), int(np.count_nonzero(truth))


def score_run(run: Path, shares, lows, densities=(), peaks=()) -> dict:
    """member label -> {"expert": ..., "medseg": ..., "healthy": ...} for one fold run."""
    cfg, nets = load_run(run)
    data = load_datasets(cfg)
    plan = cfg.plan()
    options = InferenceOptions(backend=TorchOptions(channels_last=True, bf16=False), crop_to_body=True)
    ens = Ensemble.from_networks(nets, None, {n: p[0] for n, p in plan.items()}, options)
    members = {
        f"{share:.1f}/{1 - share:.1f}, low {low:.2f}": (share, low, None, False, LESION_MIN_PEAK)
        for share in shares for low in lows
    }
    for dense in densities:  # the networks' GGO/consolidation split against one by density, or both
        for low in lows:
            members[f"0.7/0.3, low {low:.2f}, density {dense:.0f}"] = (0.7, low, dense, False, LESION_MIN_PEAK)
            members[f"0.7/0.3, low {low:.2f}, networks or density {dense:.0f}"] = (
                0.7, low, dense, True, LESION_MIN_PEAK)
    for peak in peaks:  # the shipped reading with another faint-lesion peak
        members[f"shipped, lesion peak {peak:.2f}"] = (0.7, LESION_LOW, CONSOLIDATION_MIN_GREY, True, peak)
    scores = {
        m: {"expert": InfectionScores(), "medseg": LesionScores(), "healthy": HealthyScores(), "areas": {}}
        for m in members
    }

    def labels_of(pixels):
        factor, body, parts = ens.parts(pixels)
        out = {}
        cache = {}
        for m, (share, low, dense, keep, peak) in members.items():
            if share not in cache:
                cache[share] = ens.combine(parts, *pixels.shape, weights=[share, 1 - share])
            if (share, low, peak) not in cache:
                cache[share, low, peak] = postprocess(
                    cache[share], pixels, factor, body, min_lesion_peak=peak, lesion_low=low, dense_grey=None
                )
            out[m] = cache[share, low, peak]
            if dense is not None:
                out[m] = split_by_density(out[m], pixels, dense, keep)
        return out

    with torch.inference_mode():
        for s in data.val_expert:
            for m, labels in labels_of(s.full).items():
                scores[m]["expert"].add(labels, s.mask, s.group)
        for s in data.val_medseg:
            for m, labels in labels_of(s.full).items():
                scores[m]["medseg"].add(labels, s.mask)
                areas = scores[m]["areas"]
                for name, pred, truth in (
                    ("ggo", labels == 0, s.mask == MEDSEG_GGO),
                    ("consolidation", labels == 1, s.mask == MEDSEG_CONSOLIDATION),
                ):
                    p, t = _area_ratio(pred, truth)
                    areas[name] = [areas.get(name, [0, 0])[0] + p, areas.get(name, [0, 0])[1] + t]
        for s in data.val_kmader:
            for m, labels in labels_of(s.full).items():
                scores[m]["healthy"].add(labels, s.mask, s.name)
    out = {}
    for m, sc in scores.items():
        out[m] = {
            "expert": sc["expert"].result() if data.val_expert else None,
            "medseg": sc["medseg"].result() if data.val_medseg else None,
            "medseg_area_ratio": {k: (p / t if t else None) for k, (p, t) in sc["areas"].items()},
            "healthy": sc["healthy"].result() if data.val_kmader else None,
        }
    return out


HEADLINES = {
    "infection_dice": lambda r: r["expert"] and r["expert"]["infection"]["dice"],
    "area_ratio": lambda r: r["expert"] and r["expert"]["area_ratio"],
    "grades_agree": lambda r: r["expert"] and r["expert"]["grades"]["agree"],
    "grades_lower": lambda r: r["expert"] and r["expert"]["grades"]["lower"],
    "grades_higher": lambda r: r["expert"] and r["expert"]["grades"]["higher"],
    "patient_error_pts": lambda r: r["expert"] and r["expert"]["patient_share_error"],
    "lung_dice": lambda r: r["expert"] and r["expert"]["lung"]["dice"],
    "ggo_dice": lambda r: r["medseg"] and r["medseg"]["ggo"]["dice"],
    "cons_dice": lambda r: r["medseg"] and r["medseg"]["consolidation"]["dice"],
    "ggo_area": lambda r: r["medseg_area_ratio"].get("ggo"),
    "cons_area": lambda r: r["medseg_area_ratio"].get("consolidation"),
    "healthy_ct0": lambda r: r["healthy"] and r["healthy"]["ct0_share"],
    "healthy_lesion": lambda r: r["healthy"] and r["healthy"]["lesion_share_of_lung"],
}


def summarise(per_fold: list[dict]) -> dict:
    """member -> headline -> {"folds", "mean", "sd"}."""
    out: dict = {}
    for member in per_fold[0]:
        out[member] = {}
        for name, read in HEADLINES.items():
            values = [v for fold in per_fold if (v := read(fold[member])) is not None]
            if values:
                out[member][name] = {
                    "folds": [round(float(v), 4) for v in values],
                    "mean": round(statistics.fmean(values), 4),
                    "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
                }
    return out


def table(summary: dict) -> str:
    names = list(HEADLINES)
    lines = ["member".ljust(20) + "".join(n[:14].rjust(15) for n in names)]
    for member, h in summary.items():
        cells = [f"{h[n]['mean']:.3f}±{h[n]['sd']:.3f}" if n in h else "-" for n in names]
        lines.append(member.ljust(20) + "".join(c.rjust(15) for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    parser = argparse.ArgumentParser(prog="python -m segmenter.ml.training.foldscore", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished fold runs (train --folds K --fold k --out RUN)")
    parser.add_argument("--shares", nargs="+", type=float, default=list(DEFAULT_SHARES))
    parser.add_argument("--lows", nargs="+", type=float, default=list(DEFAULT_LOWS))
    parser.add_argument("--densities", nargs="*", type=float, default=list(DEFAULT_DENSITIES))
    parser.add_argument("--peaks", nargs="*", type=float, default=[],
                        help="also score the shipped reading with these faint-lesion peaks")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write per-fold results and the summary here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    per_fold = []
    for run in args.runs:
        cached = run / "foldscore.json"
        key = {"shares": args.shares, "lows": args.lows, "densities": args.densities, "peaks": args.peaks}
        if cached.is_file() and json.loads(cached.read_text()).get("key") == key:
            per_fold.append(json.loads(cached.read_text())["results"])
            continue
        log.info("scoring %s", run)
        results = score_run(run, args.shares, args.lows, args.densities, args.peaks)
        cached.write_text(json.dumps({"key": key, "results": results}, indent=1))
        per_fold.append(results)
    summary = summarise(per_fold)
    if args.json:  # the summary (what a manifest quotes); each fold's results stay in RUN/foldscore.json
        args.json.write_text(json.dumps({
            "command": "python -m segmenter.ml.training.foldscore " + " ".join(str(r) for r in args.runs),
            "folds": len(args.runs),
            "summary": summary,
        }, indent=1))
    log.info("held-out folds (mean ± sd over %d):\n%s", len(args.runs), table(summary))


if __name__ == "__main__":
    main()
