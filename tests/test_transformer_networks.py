"""Whole-network gradients of vision transformers (torchvision, random weights) against
torch.autograd in float64.

vit_b_16 (legacy exporter, and dynamo at opset 20, whose GELU is one Gelu node), swin_t (dynamo,
opset 20: Gelu, patch merging's Slice with step 2) and maxvit_t (legacy: attention written as
Einsum). The float32 ONNX model's score, input gradient and the gradient of its `--layer auto`
layer (ViT: the last block's input norm, a token layer [N, 1 + h w, C]; Swin and MaxViT: their
last spatial map) must match the float64 reference: max|diff| / max|ref| <= 1e-4. These networks
have no ReLU kinks or max-pool ties (GELU, SiLU, average pooling), so any input is decision-stable
(zoo.stable_input confirms it). Image sizes: ViT 64 (a 4x4 grid), Swin 64, MaxViT 224 (its
7x7 partitions need 224).

Fast tests at the end: token layers of a small 2-block ViT on a non-square grid (analysis,
contract, `inspect`), tokens_to_map, and contracts written before token layers."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
import torchvision

import zoo
from gradcheck import session
from swag_onnx import augment_model, describe
from swag_onnx.graph import SCORE, SEED, Contract, act_name, grad_name
from swag_onnx.methods.tokens import tokens_to_map

TOLERANCE = 1e-4
# (network, image size, dynamo exporter, op the case exists for)
CASES = [("vit_b_16", 64, False, "LayerNormalization"), ("vit_b_16", 64, True, "Gelu"),
         ("swin_t", 64, True, "Slice"), ("maxvit_t", 224, False, "Einsum")]


def build(name: str, size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    extra = {"image_size": size} if name.startswith("vit") else {}
    net = getattr(torchvision.models, name)(weights=None, **extra)
    with torch.no_grad():  # torchvision starts ViT's head at zero: no gradient would flow
        for module in net.modules():
            if isinstance(module, torch.nn.Linear) and not module.weight.any():
                module.weight.normal_(0, 0.02)
    return net.eval()


def export(net: torch.nn.Module, size: int, path, dynamo: bool):
    """Legacy exporter at opset 17, or dynamo at opset 20 (Gelu); dynamic batch."""
    x = torch.randn(2, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("N", min=1, max=1024)
            torch.onnx.export(net, (x,), dynamo=True, opset_version=20, verbose=False,
                              input_names=["image"], dynamic_shapes=({0: batch},)).save(str(path))
        else:
            torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17,
                              input_names=["image"], output_names=["logits"],
                              dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    return path


def reference(net, x, seed):
    """zoo.autograd_reference on a float64 copy of the network."""
    net64 = net.double()
    try:
        return zoo.autograd_reference(net64, x.astype(np.float64), seed.astype(np.float64))
    finally:
        net.float()


@pytest.mark.slow
@pytest.mark.parametrize("name,size,dynamo,op", CASES,
                         ids=[f"{c[0]}-{'dynamo' if c[2] else 'legacy'}" for c in CASES])
def test_transformer_gradients_match_float64_autograd(name, size, dynamo, op, tmp_path):
    net = build(name, size)
    path = export(net, size, tmp_path / "model.onnx", dynamo)
    assert op in {n.op_type for n in onnx.load(str(path)).graph.node}
    info = describe(path)
    assert info.unsupported == []
    augmented = augment_model(onnx.load(str(path)), layers=["auto"])
    assert {node.domain for node in augmented.graph.node} <= {"", "ai.onnx"}
    contract = Contract.from_model(augmented)
    layer = info.auto_layer

    seed = np.random.default_rng(1).standard_normal((1, info.num_classes)).astype(np.float32)
    x = zoo.stable_input(net, path, (1, 3, size, size))
    sess = session(augmented)
    outputs = dict(zip([o.name for o in sess.get_outputs()],
                       sess.run(None, {info.image_input: x, SEED: seed})))
    logits, input_grad, captured = reference(net, x, seed)
    reference_grad = zoo.match_layer(outputs[act_name(layer)], captured)
    assert reference_grad is not None, f"{layer} matches no torch module output"
    errors = {"score": zoo.relative_error(outputs[SCORE], logits),
              "input": zoo.relative_error(outputs[grad_name(info.image_input)], input_grad),
              "layer": zoo.relative_error(outputs[grad_name(layer)], reference_grad)}
    print(f"\n{name} {'dynamo' if dynamo else 'legacy'} {size}px, layer {layer}: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) < TOLERANCE, errors
    if name == "vit_b_16":
        _check_token_layer(net, x, info, contract, layer, outputs, reference_grad, size)
    else:  # Swin and MaxViT end in spatial maps: no token layer is the auto layer
        assert layer not in info.tokens and contract.layer_tokens == {}


def _check_token_layer(net, x, info, contract, layer, outputs, reference_grad, size):
    """The auto layer is the last block's input norm (ln_1), recorded in the contract with its
    grid; tokens_to_map folds it as pytorch-grad-cam's reshape_transform does."""
    grid = size // 16
    assert contract.layer_tokens == {layer: {"grid": [grid, grid], "offset": 1}}
    assert info.tokens[layer].op == "LayerNormalization"
    captured = {}
    hook = net.encoder.layers[-1].ln_1.register_forward_hook(
        lambda module, args, out: captured.update(ln_1=out.detach().numpy()))
    try:
        with torch.no_grad():
            net(torch.tensor(x))
    finally:
        hook.remove()
    assert zoo.relative_error(outputs[act_name(layer)], captured["ln_1"]) < TOLERANCE
    # reshape_transform: tensor[:, 1:, :].reshape(N, h, w, C), channels first
    expected = reference_grad[:, 1:, :].reshape(1, grid, grid, -1).transpose(0, 3, 1, 2)[0]
    folded = tokens_to_map(outputs[grad_name(layer)][0], (grid, grid), 1)
    assert folded.shape == (768, grid, grid)
    assert zoo.relative_error(folded, expected) < TOLERANCE
    assert np.abs(folded).max() > 0  # the grid tokens do get a gradient at this layer


# ----- token layers on a small ViT (fast) -------------------------------------------------------

def small_vit() -> torch.nn.Module:
    """A 2-block ViT on 32x24 images in 8x8 patches: a 4x3 grid plus the class token."""
    torch.manual_seed(0)
    net = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                               num_heads=2, hidden_dim=16, mlp_dim=32,
                                               num_classes=5)
    with torch.no_grad():
        net.heads.head.weight.normal_(0, 0.5)  # torchvision starts it at zero
    return net.eval()


def test_token_layers_of_a_small_vit(tmp_path):
    """Token layers are found with their grid (h, w) and the class token as offset; --layer auto
    is the last block's input norm; the contract records its grid; `inspect` lists it."""
    from typer.testing import CliRunner

    from swag_onnx.cli import app

    net = small_vit()
    net.image_size = 32  # torchvision checks a square size; the 32x24 input below passes
    x = torch.randn(2, 3, 32, 24)
    path = tmp_path / "vit.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_NoSizeCheck(net), (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], dynamic_axes={"image": {0: "N"}})
    info = describe(path)
    assert info.tokens and {t.grid for t in info.tokens.values()} == {(4, 3)}
    offsets = [t.offset for t in info.tokens.values()]
    assert offsets[0] == 0 and set(offsets[1:]) == {1}  # patch tokens, then with the class token
    assert info.tokens[info.auto_layer].op == "LayerNormalization"
    norms = [name for name, t in info.tokens.items() if t.op == "LayerNormalization"]
    assert info.auto_layer == norms[-3]  # block 2's ln_1; then its ln_2 and the final norm

    augmented = augment_model(onnx.load(str(path)), layers=["auto"])
    contract = Contract.from_model(augmented)
    assert contract.layer_tokens == {info.auto_layer: {"grid": [4, 3], "offset": 1}}
    seed = np.eye(5, dtype=np.float32)[:1]
    image = np.random.default_rng(0).standard_normal((1, 3, 32, 24)).astype(np.float32)
    sess = session(augmented)
    act, grad = sess.run([act_name(info.auto_layer), grad_name(info.auto_layer)],
                         {"image": image, SEED: seed})
    assert act.shape == (1, 13, 16)
    grad_map = tokens_to_map(grad[0], (4, 3), 1)
    assert grad_map.shape == (16, 4, 3)
    assert (np.abs(grad_map).max(axis=0) > 0).all()  # every grid token gets a gradient here

    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "token layers" in result.output and "4x3" in result.output


class _NoSizeCheck(torch.nn.Module):
    """torchvision's ViT asserts a square input; patch-embed and encode a 32x24 image by hand."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        vit = self.vit
        tokens = vit.conv_proj(x).flatten(2).transpose(1, 2)  # [N, h w, C]
        cls = vit.class_token.expand(x.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1)
        encoder = vit.encoder
        tokens = encoder.ln(encoder.layers(tokens + encoder.pos_embedding[:, :tokens.shape[1]]))
        return vit.heads(tokens[:, 0])


def test_tokens_to_map_folds_row_major_and_drops_leading_tokens():
    tokens = np.arange((2 + 6) * 4, dtype=np.float32).reshape(2 + 6, 4)  # 2 leading, a 2x3 grid
    folded = tokens_to_map(tokens, (2, 3), 2)
    assert folded.shape == (4, 2, 3) and folded.dtype == np.float32
    # channel c at grid (i, j) is token 2 + i * 3 + j
    assert folded[1, 1, 2] == tokens[2 + 1 * 3 + 2, 1] and folded[3, 0, 0] == tokens[2, 3]
    with pytest.raises(ValueError):
        tokens_to_map(tokens, (3, 3), 2)
    with pytest.raises(ValueError):
        tokens_to_map(tokens[None], (2, 3), 2)


def test_contract_without_token_field_still_loads():
    """Models augmented before token layers existed carry no layer_tokens: it defaults to {}."""
    model = onnx.ModelProto()
    old = {"image_input": "image", "layout": "NCHW", "score": "logits", "num_classes": 5,
           "layers": ["conv"], "version": 1, "weights": [], "layer_layouts": {"conv": "NCHW"}}
    model.metadata_props.append(onnx.StringStringEntryProto(key="swag.contract",
                                                            value=json.dumps(old)))
    contract = Contract.from_model(model)
    assert contract.layer_tokens == {} and contract.layer_layouts == {"conv": "NCHW"}


@pytest.mark.slow
def test_vit_gradcam_through_the_explainer_matches_pytorch_grad_cam(tmp_path):
    """Grad-CAM on a ViT's token layer (--layer auto, folded onto the patch grid by the
    contract's layer_tokens) through Explainer.explain, against pytorch-grad-cam's GradCAM
    with the usual reshape_transform on the same layer: Pearson >= 0.999."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from swag_onnx import Explainer

    size = 64
    net = build("vit_b_16", size)
    path = export(net, size, tmp_path / "vit.onnx", dynamo=False)
    card = {"input_size": [size, size], "layout": "NCHW", "resize": None,
            "scaling": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}}
    explainer = Explainer(path, card=card)
    rgb = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    # random weights: Grad-CAM is ReLU'd to zero for many classes; take the first of the top
    # classes whose map is not constant (HiResCAM picks the same classes for both sides)
    for candidate in explainer.predict([rgb])[0].top5:
        result, = explainer.explain([rgb], method="gradcam", target=candidate["index"])
        if result.saliency.max() > 0:
            break
    assert result.saliency.max() > 0
    layer = result.params["layers"][0]
    assert layer in explainer.runner.contract.layer_tokens

    def reshape(tokens):  # pytorch-grad-cam's ViT recipe: drop the class token, fold the grid
        n, t, c = tokens.shape
        side = int(round((t - 1) ** 0.5))
        return tokens[:, 1:, :].reshape(n, side, side, c).permute(0, 3, 1, 2)

    x = torch.from_numpy(rgb.astype(np.float32).transpose(2, 0, 1)[None] / 255.0)
    target = result.target["index"]
    with GradCAM(model=net, target_layers=[net.encoder.layers[-1].ln_1],
                 reshape_transform=reshape) as cam:
        reference = cam(input_tensor=x, targets=[ClassifierOutputTarget(target)])[0]
    pearson = float(np.corrcoef(result.saliency.ravel(), reference.ravel())[0, 1])
    assert pearson >= 0.999, pearson
