"""Train the ensemble: ``python -m segmenter.ml.training.train [--option value ...]``.

Both networks train in one loop on the same batches, each batch mixing the three
sources of ``../shared/data`` (see ``data``). The loss per network is

    marginal cross-entropy  -log sum_{c in allowed(pixel)} p(c)   (all sources,
                            pseudo-labelled pixels weighted by zenodo_weight)
  + dice_weight * soft Dice of GGO and consolidation on the MedSeg samples
  + dice_weight * soft Dice of lung (GGO + consolidation + other lung) on the kmader samples
  + dice_weight * (soft Dice of infection (GGO + consolidation) + soft Dice of lung) / 2
                  on the samples with expert masks (zenodo-covid-expert), at full weight

kmader slices are lesion-free, so their lung is supervised as "other lung": a healthy
lung painted ground glass costs as much as any other error.

Runs are reproducible (fixed seed; checkpoints carry the RNG states) and resumable:
the run directory (``--out``, outside the repository) holds ``checkpoint.pt`` every
``checkpoint_every`` steps, ``log.jsonl`` with losses and validation metrics, and
``config.json``. Restarting the same command resumes from the checkpoint.

``--holdout`` keeps patient-like groups of MedSeg and kmader slices out of training and
validates on them (the numbers in the model card come from such a run); without it,
every labelled slice trains. ``--export DIR`` writes the shipped weights and manifest.
``--smoke`` runs a few steps on 64 px crops, for CI.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..constants import CONSOLIDATION, GGO, LUNG_CLASSES, NUM_CLASSES
from ..evaluation.metrics import HealthyScores, LesionScores
from ..io.imaging import window
from ..model.ensemble import Ensemble, InferenceOptions
from ..model.networks import NETWORKS, TorchOptions, build_network
from ..model.preprocess import normalise
from ..model.pretrained import seed_encoder_from_lite
from ..model.weights import save_weights
from .augment import AugmentConfig, augment, random_window
from .data import (
    DEFAULT_DATA_ROOT,
    T_BACKGROUND,
    T_CONSOLIDATION,
    T_GGO,
    T_IGNORE,
    T_LESION,
    T_LUNG,
    T_OTHER_LUNG,
    TARGET_SETS,
    Sample,
    assign_groups,
    grouped_folds,
    grouped_split,
    load_expert,
    load_kmader,
    load_medseg,
    load_zenodo,
)

log = logging.getLogger("segmenter.train")


@dataclass
class TrainConfig:
    # where things are
    data_root: str = str(DEFAULT_DATA_ROOT)  # ../shared/data, or $SEGMENTER_DATA_ROOT
    out: str = "/tmp/42epochs-train"  # run directory: checkpoints and logs (outside the repo)
    export: str = ""  # if set, write weights + manifest here when training ends
    validation_from: str = ""  # validation.json of held-out runs of this recipe (foldscore's), for the manifest
    ensemble_weights: tuple[float, ...] = ()  # weight of each network in the average (default: equal)
    # what trains
    networks: tuple[str, ...] = ("unet_b0", "pspnet_b2")
    init: str = "lite"  # "lite": encoders seeded from EfficientNet-Lite ImageNet weights; "random"
    seed: int = 42
    # how long and how big
    steps: int = 3000
    # Per network, in the order of --networks; empty means the network's spec
    # (networks.NETWORKS): the pixel scale it works at, its crops' side at that scale, and
    # its share of the batch sizes below.
    scales: tuple[float, ...] = ()
    crops: tuple[int, ...] = ()
    batch_shares: tuple[float, ...] = ()
    batch_medseg: int = 8
    batch_kmader: int = 4
    batch_zenodo: int = 2
    batch_expert: int = 6  # Zenodo slices with expert lung and infection masks
    zenodo_limit: int = 0  # use at most this many pseudo-labelled Zenodo slices (0: all)
    expert: bool = True  # train on zenodo-covid-expert's masks (--no-expert: the pseudo-maps only)
    # optimiser
    lr: float = 1e-3
    encoder_lr_scale: float = 0.5  # seeded encoders learn at half the decoder's rate
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01  # cosine decay down to lr * min_lr_ratio
    # exponential moving average of each network's weights and batch-norm statistics,
    # updated after every step (0: off). Validation scores the averaged networks too
    # ("ema ..." members) and --export writes them instead of the last step's.
    ema_decay: float = 0.0
    # loss
    dice_weight: float = 1.0
    zenodo_weight: float = 0.5
    # validation split
    holdout: bool = False
    val_fraction_medseg: float = 0.25
    val_fraction_kmader: float = 0.2
    val_fraction_expert: float = 0.2  # of the expert slices, whole patients
    folds: int = 0  # with --fold: grouped k-fold cross-validation, this run validates on one fold
    fold: int = 0
    group_threshold_medseg: float = 0.7  # thumbnail correlation that joins slices into a group
    group_threshold_kmader: float = 0.75
    # running
    # autocast the forward pass to bfloat16; None: only where the device computes it
    # natively (native_bf16), since emulated bf16 is about ten times slower than fp32
    bf16: bool | None = None
    device: str = "cpu"  # "cuda" on a GPU machine (validation and export still run on the CPU)
    threads: int = 2
    log_every: int = 10
    eval_every: int = 250
    checkpoint_every: int = 50
    # validate (all members of ``validate``) when training ends; --no-final-validation leaves
    # the held-out slices to ``foldscore``, which scores them from the checkpoint
    final_validation: bool = True
    smoke: bool = False  # tiny run for CI: a few steps on 64 px crops
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def apply_smoke(self) -> None:
        self.steps, self.warmup_steps = 3, 1
        self.crops = tuple(64 for _ in self.networks)
        self.batch_shares = tuple(1.0 for _ in self.networks)
        self.batch_medseg, self.batch_kmader, self.batch_zenodo, self.batch_expert = 2, 1, 1, 1
        self.zenodo_limit, self.eval_every, self.checkpoint_every, self.log_every = 8, 3, 2, 1
        self.threads = min(self.threads, 2)

    def plan(self) -> dict[str, tuple[float, int, float]]:
        """network -> (scale, crop, batch share), from the options or the network's spec."""
        def pick(values: tuple, k: int, default):
            return values[k] if len(values) > k else default

        plan = {}
        for k, name in enumerate(self.networks):
            spec = NETWORKS[name]
            plan[name] = (
                float(pick(self.scales, k, spec.scale)),
                int(pick(self.crops, k, spec.train_crop)),
                float(pick(self.batch_shares, k, spec.train_batch_share)),
            )
        return plan


# --- Loss ------------------------------------------------------------------------------


def allowed_table(device: torch.device) -> torch.Tensor:
    """bool (256, C): which classes each target code allows (ignore allows none)."""
    table = torch.zeros(256, NUM_CLASSES, dtype=torch.bool, device=device)
    for code, classes in TARGET_SETS.items():
        table[code, list(classes)] = True
    return table


def marginal_cross_entropy(logits: torch.Tensor, codes: torch.Tensor, pixel_weight: torch.Tensor) -> torch.Tensor:
    """-log of the probability mass on each pixel's allowed classes, weighted mean.

    logits: float (B, C, H, W); codes: uint8/long (B, H, W); pixel_weight: float (B, H, W).
    """
    logp = F.log_softmax(logits.float(), dim=1)
    allowed = allowed_table(logits.device)[codes.long()].permute(0, 3, 1, 2)
    ll = torch.logsumexp(logp.masked_fill(~allowed, float("-inf")), dim=1)
    valid = codes != T_IGNORE
    w = pixel_weight * valid
    return -(torch.where(valid, ll, torch.zeros_like(ll)) * w).sum() / w.sum().clamp_min(1.0)


def soft_dice_loss(prob: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - pooled soft Dice of prob (B, H, W) against a 0/1 truth, over valid pixels."""
    prob, truth = prob * valid, truth * valid
    inter = (prob * truth).sum()
    return 1.0 - (2.0 * inter + eps) / (prob.sum() + truth.sum() + eps)


def batch_loss(
    logits: torch.Tensor, codes: torch.Tensor, sources: list[str], cfg: TrainConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    device = logits.device
    weight = torch.tensor(
        [cfg.zenodo_weight if s == "zenodo" else 1.0 for s in sources], device=device
    )[:, None, None].expand_as(codes).float()
    ce = marginal_cross_entropy(logits, codes, weight)
    prob = torch.softmax(logits.float(), dim=1)
    parts = {"ce": ce.item()}
    loss = ce
    medseg = torch.tensor([s == "medseg" for s in sources], device=device)
    if cfg.dice_weight and medseg.any():
        c, p = codes[medseg], prob[medseg]
        valid = (c != T_IGNORE).float()
        dice = soft_dice_loss(p[:, GGO], (c == T_GGO).float(), valid) + soft_dice_loss(
            p[:, CONSOLIDATION], (c == T_CONSOLIDATION).float(), valid
        )
        loss = loss + cfg.dice_weight * dice / 2
        parts["dice_lesion"] = dice.item() / 2
    expert = torch.tensor([s == "expert" for s in sources], device=device)
    if cfg.dice_weight and expert.any():
        c, p = codes[expert], prob[expert]
        valid = (c != T_IGNORE).float()
        infection = soft_dice_loss(p[:, GGO] + p[:, CONSOLIDATION], (c == T_LESION).float(), valid)
        lung = soft_dice_loss(p[:, list(LUNG_CLASSES)].sum(dim=1), (c != T_BACKGROUND).float(), valid)
        loss = loss + cfg.dice_weight * (infection + lung) / 2
        parts["dice_infection"] = infection.item()
        parts["dice_expert_lung"] = lung.item()
    kmader = torch.tensor([s == "kmader" for s in sources], device=device)
    if cfg.dice_weight and kmader.any():
        c, p = codes[kmader], prob[kmader]
        lung = p[:, list(LUNG_CLASSES)].sum(dim=1)
        dice = soft_dice_loss(lung, ((c == T_LUNG) | (c == T_OTHER_LUNG)).float(), (c != T_IGNORE).float())
        loss = loss + cfg.dice_weight * dice
        parts["dice_lung"] = dice.item()
    return loss, parts


# --- Data --------------------------------------------------------------------------------


@dataclass
class Datasets:
    medseg: list[Sample]
    kmader: list[Sample]
    zenodo: list[Sample]
    val_medseg: list[Sample]
    val_kmader: list[Sample]
    expert: list[Sample] = field(default_factory=list)
    val_expert: list[Sample] = field(default_factory=list)


def load_datasets(cfg: TrainConfig) -> Datasets:
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise SystemExit(f"data root {root} not found; pass --data-root or set SEGMENTER_DATA_ROOT")
    medseg, kmader = load_medseg(root), load_kmader(root)
    expert = load_expert(root) if cfg.expert else []
    if cfg.smoke:
        expert = expert[::200]
    # Images with expert masks train from them, never also from the pseudo-maps.
    zenodo = load_zenodo(root, limit=cfg.zenodo_limit or None, exclude={s.name for s in expert})
    assign_groups(medseg, cfg.group_threshold_medseg)
    assign_groups(kmader, cfg.group_threshold_kmader)
    val_m: list[Sample] = []
    val_k: list[Sample] = []
    val_e: list[Sample] = []
    if cfg.folds:
        if not 0 <= cfg.fold < cfg.folds:
            raise SystemExit(f"--fold must be in 0..{cfg.folds - 1}")
        medseg, val_m = _fold_split(medseg, cfg)
        kmader, val_k = _fold_split(kmader, cfg)
        expert, val_e = _fold_split(expert, cfg)
    elif cfg.holdout:
        medseg, val_m = grouped_split(medseg, cfg.val_fraction_medseg, cfg.seed)
        kmader, val_k = grouped_split(kmader, cfg.val_fraction_kmader, cfg.seed)
        expert, val_e = grouped_split(expert, cfg.val_fraction_expert, cfg.seed)
    # A validation patient's other slices (pseudo-labelled) are not trained on either.
    held_out = {s.group for s in val_e}
    zenodo = [s for s in zenodo if s.group not in held_out]
    if cfg.smoke:
        medseg, kmader, val_m, val_k = medseg[:4], kmader[:4], val_m[:2], val_k[:2]
        expert, val_e = expert[:2], val_e[:2]
    log.info(
        "training slices: medseg %d, kmader %d, expert %d, zenodo %d; validation: medseg %d, kmader %d, expert %d",
        len(medseg), len(kmader), len(expert), len(zenodo), len(val_m), len(val_k), len(val_e),
    )
    return Datasets(medseg, kmader, zenodo, val_m, val_k, expert, val_e)


def _fold_split(samples: list[Sample], cfg: TrainConfig) -> tuple[list[Sample], list[Sample]]:
    fold_of = grouped_folds(samples, cfg.folds, cfg.seed)
    return ([s for s, f in zip(samples, fold_of) if f != cfg.fold],
            [s for s, f in zip(samples, fold_of) if f == cfg.fold])


def make_batch(
    data: Datasets, cfg: TrainConfig, rng: np.random.Generator, scale: float, crop: int, share: float
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """An augmented batch of crops at one scale: share * the configured count per source."""
    picks: list[Sample] = []
    pools = (
        (data.medseg, cfg.batch_medseg),
        (data.kmader, cfg.batch_kmader),
        (data.expert, cfg.batch_expert),
        (data.zenodo, cfg.batch_zenodo),
    )
    for pool, n in pools:
        n = max(1, round(n * share)) if n else 0
        if pool and n:
            picks.extend(pool[i] for i in rng.integers(len(pool), size=n))
    images, codes = zip(*(augment(*_render(s, scale, rng, cfg), crop, rng, cfg.augment) for s in picks))
    x = torch.from_numpy(normalise(np.stack(images)))[:, None].contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(np.stack(codes))
    return x, y, [s.source for s in picks]


def _render(sample: Sample, scale: float, rng: np.random.Generator, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """A sample's uint8 image and codes at a scale; HU sources through a random window."""
    image, codes = sample.view(scale)
    if sample.hu is not None:
        width, level = random_window(rng, cfg.augment)
        image = window(sample.hu_view(scale), width, level)
    return image, codes


# --- Validation --------------------------------------------------------------------------


#: Shares of the first network in the ensemble that validation scores (besides equal).
ENSEMBLE_SHARES = (0.6, 0.7, 0.8)
#: The shipped averaging share, scored also with test-time mirroring (Ensemble's ``mirrored``)
#: and with the other smallest-lesion areas below.
MIRRORED_SHARE = 0.7
#: Smallest lesion regions (px at the reference grid) scored beside MIN_LESION_AREA_PX.
OTHER_MIN_LESION_PX = (20, 40, 80)
#: Lesion peaks (``postprocess.remove_faint_lesions``) scored beside LESION_MIN_PEAK.
OTHER_LESION_PEAKS = (0.0, 0.8, 0.95)


def validate(nets: dict[str, torch.nn.Module], data: Datasets, scales: dict[str, float]) -> dict:
    """Lesion scores on held-out MedSeg slices and lung scores on held-out kmader slices,
    for the ensemble and for each network alone, at each mask's full resolution; and for
    the ensemble at MIRRORED_SHARE with the first network, or both, mirrored, with lesion
    regions under each of OTHER_MIN_LESION_PX dropped instead of MIN_LESION_AREA_PX, and
    with each of OTHER_LESION_PEAKS instead of LESION_MIN_PEAK."""
    if any(p.device.type != "cpu" for n in nets.values() for p in n.parameters()):
        nets = {k: copy.deepcopy(v).cpu() for k, v in nets.items()}
    results: dict = {}
    for n in nets.values():
        n.eval()
    # label -> (networks, averaging weights, what else the Ensemble is given)
    members: dict[str, tuple[dict, dict | None, dict]] = {"ensemble": (nets, None, {})}
    if len(nets) == 2:  # the averaging weights to choose from, first network's share
        first, second = nets
        for share in ENSEMBLE_SHARES:
            weights = {first: share, second: 1 - share}
            members[f"ensemble {share:.1f}/{1 - share:.1f}"] = (nets, weights, {})
        shipped = {first: MIRRORED_SHARE, second: 1 - MIRRORED_SHARE}
        label = f"ensemble {MIRRORED_SHARE:.1f}/{1 - MIRRORED_SHARE:.1f}"
        members[f"{label}, {first} mirrored"] = (nets, shipped, {"mirrored": [first]})
        members[f"{label}, both mirrored"] = (nets, shipped, {"mirrored": [first, second]})
        for px in OTHER_MIN_LESION_PX:
            members[f"{label}, lesions from {px} px"] = (nets, shipped, {"min_lesion_px": px})
        for peak in OTHER_LESION_PEAKS:
            members[f"{label}, lesion peak {peak:.2f}"] = (nets, shipped, {"min_lesion_peak": peak})
    members.update({name: ({name: net}, None, {}) for name, net in nets.items()})
    options = InferenceOptions(backend=TorchOptions(channels_last=True, bf16=False), crop_to_body=True)
    for label, (subset, weights, extra) in members.items():
        ens = Ensemble.from_networks(subset, weights, scales, options, **extra)
        lesion, healthy = LesionScores(), HealthyScores()
        for s in data.val_medseg:
            lesion.add(ens.segment(s.full), s.mask)
        for s in data.val_kmader:
            healthy.add(ens.segment(s.full), s.mask, s.name)
        results[label] = {"lesion": lesion.result() if data.val_medseg else None, "healthy": healthy.result()}
    for n in nets.values():
        n.train()
    return results


def validate_with_averages(nets: dict, emas: dict, data: Datasets, scales: dict[str, float]) -> dict:
    """``validate`` the networks and, when training keeps them, their moving averages
    (members prefixed "ema ")."""
    results = validate(nets, data, scales)
    if emas:
        averaged = validate({k: v.module for k, v in emas.items()}, data, scales)
        results.update({f"ema {label}": result for label, result in averaged.items()})
    return results


def validation_summary(results: dict) -> dict:
    """network -> rounded headline numbers of ``validate``'s results."""
    def r(x):
        return None if x is None else round(x, 4)

    out = {}
    for k, v in results.items():
        lesion, healthy = v["lesion"], v["healthy"]
        out[k] = (
            r(lesion["ggo"]["dice"]) if lesion else None,
            r(lesion["consolidation"]["dice"]) if lesion else None,
            r(healthy["ct0_share"]),
            r(healthy["lesion_share_of_lung"]),
            r(healthy["lung"]["dice"]) if healthy["lung"] else None,
        )
    return out


# --- Checkpoints ---------------------------------------------------------------------------


def _rng_state(rng: np.random.Generator) -> dict:
    return json.loads(json.dumps(rng.bit_generator.state))


def save_checkpoint(
    path: Path, step: int, nets, opts, scheds, rng: np.random.Generator, cfg: TrainConfig, emas=None
) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "step": step,
            "config": json.dumps(config_to_dict(cfg)),
            "nets": {k: v.state_dict() for k, v in nets.items()},
            "opts": {k: v.state_dict() for k, v in opts.items()},
            "scheds": {k: v.state_dict() for k, v in scheds.items()},
            "emas": {k: v.state_dict() for k, v in (emas or {}).items()},
            "numpy_rng": json.dumps(_rng_state(rng)),
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    os.replace(tmp, path)


def config_to_dict(cfg: TrainConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["networks"] = list(cfg.networks)
    return d


# --- Main loop -----------------------------------------------------------------------------


def lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def revalidate(cfg: TrainConfig) -> dict:
    """``validate`` the finished run in ``cfg.out`` again from its checkpoint (after
    validation gained members) and rewrite its ``validation.json``; returns the results."""
    torch.set_num_threads(cfg.threads)
    ckpt_path = Path(cfg.out) / "checkpoint.pt"
    if not ckpt_path.is_file():
        raise SystemExit(f"{ckpt_path} not found")
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    if int(ckpt["step"]) != cfg.steps:
        raise SystemExit(f"{ckpt_path} is at step {ckpt['step']} of {cfg.steps}: finish the run first")
    nets = build_training_networks(cfg)
    emas = moving_averages(nets, cfg.ema_decay)
    for k in nets:
        nets[k].load_state_dict(ckpt["nets"][k])
        if k in emas:
            emas[k].load_state_dict(ckpt["emas"][k])
    scales = {name: p[0] for name, p in cfg.plan().items()}
    results = validate_with_averages(nets, emas, load_datasets(cfg), scales)
    (Path(cfg.out) / "validation.json").write_text(json.dumps(results, indent=2))
    return results


def build_training_networks(cfg: TrainConfig) -> dict[str, torch.nn.Module]:
    nets = {}
    for name in cfg.networks:
        torch.manual_seed(cfg.seed + sorted(NETWORKS).index(name))
        net = build_network(name)
        if cfg.init == "lite":
            seed_encoder_from_lite(net.encoder, NETWORKS[name].lite_init)
        elif cfg.init != "random":
            raise SystemExit(f"unknown --init {cfg.init!r}; expected 'lite' or 'random'")
        nets[name] = net.to(cfg.device, memory_format=torch.channels_last).train()
    return nets


def moving_averages(nets: dict[str, torch.nn.Module], decay: float) -> dict[str, torch.nn.Module]:
    """name -> an exponential moving average of that network's parameters and buffers
    (batch-norm statistics included), whose first update copies the network; {} when
    decay is 0 (off)."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if not decay:
        return {}
    if not 0.0 < decay < 1.0:
        raise SystemExit(f"--ema-decay must be in (0, 1), got {decay}")
    average = get_ema_multi_avg_fn(decay)
    return {k: AveragedModel(v, multi_avg_fn=average, use_buffers=True) for k, v in nets.items()}


def make_optimiser(net: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    encoder = list(net.encoder.parameters())
    ids = {id(p) for p in encoder}
    rest = [p for p in net.parameters() if id(p) not in ids]
    return torch.optim.AdamW(
        [
            {"params": encoder, "lr": cfg.lr * cfg.encoder_lr_scale},
            {"params": rest, "lr": cfg.lr},
        ],
        weight_decay=cfg.weight_decay,
    )


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU
    with AVX512-BF16 or AMX units. Elsewhere autocast emulates bf16: on this project's
    2-core AVX2 machine one UNet step (16 crops of 192 px) took 29 s in bf16, 3 s in fp32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's, private
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def train(cfg: TrainConfig) -> dict:
    """Run (or resume) training; returns the last validation results (or {})."""
    torch.set_num_threads(cfg.threads)
    if cfg.bf16 is None:
        cfg.bf16 = native_bf16(cfg.device)
        log.info("bf16 autocast %s: %s %s it natively", "on" if cfg.bf16 else "off", cfg.device,
                 "computes" if cfg.bf16 else "does not compute")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2))
    data = load_datasets(cfg)

    nets = build_training_networks(cfg)
    emas = moving_averages(nets, cfg.ema_decay)
    opts = {k: make_optimiser(v, cfg) for k, v in nets.items()}
    scheds = {k: torch.optim.lr_scheduler.LambdaLR(o, lr_lambda(cfg)) for k, o in opts.items()}
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    step = 0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved = json.loads(ckpt["config"])
        if saved.get("steps") != cfg.steps or list(saved.get("networks", [])) != list(cfg.networks):
            log.warning("resuming a checkpoint made with another config: %s", saved)
        for k in nets:
            nets[k].load_state_dict(ckpt["nets"][k])
            opts[k].load_state_dict(ckpt["opts"][k])
            scheds[k].load_state_dict(ckpt["scheds"][k])
            if k in emas:
                emas[k].load_state_dict(ckpt["emas"][k])
        rng.bit_generator.state = json.loads(ckpt["numpy_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        step = int(ckpt["step"])
        log.info("resumed from %s at step %d", ckpt_path, step)

    autocast = torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16)
    last_val: dict = {}
    t0, done_since = time.perf_counter(), 0
    plan = cfg.plan()
    scales = {name: p[0] for name, p in plan.items()}
    with (out / "log.jsonl").open("a") as log_file:
        while step < cfg.steps:
            record: dict = {"step": step + 1}
            for name, net in nets.items():
                x, y, sources = make_batch(data, cfg, rng, *plan[name])
                x, y = x.to(cfg.device, non_blocking=True), y.to(cfg.device, non_blocking=True)
                with autocast:
                    logits = net(x)
                loss, parts = batch_loss(logits, y, sources, cfg)
                opts[name].zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opts[name].step()
                scheds[name].step()
                if name in emas:
                    emas[name].update_parameters(net)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"{name}: loss is {loss.item()} at step {step + 1}")
                record[name] = {"loss": loss.item(), **parts}
            step += 1
            done_since += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                rate = done_since / (time.perf_counter() - t0)
                record["steps_per_s"] = rate
                record["lr"] = scheds[cfg.networks[0]].get_last_lr()[-1]
                losses = " ".join(f"{n}={record[n]['loss']:.3f}" for n in nets)
                minutes_left = (cfg.steps - step) / rate / 60
                log.info("step %d/%d %s  %.2f steps/s, %.0f min left",
                         step, cfg.steps, losses, rate, minutes_left)
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(ckpt_path, step, nets, opts, scheds, rng, cfg, emas)
            due = cfg.final_validation if step == cfg.steps else step % cfg.eval_every == 0
            if (data.val_medseg or data.val_kmader) and due:
                last_val = validate_with_averages(nets, emas, data, scales)
                log.info(
                    "validation at step %d (GGO, consolidation Dice; "
                    "healthy CT-0 share, lesion share, lung Dice): %s",
                    step, validation_summary(last_val),
                )
                log_file.write(json.dumps({"step": step, "validation": last_val}) + "\n")
                log_file.flush()
                t0, done_since = time.perf_counter(), 0
    if last_val:
        (out / "validation.json").write_text(json.dumps(last_val, indent=2))
    if cfg.export:
        validation = {"method": "this run's held-out groups", "results": last_val} if last_val else {}
        if cfg.validation_from:
            whose = "this run's" if cfg.holdout else "a --holdout run of the same recipe:"
            validation = {
                "method": f"{whose} held-out patients (Zenodo) and groups of look-alike slices (MedSeg, "
                          f"kmader), never trained on ({cfg.validation_from})",
                "results": json.loads(Path(cfg.validation_from).read_text()),
            }
        export({k: v.module for k, v in emas.items()} if emas else nets, cfg, Path(cfg.export), validation)
    return last_val


def export(nets: dict[str, torch.nn.Module], cfg: TrainConfig, directory: Path, validation: dict) -> dict:
    nets = {k: v.cpu() for k, v in nets.items()}
    for n in nets.values():
        n.eval()
    weights = list(cfg.ensemble_weights) or [1.0] * len(nets)
    if len(weights) != len(nets):
        raise SystemExit(f"--ensemble-weights needs {len(nets)} numbers, got {len(weights)}")
    return save_weights(
        directory,
        nets,
        ensemble_weights=dict(zip(nets, map(float, weights))),
        scales={name: p[0] for name, p in cfg.plan().items()},
        extra={
            "training": {"command": "python -m segmenter.ml.training.train", "config": config_to_dict(cfg)},
            "data_sources": DATA_SOURCES,
            "validation": validation,
            "intended_use": "research and demonstration only; not for diagnosis",
        },
    )


DATA_SOURCES = [
    {
        "name": "medseg-covid",
        "what": "57 radiologist-labelled axial COVID-19 CT slices (GGO, consolidation), Inf-Net 8-bit conversion",
        "source": "MedSeg COVID-19 CT segmentation dataset; Fan et al., Inf-Net, IEEE TMI 2020",
        "licence": "non-commercial use only, with attribution",
    },
    {
        "name": "kmader-lungs",
        "what": "267 axial CT slices with manual lung masks",
        "source": "K. Mader, Finding and Measuring Lungs in CT Data",
        "licence": "none stated; research use with attribution",
    },
    {
        "name": "zenodo-covid-expert",
        "what": "expert lung and infection masks (annotators, checked by radiologists) of 925 Zenodo slices, "
                "15 series of 13 patients; full-weight labels of lung, infection (GGO or consolidation) and outside",
        "source": "Ma Jun et al., COVID-19 CT Lung and Infection Segmentation Dataset, Zenodo 3757476",
        "licence": "CC BY 4.0 (Radiopaedia cases usually CC BY-NC-SA)",
    },
    {
        "name": "zenodo-covid-unlabelled",
        "what": "the other 306 of its 1,231 slices with Semi-Inf-Net pseudo infection maps (used as weak labels)",
        "source": "Ma Jun et al., COVID-19 CT Lung and Infection Segmentation Dataset, Zenodo 3757476; Radiopaedia",
        "licence": "CC BY 4.0 (Radiopaedia cases usually CC BY-NC-SA)",
    },
]


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    cfg = TrainConfig()
    parser = argparse.ArgumentParser(prog="python -m segmenter.ml.training.train", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(TrainConfig):
        if f.name == "augment":
            continue
        default = getattr(cfg, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool) or f.name == "bf16":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif isinstance(default, tuple):
            kind = {"ensemble_weights": float, "scales": float, "batch_shares": float, "crops": int}.get(f.name, str)
            parser.add_argument(flag, nargs="+", type=kind, default=list(default))
        else:
            parser.add_argument(flag, type=type(default), default=default)
    # the augmentation's fields as --augment-NAME (a range takes two numbers)
    for f in dataclasses.fields(AugmentConfig):
        default = getattr(cfg.augment, f.name)
        flag = "--augment-" + f.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, nargs=2, type=type(default[0]), default=list(default), dest="augment_" + f.name)
        else:
            parser.add_argument(flag, type=type(default), default=default, dest="augment_" + f.name)
    args = parser.parse_args(argv)
    for f in dataclasses.fields(TrainConfig):
        if f.name != "augment":
            value = getattr(args, f.name)
            setattr(cfg, f.name, tuple(value) if isinstance(value, list) else value)
    cfg.augment = dataclasses.replace(cfg.augment, **{
        f.name: tuple(v) if isinstance(v := getattr(args, "augment_" + f.name), list) else v
        for f in dataclasses.fields(AugmentConfig)
    })
    if cfg.smoke:
        cfg.apply_smoke()
    return cfg


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    train(parse_args(argv))


if __name__ == "__main__":
    main()
