"""The two networks of the ensemble, built by name from segmentation-models-pytorch.

Both take a (N, 1, H, W) float32 tensor scaled to [-1, 1] (see ``preprocess.normalise``),
with H and W multiples of 32, and return (N, 4, H, W) logits in the class order of
``constants.CLASS_NAMES``. They are always built with ``encoder_weights=None``: nothing is
downloaded, trained weights come from ``weights/``. ``TorchRunner`` runs one of them in
eager torch (``onnx_runtime.OnnxRunner`` is the served equivalent).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..constants import MODEL_SCALE, NUM_CLASSES


@dataclass(frozen=True)
class NetworkSpec:
    """How to build and train one member of the ensemble.

    scale: the pixel scale the network works at (see preprocess.model_scale): the UNet
    sees a 512 px slice at 256 px; the PSPNet, whose output is 8 times coarser than its
    input, sees it at full size so that its labels are not 16 times coarser.
    train_crop, train_batch_share: its training crops' side at that scale, and its share
    of the configured batch sizes (larger crops, fewer of them).
    """

    name: str  # key in the manifest and the weights file stem
    architecture: str  # smp class name
    encoder: str  # smp encoder name
    lite_init: str  # EfficientNet-Lite variant whose ImageNet weights seed the encoder
    scale: float = MODEL_SCALE
    train_crop: int = 192
    train_batch_share: float = 1.0


NETWORKS: dict[str, NetworkSpec] = {
    "unet_b0": NetworkSpec("unet_b0", "Unet", "efficientnet-b0", "lite0", scale=0.5, train_crop=192),
    "pspnet_b2": NetworkSpec(
        "pspnet_b2", "PSPNet", "efficientnet-b2", "lite2", scale=1.0, train_crop=256, train_batch_share=0.5
    ),
}


def build_network(name: str) -> torch.nn.Module:
    """A randomly initialised network of the ensemble, by name (see NETWORKS)."""
    import segmentation_models_pytorch as smp

    try:
        spec = NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; expected one of {sorted(NETWORKS)}") from None
    cls = getattr(smp, spec.architecture)
    return cls(
        encoder_name=spec.encoder,
        encoder_weights=None,
        in_channels=1,
        classes=NUM_CLASSES,
    )


@dataclass(frozen=True)
class TorchOptions:
    """How a ``TorchRunner`` runs its network in eager torch on the CPU (training's
    validation and the benchmark's reference; the application serves through ONNX).

    channels_last: NHWC tensors (faster with oneDNN on CPU).
    bf16: autocast to bfloat16 (faster only on CPUs with native bf16 matrix units).
    """

    channels_last: bool = True
    bf16: bool = False


class TorchRunner:
    """One network in eager torch: float32 (N, 1, H, W) in [-1, 1], H and W multiples of
    32 -> float32 (N, C, H, W) softmax probabilities (the same call as ``OnnxRunner``).

    The module is used as it is, not copied: it must be in ``eval()`` mode whenever the
    runner is called (training switches it back and forth around validation). With
    ``channels_last`` it is converted to that memory format in place.
    """

    def __init__(self, net: torch.nn.Module, options: TorchOptions = TorchOptions()):
        self.options = options
        self.net = net.to(memory_format=torch.channels_last) if options.channels_last else net

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.net.training:
            raise RuntimeError("ensemble networks must be in eval() mode for inference")
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if self.options.bf16 else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            return torch.softmax(self.net(x).float(), dim=1).numpy()
