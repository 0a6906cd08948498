"""Shipped weights: safetensors state dicts plus a manifest that pins their hashes.

Layout of a weights directory::

    manifest.json        architecture, classes, input domain, sha256 per file,
                         training config, data sources, validation metrics
    unet_b0.safetensors  fp16 state dict of the UNet / EfficientNet-b0
    pspnet_b2.safetensors

Loading refuses a directory whose files are missing or whose bytes differ from the
manifest's sha256, with a message that says which file and what to do.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..constants import (
    CLASS_NAMES,
    CROP_MIN_SIDE_PX,
    MODEL_WINDOW_LEVEL_HU,
    MODEL_WINDOW_WIDTH_HU,
    REFERENCE_BODY_PX,
    REFERENCE_PIXEL_MM,
    REFERENCE_SIDE_PX,
)
from ..paths import DEFAULT_WEIGHTS_DIR  # noqa: F401  (re-exported: where the shipped weights are)
from .networks import NETWORKS, build_network

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class WeightsError(RuntimeError):
    """The weights directory is missing, incomplete or altered."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def input_spec() -> dict[str, Any]:
    """The input domain, as written into every manifest."""
    return {
        "channels": 1,
        "dtype": "uint8 grey, scaled to [-1, 1] as x * 2/255 - 1",
        "window_hu": {"width": MODEL_WINDOW_WIDTH_HU, "level": MODEL_WINDOW_LEVEL_HU},
        "domain": (
            "the grey levels of the MedSeg 8-bit exports: Hounsfield units (DICOM, NIfTI, calibrated 16-bit) "
            "go through window_hu, fitted so that healthy lung (-891 HU, kmader lung-mask peak) and soft tissue "
            "(+44 HU) land on MedSeg's histogram peaks (grey 44 and 215); 8-bit images are taken as they are "
            "(training drew random windows W 1200-1650 / L -600..-350 for HU sources and random monotone "
            "curves for 8-bit sources, so neither window is required)"
        ),
        "scale": (
            f"first to the reference grid: pixel spacing / {REFERENCE_PIXEL_MM} mm when known; else, where the "
            f"whole body is in the image, its long extent to {REFERENCE_BODY_PX} px; else (a crop of the "
            f"thorax) slices of {CROP_MIN_SIDE_PX}-{REFERENCE_SIDE_PX} px are kept, smaller ones enlarged to "
            f"{CROP_MIN_SIDE_PX} px and larger ones shrunk to {REFERENCE_SIDE_PX} px on the long side. "
            "Then each network's 'scale' s (preprocess.reference_factor)"
        ),
        "axis_order": "(N, C, H, W); row 0 is the top of the displayed image",
    }


def save_weights(
    directory: Path,
    networks: dict[str, torch.nn.Module],
    *,
    ensemble_weights: dict[str, float],
    scales: dict[str, float] | None = None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Write each network as an fp16 safetensors file and a manifest; return the manifest."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    entries = {}
    for name, net in networks.items():
        spec = NETWORKS[name]
        state = {
            k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
            for k, v in net.state_dict().items()
        }
        path = directory / f"{name}.safetensors"
        save_file(state, str(path), metadata={"network": name, "encoder": spec.encoder})
        entries[name] = {
            "architecture": spec.architecture,
            "encoder": spec.encoder,
            "file": path.name,
            "sha256": sha256_of(path),
            "ensemble_weight": ensemble_weights[name],
            "scale": float((scales or {}).get(name, spec.scale)),
        }
    manifest = {
        "format": FORMAT_VERSION,
        "classes": list(CLASS_NAMES),
        "input": input_spec(),
        "combination": (
            "each network runs at its scale; its softmax is resized (bilinear) to the slice's size; "
            "probabilities = sum_k w_k * softmax_k / sum_k w_k; label = argmax over classes; "
            "lesion regions under the minimum area, or whose most confident pixel has "
            "p(GGO) + p(consolidation) under the minimum peak, become other lung"
        ),
        "networks": entries,
        **extra,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise WeightsError(f"{path} is missing: the weights directory is incomplete")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT_VERSION or list(manifest.get("classes", [])) != list(CLASS_NAMES):
        raise WeightsError(f"{path} describes another format or class order than this code expects")
    return manifest


def load_networks(directory: Path = DEFAULT_WEIGHTS_DIR) -> tuple[dict[str, torch.nn.Module], dict[str, float], dict[str, Any]]:
    """Verify and load the networks of a weights directory onto the CPU, in eval mode.

    Returns (networks by name, ensemble weight by name, manifest).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    manifest = read_manifest(directory)
    networks, weights = {}, {}
    for name, entry in manifest["networks"].items():
        path = directory / entry["file"]
        if not path.is_file():
            raise WeightsError(f"{path} is missing: restore it from the repository (git checkout -- weights/)")
        if sha256_of(path) != entry["sha256"]:
            raise WeightsError(
                f"{path} does not match the sha256 in {MANIFEST}: the file was altered or is corrupt"
            )
        net = build_network(name)
        state = {k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
        net.load_state_dict(state, strict=True)
        networks[name] = net.eval()
        weights[name] = float(entry.get("ensemble_weight", 1.0))
    if not networks:
        raise WeightsError(f"{directory / MANIFEST} lists no networks")
    return networks, weights, manifest
