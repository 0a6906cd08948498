"""The ensemble: UNet/EfficientNet-b0 and PSPNet/EfficientNet-b2 averaged in probability.

Build it once per process with ``Ensemble.load()`` and call ``segment`` (or
``probabilities``) for each slice. Calls are serialised by a lock, so one instance can be
shared between threads; the networks use torch's intra-op threads for each call.

Combination rule: p(class) = sum_k w_k softmax(logits_k)(class) / sum_k w_k, with the
weights w_k from the manifest; the label is the most probable class, and lesion regions
below ``constants.MIN_LESION_AREA_PX`` become other lung (``postprocess``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .constants import BACKGROUND, NUM_CLASSES
from .postprocess import labels_from_probabilities, remove_small_lesions
from .preprocess import Box, body_box, normalise, pad_to_multiple, resize_probabilities, resize_to_model
from .weights import DEFAULT_WEIGHTS_DIR, load_networks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceOptions:
    """How the forward pass runs; all settings give the same labels up to rounding.

    channels_last: run convolutions on NHWC tensors (faster with oneDNN on CPU).
    crop_to_body: run the networks only on the box around the body, not the air around it.
    bf16: autocast to bfloat16 (faster only on CPUs with native bf16 matrix units).
    """

    channels_last: bool = True
    crop_to_body: bool = True
    bf16: bool = False


#: The plain path: eager fp32, NCHW, the whole slice. The benchmark's yardstick.
REFERENCE = InferenceOptions(channels_last=False, crop_to_body=False, bf16=False)
#: The path the application serves.
SERVED = InferenceOptions()


class Ensemble:
    """Networks plus their averaging weights; see the module docstring."""

    def __init__(
        self,
        networks: dict[str, torch.nn.Module],
        weights: dict[str, float] | None = None,
        options: InferenceOptions = SERVED,
        manifest: dict | None = None,
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
        if options.channels_last:
            self.networks = [net.to(memory_format=torch.channels_last) for net in self.networks]
        self._lock = threading.Lock()

    @classmethod
    def load(cls, directory: Path | str = DEFAULT_WEIGHTS_DIR, options: InferenceOptions = SERVED) -> "Ensemble":
        """Verify and load the shipped weights (raises weights.WeightsError)."""
        networks, weights, manifest = load_networks(Path(directory))
        log.info("loaded ensemble %s from %s", list(networks), directory)
        return cls(networks, weights, options, manifest)

    # -- inference -----------------------------------------------------------------

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, H, W) in [-1, 1], H and W multiples of 32 -> probabilities (N, C, H, W)."""
        x = torch.from_numpy(batch[:, None])
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.options.bf16 else contextlib.nullcontext()
        )
        with self._lock, torch.inference_mode(), autocast:
            total = None
            for net, w in zip(self.networks, self.weights):
                if net.training:
                    raise RuntimeError("ensemble networks must be in eval() mode for inference")
                p = torch.softmax(net(x).float(), dim=1) * w
                total = p if total is None else total + p
        return total.numpy()

    def model_probabilities(self, small: np.ndarray) -> np.ndarray:
        """uint8 (h, w) at model scale -> float32 (C, h, w) probabilities at model scale."""
        h, w = small.shape
        box = body_box(small) if self.options.crop_to_body else Box(0, h, 0, w)
        crop = small[box.top : box.bottom, box.left : box.right]
        padded = pad_to_multiple(normalise(crop), value=-1.0)
        probs = self._forward(padded[None])[0, :, : box.height, : box.width]
        if box == Box(0, h, 0, w):
            return np.ascontiguousarray(probs)
        full = np.zeros((NUM_CLASSES, h, w), np.float32)
        full[BACKGROUND] = 1.0
        full[:, box.top : box.bottom, box.left : box.right] = probs
        return full

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (H, W) slice -> float32 (C, H, W) class probabilities at the slice's size."""
        if pixels.ndim != 2 or pixels.dtype != np.uint8:
            raise ValueError(f"expected a uint8 (H, W) slice, got {pixels.dtype} {pixels.shape}")
        small = resize_to_model(pixels)
        return resize_probabilities(self.model_probabilities(small), *pixels.shape)

    def segment(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (H, W) slice -> uint8 (H, W) label map (see constants for the values)."""
        return remove_small_lesions(labels_from_probabilities(self.probabilities(pixels)))
