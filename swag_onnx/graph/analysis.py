"""Static analysis of an ONNX classifier: image input and layout, score tensor, the
differentiable path between them, candidate layers, and ops without a gradient rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from swag_onnx.errors import BadModelError, BadOptionError
from swag_onnx.graph import probe
from swag_onnx.graph.emitter import Emitter, Node
from swag_onnx.graph.rules import CHECKS, NON_DIFFERENTIABLE, RULES

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
        return out.name, "model output"
    raise BadModelError("the model has no float output to explain")


def all_tensor_names(model: onnx.ModelProto) -> set[str]:
    names = {i.name for i in model.graph.input} | {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        names.update(node.output)
    return names


def path_tensors(nodes: list[Node], facts: Emitter, sources: list[str], target: str) -> set[str]:
    """Float tensors that depend on a source and that the target depends on."""
    forward = set(sources)
    for node in nodes:
        if any(i in forward for i in node.inputs if i):
            forward.update(o for o in node.outputs if o and is_float(facts, o))
    backward = {target}
    for node in reversed(nodes):
        if any(o in backward for o in node.outputs):
            backward.update(i for i in node.inputs if i)
    return forward & backward


def path_nodes(nodes: list[Node], relevant: set[str]) -> list[Node]:
    """Nodes that carry a gradient: a relevant input and a relevant output."""
    return [n for n in nodes if any(o in relevant for o in n.outputs)
            and any(i in relevant for i in n.inputs if i)]


def unsupported_nodes(on_path: list[Node], facts: Emitter) -> list[str]:
    problems = []
    for node in on_path:
        if node.domain:
            problems.append(f"{node.op} ({node.name}): custom domain {node.domain!r}")
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
    for name, dims in found.items():
        dtype = facts.dtype(name) or onnx.TensorProto.FLOAT
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(
            name, dtype, [d if d is not None else "N" for d in dims]))
    return Emitter(model, set())


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
        raise BadModelError(f"the score tensor {score_name!r} does not depend on the image input "
                            f"{image!r}")
    layers = spatial_layers(nodes, facts, relevant, tensor_layouts(nodes, facts, image, layout))
    info = ModelInfo(
        image_input=image, input_shape=shape, layout=layout, score=score_name,
        score_source=source, num_classes=int(score_shape[-1]), layers=layers,
        auto_layer=layers[-1][0] if layers else None,
        unsupported=unsupported_nodes(path_nodes(nodes, relevant), facts), opset=facts.opset,
    )
    return info, nodes, facts, relevant
