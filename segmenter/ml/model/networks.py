"""The two networks of the ensemble, built by name from segmentation-models-pytorch.

Both take a (N, 1, H, W) float32 tensor scaled to [-1, 1] (see ``preprocess.normalise``),
with H and W multiples of 32, and return (N, 4, H, W) logits in the class order of
``constants.CLASS_NAMES``. They are always built with ``encoder_weights=None``: nothing is
downloaded, trained weights come from ``weights/``.
"""

from __future__ import annotations

from dataclasses import dataclass

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
