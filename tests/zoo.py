"""Real PyTorch classifiers (random weights), their ONNX exports, and a torch.autograd oracle."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

NETWORKS = [
    "resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
    "densenet121", "squeezenet1_1", "googlenet", "shufflenet_v2_x1_0", "regnet_y_400mf",
    "convnext_tiny", "efficientnet_lite0",
]
# Smallest input size each network's export and layer candidates stay meaningful at (speeds CI).
INPUT_SIZE = {"vgg16_bn": 224}  # its legacy export needs 7x7 maps before adaptive pooling
DEFAULT_SIZE = 64


def _smooth(module: torch.nn.Module) -> None:
    """Replace every ReLU by SiLU and every MaxPool2d by an AvgPool2d of the same window."""
    for child_name, child in module.named_children():
        if isinstance(child, torch.nn.ReLU):
            setattr(module, child_name, torch.nn.SiLU())
        elif isinstance(child, torch.nn.MaxPool2d):
            setattr(module, child_name, torch.nn.AvgPool2d(child.kernel_size, child.stride,
                                                           child.padding, child.ceil_mode))
        else:
            _smooth(child)


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
            if hasattr(module, "layer_scale"):  # ConvNeXt starts at 1e-6: blocks would vanish
                module.layer_scale.uniform_(0.1, 0.3)
    if name == "vgg16_bn":
        # A smooth copy (ReLU -> SiLU, max -> average pool): with torch 2.14.1 and onnxruntime
        # 1.31, VGG's 3.5 million ReLU inputs at 224 px put some unit within float32 rounding of
        # the kink on every one of stable_input's draws (measured: 1 to 4 flips per draw at
        # |v| < 1e-7), so no input is decision-stable. Max-pool and ReLU rules are compared on
        # the other networks (resnet, googlenet, squeezenet, mobilenet).
        _smooth(net)
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
    """The torch gradient of the captured tensor closest in value to `act` (within 1e-4)."""
    errors = [(relative_error(act, t_act), i) for i, (t_act, _) in enumerate(layers)
              if t_act.shape == act.shape]
    best = min(errors, default=(np.inf, None))
    return layers[best[1]][1] if best[0] < 1e-4 else None


KINKS = {"relu": (0.0,), "hardtanh": None, "hardswish": (-3.0, 3.0), "hardsigmoid": (-3.0, 3.0)}
ONNX_DECISION_OPS = ("Relu", "Clip", "HardSwish", "HardSigmoid", "MaxPool")


def _relu_family_decision(name, args, kwargs):
    kinks = KINKS[name]
    if kinks is None:  # hardtanh(min_val, max_val): relu6 and friends
        bounds = list(args[:2]) + [kwargs.get(k) for k in ("min_val", "max_val")]
        kinks = tuple(b for b in bounds if b is not None)[:2] or (-1.0, 1.0)
    return lambda v: sum((v > k).astype(np.int64) for k in kinks)


def _max_pool_decision(args, kwargs):
    def argmax_positions(v):
        out = ORIGINALS["max_pool2d"](torch.tensor(v), *args,
                                      **{**kwargs, "return_indices": True})
        return out[1].numpy()
    return argmax_positions


ORIGINALS = {name: getattr(F, name) for name in list(KINKS) + ["max_pool2d"]}


def decisions_torch(net: torch.nn.Module, x: np.ndarray) -> list[tuple[np.ndarray, object]]:
    """(input, decide) for every ReLU-family and max-pool call of torch's forward pass (the
    reference's own float32 arithmetic), where decide(values) gives the discrete choice made there
    (side of each kink, argmax of windows)."""
    recorded = []

    def wrap(name):
        def recording(inp, *args, **kwargs):
            decide = (_max_pool_decision(args, {k: v for k, v in kwargs.items()
                                                if k != "return_indices"})
                      if name == "max_pool2d" else _relu_family_decision(name, args, kwargs))
            recorded.append((inp.detach().clone().numpy(), decide))
            return ORIGINALS[name](inp, *args, **kwargs)
        return recording

    try:
        for name in ORIGINALS:
            setattr(F, name, wrap(name))
        with torch.no_grad():
            net(torch.tensor(x))
    finally:
        for name, fn in ORIGINALS.items():
            setattr(F, name, fn)
    return recorded


def decision_inputs_onnx(model_path, x: np.ndarray) -> list[np.ndarray]:
    """Inputs of every Relu/Clip/HardSwish/HardSigmoid/MaxPool node, as onnxruntime computes them."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(model_path))
    names = dict.fromkeys(n.input[0] for n in model.graph.node if n.op_type in ONNX_DECISION_OPS)
    if not names:  # smooth activations only (SiLU, GELU): nothing to decide
        return []
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})


def same_decisions(onnx_values, torch_decisions) -> bool:
    """True when onnxruntime's and torch's float32 forward passes take the same discrete decision
    at every ReLU-family kink and max-pool window (tensors matched by value)."""
    for value in onnx_values:
        for reference, decide in torch_decisions:
            if reference.shape == value.shape and relative_error(value, reference) < 1e-3:
                if np.any(decide(value) != decide(reference)):
                    return False
                break
    return True


def stable_input(net: torch.nn.Module, model_path, shape, tries: int = 12) -> np.ndarray:
    """A standard-normal input away from the gradient's discontinuities (ReLU kinks, max-pool
    ties), where float32 rounding alone decides which way a gradient is routed: onnxruntime and
    torch must take the same decision at every kink and window.
    Inputs come from a fixed sequence, so the choice is deterministic."""
    rng = np.random.default_rng(0)
    for _ in range(tries):
        x = rng.standard_normal(shape).astype(np.float32)
        if same_decisions(decision_inputs_onnx(model_path, x), decisions_torch(net, x)):
            return x
    raise AssertionError(f"no input away from ties and kinks in {tries} tries")
