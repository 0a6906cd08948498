"""The engine's objects, each with one job: runners run one network, the ensemble
combines them, ``Ensemble.load`` is the one step that builds and exports."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from segmenter.ml.constants import BACKGROUND, NUM_CLASSES, OTHER_LUNG
from segmenter.ml.model import ensemble as ensemble_module
from segmenter.ml.model.ensemble import REFERENCE, SERVED, Ensemble, InferenceOptions
from segmenter.ml.model.networks import TorchOptions, TorchRunner, build_network
from segmenter.ml.model.onnx_runtime import OnnxOptions, OnnxRunner


class ConstantRunner:
    """A stand-in network: the same class probabilities at every pixel, and a record of
    the inputs it was given."""

    def __init__(self, probabilities: list[float]):
        self.probabilities = np.asarray(probabilities, np.float32)
        self.inputs: list[tuple[int, ...]] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.inputs.append(images.shape)
        n, _, h, w = images.shape
        return np.broadcast_to(self.probabilities[None, :, None, None], (n, NUM_CLASSES, h, w)).copy()


def _slice() -> np.ndarray:
    """A 200 x 300 'body' (grey 200) in air, on a 256 x 384 uint8 slice."""
    pixels = np.full((256, 384), 30, np.uint8)
    pixels[28:228, 42:342] = 200
    return pixels


def test_the_constructor_takes_ready_runners_and_averages_them_by_weight():
    a, b = ConstantRunner([0.0, 0.0, 1.0, 0.0]), ConstantRunner([0.0, 0.0, 0.0, 1.0])
    ensemble = Ensemble(
        {"a": a, "b": b}, weights={"a": 3.0, "b": 1.0}, scales={"a": 0.5, "b": 1.0}, crop_to_body=False
    )
    probs = ensemble.probabilities(_slice(), factor=1.0)
    assert probs.shape == (NUM_CLASSES, 256, 384)
    np.testing.assert_allclose(probs[:, 100, 100], [0.0, 0.0, 0.75, 0.25], atol=1e-6)
    # each network saw the slice at its own scale, padded to multiples of 32
    assert a.inputs == [(1, 1, 128, 192)] and b.inputs == [(1, 1, 256, 384)]


def test_the_body_crop_runs_the_networks_on_less_and_fills_the_rest_with_background():
    runner = ConstantRunner([0.0, 0.0, 1.0, 0.0])
    pixels = np.full((512, 512), 30, np.uint8)
    pixels[160:352, 180:332] = 200  # a small body in much air
    probs = Ensemble({"a": runner}, scales={"a": 1.0}).probabilities(pixels, factor=1.0)
    (shape,) = runner.inputs
    assert shape[2] <= 256 and shape[3] <= 224 and shape[2] % 32 == 0 and shape[3] % 32 == 0
    assert probs[BACKGROUND, 0, 0] == 1.0 and probs[OTHER_LUNG, 256, 256] == 1.0


def test_a_subset_shares_the_runners_and_takes_new_weights():
    a, b = ConstantRunner([1.0, 0.0, 0.0, 0.0]), ConstantRunner([0.0, 1.0, 0.0, 0.0])
    ensemble = Ensemble({"a": a, "b": b}, manifest={"networks": {}})
    only_b = ensemble.subset(["b"])
    assert only_b.runners == [b] and only_b.names == ["b"] and only_b.manifest is ensemble.manifest
    reweighted = ensemble.subset(["a", "b"], {"a": 1.0, "b": 4.0})
    assert reweighted.weights == pytest.approx([0.2, 0.8])
    np.testing.assert_allclose(reweighted.probabilities(_slice(), factor=1.0)[:, 5, 5], [0.2, 0.8, 0.0, 0.0])


def test_networks_side_by_side_give_exactly_what_they_give_in_turn():
    torch.manual_seed(0)
    nets = {"unet_b0": build_network("unet_b0").eval(), "pspnet_b2": build_network("pspnet_b2").eval()}
    runners = {n: TorchRunner(net, TorchOptions(channels_last=False)) for n, net in nets.items()}
    in_turn = Ensemble(runners, scales={"unet_b0": 0.25, "pspnet_b2": 0.25})
    side_by_side = Ensemble(runners, scales={"unet_b0": 0.25, "pspnet_b2": 0.25}, parallel=True)
    assert side_by_side.parallel and not in_turn.parallel
    pixels = _slice()
    np.testing.assert_array_equal(side_by_side.probabilities(pixels), in_turn.probabilities(pixels))


class GreyRunner:
    """A stand-in network that calls mid-dark pixels lung (other lung) and the rest
    background, slow enough that a slice started ahead is still running when the one
    before it is finished, with a record of the threads it ran on."""

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import threading
        import time

        self.threads.add(threading.current_thread().name)
        time.sleep(0.01)
        lungish = ((images > -0.9) & (images < 0.3))[:, 0].astype(np.float32)
        out = np.zeros((images.shape[0], NUM_CLASSES, *images.shape[2:]), np.float32)
        out[:, OTHER_LUNG], out[:, BACKGROUND] = 0.1 + 0.8 * lungish, 0.9 - 0.8 * lungish
        return out


@pytest.mark.parametrize("parallel", [True, False])
def test_a_stream_of_slices_gives_each_the_labels_segment_gives_it_in_order(parallel):
    runners = {"a": GreyRunner(), "b": GreyRunner()}
    ensemble = Ensemble(runners, scales={"a": 0.5, "b": 1.0}, parallel=parallel)
    slices = []
    for k in range(6):
        pixels = _slice()
        pixels[100:150, 100:200] = 40 * k  # each slice its own
        slices.append(pixels)
    one_by_one = [ensemble.segment(p) for p in slices]
    assert len({label.tobytes() for label in one_by_one}) > 1
    streamed = list(ensemble.segment_stream((p, None) for p in slices))
    assert len(streamed) == 6
    for a, b in zip(streamed, one_by_one, strict=True):
        np.testing.assert_array_equal(a, b)
    assert list(ensemble.segment_stream(iter(()))) == []
    if parallel:  # each network only ever on its own thread
        assert runners["a"].threads == {"ensemble-a_0"} and runners["b"].threads == {"ensemble-b_0"}


def test_a_stream_starts_the_next_slice_before_it_hands_over_this_one():
    runner = ConstantRunner([0.0, 0.0, 1.0, 0.0])
    ensemble = Ensemble({"a": runner, "b": ConstantRunner([0.0, 0.0, 1.0, 0.0])}, parallel=True)
    stream = ensemble.segment_stream((_slice(), None) for _ in range(3))
    next(stream)
    ensemble._pools[0].submit(lambda: None).result()  # network a's thread has done what it was given
    assert len(runner.inputs) == 2  # slice 2 started when slice 1 was handed over
    assert len(list(stream)) == 2 and len(runner.inputs) == 3


def test_the_options_name_a_backend_and_carry_only_what_applies_to_it():
    assert isinstance(SERVED.backend, OnnxOptions) and SERVED.crop_to_body
    assert isinstance(REFERENCE.backend, TorchOptions) and not REFERENCE.crop_to_body
    assert not REFERENCE.backend.channels_last and not REFERENCE.backend.bf16
    with pytest.raises(TypeError):
        InferenceOptions(onnx=False)  # the old flags that did nothing under ONNX are gone
    with pytest.raises(TypeError):
        OnnxOptions(bf16=True)


def test_a_torch_runner_refuses_a_network_in_training_mode():
    runner = TorchRunner(build_network("unet_b0").train())
    with pytest.raises(RuntimeError, match="eval"):
        runner(np.zeros((1, 1, 64, 64), np.float32))


def test_from_networks_under_torch_keeps_the_very_modules():
    net = build_network("unet_b0").eval()
    ensemble = Ensemble.from_networks({"unet_b0": net}, options=InferenceOptions(backend=TorchOptions()))
    (runner,) = ensemble.runners
    assert isinstance(runner, TorchRunner) and runner.net is net


def test_load_exports_to_onnx_and_keeps_no_torch_module_alive(monkeypatch):
    torch.manual_seed(0)
    alive: list[weakref.ref] = []

    def fake_load_networks(directory):
        net = build_network("unet_b0").eval()
        alive.append(weakref.ref(net))
        return {"unet_b0": net}, {"unet_b0": 1.0}, {"networks": {"unet_b0": {"scale": 0.5}}}

    monkeypatch.setattr(ensemble_module, "load_networks", fake_load_networks)
    ensemble = Ensemble.load("unused")
    gc.collect()
    assert alive and alive[0]() is None, "the torch module outlived its export"
    (runner,) = ensemble.runners
    assert isinstance(runner, OnnxRunner)
    labels = ensemble.segment(_slice())
    assert labels.shape == (256, 384) and labels.dtype == np.uint8


def test_side_by_side_needs_a_thread_per_network(monkeypatch):
    calls = []
    monkeypatch.setattr(
        OnnxRunner,
        "export",
        classmethod(lambda cls, net, threads=None: calls.append(threads) or ConstantRunner([0, 0, 0, 1])),
    )
    nets = {"a": object(), "b": object()}
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    _, parallel = ensemble_module.build_runners(dict(nets), OnnxOptions())
    assert parallel and calls == [1, 1]
    calls.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    _, parallel = ensemble_module.build_runners(dict(nets), OnnxOptions())
    assert not parallel and calls == [1, 1]
    calls.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    _, parallel = ensemble_module.build_runners(dict(nets), OnnxOptions(parallel_networks=False))
    assert not parallel and calls == [4, 4]


def test_the_lung_check_mirrors_a_large_slice_at_the_size_its_threshold_was_measured_at(monkeypatch):
    ensemble = Ensemble({"a": GreyRunner(), "b": GreyRunner()}, scales={"a": 0.5, "b": 1.0})
    seen = []
    real = Ensemble._segment
    monkeypatch.setattr(Ensemble, "_segment", lambda self, p, s: seen.append(p.shape) or real(self, p, s))
    pixels = np.full((1300, 1000), 30, np.uint8)
    pixels[150:1150, 100:900] = 200
    pixels[300:1000, 200:450] = pixels[300:1000, 550:800] = 60  # two "lungs", mirror images
    labels, evidence = ensemble.segment_checked(pixels)
    assert labels.shape == (1300, 1000)
    assert seen == [(1300, 1000), (640, 492), (640, 492)]
    assert evidence.lung_share > 0.1 and evidence.flip_agreement > 0.95  # symmetric: the same lungs mirrored
    seen.clear()
    small = np.ascontiguousarray(pixels[::3, ::3])
    ensemble.segment_checked(small)
    assert seen == [small.shape] * 3  # at most CHECK_SIDE_PX: mirrored as it is


class RampRunner:
    """A stand-in network whose output leans left to right: P(GGO) grows with the column
    (and depends on the input only through its shape), so mirroring shows."""

    def __init__(self):
        self.inputs: list[tuple[int, ...]] = []

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.inputs.append(images.shape)
        n, _, h, w = images.shape
        out = np.zeros((n, NUM_CLASSES, h, w), np.float32)
        out[:, 0] = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, None]
        out[:, OTHER_LUNG] = 1.0 - out[:, 0]
        return out


@pytest.mark.parametrize("parallel", [False, True])
def test_a_mirrored_network_averages_its_input_and_its_mirror_image_in_one_batch(parallel):
    plain, mirrored = RampRunner(), RampRunner()
    pixels = _slice()
    a = Ensemble({"a": plain}, scales={"a": 1.0}, crop_to_body=False).probabilities(pixels, factor=1.0)
    both = Ensemble(
        {"a": mirrored, "b": RampRunner()}, scales={"a": 1.0, "b": 1.0}, crop_to_body=False, parallel=parallel,
        mirrored=["a"], weights={"a": 1.0, "b": 0.0},
    )
    b = both.probabilities(pixels, factor=1.0)
    assert plain.inputs == [(1, 1, 256, 384)] and mirrored.inputs == [(2, 1, 256, 384)]
    assert a[0, 10, 0] == pytest.approx(0.0) and a[0, 10, -1] == pytest.approx(1.0)
    # the ramp and its mirror image, mirrored back, average to 1/2 everywhere
    np.testing.assert_allclose(b[0], 0.5, atol=1e-6)
    # a batch of inputs (the batched variant's call) is mirrored input by input, in one call
    batch = both.run_batch(0, np.zeros((3, 1, 64, 96), np.float32))
    assert mirrored.inputs[-1] == (6, 1, 64, 96) and batch.shape == (3, NUM_CLASSES, 64, 96)
    np.testing.assert_allclose(batch[:, 0], 0.5, atol=1e-6)
    assert both.mirrored_names == ["a"] and both.subset(["a", "b"]).mirrored_names == ["a"]
    assert both.subset(["b"], {"b": 1.0}).mirrored_names == [] and both.subset(["a"], mirrored=[]).mirrored_names == []
    with pytest.raises(ValueError, match="not in the ensemble"):
        Ensemble({"a": plain}, mirrored=["c"])


def test_load_mirrors_the_networks_the_manifest_marks(monkeypatch, tmp_path):
    nets = {name: build_network(name).eval() for name in ("unet_b0", "pspnet_b2")}
    manifest = {"networks": {"unet_b0": {"scale": 0.5, "mirror": True}, "pspnet_b2": {"scale": 1.0}}}
    monkeypatch.setattr(ensemble_module, "load_networks", lambda directory: (nets, {"unet_b0": 0.7, "pspnet_b2": 0.3}, manifest))
    ensemble = Ensemble.load(tmp_path, InferenceOptions(backend=TorchOptions()))
    assert ensemble.mirrored_names == ["unet_b0"]
