import json

import pytest
import torch

from segmenter.ml.model.ensemble import Ensemble
from segmenter.ml.model.networks import NETWORKS, build_network
from segmenter.ml.model.weights import MANIFEST, WeightsError, load_networks, read_manifest, save_weights


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    nets = {name: build_network(name).eval() for name in NETWORKS}
    save_weights(directory, nets, ensemble_weights={"unet_b0": 1.0, "pspnet_b2": 1.0}, extra={"note": "test"})
    return directory, nets


def test_weights_round_trip_through_fp16_safetensors(saved):
    directory, nets = saved
    loaded, weights, manifest = load_networks(directory)
    assert set(loaded) == set(NETWORKS) and weights == {"unet_b0": 1.0, "pspnet_b2": 1.0}
    assert manifest["note"] == "test" and manifest["classes"] == ["ggo", "consolidation", "other_lung", "background"]
    for name, net in nets.items():
        for (k, a), b in zip(net.state_dict().items(), loaded[name].state_dict().values()):
            assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4), k
    assert all(not net.training for net in loaded.values())


def test_the_manifest_pins_each_file_by_sha256(saved):
    directory, _ = saved
    manifest = json.loads((directory / MANIFEST).read_text())
    for entry in manifest["networks"].values():
        assert len(entry["sha256"]) == 64 and (directory / entry["file"]).is_file()


def test_an_altered_weights_file_is_refused_by_name(saved, tmp_path):
    directory, _ = saved
    for f in directory.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    data = bytearray((tmp_path / "unet_b0.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "unet_b0.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="unet_b0.safetensors does not match the sha256"):
        Ensemble.load(tmp_path)


def test_a_missing_weights_file_is_refused_by_name(saved, tmp_path):
    directory, _ = saved
    (tmp_path / MANIFEST).write_text((directory / MANIFEST).read_text())
    with pytest.raises(WeightsError, match="unet_b0.safetensors is missing"):
        Ensemble.load(tmp_path)


def test_a_missing_or_foreign_manifest_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="manifest.json is missing"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST).write_text(json.dumps({"format": 1, "classes": ["a", "b"]}))
    with pytest.raises(WeightsError, match="class order"):
        read_manifest(tmp_path)


def test_each_network_runs_at_the_scale_its_manifest_names(saved):
    directory, _ = saved
    ensemble = Ensemble.load(directory)
    manifest = json.loads((directory / MANIFEST).read_text())
    assert ensemble.scales == [manifest["networks"][n]["scale"] for n in ensemble.names]
    assert dict(zip(ensemble.names, ensemble.scales)) == {"unet_b0": 0.5, "pspnet_b2": 1.0}
