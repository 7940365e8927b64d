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
INPUT_SIZE = {"vgg16_bn": 224}  # its legacy export needs 7x7 maps before adaptive pooling
DEFAULT_SIZE = 112
TIE_MARGIN = 1e-5  # max-pool windows whose top two values are closer than this (relative) are ties


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


def max_pool_margin(net: torch.nn.Module, x: np.ndarray) -> float:
    """Smallest relative gap between the two largest values of any max-pool window with a
    nonzero max. Near a tie the gradient jumps between positions (float32 vs float64 autograd
    already disagree there), so gradient comparisons need inputs with a clear margin."""
    margins = [np.inf]

    def hook(module, args, out):
        inp = args[0].detach().double()
        k, s, p, d = (torch.nn.modules.utils._pair(v) for v in
                      (module.kernel_size, module.stride, module.padding, module.dilation))
        ho, wo = out.shape[-2:]
        reach = [(n - 1) * st + (kk - 1) * dd + 1 for n, st, kk, dd in zip((ho, wo), s, k, d)]
        extra = [max(0, r - size - pp) for r, size, pp in zip(reach, inp.shape[-2:], p)]
        padded = torch.nn.functional.pad(inp.flatten(0, 1).unsqueeze(1),
                                         (p[1], extra[1], p[0], extra[0]), value=-np.inf)
        cols = torch.nn.functional.unfold(padded, k, dilation=d, stride=s)
        lh = (padded.shape[-2] - (k[0] - 1) * d[0] - 1) // s[0] + 1
        cols = cols.reshape(cols.shape[0], cols.shape[1], lh, -1)[:, :, :ho, :wo]
        top = cols.topk(2, dim=1).values
        active = top[:, 0] != 0
        gap = (top[:, 0] - top[:, 1]) / top[:, 0].abs()
        if active.any():
            margins.append(float(gap[active].min()))

    pools = [m for m in net.modules() if isinstance(m, torch.nn.MaxPool2d)]
    handles = [m.register_forward_hook(hook) for m in pools]
    try:
        with torch.no_grad():
            net(torch.tensor(x))
    finally:
        for h in handles:
            h.remove()
    return min(margins)


def tie_free_input(net: torch.nn.Module, shape, seed: int = 0, tries: int = 30) -> np.ndarray:
    """A standard-normal input whose max-pool windows have no near-ties (see max_pool_margin)."""
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        x = rng.standard_normal(shape).astype(np.float32)
        if max_pool_margin(net, x) > TIE_MARGIN:
            return x
    raise AssertionError(f"no input without max-pool near-ties in {tries} tries")
