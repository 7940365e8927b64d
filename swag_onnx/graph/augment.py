"""Augment an ONNX classifier so that it also returns gradients (the augmented-model contract).

Added to the graph, with default-domain ops only:
- input  `swag.seed` [N, K]: the graph returns the gradient of sum(score * seed); an all-zero row
  stands for the one-hot row of that image's top-1 class (so explaining the prediction takes one
  run, not a forward pass to find the class and then a gradient run);
- output `swag.score`: the score (logit) tensor, found before a final Softmax/LogSoftmax;
- output `swag.grad.<image input>`: d sum(score * seed) / d image, in the image's own layout;
- outputs `swag.act.<layer>` and `swag.grad.<layer>` for every requested layer;
- with `weights=True` (meta-saliency), for every parameter initializer (see PARAMETER_INPUTS)
  an output `swag.wgrad.<name>` (d sum(score * seed) / d parameter, summed over the batch), and
  the initializer also becomes an optional graph input, so a run can feed updated weights
  without a second model on disk. Batch-norm statistics stay constants (frozen).
The names are recorded in metadata_props under `swag.contract` (JSON).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from swag_onnx.errors import BadModelError, BadOptionError, UnsupportedOpsError
from swag_onnx.graph import analysis
from swag_onnx.graph.emitter import Emitter, wiring
from swag_onnx.graph.model_io import load_model, save_model_atomic
from swag_onnx.graph.rules import NON_DIFFERENTIABLE, RULES, supported_ops
from swag_onnx.graph.rules.activations import affine, hard_swish_grad, relu_mask_carriers
from swag_onnx.graph.rules.quantization import as_qdq

SEED = "swag.seed"
SCORE = "swag.score"
CONTRACT_KEY = "swag.contract"
CONTRACT_VERSION = 1


def grad_name(tensor: str) -> str:
    return f"swag.grad.{tensor}"


def act_name(tensor: str) -> str:
    return f"swag.act.{tensor}"


def weight_grad_name(tensor: str) -> str:
    return f"swag.wgrad.{tensor}"


# Inputs that hold trainable parameters, per op: a float initializer there is a weight (for
# Add, Mul and MatMul only when it has more than one element: a scalar is a fixed constant).
PARAMETER_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1),
                    "BatchNormalization": (1, 2), "InstanceNormalization": (1, 2),
                    "LayerNormalization": (1, 2), "PRelu": (1,), "Add": (0, 1), "Mul": (0, 1)}
ELEMENTWISE_PARAMETER_OPS = ("Add", "Mul", "MatMul")


@dataclass
class Contract:
    """What the augmented model computes and where to find it (stored in metadata_props)."""

    image_input: str
    layout: str
    score: str  # the score tensor in the original graph
    num_classes: int
    layers: list[str]
    version: int = CONTRACT_VERSION
    weights: list[str] = field(default_factory=list)  # parameters with gradient outputs
    layer_layouts: dict = field(default_factory=dict)  # layer -> "NCHW" / "NHWC" where known
    # token layers [N, T, C] of vision transformers: layer -> {"grid": [h, w], "offset": k}:
    # tokens k .. T-1 are the h x w grid in row-major order, the first k (class token) are not
    layer_tokens: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @staticmethod
    def from_model(model: onnx.ModelProto) -> "Contract | None":
        for prop in model.metadata_props:
            if prop.key == CONTRACT_KEY:
                return Contract(**json.loads(prop.value))
        return None


def resolve_layers(info: analysis.ModelInfo, layers, relevant: set[str]) -> list[str]:
    """Turn the requested layer names ('auto' allowed) into tensor names on the gradient path."""
    resolved = []
    for layer in layers:
        if layer == "auto":
            if info.auto_layer is None:
                raise BadOptionError("no spatial feature map found for --layer auto; "
                                     "name a layer (see `swag-onnx inspect`)")
            layer = info.auto_layer
        elif layer not in relevant:
            raise BadOptionError(f"layer {layer!r} is not a float tensor between the image input "
                                 "and the score; see `swag-onnx inspect` for candidates")
        elif layer == info.image_input:
            raise BadOptionError(f"{layer!r} is the image input; its gradient is always returned")
        if layer not in resolved:
            resolved.append(layer)
    return resolved


def augment_model(model: onnx.ModelProto, layers=(), score: str | None = None,
                  weights: bool = False) -> onnx.ModelProto:
    """Return an augmented copy of `model` (the input model is not modified); `weights`: also
    the parameter gradients, parameters overridable as inputs (meta-saliency)."""
    model = analysis.infer_shapes(as_qdq(model))
    if any(i.name == SEED for i in model.graph.input) or Contract.from_model(model):
        raise BadModelError("the model is already augmented by swag_onnx")
    info, nodes, facts, relevant = analysis.analyse(model, score)
    if info.unsupported:
        raise UnsupportedOpsError(
            f"{len(info.unsupported)} node(s) on the gradient path have no gradient rule: "
            + "; ".join(info.unsupported) + ". Supported ops: " + ", ".join(supported_ops()))
    layer_names = resolve_layers(info, layers, {t for t in relevant if analysis.is_float(facts, t)})
    folded = analysis.fold_pads_into_convs(model, facts, set(layer_names))
    if _expand_hard_swish(model, facts) or folded:
        nodes, relevant = analysis.nodes_of(model, facts.opset), relevant - folded
    g = Emitter(model, _all_names(model))
    params = parameters(model, analysis.path_nodes(nodes, relevant), g) if weights else []
    g.parameters = set(params)
    grads = _backward(g, nodes, relevant | set(params), info,
                      set(layer_names) | {o.name for o in model.graph.output})
    _attach(model, g, info, layer_names, grads, [p for p in params if p in grads])
    _check(model)
    return model


def parameters(model: onnx.ModelProto, on_path, g: Emitter) -> list[str]:
    """Float initializers in a parameter position (PARAMETER_INPUTS) of a node on the gradient
    path, in graph order."""
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in on_path:
        for position in PARAMETER_INPUTS.get(node.op, ()):
            name = node.input(position)
            tensor = inits.get(name)
            if tensor is None or name in found or not analysis.is_float(g, name):
                continue
            if node.op in ELEMENTWISE_PARAMETER_OPS and int(np.prod(tensor.dims)) <= 1:
                continue
            found.append(name)
    return found


def _all_names(model: onnx.ModelProto) -> set[str]:
    names = analysis.all_tensor_names(model) | {n.name for n in model.graph.node}
    return names | {SEED, SCORE}


def _backward(g: Emitter, nodes, relevant: set[str], info, keep=frozenset()) -> dict[str, str]:
    """Reverse-mode walk from the score to the image input; returns tensor -> gradient name.
    `keep`: tensors whose own gradient is needed (requested layers) even inside a fused pattern."""
    score = info.score
    seed = _effective_seed(g, score, info.image_input, info.num_classes)
    seed = seed if g.rank(score) == 2 else g.reshape_like(seed, score)
    pending: dict[str, list[str]] = {score: [seed]}
    g.seed, g.class_maps = seed, _class_maps(g, nodes, score)
    done: dict[str, str] = {}
    swish = _swish_nodes(nodes, set(keep))
    g.relu_masks_moved, g.relu_mask_carriers = relu_mask_carriers(nodes, set(keep))
    for node in reversed(analysis.path_nodes(nodes, relevant)):
        dys = [_collect(g, pending, done, o) for o in node.outputs]
        if all(d is None for d in dys) or node.op in NON_DIFFERENTIABLE:
            continue
        if node.op == "Mul" and node.outputs[0] in swish:
            x, gate, grad = swish[node.outputs[0]]
            pending.setdefault(x, []).append(grad(g, dys[0], gate, x, node.outputs[0]))
            continue
        needs = [bool(i) and i in relevant for i in node.inputs]
        for name, need, grad in zip(node.inputs, needs, RULES[node.op](g, node, dys, needs)):
            if need and grad is not None:
                pending.setdefault(name, []).append(grad)
    for name in list(pending):
        _collect(g, pending, done, name)
    return done


# ops whose input gradient is zero on the channels (axis 1) where their output gradient is,
# when input and output have the same channel count
_CHANNEL_WISE = frozenset({"Relu", "Identity", "Dropout", "GlobalAveragePool", "GlobalMaxPool",
                           "Flatten", "Reshape", "Squeeze"})


def _class_maps(g: Emitter, nodes, score: str) -> set[str]:
    """The tensors [N, K, ...] from which the score [N, K] follows channel by channel, each read
    once (SqueezeNet's head: class maps = Relu(Conv 1x1) -> GlobalAveragePool -> Flatten):
    their gradient is zero outside the seed's classes, so the Conv producing the first of them
    transposes only those classes' kernels (Conv rule)."""
    shape = g.shape(score)
    if shape is None or len(shape) != 2 or not shape[1] or shape[1] < 2:
        return set()
    readers, producers = wiring(nodes)
    found, name = set(), score
    while name in producers:
        node = producers[name]
        x = node.inputs[0] if node.inputs else ""
        x_shape = g.shape(x)
        if (node.op not in _CHANNEL_WISE or node.domain or readers.get(x) != 1
                or x_shape is None or len(x_shape) < 2 or x_shape[1] != shape[1]):
            break
        found.add(x)
        name = x
    return found


def _swish_nodes(nodes, keep: set[str]) -> dict:
    """Mul nodes computing y = x * gate(x), gate a Sigmoid (SiLU / swish as torch exports it) or
    HardSigmoid(alpha 1/6, beta 1/2) (HardSwish, see _expand_hard_swish), whose gate output is
    read by that Mul only and is not in `keep`: y -> (x, gate output, its gradient function
    (g, dy, gate, x, y) -> dx)."""
    readers, _ = wiring(nodes)
    gates = {n.outputs[0]: (n.inputs[0], _GATES[n.op][1]) for n in nodes
             if n.op in _GATES and not n.domain and _GATES[n.op][0](n)}
    found = {}
    for node in nodes:
        if node.op != "Mul" or node.domain or len(node.inputs) != 2:
            continue
        for s, x in (node.inputs, reversed(node.inputs)):
            if s in gates and gates[s][0] == x and readers.get(s) == 1 and s not in keep:
                found[node.outputs[0]] = (x, s, gates[s][1])
                break
    return found


def _expand_hard_swish(model: onnx.ModelProto, facts: Emitter) -> bool:
    """Rewrite, in place, each HardSwish of a map onnxruntime keeps blocked as x * HardSigmoid(x)
    (the op's ONNX function body, which onnxruntime's CPU provider runs instead, bit for bit),
    so that the backward reads the forward's h rather than computing it again
    (mobilenet_v3_small: 19 HardSigmoid passes). Returns whether a node was rewritten."""
    names = _all_names(model)
    rewritten = []
    for node in model.graph.node:
        if node.op_type != "HardSwish" or node.domain not in ("", "ai.onnx") \
                or not facts.blocked(node.output[0]):
            rewritten.append(node)
            continue
        h = f"{node.output[0]}/hard_sigmoid"
        while h in names:
            h += "_"
        names.add(h)
        x, y = node.input[0], node.output[0]
        rewritten += [helper.make_node("HardSigmoid", [x], [h], name=h, alpha=1.0 / 6.0, beta=0.5),
                      helper.make_node("Mul", [x, h], [y], name=node.name)]
    if len(rewritten) == len(model.graph.node):
        return False
    del model.graph.node[:]
    model.graph.node.extend(rewritten)
    return True


def swish_grad(g: Emitter, dy: str, s: str, y: str) -> str:
    """dx of y = x * s, s = sigmoid(x): dy * (s + y (1 - s)) in four element-wise passes (the
    separate Mul and Sigmoid rules take six and a Sum). For a float32 map [N, C, H, W] with C a
    multiple of onnxruntime's channel block, 1 - s is a per-channel affine map (a
    BatchNormalization, one rounding like Sub), so that every pass stays in the blocked NCHWc
    layout the forward Sigmoid and Mul run in: a Sub with a scalar would reorder s, y, dy and
    dx (four layout conversions per swish)."""
    if g.blocked(y):
        one_minus = affine(g, s, g.shape(y)[1], -1.0, 1.0)
    else:
        one_minus = g.op("Sub", g.scalar_like(1.0, y), s)
    return g.op("Mul", dy, g.op("Add", s, g.op("Mul", y, one_minus)))


def _is_hard_swish_gate(node) -> bool:
    """HardSigmoid with HardSwish's constants (alpha 1/6, beta 1/2)."""
    return (np.float32(node.attrs.get("alpha", 0.2)) == np.float32(1.0 / 6.0)
            and np.float32(node.attrs.get("beta", 0.5)) == np.float32(0.5))


# gate op of y = x * gate(x) -> (whether a node of that op is such a gate, dx: (g, dy, gate
# output, x, y) -> dx)
_GATES = {
    "Sigmoid": (lambda node: True, lambda g, dy, s, x, y: swish_grad(g, dy, s, y)),
    "HardSigmoid": (_is_hard_swish_gate, lambda g, dy, h, x, y: hard_swish_grad(g, dy, h, x)),
}


def _effective_seed(g: Emitter, score: str, image: str, num_classes: int) -> str:
    """swag.seed with every all-zero row replaced by the one-hot row of the top-1 class."""
    flat = score if g.rank(score) == 2 else g.op("Reshape", score, g.ints([-1, num_classes]))
    seed = SEED  # typed like the image input; the backward graph starts in the score's type
    if g.dtype(score) != g.dtype(image):
        seed = g.op("Cast", SEED, to=g.dtype(score) or onnx.TensorProto.FLOAT)
    empty = g.op("Equal", g.op("ReduceSum", g.op("Abs", seed), g.ints([1]), keepdims=1),
                 g.scalar_like(0.0, score))
    top1 = g.op("ArgMax", flat, axis=1, keepdims=1, select_last_index=0)  # [N, 1]
    classes = g.const(np.arange(num_classes).reshape(1, -1), np.int64)
    one_hot = g.mask(g.op("Equal", top1, classes), score)
    return g.op("Where", empty, one_hot, seed)


def _collect(g, pending, done, name):
    """The total gradient of `name` (sum of its fan-out contributions; terms left unexpanded by
    Emitter.expand_when_summed broadcast in that Sum), or None."""
    if name in done:
        return done[name]
    terms = pending.pop(name, None)
    if not terms:
        return None
    total = g.add_all(terms, name)
    if all(term in g.unexpanded for term in terms):  # no full-size term to broadcast against
        total = g.expand_like(total, name)
    done[name] = total
    return total


def _value_info(g: Emitter, name: str, like: str):
    return helper.make_tensor_value_info(name, g.dtype(like) or onnx.TensorProto.FLOAT,
                                         g.dims(like))


def _attach(model, g: Emitter, info, layer_names: list[str], grads: dict[str, str],
            params: list[str]) -> None:
    """Wire the seed input, the new outputs and the contract metadata into the model."""
    graph = model.graph
    score_shape = g.shape(info.score)
    # the seed's batch is named as the image's: onnxruntime keeps a backward Mul in its blocked
    # layout only when it can prove both operands' shapes equal, and a seed batch named
    # otherwise (a model exported with "batch_size") left every mask Mul of DenseNet-121
    # unblocked, two layout conversions each
    batch = (score_shape[0] if score_shape and score_shape[0] is not None
             else analysis.batch_name(model, info.image_input))
    graph.input.append(helper.make_tensor_value_info(
        SEED, g.dtype(info.image_input) or onnx.TensorProto.FLOAT, [batch, info.num_classes]))
    outputs = [(SCORE, info.score, info.score)]
    for tensor in [info.image_input] + layer_names:
        if tensor not in grads:
            raise BadOptionError(f"no gradient reaches {tensor!r} from the score")
        outputs.append((grad_name(tensor), grads[tensor], tensor))
    outputs += [(act_name(t), t, t) for t in layer_names]
    outputs.sort(key=lambda o: (not o[0].startswith("swag.act"), o[0] != SCORE))
    outputs += [(weight_grad_name(p), grads[p], p) for p in params]
    graph.input.extend(_value_info(g, p, p) for p in params)  # overridable initializers
    for out_name, source, like in outputs:
        g.nodes.append(helper.make_node("Identity", [source], [out_name], name=g.fresh("output")))
        graph.output.append(_value_info(g, out_name, like))
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.initializers)
    layouts = {name: shape.layout for name, shape in info.layers}
    tokens = {t: {"grid": list(info.tokens[t].grid), "offset": info.tokens[t].offset}
              for t in layer_names if t in info.tokens}
    contract = Contract(info.image_input, info.layout, info.score, info.num_classes, layer_names,
                        weights=params,
                        layer_layouts={t: layouts[t] for t in layer_names if t in layouts},
                        layer_tokens=tokens)
    model.metadata_props.append(onnx.StringStringEntryProto(key=CONTRACT_KEY,
                                                            value=contract.to_json()))


def _check(model: onnx.ModelProto) -> None:
    """Drop the intermediate value_info (shapes as onnxruntime computes them, which for ceil-mode
    pooling can differ from ONNX inference) and run the ONNX checker."""
    del model.graph.value_info[:]
    if model.ByteSize() < 2**31 - 2**20:
        onnx.checker.check_model(model)


def keep_outputs(model: onnx.ModelProto, keep) -> onnx.ModelProto:
    """A copy of `model` with only the graph outputs whose names `keep` accepts, and only the
    nodes and initializers those need (every input kept). onnxruntime runs every node of a
    graph whatever a run fetches, and does not drop nodes that no output needs: a session for
    the layer methods (no input gradient) or for runs that do not want the parameter gradients
    computes only what it returns this way (the backward below the layer, the weight
    gradients' convolutions)."""
    from onnx.utils import Extractor

    names = [o.name for o in model.graph.output if keep(o.name)]
    pruned = Extractor(model).extract_model([i.name for i in model.graph.input], names)
    del pruned.metadata_props[:]
    pruned.metadata_props.extend(model.metadata_props)
    return pruned


def augment(src: str | os.PathLike, dst: str | os.PathLike, layers=(),
            score: str | None = None, weights: bool = False) -> Contract:
    """Augment the model file `src` into `dst` (written atomically; `src` is never modified)."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and dst.resolve() == src.resolve():
        raise BadOptionError("the output path is the input model; choose another -o")
    augmented = augment_model(load_model(src), layers, score, weights)
    save_model_atomic(augmented, dst)
    return Contract.from_model(augmented)


def describe(src: str | os.PathLike, score: str | None = None) -> analysis.ModelInfo:
    """Analyse the model file `src` for `inspect` (input, layout, score, layers, unsupported ops)."""
    from swag_onnx.graph import checks

    model = load_model(src)
    checks.fit_to_runtime(model, repr(str(src)))  # one line instead of onnxruntime's errors
    checks.check_model(model, repr(str(src)), score)
    return analysis.analyse(analysis.infer_shapes(as_qdq(model)), score)[0]
