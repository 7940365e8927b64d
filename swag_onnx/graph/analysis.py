"""Static analysis of an ONNX classifier: image input and layout, score tensor, the
differentiable path between them, candidate layers (spatial maps, and token layers of vision
transformers), and ops without a gradient rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from swag_onnx.errors import BadModelError, BadOptionError
from swag_onnx.graph import probe
from swag_onnx.graph.emitter import Emitter, Node
from swag_onnx.graph.rules import (CHECKS, INTEGER_OUTPUTS, INTEGER_PASSTHROUGH,
                                    NON_DIFFERENTIABLE, RULES)

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}
MIN_OPSET = 13


@dataclass
class ModelInfo:
    """What `inspect` reports and `augment` builds on."""

    image_input: str
    input_shape: tuple
    layout: str  # "NCHW" or "NHWC"
    score: str
    score_source: str  # how the score tensor was chosen
    num_classes: int
    layers: list[tuple[str, tuple]] = field(default_factory=list)  # spatial maps on the path
    auto_layer: str | None = None
    unsupported: list[str] = field(default_factory=list)  # "OpType (node name): reason"
    opset: int = 0
    tokens: dict = field(default_factory=dict)  # token layer -> TokenGrid, in graph order


@dataclass(frozen=True)
class TokenGrid:
    """How a token layer [N, T, C] lays out its tokens: `offset` leading tokens that are not on
    the grid (a class token: 1), then h * w grid tokens in row-major order (T = offset + h w).
    `shape` is the layer's [N, T, C] shape, `op` the type of the node that computes it."""

    grid: tuple[int, int]
    offset: int
    shape: tuple
    op: str


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with value_info for every tensor (data propagation for shape math)."""
    opset = next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise BadModelError("the model imports no standard ONNX opset")
    if opset < MIN_OPSET:
        raise BadModelError(f"the model uses opset {opset}; re-export it with opset >= {MIN_OPSET}")
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:
        raise BadModelError(f"ONNX shape inference failed on the model: {exc}") from None


def nodes_of(model: onnx.ModelProto, opset: int) -> list[Node]:
    return [Node.from_proto(n, opset) for n in model.graph.node]


def is_float(facts: Emitter, name: str) -> bool:
    dtype = facts.dtype(name)
    return dtype is None or dtype in FLOAT_TYPES


def find_image_input(model: onnx.ModelProto, facts: Emitter) -> tuple[str, tuple, str]:
    """The first float rank-4 graph input (not an initializer) and its layout."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits or facts.dtype(inp.name) not in FLOAT_TYPES:
            continue
        shape = facts.shape(inp.name)
        if shape is not None and len(shape) == 4:
            return inp.name, shape, _layout(shape)
    raise BadModelError("the model has no float image input of rank 4 (N, C, H, W or N, H, W, C)")


def _layout(shape: tuple) -> str:
    channels = (1, 3, 4)
    if shape[1] in channels and shape[3] not in channels:
        return "NCHW"
    if shape[3] in channels and shape[1] not in channels:
        return "NHWC"
    return "NCHW" if (shape[1] or 10**9) <= (shape[3] or 10**9) else "NHWC"


def find_score(model: onnx.ModelProto, nodes: list[Node], facts: Emitter,
               requested: str | None) -> tuple[str, str]:
    """The score (logit) tensor: `requested`, or the input of a final Softmax/LogSoftmax, or the
    first float output. Returns (name, how it was chosen)."""
    if requested:
        if facts.shape(requested) is None and requested not in all_tensor_names(model):
            raise BadOptionError(f"score tensor {requested!r} is not in the model; "
                                 "see `swag-onnx inspect` for tensor names")
        return requested, "given"
    producer = {o: n for n in nodes for o in n.outputs}
    for out in model.graph.output:
        if not is_float(facts, out.name):
            continue
        name, node = out.name, producer.get(out.name)
        while node is not None and node.op in ("Identity",):
            name = node.inputs[0]
            node = producer.get(name)
        if node is not None and node.op in ("Softmax", "LogSoftmax"):
            return node.inputs[0], f"input of the final {node.op}"
        quantiser = producer.get(node.inputs[0]) if node is not None \
            and node.op == "DequantizeLinear" else None
        if quantiser is not None and quantiser.op == "QuantizeLinear":
            # the logits before their output quantisation: a top-1 logit that saturates it
            # would have no gradient (straight-through with the clipping mask)
            return quantiser.inputs[0], "input of the final QuantizeLinear"
        return out.name, "model output"
    raise BadModelError("the model has no float output to explain")


def all_tensor_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        names.update(node.output)
    return names


def carries_gradient(node: Node, index: int, facts: Emitter, forward: set[str]) -> bool:
    """Whether output `index` of `node` (which reads a tensor of `forward`) can carry a
    gradient: a float tensor; the integer output of a quantiser (it stands for its dequantised
    value; see rules/quantization.py), or of a reshape-like op on such a tensor. The scale and
    zero point outputs of DynamicQuantizeLinear carry none."""
    out = node.outputs[index]
    if not out or node.domain:
        return bool(out) and is_float(facts, out)
    if node.op in INTEGER_OUTPUTS:
        return index in INTEGER_OUTPUTS[node.op]
    if node.op in INTEGER_PASSTHROUGH and node.inputs[0] in forward:
        return True
    return is_float(facts, out)


def forward_tensors(nodes: list[Node], facts: Emitter, sources: list[str]) -> set[str]:
    """Tensors computed from a source that can carry a gradient (carries_gradient)."""
    forward = set(sources)
    for node in nodes:
        if any(i in forward for i in node.inputs if i):
            forward.update(o for k, o in enumerate(node.outputs)
                           if carries_gradient(node, k, facts, forward))
    return forward


def path_tensors(nodes: list[Node], facts: Emitter, sources: list[str], target: str) -> set[str]:
    """Tensors that can carry a gradient, depend on a source and that the target depends on."""
    forward = forward_tensors(nodes, facts, sources)
    backward = {target}
    for node in reversed(nodes):
        if any(o in backward for o in node.outputs):
            backward.update(i for i in node.inputs if i)
    return forward & backward


def path_nodes(nodes: list[Node], relevant: set[str]) -> list[Node]:
    """Nodes that carry a gradient: a relevant input and a relevant output."""
    return [n for n in nodes if any(o in relevant for o in n.outputs)
            and any(i in relevant for i in n.inputs if i)]


# the contrib ops onnxruntime's quantize_dynamic writes for transformers and LSTMs: no
# gradient rule, but a QDQ model of the same network has one
_QDQ_HINT = ("; quantise with onnxruntime.quantization's QuantFormat.QDQ, or leave {op} out of "
             "op_types_to_quantize")
QUANTISED_HINTS = {op: _QDQ_HINT.format(op=base) for op, base in
                   (("QAttention", "Attention"), ("QEmbedLayerNormalization",
                                                  "EmbedLayerNormalization"),
                    ("DynamicQuantizeLSTM", "LSTM"), ("QOrderedAttention", "Attention"))}


def unsupported_nodes(on_path: list[Node], facts: Emitter) -> list[str]:
    problems = []
    for node in on_path:
        if node.domain:
            hint = QUANTISED_HINTS.get(node.op, "")
            problems.append(f"{node.op} ({node.name}): custom domain {node.domain!r}{hint}")
            continue
        if node.op in NON_DIFFERENTIABLE:
            continue
        if node.op not in RULES:
            problems.append(f"{node.op} ({node.name}): no gradient rule")
            continue
        check = CHECKS.get(node.op)
        reason = check(facts, node) if check else None
        if reason:
            problems.append(f"{node.op} ({node.name}): {reason}")
    return problems


class MapShape(tuple):
    """A rank-4 shape (None for dynamic dims) that also knows its layout, "NCHW" or "NHWC"."""

    layout: str

    def __new__(cls, dims, layout: str):
        shape = super().__new__(cls, dims)
        shape.layout = layout
        return shape

    def __reduce__(self):
        return MapShape, (tuple(self), self.layout)

    @property
    def spatial(self) -> tuple:
        """The (height, width) dims."""
        return tuple(self[2:]) if self.layout == "NCHW" else tuple(self[1:3])


# ONNX ops defined on channels-first tensors: their rank-4 outputs are NCHW whatever the model's
# input layout (TensorFlow exports wrap them in Transposes).
_CHANNELS_FIRST_OPS = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
    "GlobalMaxPool", "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "LRN",
    "DepthToSpace", "SpaceToDepth", "MaxUnpool",
})
# Ops whose rank-4 output may order its dims differently from their input.
_REARRANGING_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Einsum"})


def tensor_layouts(nodes: list[Node], facts: Emitter, image: str, layout: str) -> dict[str, str]:
    """The layout ("NCHW" or "NHWC") of each rank-4 tensor computed from the image, propagated in
    graph order: the image has `layout`; channels-first ops (Conv, pooling, BatchNormalization)
    produce NCHW; a Transpose permutes the axis labels of its input; other ops (element-wise,
    Pad, Concat, Slice, ...) keep the layout of their first rank-4 input. Tensors reached by none
    of these rules are left out (callers guess from the shape)."""
    layouts = {image: layout}
    for node in nodes:
        known = [layouts[i] for i in node.inputs if i in layouts]
        if not known:
            continue
        for out in node.outputs:
            shape = facts.shape(out)
            if not out or shape is None or len(shape) != 4:
                continue
            if node.op in _CHANNELS_FIRST_OPS:
                layouts[out] = "NCHW"
            elif node.op == "Transpose" and node.inputs[0] in layouts:
                perm = node.attrs.get("perm") or [3, 2, 1, 0]
                labels = "".join(layouts[node.inputs[0]][p] for p in perm)
                if labels in ("NCHW", "NHWC"):
                    layouts[out] = labels
            elif node.op not in _REARRANGING_OPS:
                layouts[out] = known[0]
    return layouts


def spatial_layers(nodes: list[Node], facts: Emitter, relevant: set[str],
                   layouts: dict[str, str] | None = None) -> list[tuple[str, MapShape]]:
    """Rank-4 tensors on the path with at least two non-batch dims > 1, in graph order, each
    with its shape as a MapShape (layout from `layouts`, else guessed from the shape)."""
    found = []
    for node in nodes:
        if node.op == "Pad":  # "same" padding: the padded map is not a layer
            continue
        for out in node.outputs:
            shape = facts.shape(out)
            if out in relevant and shape is not None and len(shape) == 4 \
                    and is_float(facts, out) \
                    and sum(1 for d in shape[1:] if d is None or d > 1) >= 2:
                found.append((out, MapShape(shape, (layouts or {}).get(out) or _layout(shape))))
    return found


def stage_outputs(layers: list[tuple[str, tuple]], layout: str) -> list[tuple[str, tuple]]:
    """The last spatial map at each resolution: the natural layers for CAMs and NormGrad.
    A MapShape's own layout wins over `layout` (TensorFlow exports mix NHWC and NCHW maps)."""
    last: dict[tuple, tuple[str, tuple]] = {}
    for name, shape in layers:
        own = getattr(shape, "layout", layout)
        resolution = tuple(shape[2:]) if own == "NCHW" else tuple(shape[1:3])
        last.pop(resolution, None)
        last[resolution] = (name, shape)
    return list(last.values())


# Leading tokens that a token layer may carry before its grid (class, distillation, register
# tokens).
MAX_EXTRA_TOKENS = 8


def batch_multiplicity(nodes: list[Node], facts: Emitter, image: str) -> dict[str, int]:
    """For tensors computed from the image with exactly one batch-dependent (None) dim: how many
    entries of that dim belong to one image (1 for batch-first tensors; the number of windows for
    windowed attention, whose reshapes fold windows into the batch). Element counts per image
    are conserved by Reshape/Flatten; other ops keep the multiplicity of their first input that
    has one."""
    def static_size(name):
        shape = facts.shape(name)
        if shape is None or sum(d is None for d in shape) != 1:
            return None
        return int(np.prod([d for d in shape if d is not None]))

    found = {image: 1} if static_size(image) else {}
    for node in nodes:
        known = [i for i in node.inputs if i in found]
        if not known:
            continue
        for out in node.outputs:
            size = static_size(out)
            if not out or size is None:
                continue
            if node.op in ("Reshape", "Flatten"):
                per_image = found[known[0]] * static_size(known[0])
                if per_image % size == 0:
                    found[out] = per_image // size
            else:
                found[out] = found[known[0]]
    return found


def token_layers(nodes: list[Node], facts: Emitter, relevant: set[str], image: str,
                 layers: list[tuple[str, MapShape]]) -> dict[str, TokenGrid]:
    """Rank-3 tensors [N, T, C] on the path, batch first, whose T tokens are `offset` leading
    tokens and the h x w grid of a batch-first spatial map computed before them (the patch
    embedding), offset <= MAX_EXTRA_TOKENS, and C not a grid's area (that is a flattened
    channels-first map [N, C, h w]); in graph order. A grid must cover the image in
    square-ish patches (H / h and W / w within one pixel): that rules out windows and padded
    maps whose area happens to match."""
    batch = facts.shape(image)[0]
    image_shape = facts.shape(image)
    height, width = image_shape[2:] if _layout(image_shape) == "NCHW" else image_shape[1:3]
    multiplicity = batch_multiplicity(nodes, facts, image) if batch is None else {}
    spatial = dict(layers)

    def batch_first(name, shape):
        return multiplicity.get(name) == 1 if batch is None else shape[0] == batch

    grids: dict[int, tuple[int, int]] = {}  # h * w -> (h, w) of the latest map with that area
    found = {}
    for node in nodes:
        for out in node.outputs:
            shape = facts.shape(out)
            if out in spatial and batch_first(out, shape) and None not in spatial[out].spatial:
                h, w = (int(d) for d in spatial[out].spatial)
                if height and width and abs(height / h - width / w) <= 1:
                    grids[h * w] = (h, w)
            elif out in relevant and shape is not None and len(shape) == 3 \
                    and is_float(facts, out) \
                    and None not in shape[1:] and batch_first(out, shape):
                offset = next((k for k in range(min(MAX_EXTRA_TOKENS, shape[1] - 1) + 1)
                               if shape[1] - k in grids), None)
                # [N, C, h w] is a flattened channels-first map, not C tokens
                if offset is not None and shape[2] not in grids:
                    found[out] = TokenGrid(grids[shape[1] - offset], offset, shape, node.op)
    return found


def vit_layer(nodes: list[Node], facts: Emitter, tokens: dict[str, TokenGrid],
              layers: list[tuple[str, MapShape]]) -> str | None:
    """The token layer to explain in a ViT-like graph, or None if the graph is not one (its
    token grids are turned back into spatial maps later, as Swin and MaxViT do).

    The last attention mixes tokens; after it, only the leading (class) tokens reach the score
    and the grid tokens' gradients vanish. So take the last token layer that the last attention
    reads, preferring a LayerNormalization output (the block's input norm, as
    pytorch-grad-cam's ViT example does by hand)."""
    if not tokens:
        return None
    last_token = list(tokens)[-1]
    grids = {t.grid for t in tokens.values()}
    order = {o: i for i, n in enumerate(nodes) for o in n.outputs}
    if any(order[name] > order[last_token] and tuple(shape.spatial) in grids
           for name, shape in layers):
        return None
    counts = {t.shape[1] for t in tokens.values()}
    scores = [o for n in nodes for o in n.outputs if o and facts.shape(o) is not None
              and any(sum(d == c for d in facts.shape(o)) >= 2 for c in counts)]
    if not scores:
        return last_token
    ancestors = _ancestors(nodes, scores[-1])
    feeding = [name for name in tokens if name in ancestors]
    normalised = [name for name in feeding if tokens[name].op == "LayerNormalization"]
    return (normalised or feeding or [last_token])[-1]


def _ancestors(nodes: list[Node], target: str) -> set[str]:
    needed = {target}
    for node in reversed(nodes):
        if any(o in needed for o in node.outputs):
            needed.update(i for i in node.inputs if i)
    return needed


def complete_shapes(model: onnx.ModelProto) -> Emitter:
    """Replace inferred shapes by those onnxruntime computes (see probe.py); returns the facts."""
    facts = Emitter(model, set())
    image, shape, _ = find_image_input(model, facts)
    found = probe.probe_shapes(model, image, shape, facts.dtype(image), probe.node_outputs(model))
    if not found:
        return facts
    kept = [vi for vi in model.graph.value_info if vi.name not in found]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    batch = batch_name(model, image)
    for name, dims in found.items():
        dtype = facts.dtype(name) or onnx.TensorProto.FLOAT
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(
            name, dtype, [d if d is not None else batch for d in dims]))
    return Emitter(model, set())


def batch_name(model: onnx.ModelProto, image: str) -> str:
    """The symbolic name of the image input's batch dimension ("N" when it has none)."""
    for value in model.graph.input:
        if value.name == image and value.type.tensor_type.shape.dim:
            return value.type.tensor_type.shape.dim[0].dim_param or "N"
    return "N"


QUANTIZED_HINT = ("quantise the model in QDQ format (onnxruntime.quantization.quantize_static "
                  "with quant_format=QuantFormat.QDQ), whose gradients swag_onnx computes")


def cut_message(nodes: list[Node], facts: Emitter, image: str, score: str) -> str:
    """Why no gradient reaches `score` from `image`: the nodes that read a gradient-carrying
    tensor computed from the image while the score depends on their outputs, none of which
    carries a gradient (an integer output of an op that is not a quantiser, a comparison...)."""
    forward = forward_tensors(nodes, facts, [image])
    needed = _ancestors(nodes, score)
    cuts = [n for n in nodes if any(i in forward for i in n.inputs if i)
            and any(o in needed for o in n.outputs) and not any(o in forward for o in n.outputs)]
    if not cuts:
        return f"the score tensor {score!r} does not depend on the image input {image!r}"
    named = "; ".join(f"{n.op} ({n.name}): output {_type_name(facts, n.outputs[0])}"
                      for n in cuts[:5]) + (f"; and {len(cuts) - 5} more" if len(cuts) > 5 else "")
    hint = f"; {QUANTIZED_HINT}" if any(_is_quantized_op(n) for n in cuts) else ""
    return (f"no gradient flows from the image input {image!r} to the score {score!r}: the path "
            f"is cut at {named}{hint}")


def _type_name(facts: Emitter, name: str) -> str:
    dtype = facts.dtype(name)
    return onnx.TensorProto.DataType.Name(dtype).lower() if dtype else "of unknown type"


def _is_quantized_op(node: Node) -> bool:
    return node.op.startswith(("QLinear", "QGemm", "Quantize", "DynamicQuantize", "QAttention",
                               "QOrdered")) or node.op.endswith("Integer")


def basic_info(model: onnx.ModelProto, score: str | None = None) -> ModelInfo:
    """Image input, layout, score tensor and class count of a model, without its gradient path
    (layers, unsupported ops): what predictions, black-box methods and metrics need, also for
    models that cannot be augmented. Shapes are probed (probe.py) only when inference leaves the
    class count unknown (contrib ops)."""
    model = infer_shapes(model)
    facts = Emitter(model, set())
    image, shape, layout = find_image_input(model, facts)
    score_name, source = find_score(model, nodes_of(model, facts.opset), facts, score)
    if not (facts.shape(score_name) or [None])[-1]:
        facts = complete_shapes(model)
    score_shape = facts.shape(score_name)
    if not score_shape or score_shape[-1] is None:
        raise BadModelError(f"the score tensor {score_name!r} has no static class dimension")
    return ModelInfo(image_input=image, input_shape=shape, layout=layout, score=score_name,
                     score_source=source, num_classes=int(score_shape[-1]), opset=facts.opset)


def analyse(model: onnx.ModelProto, score: str | None = None) -> tuple[ModelInfo, list[Node], Emitter, set[str]]:
    """Analyse a shape-inferred model (completing shapes in place, see probe.py).
    Returns the info, its nodes, the facts and the path set."""
    facts = complete_shapes(model)
    nodes = nodes_of(model, facts.opset)
    image, shape, layout = find_image_input(model, facts)
    score_name, source = find_score(model, nodes, facts, score)
    score_shape = facts.shape(score_name)
    if not score_shape or score_shape[-1] is None:
        raise BadModelError(f"the score tensor {score_name!r} has no static class dimension")
    relevant = path_tensors(nodes, facts, [image], score_name)
    if score_name not in relevant:
        raise BadModelError(cut_message(nodes, facts, image, score_name))
    layers = spatial_layers(nodes, facts, relevant, tensor_layouts(nodes, facts, image, layout))
    tokens = token_layers(nodes, facts, relevant, image, layers)
    auto = vit_layer(nodes, facts, tokens, layers) or (layers[-1][0] if layers else None)
    info = ModelInfo(
        image_input=image, input_shape=shape, layout=layout, score=score_name,
        score_source=source, num_classes=int(score_shape[-1]), layers=layers, auto_layer=auto,
        unsupported=unsupported_nodes(path_nodes(nodes, relevant), facts), opset=facts.opset,
        tokens=tokens,
    )
    return info, nodes, facts, relevant


# Ops whose value is a pure function of their constant inputs (no shapes of run-time tensors),
# evaluated at augmentation time with onnx's reference implementation.
FOLDABLE_OPS = frozenset({"Constant", "ConstantOfShape", "Concat", "Reshape", "Slice", "Transpose",
                          "Cast", "Squeeze", "Unsqueeze", "Gather", "Add", "Sub", "Mul", "Neg"})


def constant_value(model: onnx.ModelProto, facts: Emitter, name: str,
                   memo: dict | None = None) -> np.ndarray | None:
    """The value of tensor `name` when it is computed from constants only through
    FOLDABLE_OPS (e.g. the pads of a "same"-padding subgraph exported from F.pad), else None."""
    memo = {} if memo is None else memo
    if name in memo:
        return memo[name]
    value = facts.value(name)
    producer = next((n for n in model.graph.node if name in n.output), None)
    if value is None and producer is not None and producer.op_type in FOLDABLE_OPS \
            and producer.domain in ("", "ai.onnx"):
        inputs = [constant_value(model, facts, i, memo) if i else None for i in producer.input]
        if all(v is not None for i, v in zip(producer.input, inputs) if i):
            from onnx.reference import ReferenceEvaluator

            feeds = {i: v for i, v in zip(producer.input, inputs) if i}
            try:
                outputs = ReferenceEvaluator(producer, opsets={"": facts.opset}).run(None, feeds)
                value = np.asarray(outputs[list(producer.output).index(name)])
            except Exception:  # noqa: BLE001 -- folding only saves time: unknown stays unfolded
                value = None
    memo[name] = value
    return value


def fold_pads_into_convs(model: onnx.ModelProto, facts: Emitter, keep: set[str]) -> set[str]:
    """Merge each constant zero spatial Pad whose only reader is a Conv into that Conv's pads
    (what onnxruntime's PadFusion does to the forward pass), in place; returns the removed Pad
    outputs. The Conv's input gradient then comes out at the unpadded size directly, instead of
    padded and cropped by a Slice. Pads whose output is in `keep` (requested layers) or a graph
    output stay."""
    readers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            readers.setdefault(i, []).append(node)
    keep = keep | {o.name for o in model.graph.output}
    memo: dict = {}
    removed = set()
    for pad in list(model.graph.node):
        spatial = _foldable_pad(model, facts, pad, readers, keep, memo)
        if spatial is None:
            continue
        conv = readers[pad.output[0]][0]
        _widen_conv_pads(conv, spatial, facts.rank(pad.input[0]) - 2)
        conv.input[0] = pad.input[0]
        model.graph.node.remove(pad)
        removed.add(pad.output[0])
    return removed


def _foldable_pad(model, facts, pad, readers, keep, memo) -> list[int] | None:
    """The spatial pads [begins..., ends...] of a foldable Pad node, else None."""
    if pad.op_type != "Pad" or pad.domain not in ("", "ai.onnx") or pad.output[0] in keep:
        return None
    users = readers.get(pad.output[0], [])
    if len(users) != 1 or users[0].op_type != "Conv" or users[0].domain not in ("", "ai.onnx") \
            or list(users[0].input).count(pad.output[0]) != 1 or users[0].input[0] != pad.output[0]:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
    mode = attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or len(pad.input) > 3 \
            or facts.shape(pad.input[0]) is None or len(pad.input) < 2:
        return None
    conv_attrs = {a.name: onnx.helper.get_attribute_value(a) for a in users[0].attribute}
    if conv_attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"", ""):
        return None
    pads = constant_value(model, facts, pad.input[1], memo)
    fill = 0 if len(pad.input) < 3 or not pad.input[2] else \
        constant_value(model, facts, pad.input[2], memo)
    if pads is None or fill is None or np.any(np.asarray(fill) != 0):
        return None
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    rank = facts.rank(pad.input[0])
    if len(pads) != 2 * rank or min(pads) < 0 or any(pads[i] or pads[rank + i] for i in (0, 1)):
        return None
    return pads[2:rank] + pads[rank + 2:]


def _widen_conv_pads(conv: onnx.NodeProto, spatial: list[int], rank: int) -> None:
    """Add `spatial` [begins..., ends...] to the explicit pads of Conv node `conv`."""
    old = next((a for a in conv.attribute if a.name == "pads"), None)
    base = list(old.ints) if old is not None else [0] * (2 * rank)
    if old is not None:
        conv.attribute.remove(old)
    for attr in [a for a in conv.attribute if a.name == "auto_pad"]:
        conv.attribute.remove(attr)
    conv.attribute.append(onnx.helper.make_attribute(
        "pads", [b + s for b, s in zip(base, spatial)]))
