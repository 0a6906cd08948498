import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from segmenter.ml.constants import BACKGROUND, CONSOLIDATION, GGO, OTHER_LUNG
from segmenter.ml.model.ensemble import Ensemble
from segmenter.ml.training import crossval
from segmenter.ml.training.augment import AugmentConfig
from segmenter.ml.training.data import (
    T_IGNORE,
    T_LESION,
    T_LUNG,
    T_NOT_LESION,
    grouped_folds,
    grouped_split,
    similarity_groups,
)
from segmenter.ml.training.train import marginal_cross_entropy, native_bf16, parse_args, revalidate, train


def test_marginal_cross_entropy_is_minus_log_of_the_allowed_mass():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4]))[None, :, None, None].expand(1, 4, 1, 4).clone()
    codes = torch.tensor([[[GGO, T_LUNG, T_NOT_LESION, T_IGNORE]]], dtype=torch.uint8)
    loss = marginal_cross_entropy(logits, codes, torch.ones(1, 1, 4))
    expected = -(math.log(0.1) + math.log(0.6) + math.log(0.7)) / 3  # the ignored pixel counts for nothing
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_lesion_code_is_satisfied_by_either_lesion_class():
    probs = torch.tensor([0.5, 0.5, 0.0, 0.0]) + 1e-9
    logits = torch.log(probs)[None, :, None, None]
    loss = marginal_cross_entropy(logits, torch.tensor([[[T_LESION]]], dtype=torch.uint8), torch.ones(1, 1, 1))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_similar_slices_fall_into_one_group_and_groups_are_never_split():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-5, 5, a.shape), 0, 255).astype(np.uint8)
    c = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    groups = similarity_groups([a, b, c], threshold=0.8)
    assert groups[0] == groups[1] != groups[2]

    class S:
        def __init__(self, g):
            self.group = g

    samples = [S("g1"), S("g1"), S("g2"), S("g3"), S("g3"), S("g4")]
    train_part, val_part = grouped_split(samples, 0.3, seed=1)
    assert not {s.group for s in train_part} & {s.group for s in val_part}
    assert len(train_part) + len(val_part) == len(samples)


def test_k_folds_keep_groups_whole_and_balance_the_slices():
    class S:
        def __init__(self, g):
            self.group = g

    samples = [S(f"g{k // 3}") for k in range(30)] + [S("big")] * 4
    fold_of = grouped_folds(samples, 3, seed=5)
    by_group: dict[str, set[int]] = {}
    for s, f in zip(samples, fold_of):
        by_group.setdefault(s.group, set()).add(f)
    assert all(len(folds) == 1 for folds in by_group.values())
    sizes = [fold_of.count(f) for f in range(3)]
    assert sorted(sizes) == [10, 12, 12]  # 34 slices in groups of 3 and one of 4
    assert grouped_folds(samples, 3, seed=5) == fold_of
    with pytest.raises(ValueError):
        grouped_folds(samples, 1, seed=5)


def test_cross_validation_reports_each_headline_as_mean_and_spread_over_folds():
    def fold(ggo, ct0):
        healthy = {"ct0_share": ct0, "lesion_share_of_lung": 0.01, "lung": {"dice": 0.97}}
        return {"ensemble": {"lesion": {"ggo": {"dice": ggo}, "consolidation": {"dice": 0.6}}, "healthy": healthy}}

    summary = crossval.summarise([fold(0.7, 0.8), fold(0.8, 1.0)])["ensemble"]
    assert summary["ggo_dice"] == {"folds": [0.7, 0.8], "mean": 0.75, "sd": pytest.approx(0.0707, abs=1e-4)}
    assert summary["healthy_ct0_share"]["mean"] == 0.9
    assert summary["consolidation_dice"]["sd"] == 0.0
    assert "0.750 ± 0.071" in crossval.table({"ensemble": summary})


@pytest.mark.slow
def test_a_cross_validation_smoke_run_validates_every_fold_on_slices_it_did_not_train(data_root, tmp_path):
    crossval.main(["--folds", "2", "--out", str(tmp_path), "--smoke", "--data-root", str(data_root)])
    summary = json.loads((tmp_path / "crossval.json").read_text())
    assert summary["folds"] == 2
    assert len(summary["members"]["ensemble 0.7/0.3"]["healthy_lung_dice"]["folds"]) == 2
    assert len(summary["members"]["ensemble 0.7/0.3, both mirrored"]["ggo_dice"]["folds"]) == 2
    for fold in (0, 1):
        config = json.loads((tmp_path / f"fold-{fold}" / "config.json").read_text())
        assert (config["folds"], config["fold"]) == (2, fold)

    # validated again from the checkpoints, a fold gives the same numbers (nothing retrains)
    done = tmp_path / "fold-1" / "validation.json"
    before = json.loads(done.read_text())
    done.write_text(json.dumps({"ensemble": before["ensemble"]}))  # as if from an older release
    crossval.main(["--folds", "2", "--out", str(tmp_path), "--smoke", "--data-root", str(data_root), "--revalidate"])
    assert json.loads(done.read_text()) == before
    steps = [json.loads(line)["step"] for line in (tmp_path / "fold-1" / "log.jsonl").read_text().splitlines()]
    assert steps.count(max(steps)) == 2  # the training log did not grow (one step line, one validation line)


def test_config_flags_come_from_the_dataclass():
    cfg = parse_args(["--steps", "7", "--no-bf16", "--networks", "unet_b0"])
    assert (cfg.steps, cfg.bf16, cfg.networks) == (7, False, ("unet_b0",))


def test_bf16_is_on_only_where_asked_or_where_the_machine_computes_it_natively(monkeypatch):
    assert (parse_args([]).bf16, parse_args(["--bf16"]).bf16, parse_args(["--no-bf16"]).bf16) == (None, True, False)
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        assert native_bf16("cpu") is native


def test_augmentation_flags_set_the_augmentation_and_leave_the_rest_at_its_defaults():
    cfg = parse_args(["--augment-gamma-range", "0.9", "1.1", "--augment-brightness", "8"])
    default = AugmentConfig()
    assert (cfg.augment.gamma_range, cfg.augment.brightness) == ((0.9, 1.1), 8.0)
    assert cfg.augment.contrast_range == default.contrast_range and cfg.augment.curve_prob == default.curve_prob
    assert parse_args([]).augment == default


@pytest.mark.slow
def test_a_smoke_run_trains_resumes_and_exports_loadable_weights(data_root, tmp_path):
    out, export = tmp_path / "run", tmp_path / "weights"
    cfg = parse_args(["--smoke", "--holdout", "--data-root", str(data_root), "--out", str(out), "--export", str(export)])
    validation = train(cfg)
    assert (out / "checkpoint.pt").is_file()
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["unet_b0"]["loss"] for r in lines if "unet_b0" in r]
    assert len(losses) == cfg.steps and all(math.isfinite(v) for v in losses)
    assert set(validation) == {
        "ensemble", "ensemble 0.6/0.4", "ensemble 0.7/0.3", "ensemble 0.8/0.2", "unet_b0", "pspnet_b2",
        "ensemble 0.7/0.3, unet_b0 mirrored", "ensemble 0.7/0.3, both mirrored",
        "ensemble 0.7/0.3, lesions from 20 px", "ensemble 0.7/0.3, lesions from 40 px",
        "ensemble 0.7/0.3, lesions from 80 px", "ensemble 0.7/0.3, lesion peak 0.00",
        "ensemble 0.7/0.3, lesion peak 0.80", "ensemble 0.7/0.3, lesion peak 0.95",
    }
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["training"]["config"]["steps"] == cfg.steps
    assert manifest["training"]["config"]["bf16"] is native_bf16("cpu")  # what ran, not "auto"
    assert "not for diagnosis" in manifest["intended_use"]
    ensemble = Ensemble.load(export)
    labels = ensemble.segment(np.full((100, 120), 80, np.uint8))
    assert labels.shape == (100, 120) and set(np.unique(labels)) <= {GGO, CONSOLIDATION, OTHER_LUNG, BACKGROUND}
    # resuming a finished run does no more steps
    cfg2 = parse_args(["--smoke", "--holdout", "--data-root", str(data_root), "--out", str(out)])
    train(cfg2)
    lines2 = (out / "log.jsonl").read_text().splitlines()
    assert sum(1 for line in lines2 if '"unet_b0": {"loss"' in line) == cfg.steps


def test_each_network_trains_at_its_own_scale_and_crop():
    plan = parse_args([]).plan()
    assert plan == {"unet_b0": (0.5, 192, 1.0), "pspnet_b2": (1.0, 256, 0.5)}
    plan = parse_args(["--scales", "0.5", "0.5", "--crops", "160", "160"]).plan()
    assert plan["pspnet_b2"] == (0.5, 160, 0.5)


@pytest.mark.slow
def test_a_run_with_a_moving_average_validates_it_resumes_it_and_exports_it(data_root, tmp_path):
    out, export = tmp_path / "run", tmp_path / "weights"
    args = ["--smoke", "--holdout", "--data-root", str(data_root), "--out", str(out), "--ema-decay", "0.5"]
    validation = train(parse_args([*args, "--export", str(export)]))
    members = {"ensemble", "ema ensemble", "ema unet_b0", "ema ensemble 0.7/0.3, both mirrored"}
    assert members <= set(validation)
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    averaged, last = ckpt["emas"]["unet_b0"], ckpt["nets"]["unet_b0"]
    name = "segmentation_head.0.weight"
    assert int(averaged["n_averaged"]) == 3  # one update per step
    assert not torch.equal(averaged[f"module.{name}"], last[name])  # an average, not the last step
    shipped = load_file(export / "unet_b0.safetensors")
    assert torch.allclose(shipped[name].float(), averaged[f"module.{name}"].float(), atol=1e-3)
    # validated again from the checkpoint: the same numbers, the averages included
    assert revalidate(parse_args(args)) == json.loads(json.dumps(validation))


def test_expert_masks_train_lung_infection_and_outside_and_group_by_patient(data_root):
    from segmenter.ml.training.data import T_BACKGROUND, T_OTHER_LUNG, load_expert, zenodo_patient

    samples = load_expert(data_root)
    assert len(samples) == 925
    assert len({s.group for s in samples}) == 13  # 15 series, two patients with two each
    for s in samples[::100]:
        assert set(np.unique(s.full_codes)) <= {T_BACKGROUND, T_OTHER_LUNG, T_LESION}
        assert ((s.full_codes == T_LESION) == (s.mask == 2)).all()
        assert ((s.full_codes == T_BACKGROUND) == (s.mask == 0)).all()
    assert zenodo_patient("radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm") == zenodo_patient(
        "radiopaedia_org_covid-19-pneumonia-10_85902_3-dcm"
    )
    assert zenodo_patient("coronacases_org_001") != zenodo_patient("coronacases_org_002")


def test_a_fold_holds_out_whole_patients_and_none_of_their_pseudo_labelled_slices(data_root):
    from segmenter.ml.training.train import load_datasets

    cfg = parse_args(["--folds", "3", "--fold", "1", "--data-root", str(data_root)])
    data = load_datasets(cfg)
    held_out = {s.group for s in data.val_expert}
    assert held_out and not held_out & {s.group for s in data.expert}
    assert not held_out & {s.group for s in data.zenodo}
    assert not {s.name for s in data.expert} & {s.name for s in data.zenodo}  # expert slices: never pseudo-maps
    assert len(data.expert) + len(data.val_expert) == 925


def test_the_expert_loss_counts_infection_as_either_lesion_class_and_lung_as_any_lung_class():
    from segmenter.ml.training.data import T_BACKGROUND, T_OTHER_LUNG
    from segmenter.ml.training.train import batch_loss

    codes = torch.full((1, 8, 8), T_OTHER_LUNG, dtype=torch.uint8)
    codes[0, :4] = T_LESION
    codes[0, :, :2] = T_BACKGROUND
    cfg = parse_args([])

    def logits_for(lesion_class):
        logits = torch.full((1, 4, 8, 8), -10.0)
        logits[0, OTHER_LUNG] = 10.0
        logits[0, lesion_class, :4] = 20.0
        logits[0, BACKGROUND, :, :2] = 30.0
        return logits

    for lesion_class in (GGO, CONSOLIDATION):
        loss, parts = batch_loss(logits_for(lesion_class), codes, ["expert"], cfg)
        assert loss.item() < 0.01 and parts["dice_infection"] < 0.01
    wrong = logits_for(GGO)
    wrong[0, OTHER_LUNG, :4] = 40.0  # infection read as plain lung
    assert batch_loss(wrong, codes, ["expert"], cfg)[1]["dice_infection"] > 0.9


@pytest.mark.slow
def test_foldscore_scores_each_fold_once_per_slice_under_every_reading(data_root, tmp_path):
    from segmenter.ml.training import foldscore

    runs = []
    for fold in (0, 1):
        run = tmp_path / f"fold-{fold}"
        train(parse_args(["--smoke", "--folds", "2", "--fold", str(fold), "--no-final-validation",
                          "--data-root", str(data_root), "--out", str(run)]))
        assert not (run / "validation.json").exists()  # left to foldscore
        runs.append(str(run))
    out = tmp_path / "validation.json"
    foldscore.main([*runs, "--lows", "1.0", "0.3", "--shares", "0.7", "--json", str(out)])
    summary = json.loads(out.read_text())
    assert summary["folds"] == 2
    member = summary["summary"]["0.7/0.3, low 0.30"]
    assert len(member["lung_dice"]["folds"]) == 2 and len(member["healthy_ct0"]["folds"]) == 2
    first = json.loads((tmp_path / "fold-0" / "foldscore.json").read_text())["results"]
    low, plain = first["0.7/0.3, low 0.30"]["expert"], first["0.7/0.3, low 1.00"]["expert"]
    assert low["area_ratio"] >= plain["area_ratio"]  # a lower edge only ever adds lesion
    assert low["lung"] == plain["lung"]  # and never changes the lung
