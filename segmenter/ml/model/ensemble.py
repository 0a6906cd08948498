"""The ensemble: UNet/EfficientNet-b0 and PSPNet/EfficientNet-b2 averaged in probability.

Build it once per process with ``Ensemble.load()`` and call ``segment`` (or
``probabilities``) for each slice. Calls are serialised by a lock, so one instance can be
shared between threads; the networks use the runtime's intra-op threads for each call.

Each network runs at its own pixel scale (the manifest's "scale"; see networks.NETWORKS),
and its probabilities are resized (bilinear) to the slice's size. Combination rule:
p(class) = sum_k w_k softmax(logits_k)(class) / sum_k w_k, with the weights w_k from the
manifest; the label is the most probable class, lung regions that break the anatomy
rules become background and lesion regions below ``constants.MIN_LESION_AREA_PX``
become other lung (``postprocess.postprocess``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..constants import BACKGROUND, LUNG_CLASSES, MODEL_SCALE, NUM_CLASSES, SIZE_MULTIPLE
from ..io.ctcheck import LungEvidence
from .networks import NETWORKS
from .onnx_runtime import OnnxNetwork
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


@dataclass(frozen=True)
class InferenceOptions:
    """How the forward pass runs; all settings give the same labels up to rounding.

    onnx: run the networks in ONNX Runtime (exported at load time; see onnx_runtime),
    about three times faster than eager torch on a plain CPU. The torch-only options
    below then do not apply.
    channels_last: run torch convolutions on NHWC tensors (faster with oneDNN on CPU).
    crop_to_body: run the networks only on the box around the body, not the air around it.
    bf16: autocast torch to bfloat16 (faster only on CPUs with native bf16 matrix units).
    """

    onnx: bool = True
    channels_last: bool = True
    crop_to_body: bool = True
    bf16: bool = False


#: The plain path: eager torch fp32, NCHW, the whole slice. The benchmark's yardstick.
REFERENCE = InferenceOptions(onnx=False, channels_last=False, crop_to_body=False, bf16=False)
#: The path the application serves.
SERVED = InferenceOptions()


class Ensemble:
    """Networks, their averaging weights and the scale each works at; see the module docstring."""

    def __init__(
        self,
        networks: dict[str, torch.nn.Module],
        weights: dict[str, float] | None = None,
        options: InferenceOptions = SERVED,
        manifest: dict | None = None,
        scales: dict[str, float] | None = None,
        runners: dict[str, OnnxNetwork] | None = None,
    ):
        if not networks:
            raise ValueError("an ensemble needs at least one network")
        self.options = options
        self.manifest = manifest or {}
        self.names = list(networks)
        self.networks = [networks[n] for n in self.names]
        raw = [float((weights or {}).get(n, 1.0)) for n in self.names]
        total = sum(raw)
        if total <= 0:
            raise ValueError("ensemble weights must sum to a positive number")
        self.weights = [w / total for w in raw]
        self.scales = [float((scales or {}).get(n, NETWORKS[n].scale if n in NETWORKS else MODEL_SCALE)) for n in self.names]
        if options.channels_last and not options.onnx:
            self.networks = [net.to(memory_format=torch.channels_last) for net in self.networks]
        self.runners: list[OnnxNetwork] = []
        if options.onnx:
            runners = runners or {}
            self.runners = [runners.get(n) or OnnxNetwork(net) for n, net in zip(self.names, self.networks)]
        self._lock = threading.Lock()

    @classmethod
    def load(cls, directory: Path | str = DEFAULT_WEIGHTS_DIR, options: InferenceOptions = SERVED) -> Ensemble:
        """Verify and load the shipped weights (raises weights.WeightsError)."""
        networks, weights, manifest = load_networks(Path(directory))
        scales = {name: entry.get("scale", MODEL_SCALE) for name, entry in manifest["networks"].items()}
        log.info("loaded ensemble %s (scales %s) from %s", list(networks), scales, directory)
        return cls(networks, weights, options, manifest, scales)

    def subset(self, names: list[str], weights: dict[str, float] | None = None) -> Ensemble:
        """The same networks (or some of them) with other averaging weights."""
        by_name = dict(zip(self.names, self.networks))
        chosen = weights or dict(zip(self.names, self.weights))
        return Ensemble(
            {n: by_name[n] for n in names}, {n: chosen[n] for n in names}, self.options, self.manifest,
            dict(zip(self.names, self.scales)), dict(zip(self.names, self.runners)),
        )

    # -- inference -----------------------------------------------------------------

    def forward(self, k: int, image: np.ndarray) -> np.ndarray:
        """Network k on float32 (H, W) in [-1, 1], H and W multiples of 32 -> softmax (C, H, W)."""
        if self.runners:
            with self._lock:
                logits = torch.from_numpy(self.runners[k](image[None, None]))
            return torch.softmax(logits, dim=1)[0].numpy()
        net = self.networks[k]
        if net.training:
            raise RuntimeError("ensemble networks must be in eval() mode for inference")
        x = torch.from_numpy(image[None, None])
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.options.bf16 else contextlib.nullcontext()
        )
        with self._lock, torch.inference_mode(), autocast:
            return torch.softmax(net(x).float(), dim=1)[0].numpy()

    def network_probabilities(self, k: int, pixels: np.ndarray, factor: float | None = None) -> np.ndarray:
        """uint8 (H, W) slice -> network k's float32 (C, h, w) probabilities at its scale.

        factor: the slice's reference factor (preprocess.reference_factor); None: by size."""
        scaled = resize_to_model(pixels, self.scales[k], factor)
        h, w = scaled.shape
        box = Box(0, h, 0, w)
        if self.options.crop_to_body:
            # Snapped to the encoders' stride, so the crop keeps the whole slice's
            # downsampling grid and the labels do not shift with the crop.
            body = body_box(scaled)
            box = Box(body.top // SIZE_MULTIPLE * SIZE_MULTIPLE, body.bottom,
                      body.left // SIZE_MULTIPLE * SIZE_MULTIPLE, body.right)
        crop = scaled[box.top : box.bottom, box.left : box.right]
        probs = self.forward(k, pad_to_multiple(normalise(crop), value=-1.0))[:, : box.height, : box.width]
        if box == Box(0, h, 0, w):
            return np.ascontiguousarray(probs)
        full = np.zeros((NUM_CLASSES, h, w), np.float32)
        full[BACKGROUND] = 1.0
        full[:, box.top : box.bottom, box.left : box.right] = probs
        return full

    def combine(self, probabilities: list[np.ndarray], height: int, width: int) -> np.ndarray:
        """Each network's (C, h_k, w_k) probabilities -> their weighted average at (height, width)."""
        total = np.empty((probabilities[0].shape[0], height, width), np.float32)
        resize_probabilities(probabilities[0], height, width, out=total)
        total *= self.weights[0]
        for p, weight in zip(probabilities[1:], self.weights[1:]):
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
        parts = [self.network_probabilities(k, pixels, factor) for k in range(len(self.networks))]
        return self.combine(parts, *pixels.shape)

    def segment(self, pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> np.ndarray:
        """uint8 (H, W) slice -> uint8 (H, W) label map (see constants for the values)."""
        return self._segment(pixels, spacing_mm)[0]

    def segment_checked(
        self, pixels: np.ndarray, spacing_mm: tuple[float, float] | None = None
    ) -> tuple[np.ndarray, LungEvidence]:
        """segment, and what the networks found, for ctcheck.why_not_lungs (one run)."""
        labels, parts = self._segment(pixels, spacing_mm)
        h, w = pixels.shape
        lungs, top = [], []
        for p in parts:
            full = np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in p])
            lungs.append(full.argmax(0) != BACKGROUND)
            top.append(full.max(0))
        return labels, LungEvidence.measure(np.isin(labels, LUNG_CLASSES), lungs, top)

    def _segment(self, pixels: np.ndarray, spacing_mm) -> tuple[np.ndarray, list[np.ndarray]]:
        if pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W) slice, got {pixels.dtype} {pixels.shape}")
        body = body_mask(pixels)  # once: for the scale rule and for the anatomy rules
        factor = reference_factor(pixels, spacing_mm, body)
        parts = [self.network_probabilities(k, pixels, factor) for k in range(len(self.networks))]
        return postprocess(self.combine(parts, *pixels.shape), pixels, factor, body), parts
