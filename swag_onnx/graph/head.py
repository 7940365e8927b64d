"""The head of a classifier from a layer on: the sub-model mapping a layer activation to the score.

Methods that change a layer's activation and watch the score (Ablation-CAM) feed the changed
activation to this sub-model instead of running the whole network per change:

    model, layer, score --layer_head--> inputs: layer [N free, ...] (+ graph inputs the score
    reaches without passing through the layer, e.g. a skip from the image) -> output: score
"""

from __future__ import annotations

import onnx
from onnx import helper
from onnx.utils import Extractor

from swag_onnx.errors import BadOptionError
from swag_onnx.graph.analysis import infer_shapes


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _walk_back(graph: onnx.GraphProto, score: str, layer: str) -> tuple[bool, list[str]]:
    """Walk from `score` towards the inputs, stopping at `layer`. Returns whether the layer was
    reached and the graph inputs (not initializers) reached without passing through it."""
    producers = _producers(graph)
    graph_inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    seen, stack, reached, inputs = set(), [score], False, []
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name == layer:
            reached = True
            continue
        if name in graph_inputs:
            inputs.append(name)
        node = producers.get(name)
        if node is not None:
            stack.extend(i for i in node.input if i)
    order = [i.name for i in graph.input]
    return reached, sorted(inputs, key=order.index)


def _free_batch(value: onnx.ValueInfoProto, name: str, elem_type: int) -> onnx.ValueInfoProto:
    """`value`'s type with the first dimension symbolic ("N"); `name` typed `elem_type` with an
    unknown shape when shape inference left no value_info."""
    if not value.type.tensor_type.HasField("shape"):
        return helper.make_tensor_value_info(name, elem_type, None)
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in value.type.tensor_type.shape.dim]
    if dims:
        dims[0] = "N"
    return helper.make_tensor_value_info(name, value.type.tensor_type.elem_type, dims)


def layer_head(model: onnx.ModelProto, layer: str, score: str) -> onnx.ModelProto:
    """The sub-model of `model` from `layer` to `score`.

    Inputs: `layer` (batch dimension free), then the original graph inputs that `score` depends
    on without passing through `layer` (in the original order). Output: `score` (batch free).
    Raises BadOptionError when `score` does not depend on `layer`.
    """
    inferred = infer_shapes(model)
    graph = inferred.graph
    known = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
    if score not in known and score not in _producers(graph):
        raise BadOptionError(f"score tensor {score!r} is not in the model")
    reached, bypass = _walk_back(graph, score, layer)
    if not reached:
        raise BadOptionError(f"layer {layer!r} is not on the path to the score {score!r}; "
                             "see `swag-onnx inspect` for layers")
    boundary = {name: _free_batch(known.get(name, onnx.ValueInfoProto()), name,
                                  onnx.TensorProto.FLOAT) for name in [layer, score]}
    # The Extractor takes the I/O types from value_info; intermediate shapes are dropped, since
    # onnxruntime infers them for any batch size.
    del graph.value_info[:]
    graph.value_info.extend(boundary.values())
    head = Extractor(inferred).extract_model([layer] + bypass, [score])
    del head.graph.value_info[:]
    _replace_io(head, boundary)
    onnx.checker.check_model(head)
    return head


def _replace_io(head: onnx.ModelProto, boundary: dict[str, onnx.ValueInfoProto]) -> None:
    """Use the batch-free value infos for the layer input and the score output."""
    for values in (head.graph.input, head.graph.output):
        for i, value in enumerate(values):
            if value.name in boundary:
                values[i].CopyFrom(boundary[value.name])
