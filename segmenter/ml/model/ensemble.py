"""The ensemble: UNet/EfficientNet-b0 and PSPNet/EfficientNet-b2 averaged in probability.

Build it once per process with ``Ensemble.load()`` (verify the weights, build the
networks, export them to ONNX; a few seconds) and call ``segment`` (or
``probabilities``) for each slice. The constructor itself is cheap: it takes ready
runners, one per network (``onnx_runtime.OnnxRunner`` or ``networks.TorchRunner``, the
same call: a float batch in, probabilities out), so that tools can put together other
ensembles (a subset, other weights or scales) without loading anything again.

One instance can be shared between threads. Under ONNX Runtime with at least one thread
per network the networks run side by side (``OnnxOptions``), each on a thread of its own
that takes its calls in order; otherwise calls are serialised by a lock and the networks
use the runtime's intra-op threads for each call. ``segment_stream`` segments a sequence
of slices with the next slice's networks started before this one's labels are finished
(the same labels as ``segment``, a study's slices faster).

Each network runs at its own pixel scale (the manifest's "scale"; see networks.NETWORKS);
a network marked ``"mirror": true`` also sees its input mirrored left-right and its two
outputs are averaged (no shipped network is: see ``train.validate``). Its probabilities
are resized (bilinear) to the slice's size. Combination rule:
p(class) = sum_k w_k softmax(logits_k)(class) / sum_k w_k, with the weights w_k from the
manifest; the label is the most probable class, lung regions that break the anatomy
rules become background, and lesion regions below ``constants.MIN_LESION_AREA_PX`` or
nowhere as sure as ``constants.LESION_MIN_PEAK`` become other lung
(``postprocess.postprocess``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from ..constants import (
    BACKGROUND,
    LESION_LOW,
    LESION_MIN_PEAK,
    LUNG_CLASSES,
    MIN_LESION_AREA_PX,
    MODEL_SCALE,
    NUM_CLASSES,
    SIZE_MULTIPLE,
)
from ..io.ctcheck import LungEvidence
from .networks import NETWORKS, TorchOptions, TorchRunner
from .onnx_runtime import OnnxOptions, OnnxRunner
from .postprocess import postprocess
from .preprocess import (
    Box,
    body_box,
    body_mask,
    normalise,
    pad_to_multiple,
    reference_factor,
    resize_probabilities,
    resize_to_model,
)
from .weights import DEFAULT_WEIGHTS_DIR, load_networks

log = logging.getLogger(__name__)

#: The longest side at which segment_checked mirrors a slice (ctcheck.FLIP_AGREE_MIN was
#: measured on real slices of up to 630 px, each at its own size).
CHECK_SIDE_PX = 640

#: A network ready to run: float32 (N, 1, H, W) in [-1, 1], H and W multiples of
#: SIZE_MULTIPLE -> float32 (N, C, H, W) softmax probabilities.
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class InferenceOptions:
    """How ``Ensemble.load`` runs the networks; every choice gives the same labels up to
    rounding.

    backend: ``OnnxOptions()`` (the served path: each network exported to ONNX Runtime
    at load time, about three times faster than eager torch on a plain CPU) or
    ``TorchOptions()`` (eager torch); each carries the options that apply to it alone.
    crop_to_body: run the networks only on the box around the body, not the air around
    it (either backend).
    """

    backend: OnnxOptions | TorchOptions = field(default_factory=OnnxOptions)
    crop_to_body: bool = True


#: The plain path: eager torch fp32, NCHW, the whole slice. The benchmark's yardstick.
REFERENCE = InferenceOptions(backend=TorchOptions(channels_last=False, bf16=False), crop_to_body=False)
#: The path the application serves.
SERVED = InferenceOptions()


def build_runners(
    networks: dict[str, torch.nn.Module], backend: OnnxOptions | TorchOptions
) -> tuple[dict[str, Runner], bool]:
    """Runners for ``networks`` (eval mode, on the CPU) and whether to run them side by side.

    Under ONNX each network is exported and the dictionary's entry removed, so that
    nothing keeps the torch module alive once its session exists."""
    if isinstance(backend, TorchOptions):
        return {name: TorchRunner(net, backend) for name, net in networks.items()}, False
    threads = torch.get_num_threads()
    parallel = backend.parallel_networks and len(networks) > 1 and threads >= len(networks)
    per_network = threads // len(networks) if parallel else threads
    runners = {}
    for name in list(networks):
        runners[name] = OnnxRunner.export(networks.pop(name), per_network)
    return runners, parallel


class Ensemble:
    """Runners, their averaging weights and the scale each works at; see the module docstring.

    runners: name -> ``Runner``, in the order the probabilities are summed.
    weights: name -> averaging weight (normalised to sum 1; default: equal).
    scales: name -> pixel scale (default: the network's spec, else MODEL_SCALE).
    manifest: the weights' manifest (what ``report.json`` names as the model).
    crop_to_body: see ``InferenceOptions``.
    parallel: run the networks side by side, one thread each (for runners whose sessions
    were built for it; ``build_runners`` says when).
    mirrored: the networks that also see their input mirrored left-right (one batch of
    two), whose two outputs, the second mirrored back, are averaged: the manifest's
    ``"mirror": true``, a choice of the recipe measured by cross-validation.
    min_lesion_px: the smallest lesion region kept, in pixels at the reference grid
    (``postprocess.postprocess``); validation scores other values beside the shipped one.
    min_lesion_peak: the probability a lesion region must reach somewhere to be kept
    (``postprocess.remove_faint_lesions``); likewise.
    lesion_low: the lower edge lesions are grown to (``postprocess.grow_lesions``); likewise.
    """

    def __init__(
        self,
        runners: dict[str, Runner],
        weights: dict[str, float] | None = None,
        scales: dict[str, float] | None = None,
        *,
        manifest: dict | None = None,
        crop_to_body: bool = True,
        parallel: bool = False,
        mirrored: Iterable[str] = (),
        min_lesion_px: int = MIN_LESION_AREA_PX,
        min_lesion_peak: float = LESION_MIN_PEAK,
        lesion_low: float = LESION_LOW,
    ):
        if not runners:
            raise ValueError("an ensemble needs at least one network")
        self.names = list(runners)
        self.runners = [runners[n] for n in self.names]
        raw = [float((weights or {}).get(n, 1.0)) for n in self.names]
        total = sum(raw)
        if total <= 0:
            raise ValueError("ensemble weights must sum to a positive number")
        self.weights = [w / total for w in raw]
        self.scales = [
            float((scales or {}).get(n, NETWORKS[n].scale if n in NETWORKS else MODEL_SCALE))
            for n in self.names
        ]
        self.manifest = manifest or {}
        self.crop_to_body = crop_to_body
        self.parallel = parallel and len(self.runners) > 1
        mirrored = set(mirrored)
        if mirrored - set(self.names):
            raise ValueError(f"mirrored networks {sorted(mirrored - set(self.names))} are not in the ensemble")
        self.mirrored = [n in mirrored for n in self.names]
        self.min_lesion_px = min_lesion_px
        self.min_lesion_peak = min_lesion_peak
        self.lesion_low = lesion_low
        # One thread per network, which alone calls its runner: calls from any thread are
        # taken in order, and a slice's networks can start while another's are finishing.
        self._pools = (
            [ThreadPoolExecutor(1, f"ensemble-{name}") for name in self.names] if self.parallel else None
        )
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls, directory: Path | str = DEFAULT_WEIGHTS_DIR, options: InferenceOptions = SERVED
    ) -> Ensemble:
        """Verify and load the shipped weights and build the runners (raises weights.WeightsError)."""
        networks, weights, manifest = load_networks(Path(directory))
        scales = {name: entry.get("scale", MODEL_SCALE) for name, entry in manifest["networks"].items()}
        mirrored = [name for name, entry in manifest["networks"].items() if entry.get("mirror")]
        log.info("loaded ensemble %s (scales %s, mirrored %s) from %s", list(networks), scales, mirrored, directory)
        return cls.from_networks(networks, weights, scales, options, manifest=manifest, mirrored=mirrored)

    @classmethod
    def from_networks(
        cls,
        networks: dict[str, torch.nn.Module],
        weights: dict[str, float] | None = None,
        scales: dict[str, float] | None = None,
        options: InferenceOptions = SERVED,
        *,
        manifest: dict | None = None,
        mirrored: Iterable[str] = (),
        min_lesion_px: int = MIN_LESION_AREA_PX,
        min_lesion_peak: float = LESION_MIN_PEAK,
        lesion_low: float = LESION_LOW,
    ) -> Ensemble:
        """An ensemble of torch modules in eval mode (training's validation uses it with
        ``TorchOptions``, which keeps the very modules; under ONNX they are exported)."""
        runners, parallel = build_runners(dict(networks), options.backend)
        return cls(
            runners, weights, scales, manifest=manifest, crop_to_body=options.crop_to_body, parallel=parallel,
            mirrored=mirrored, min_lesion_px=min_lesion_px, min_lesion_peak=min_lesion_peak,
            lesion_low=lesion_low,
        )

    def subset(
        self, names: list[str], weights: dict[str, float] | None = None, mirrored: Iterable[str] | None = None
    ) -> Ensemble:
        """The same runners (or some of them) with other averaging weights (or mirroring)."""
        by_name = dict(zip(self.names, self.runners))
        chosen = weights or dict(zip(self.names, self.weights))
        return Ensemble(
            {n: by_name[n] for n in names},
            {n: chosen[n] for n in names},
            dict(zip(self.names, self.scales)),
            manifest=self.manifest,
            crop_to_body=self.crop_to_body,
            parallel=self.parallel,
            mirrored=[n for n in names if n in self.mirrored_names] if mirrored is None else mirrored,
            min_lesion_px=self.min_lesion_px,
            min_lesion_peak=self.min_lesion_peak,
            lesion_low=self.lesion_low,
        )

    @property
    def mirrored_names(self) -> list[str]:
        return [n for n, m in zip(self.names, self.mirrored) if m]

    # -- inference -----------------------------------------------------------------

    def forward(self, k: int, image: np.ndarray) -> np.ndarray:
        """Network k on float32 (H, W) in [-1, 1], H and W multiples of 32 -> softmax (C, H, W)."""
        if self._pools is not None:
            return self._pools[k].submit(self._run, k, image).result()
        with self._lock:
            return self._run(k, image)

    def _run(self, k: int, image: np.ndarray) -> np.ndarray:
        return self.run_batch(k, image[None, None])[0]

    def run_batch(self, k: int, images: np.ndarray) -> np.ndarray:
        """Network k's runner on float32 (N, 1, H, W) -> softmax (N, C, H, W); for a mirrored
        network, the mean of its outputs for the inputs and for the inputs mirrored
        left-right (mirrored back), in one call. Call it on network k's thread or with
        the lock held (``forward`` does)."""
        if not self.mirrored[k]:
            return self.runners[k](images)
        n = len(images)
        both = self.runners[k](np.concatenate([images, images[..., ::-1]]))
        plain = both[:n]
        plain += both[n:, :, :, ::-1]
        plain *= 0.5
        return plain

    def network_input(
        self, k: int, pixels: np.ndarray, factor: float | None = None
    ) -> tuple[np.ndarray, Box, tuple[int, int]]:
        """uint8 (H, W) slice -> network k's input: float32 (h', w') in [-1, 1] padded to
        multiples of SIZE_MULTIPLE, the box of the scaled slice it covers, and the scaled
        slice's (h, w). factor: the slice's reference factor (None: by size)."""
        scaled = resize_to_model(pixels, self.scales[k], factor)
        h, w = scaled.shape
        box = Box(0, h, 0, w)
        if self.crop_to_body:
            # Snapped to the encoders' stride, so the crop keeps the whole slice's
            # downsampling grid and the labels do not shift with the crop.
            body = body_box(scaled)
            box = Box(
                body.top // SIZE_MULTIPLE * SIZE_MULTIPLE,
                body.bottom,
                body.left // SIZE_MULTIPLE * SIZE_MULTIPLE,
                body.right,
            )
        crop = scaled[box.top : box.bottom, box.left : box.right]
        return pad_to_multiple(normalise(crop), value=-1.0), box, (h, w)

    @staticmethod
    def place(probs: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
        """A network's float32 (C, h', w') output for ``network_input``'s box -> (C, h, w)
        probabilities of the whole scaled slice (background outside the box)."""
        probs = probs[:, : box.height, : box.width]
        if box == Box(0, shape[0], 0, shape[1]):
            return np.ascontiguousarray(probs)
        full = np.zeros((NUM_CLASSES, *shape), np.float32)
        full[BACKGROUND] = 1.0
        full[:, box.top : box.bottom, box.left : box.right] = probs
        return full

    def _network_probabilities(self, k: int, pixels: np.ndarray, factor: float | None) -> np.ndarray:
        """uint8 (H, W) slice -> network k's float32 (C, h, w) probabilities at its scale
        (on network k's own thread, or with the lock held)."""
        image, box, shape = self.network_input(k, pixels, factor)
        return self.place(self._run(k, image), box, shape)

    def combine(
        self, probabilities: list[np.ndarray], height: int, width: int, weights: list[float] | None = None
    ) -> np.ndarray:
        """Each network's (C, h_k, w_k) probabilities -> their weighted average at (height, width)
        (weights: the ensemble's own unless given, summing to 1)."""
        weights = self.weights if weights is None else weights
        total = np.empty((probabilities[0].shape[0], height, width), np.float32)
        resize_probabilities(probabilities[0], height, width, out=total)
        total *= weights[0]
        for p, weight in zip(probabilities[1:], weights[1:]):
            for k, channel in enumerate(p):  # one full-size channel at a time
                total[k] += cv2.resize(channel, (width, height), interpolation=cv2.INTER_LINEAR) * weight
        return total

    def probabilities(
        self, pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None, factor: float | None = None
    ) -> np.ndarray:
        """uint8 (H, W) slice -> float32 (C, H, W) class probabilities at the slice's size.

        The slice is brought to the reference grid first (preprocess.reference_factor,
        from ``spacing_mm`` in mm when known, else from the body's size)."""
        if pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W) slice, got {pixels.dtype} {pixels.shape}")
        if factor is None:
            factor = reference_factor(pixels, spacing_mm)
        return self.combine(self._parts(pixels, factor), *pixels.shape)

    def _parts(self, pixels: np.ndarray, factor: float | None) -> list[np.ndarray]:
        """Each network's (C, h_k, w_k) probabilities, side by side where the runners allow."""
        return [f.result() for f in self._start(pixels, factor)]

    def _start(self, pixels: np.ndarray, factor: float | None) -> list[Future]:
        """Each network's probabilities for a slice: started on the networks' own threads
        (returned at once), or computed here under the lock (returned done)."""
        if self._pools is not None:
            return [pool.submit(self._network_probabilities, k, pixels, factor) for k, pool in enumerate(self._pools)]
        done = []
        with self._lock:
            for k in range(len(self.runners)):
                future: Future = Future()
                future.set_result(self._network_probabilities(k, pixels, factor))
                done.append(future)
        return done

    def parts(
        self, pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None
    ) -> tuple[float, np.ndarray, list[np.ndarray]]:
        """uint8 (H, W) slice -> (its reference factor, its body mask, each network's (C, h_k,
        w_k) probabilities): what ``segment`` combines and post-processes, for tools that
        read one slice's probabilities in several ways (``training.foldscore``)."""
        _, factor, body, started = self._begin(pixels, spacing_mm)
        return factor, body, [f.result() for f in started]

    def segment(self, pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> np.ndarray:
        """uint8 (H, W) slice -> uint8 (H, W) label map (see constants for the values)."""
        return self._segment(pixels, spacing_mm)[0]

    def segment_checked(
        self, pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None
    ) -> tuple[np.ndarray, LungEvidence]:
        """segment, and what the networks found, for ctcheck.why_not_lungs: the slice, and
        the slice mirrored left-right and top-bottom (three runs)."""
        labels, parts = self._segment(pixels, spacing_mm)
        h, w = pixels.shape
        lungs, top = [], []
        for p in parts:
            full = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in p])
            lungs.append(full.argmax(0) != BACKGROUND)
            top.append(full.max(0))
        lung = np.isin(labels, LUNG_CLASSES)
        evidence = LungEvidence.measure(lung, lungs, top, pixels)
        del lungs, top
        return labels, replace(evidence, flip_agreement=self._flip_agreement(pixels, lung, spacing_mm))

    def _flip_agreement(self, pixels: np.ndarray, lung: np.ndarray, spacing_mm) -> float:
        """The lower lung Dice of the slice mirrored left-right and top-bottom (segmented and
        mirrored back) with ``lung``, its own lung mask. A slice longer than CHECK_SIDE_PX
        is mirrored at that size (and compared with its lung mask at that size): what
        the thresholds were measured at, at a fraction of the cost of a 4096-px slice."""
        h, w = pixels.shape
        shrink = CHECK_SIDE_PX / max(h, w)
        if shrink < 1.0:
            size = (max(1, round(w * shrink)), max(1, round(h * shrink)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
            lung = cv2.resize(lung.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
            if spacing_mm is not None:
                spacing_mm = (spacing_mm[0] * h / size[1], spacing_mm[1] * w / size[0])
        mirrored_lr = self._segment(np.ascontiguousarray(pixels[:, ::-1]), spacing_mm)[0][:, ::-1]
        mirrored_tb = self._segment(np.ascontiguousarray(pixels[::-1]), spacing_mm)[0][::-1]
        return min(_dice(lung, np.isin(mirrored_lr, LUNG_CLASSES)), _dice(lung, np.isin(mirrored_tb, LUNG_CLASSES)))

    def _segment(self, pixels: np.ndarray, spacing_mm) -> tuple[np.ndarray, list[np.ndarray]]:
        return self._finish(*self._begin(pixels, spacing_mm))

    def _begin(self, pixels: np.ndarray, spacing_mm) -> tuple:
        """What a slice's labels need before its networks run, and the networks started."""
        if pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W) slice, got {pixels.dtype} {pixels.shape}")
        body = body_mask(pixels)  # once: for the scale rule and for the anatomy rules
        factor = reference_factor(pixels, spacing_mm, body)
        return pixels, factor, body, self._start(pixels, factor)

    def _finish(self, pixels, factor, body, started: list[Future]) -> tuple[np.ndarray, list[np.ndarray]]:
        parts = [f.result() for f in started]
        probs = self.combine(parts, *pixels.shape)
        labels = postprocess(probs, pixels, factor, body, self.min_lesion_px, self.min_lesion_peak, self.lesion_low)
        return labels, parts

    def segment_stream(
        self, slices: Iterable[tuple[np.ndarray, tuple[float, float] | None]]
    ) -> Iterator[np.ndarray]:
        """``segment`` of each (pixels, spacing_mm), in order, one slice ahead: the next
        slice's networks are started (on their threads) before this one's probabilities
        are combined and post-processed here, so that the networks do not wait for that.
        At most two slices are in hand."""
        ahead = None
        for pixels, spacing_mm in slices:
            started = self._begin(pixels, spacing_mm)
            if ahead is not None:
                yield self._finish(*ahead)[0]
            ahead = started
        if ahead is not None:
            yield self._finish(*ahead)[0]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 1.0
