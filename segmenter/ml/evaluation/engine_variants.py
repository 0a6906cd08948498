"""The ways of running the ensemble that the engine benchmark tries beside the served one.

Each variant is timed, interleaved with the others (so that a busy machine slows them
alike), on the benchmark's slice, and its labels are compared with the eager fp32
reference on the same real slices as the served path's. The bar for serving a variant:
faster than what is served, and labels agreeing with the reference on >= AGREEMENT_BAR
of the pixels. What each found, on the 2-core machine, is in the README's speed section;
``note`` says why a variant is or is not served.

Only the served path is engine code (``model.ensemble``); the others are built here from
the same pieces (``OnnxRunner`` on other ONNX graphs, other scales, a batch through
``Ensemble.network_input`` / ``place``) and serve nothing.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io.imaging import read_slice
from ..model.ensemble import Ensemble
from ..model.onnx_runtime import OnnxRunner, export_onnx
from ..model.postprocess import postprocess
from ..model.preprocess import body_mask, reference_factor

log = logging.getLogger(__name__)

#: Labels agreeing with the eager fp32 reference on at least this share of the pixels.
AGREEMENT_BAR = 0.995
#: Slices per call of the batched variant.
BATCH = 4


@dataclass
class Variant:
    """One way of running the ensemble.

    segment: a list of uint8 (H, W) slices -> their label maps (one call per timed batch).
    batch: how many copies of the benchmark's slice one timed call gets.
    served: whether this is the path the application serves.
    """

    name: str
    segment: Callable[[list[np.ndarray]], list[np.ndarray]]
    note: str
    batch: int = 1
    served: bool = False


def one_by_one(ensemble: Ensemble) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    return lambda slices: [ensemble.segment(p) for p in slices]


def batched(ensemble: Ensemble, batch: int = BATCH) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """Slices ``batch`` at a time through each network: each network's inputs padded (with
    air) to the largest in the batch and run as one (N, 1, H, W) call, the networks side by
    side as served; the rest as ``Ensemble.segment``."""
    pool = ThreadPoolExecutor(len(ensemble.runners))

    def run_network(k: int, slices, factors) -> list[np.ndarray]:
        inputs = [ensemble.network_input(k, p, f) for p, f in zip(slices, factors)]
        height = max(x.shape[0] for x, _, _ in inputs)
        width = max(x.shape[1] for x, _, _ in inputs)
        stack = np.full((len(inputs), 1, height, width), -1.0, np.float32)
        for i, (x, _, _) in enumerate(inputs):
            stack[i, 0, : x.shape[0], : x.shape[1]] = x
        probs = ensemble.run_batch(k, stack)
        return [ensemble.place(probs[i], box, shape) for i, (_, box, shape) in enumerate(inputs)]

    def segment(slices: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for start in range(0, len(slices), batch):
            chunk = slices[start : start + batch]
            bodies = [body_mask(p) for p in chunk]
            factors = [reference_factor(p, None, b) for p, b in zip(chunk, bodies)]
            n = len(ensemble.runners)
            per_network = list(pool.map(run_network, range(n), [chunk] * n, [factors] * n))
            for i, (p, f, b) in enumerate(zip(chunk, factors, bodies)):
                probs = ensemble.combine([parts[i] for parts in per_network], *p.shape)
                out.append(postprocess(probs, p, f, b))
        return out

    return segment


def network_inputs(ensemble: Ensemble, k: int, paths: list[Path]) -> list[np.ndarray]:
    """Network k's served inputs, (1, 1, h, w), for the slices at ``paths`` (calibration)."""
    out = []
    for path in paths:
        pixels = read_slice(path).pixels
        image, _, _ = ensemble.network_input(k, pixels, reference_factor(pixels))
        out.append(image[None, None])
    return out


def quantised(
    models: dict[str, bytes], mode: str, calibration: dict[str, list[np.ndarray]]
) -> dict[str, bytes]:
    """ONNX Runtime int8 quantisation of each model: ``mode`` "static" (QDQ, per-channel
    int8 weights, uint8 activations, MinMax ranges averaged over ``calibration``; the VNNI
    path) or "dynamic" (int8 weights, activation ranges per call)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, images: list[np.ndarray]):
            self.feeds = iter([{"image": x} for x in images])

        def get_next(self):
            return next(self.feeds, None)

    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, model in models.items():
            plain, prepared, result = (Path(folder) / f"{name}-{s}.onnx" for s in ("fp32", "pre", "int8"))
            plain.write_bytes(model)
            quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
            if mode == "static":
                quantize_static(
                    str(prepared),
                    str(result),
                    Reader(calibration[name]),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"CalibMovingAverage": True},
                )
            else:
                quantize_dynamic(str(prepared), str(result), weight_type=QuantType.QInt8, per_channel=True)
            out[name] = result.read_bytes()
    return out


def build_variants(
    served: Ensemble, networks: dict[str, torch.nn.Module], calibration_paths: list[Path]
) -> list[Variant]:
    """The served ensemble and the variants tried beside it (see the module docstring).

    networks: the same weights as torch modules, to export again; calibration_paths: real
    slices that the agreement measurement does not use."""
    threads = torch.get_num_threads()
    weights, scales = dict(zip(served.names, served.weights)), dict(zip(served.names, served.scales))
    runners = dict(zip(served.names, served.runners))
    models = {name: export_onnx(net) for name, net in networks.items()}
    in_turn = {name: OnnxRunner(model, threads) for name, model in models.items()}
    side = max(1, threads // len(models))
    calibration = {name: network_inputs(served, k, calibration_paths) for k, name in enumerate(served.names)}
    static = quantised(models, "static", calibration)
    dynamic = quantised(models, "dynamic", calibration)

    def ensemble(chosen: dict, other_scales: dict | None = None, parallel: bool = True) -> Ensemble:
        return Ensemble(
            chosen, weights, {**scales, **(other_scales or {})}, parallel=parallel, mirrored=served.mirrored_names
        )

    unet, psp = served.names
    return [
        Variant(
            "served: ONNX fp32, the two networks side by side, one thread each",
            one_by_one(served),
            "served (OnnxOptions.parallel_networks); the same labels as in turn",
            served=True,
        ),
        Variant(
            "ONNX fp32, the networks in turn, all threads each",
            one_by_one(ensemble(in_turn, parallel=False)),
            "the previous served path",
        ),
        Variant(
            f"batches of {BATCH} slices through each network, side by side",
            batched(served),
            "each network's inputs padded with air to the batch's largest",
            batch=BATCH,
        ),
        Variant(
            f"{unet} static int8 (QDQ, MinMax on {len(calibration_paths)} other slices), {psp} fp32",
            one_by_one(ensemble({unet: OnnxRunner(static[unet], side), psp: runners[psp]})),
            "ranges would have to ship beside the weights",
        ),
        Variant(
            "both networks static int8 (QDQ)",
            one_by_one(ensemble({n: OnnxRunner(m, side) for n, m in static.items()})),
            "ranges would have to ship beside the weights",
        ),
        Variant(
            "both networks dynamic int8",
            one_by_one(ensemble({n: OnnxRunner(m, side) for n, m in dynamic.items()})),
            "convolutions become ConvInteger",
        ),
        Variant(
            f"{psp} at scale 0.875 (448 px for a 512 px slice)",
            one_by_one(ensemble(runners, {psp: 0.875})),
            "not served even where it clears the bar: off the scale it was trained at, and "
            "on 40 held-out healthy slices CT-0 fell from 85 to 82.5 % (see the README)",
        ),
        Variant(f"{psp} at scale 0.75", one_by_one(ensemble(runners, {psp: 0.75})), "a cheaper input still"),
    ]
