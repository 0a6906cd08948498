"""Run the ensemble's networks with ONNX Runtime: the served path on the CPU.

Each network is exported in memory, once per process at load time (``Ensemble.load``),
from the very modules that hold the shipped weights (so there is one source of truth,
``weights/``), with the input's height and width left dynamic; the torch modules are
dropped once the session exists. On the 2-core machines this project runs on,
ONNX Runtime's fused kernels run EfficientNet's depthwise convolutions about three times
faster than eager torch (see ``python -m segmenter.ml.bench``).

PSPNet's pyramid pooling is an adaptive average pool, which ONNX cannot express for an
input size known only at run time; for the export it is replaced by the same average
written as two matrix products (``adaptive_avg_pool``), which gives identical numbers.
"""

from __future__ import annotations

import copy
import io
import types
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

OPSET = 17


def adaptive_avg_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` as P_h @ x @ P_w^T, exportable with dynamic shapes.

    Output cell i averages input rows floor(i*n/size) .. ceil((i+1)*n/size) - 1, as torch does.
    """

    def averaging(n) -> torch.Tensor:
        i = torch.arange(size, dtype=torch.int64)
        j = torch.arange(n, dtype=torch.int64)
        start = torch.div(i * n, size, rounding_mode="floor")
        end = torch.div((i + 1) * n + size - 1, size, rounding_mode="floor")
        inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
        return inside.to(x.dtype) / (end - start)[:, None].to(x.dtype)

    return averaging(x.shape[2]) @ x @ averaging(x.shape[3]).transpose(0, 1)


def _psp_block_forward(self, x: torch.Tensor) -> torch.Tensor:
    """PSPBlock.forward with the pooling written as matrix products (see the module docstring)."""
    height, width = x.shape[2:]
    pooled = self.pool[1](adaptive_avg_pool(x, self.pool_size))
    return F.interpolate(pooled, size=(height, width), mode="bilinear", align_corners=True)


def exportable(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` in eval mode, NCHW, whose modules all export with dynamic shapes."""
    from segmentation_models_pytorch.decoders.pspnet.decoder import PSPBlock

    net = copy.deepcopy(net).eval().to(memory_format=torch.contiguous_format)
    for module in net.modules():
        if isinstance(module, PSPBlock):
            module.forward = types.MethodType(_psp_block_forward, module)
    return net


def export_onnx(net: torch.nn.Module, example_size: int = 256) -> bytes:
    """The network as an ONNX model (bytes): input "image" (N, 1, H, W) -> output "logits"."""
    example = torch.zeros(1, 1, example_size, example_size)
    buffer = io.BytesIO()
    # The tracer warns about every shape it reads; the dynamic axes are checked by tests.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exportable(net),
            (example,),
            buffer,
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={
                "image": {0: "n", 2: "height", 3: "width"},
                "logits": {0: "n", 2: "height", 3: "width"},
            },
            opset_version=OPSET,
        )
    return buffer.getvalue()


@dataclass(frozen=True)
class OnnxOptions:
    """How the ensemble runs its networks in ONNX Runtime (the served path).

    parallel_networks: run the networks side by side, each in its own session with an
    equal share of the threads, instead of one after the other on all of them. On the
    2-core machines a session on one thread is well over half as fast as on two
    (EfficientNet's depthwise convolutions do not split well), so the two networks side
    by side finish sooner (see ``python -m segmenter.ml.bench``). Ignored with fewer
    threads than networks.
    """

    parallel_networks: bool = True


class OnnxRunner:
    """One network in an ONNX Runtime session: float32 (N, 1, H, W) in [-1, 1], H and W
    multiples of 32 -> float32 (N, C, H, W) softmax probabilities (the same call as
    ``networks.TorchRunner``); ``logits`` gives the network's raw output.

    Built from an ONNX model's bytes (``export`` makes them from a torch module, which the
    runner does not keep). ``threads`` is the session's intra-op thread count (torch's, by
    default). Its threads sleep rather than spin when idle, so that several server
    processes share the cores fairly (the same reason the engine sets
    OMP_WAIT_POLICY=PASSIVE for torch). A session may be run from several threads at once.
    """

    def __init__(self, model: bytes, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    @classmethod
    def export(cls, net: torch.nn.Module, threads: int | None = None) -> OnnxRunner:
        """Export ``net`` in memory (``export_onnx``, about a second per network) and open a
        session on it."""
        return cls(export_onnx(net), threads)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 (N, 1, H, W) -> the network's float32 (N, C, H, W) logits."""
        return self.session.run(["logits"], {"image": np.ascontiguousarray(images, dtype=np.float32)})[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        # Softmax in torch, as TorchRunner does, so both give the same numbers.
        return torch.softmax(torch.from_numpy(self.logits(images)), dim=1).numpy()
