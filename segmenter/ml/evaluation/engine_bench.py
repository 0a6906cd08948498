"""Benchmark the served inference path against the plain reference path, in one process.

    python -m segmenter.ml.bench --json FILE [--slice PATH] [--threads 2] [--runs 15] [--no-variants]

* reference_ms: the plain eager fp32 forward (NCHW, the whole slice at each network's
  scale) of both networks plus softmax averaging, batch 1 -- the networks alone, as the
  seed ran them;
* served_ms: the whole path the application uses for one slice, from the decoded uint8
  array to the label map (resize, body crop, ONNX Runtime forward, upsampling, argmax,
  post-processing);
* agreement: the share of pixels where the served labels equal the reference path's
  labels (reference forward, same pre- and post-processing), pooled over real slices.

Timings are medians of --runs runs after warm-up, with --threads threads (torch's and
ONNX Runtime's). load_ms is the served ensemble's start-up: reading and verifying the
weights and exporting both networks to ONNX.

* variants: the other ways of running the ensemble that were tried (int8 quantisation,
  batches of slices, cheaper PSPNet scales, the networks in turn; see engine_variants),
  each with its ms per slice (timed interleaved with the served path), its agreement with
  the reference on the same slices, and whether it clears the bar (faster than served,
  agreement >= 0.995). They are printed as a table on stderr too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from ..io.imaging import read_slice
from ..model.ensemble import REFERENCE, SERVED, Ensemble
from ..model.postprocess import postprocess
from ..model.preprocess import normalise, pad_to_multiple, resize_to_model
from ..model.weights import load_networks
from ..paths import DEFAULT_DATA_ROOT, DEFAULT_WEIGHTS_DIR
from .engine_variants import AGREEMENT_BAR, Variant, build_variants

DATA_ROOT = DEFAULT_DATA_ROOT

log = logging.getLogger(__name__)


def median_ms(fn, runs: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000.0)
    return statistics.median(times)


def agreement_slices(root: Path, limit: int = 24) -> list[tuple[str, np.ndarray]]:
    """Real slices of every kind we have: DICOM, MedSeg and Zenodo JPEGs."""
    paths = sorted((root / "dicom-samples").glob("*.dcm"))
    paths += sorted((root / "medseg-covid" / "images").glob("*.jpg"))[:10]
    paths += sorted((root / "zenodo-covid-unlabelled" / "images").glob("*.jpg"))[::160][:10]
    return [(p.name, read_slice(p).pixels) for p in paths[:limit]]


def calibration_paths(root: Path) -> list[Path]:
    """Twenty other real slices (none of agreement_slices'), for int8 calibration."""
    paths = sorted((root / "medseg-covid" / "images").glob("*.jpg"))[20:30]
    return paths + sorted((root / "zenodo-covid-unlabelled" / "images").glob("*.jpg"))[80::160][:10]


def measure_variants(
    variants: list[Variant],
    pixels: np.ndarray,
    slices: list[tuple[str, np.ndarray]],
    references: list[np.ndarray],
    runs: int,
) -> list[dict]:
    """ms per slice of each variant (interleaved rounds, median) and its agreement with the
    reference labels of ``slices``."""
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for v in variants:  # warm-up
        v.segment([pixels] * v.batch)
    for _ in range(runs):
        for v in variants:
            t = time.perf_counter()
            v.segment([pixels] * v.batch)
            times[v.name].append((time.perf_counter() - t) * 1000.0 / v.batch)
    served_ms = next(statistics.median(times[v.name]) for v in variants if v.served)
    rows = []
    for v in variants:
        labels = v.segment([px for _, px in slices])
        equal = [int(np.count_nonzero(a == b)) for a, b in zip(labels, references)]
        agreement = sum(equal) / sum(r.size for r in references)
        ms = statistics.median(times[v.name])
        rows.append(
            {
                "variant": v.name,
                "ms_per_slice": ms,
                "agreement": agreement,
                "agreement_min_slice": min(e / r.size for e, r in zip(equal, references)),
                "clears_bar": bool(v.served or (ms < served_ms and agreement >= AGREEMENT_BAR)),
                "served": v.served,
                "note": v.note,
            }
        )
    return rows


def variants_table(rows: list[dict]) -> str:
    lines = [f"{'variant':<78} {'ms/slice':>8} {'agreement':>9}  bar  served"]
    for r in rows:
        lines.append(
            f"{r['variant']:<78} {r['ms_per_slice']:>8.1f} {r['agreement']:>9.4f}  "
            f"{'yes' if r['clears_bar'] else 'no ':<4} {'yes' if r['served'] else 'no'}"
        )
    return "\n".join(lines)


def reference_labels(reference: Ensemble, pixels: np.ndarray) -> np.ndarray:
    return postprocess(reference.probabilities(pixels), pixels)


def run(weights: Path, slice_path: Path, threads: int, runs: int, variants: bool = True) -> dict:
    torch.set_num_threads(threads)
    t = time.perf_counter()
    served = Ensemble.load(weights, SERVED)
    load_ms = (time.perf_counter() - t) * 1000.0
    reference = Ensemble.load(weights, REFERENCE)
    pixels = read_slice(slice_path).pixels

    # The reference: each network on its whole padded input, softmax, then the weighted
    # average on one grid (the slice's), as in the seed.
    inputs = [pad_to_multiple(normalise(resize_to_model(pixels, s)), value=-1.0) for s in reference.scales]

    def reference_forward():
        probs = [reference.forward(k, x) for k, x in enumerate(inputs)]
        return reference.combine(probs, *pixels.shape)

    reference_ms = median_ms(reference_forward, runs)
    served_ms = median_ms(lambda: served.segment(pixels), runs)
    reference_path_ms = median_ms(lambda: reference_labels(reference, pixels), max(3, runs // 3))

    same = total = 0
    per_slice = {}
    slices = agreement_slices(DATA_ROOT)
    references = []
    for name, px in slices:
        a, b = served.segment(px), reference_labels(reference, px)
        references.append(b)
        eq = int(np.count_nonzero(a == b))
        same, total = same + eq, total + a.size
        per_slice[name] = eq / a.size
    tried = []
    if variants:
        networks, _, _ = load_networks(Path(weights))
        tried = measure_variants(
            build_variants(served, networks, calibration_paths(DATA_ROOT)), pixels, slices, references, runs
        )
    return {
        "reference_ms": reference_ms,
        "served_ms": served_ms,
        "ratio": served_ms / reference_ms,
        "agreement": same / total,
        "agreement_slices": len(per_slice),
        "agreement_min_slice": min(per_slice.values()),
        "reference_path_ms": reference_path_ms,
        "load_ms": load_ms,
        "slice": str(slice_path),
        "slice_shape": list(pixels.shape),
        "model_input_shapes": {n: list(x.shape) for n, x in zip(reference.names, inputs)},
        "threads": threads,
        "runs": runs,
        "served_options": {"backend": type(SERVED.backend).__name__, **dataclasses.asdict(SERVED)},
        "variants": tried,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }


def report(result: dict, path: Path | None, out: TextIO | None = None) -> None:
    """Write the results as JSON to ``out`` (standard output when None: the benchmark
    commands' own output, for machines; their tables for people go through logging),
    and to ``path`` when given."""
    text = json.dumps(result, indent=2, default=str)
    (out or sys.stdout).write(text + "\n")
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m segmenter.ml.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--slice", type=Path, default=DATA_ROOT / "dicom-samples" / "0.dcm")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument(
        "--no-variants", action="store_true", help="skip the variants tried beside the served path"
    )
    args = parser.parse_args(argv)
    if args.runs < 10:
        parser.error("--runs must be at least 10")
    result = run(args.weights, args.slice, args.threads, args.runs, variants=not args.no_variants)
    report(result, args.json)
    if result["variants"]:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        log.info("%s", variants_table(result["variants"]))


if __name__ == "__main__":
    main()
