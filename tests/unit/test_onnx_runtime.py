"""The ONNX Runtime path gives the torch networks' numbers at any input size."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segmenter.ml.model.networks import NETWORKS, TorchOptions, TorchRunner, build_network
from segmenter.ml.model.onnx_runtime import OnnxRunner, adaptive_avg_pool


@pytest.mark.parametrize("size", [1, 2, 3, 6])
@pytest.mark.parametrize("shape", [(64, 64), (37, 50), (5, 7)])
def test_adaptive_avg_pool_matches_torch(size, shape):
    x = torch.randn(2, 3, *shape)
    assert torch.allclose(adaptive_avg_pool(x, size), F.adaptive_avg_pool2d(x, size), atol=1e-6)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_an_exported_network_matches_torch_at_several_sizes(name):
    torch.manual_seed(0)
    net = build_network(name).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a wrong graph shows
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    runner = OnnxRunner.export(net, threads=1)
    eager = TorchRunner(net, TorchOptions(channels_last=False))
    rng = np.random.default_rng(0)
    for n, height, width in [(1, 64, 64), (2, 96, 160), (1, 224, 128)]:  # one export, dynamic batch and size
        image = rng.uniform(-1, 1, (n, 1, height, width)).astype(np.float32)
        with torch.inference_mode():
            expected = net(torch.from_numpy(image)).numpy()
        got = runner.logits(image)
        assert got.shape == expected.shape == (n, 4, height, width)
        np.testing.assert_allclose(got, expected, atol=2e-3 * max(1.0, np.abs(expected).max()))
        # The same call, the same answer: probabilities from either runner.
        probs, eager_probs = runner(image), eager(image)
        assert probs.shape == eager_probs.shape == (n, 4, height, width)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, eager_probs, atol=2e-3)
