"""Real PyTorch classifiers (random weights), their ONNX exports, and a torch.autograd oracle."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision

NETWORKS = [
    "resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
    "densenet121", "squeezenet1_1", "googlenet", "shufflenet_v2_x1_0", "regnet_y_400mf",
    "convnext_tiny", "efficientnet_lite0",
]
# Smallest input size each network's export and layer candidates stay meaningful at (speeds CI).
INPUT_SIZE = {"vgg16_bn": 224, "efficientnet_lite0": 224, "googlenet": 224}
DEFAULT_SIZE = 160


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A network with random (seeded) weights and mildly perturbed BatchNorm statistics (so that
    BatchNormalization is not the identity yet the network stays well conditioned in float32:
    strong perturbations make float32 autograd itself differ from float64 by 1e-3), eval mode."""
    torch.manual_seed(seed)
    if name == "efficientnet_lite0":
        from efficientnet_lite_pytorch import EfficientNet
        net = EfficientNet.from_name("efficientnet-lite0")
    else:
        extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        net = getattr(torchvision.models, name)(weights=None, **extra)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.05, 0.05)
                module.running_var.uniform_(0.9, 1.1)
                module.weight.uniform_(0.9, 1.1)
                module.bias.uniform_(-0.02, 0.02)
    return net.eval()


def export(net: torch.nn.Module, size: int, path: Path, dynamo: bool) -> Path:
    """Export with the legacy (opset 17) or the dynamo (opset 18) exporter, dynamic batch."""
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("N", min=1, max=1024)
            program = torch.onnx.export(net, (x,), dynamo=True, opset_version=18, verbose=False,
                                        input_names=["image"], dynamic_shapes=({0: batch},))
            program.save(str(path))
        else:
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    return path


def autograd_reference(net: torch.nn.Module, x: np.ndarray, seed: np.ndarray):
    """torch.autograd gradients of sum(logits * seed): (logits, input grad, [(act, grad), ...])
    for the output of every module call (captured with hooks, grads retained)."""
    captured = []

    def hook(module, args, out):
        if isinstance(out, torch.Tensor) and out.requires_grad:
            out.retain_grad()
            captured.append(out)

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        xt = torch.tensor(x, requires_grad=True)
        logits = net(xt)
        (logits * torch.tensor(seed)).sum().backward()
    finally:
        for h in handles:
            h.remove()
    layers = [(t.detach().numpy(), t.grad.numpy()) for t in captured if t.grad is not None]
    return logits.detach().numpy(), xt.grad.numpy(), layers


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


def match_layer(act: np.ndarray, layers) -> np.ndarray | None:
    """The torch gradient of the captured tensor whose value equals `act`, if any."""
    for t_act, t_grad in layers:
        if t_act.shape == act.shape and relative_error(act, t_act) < 1e-4:
            return t_grad
    return None
