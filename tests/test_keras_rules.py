"""Gradient rules of the ops that tf2onnx emits for common Keras layers (Reciprocal from
LayerNormalization's rsqrt, Elu, Selu, Softplus, Max/Min from Maximum/Minimum and clipped ReLUs,
Tile from UpSampling2D): one-node models against central finite differences, as in
tests/test_rules.py."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from gradcheck import TOLERANCE, assert_vjp, separated, vjp_error
from swag_onnx import augment_model

RNG = np.random.default_rng(7)
X4 = (2, 3, 4, 5)


def test_reciprocal():
    x = separated(X4, RNG)
    assert_vjp("Reciprocal", X4, x=np.sign(x) * (np.abs(x) + 0.5))


@pytest.mark.parametrize("op,attrs", [
    ("Elu", {"alpha": 0.7}), ("Elu", {}), ("Selu", {}), ("Selu", {"alpha": 1.2, "gamma": 0.9}),
    ("Softplus", {}),
])
def test_smooth_activations(op, attrs):
    assert_vjp(op, X4, attrs=attrs)  # separated(): every value at least 0.05 away from 0


@pytest.mark.parametrize("op", ["Max", "Min"])
@pytest.mark.parametrize("other_shape", [(1, 3, 1, 1), (5,), X4])
def test_extremum_with_a_constant(op, other_shape):
    assert_vjp(op, X4, [RNG.uniform(-1.5, 1.5, other_shape)])


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_extremum_routes_to_every_position(op):
    """x reaches Max/Min as its second and third operand (after a constant): each position that
    wins gets the gradient."""
    x = separated(X4, RNG)
    constant = RNG.uniform(-1.0, 1.0, (1, 3, 1, 5))
    constant[np.abs(constant) < 0.1] = 0.5  # no ties with the inputs (|x| >= 0.02 apart)
    nodes = [helper.make_node("Mul", ["x", "half"], ["scaled"]),
             helper.make_node(op, ["c", "scaled", "x"], ["m"]),
             helper.make_node("Flatten", ["m"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "extremum", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, list(X4))],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
        initializer=[numpy_helper.from_array(constant, "c"),
                     numpy_helper.from_array(np.array(-0.5), "half")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert {n.domain for n in augment_model(model).graph.node} <= {""}
    assert vjp_error(model, x) < TOLERANCE[TensorProto.DOUBLE]


@pytest.mark.parametrize("repeats", [[1, 2, 1, 3], [2, 1, 2, 1], [1, 1, 1, 1]])
def test_tile(repeats):
    assert_vjp("Tile", X4, [np.array(repeats, np.int64)])


def test_layers_know_their_layout_in_mixed_layout_graphs(tmp_path):
    """tf2onnx's pattern: NHWC image -> Transpose -> Conv (NCHW) -> Relu -> Transpose back ->
    Relu (NHWC) -> pooling over H, W: each map gets its own layout, and the stage layers are
    the last map at each true resolution."""
    from swag_onnx import describe
    from swag_onnx.graph.analysis import stage_outputs

    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("Transpose", ["relu"], ["nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Relu", ["nhwc"], ["relu2"]),
             helper.make_node("ReduceMean", ["relu2", "axes"], ["pooled"], keepdims=0),
             helper.make_node("Softmax", ["pooled"], ["probabilities"])]
    graph = helper.make_graph(
        nodes, "mixed", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                       ["N", 6, 7, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w"),
                     numpy_helper.from_array(np.array([1, 2], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path = tmp_path / "mixed.onnx"
    path.write_bytes(model.SerializeToString())
    info = describe(path)
    layouts = {name: (shape.layout, shape.spatial) for name, shape in info.layers}
    assert layouts == {"nchw": ("NCHW", (6, 7)), "conv": ("NCHW", (6, 7)),
                       "relu": ("NCHW", (6, 7)), "nhwc": ("NHWC", (6, 7)),
                       "relu2": ("NHWC", (6, 7))}
    assert [name for name, _ in stage_outputs(info.layers, info.layout)] == ["relu2"]
    assert info.layout == "NHWC" and info.score == "pooled" and info.auto_layer == "relu2"
