"""Per-rule gradient checks: one-node models against central finite differences."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import assume, given, settings, strategies as st
from onnx import TensorProto, helper, numpy_helper

from gradcheck import assert_vjp, away_from, one_node_model, separated, session
from swag_onnx import augment_model
from swag_onnx.graph.rules import pooling

RNG = np.random.default_rng(42)
X4 = (2, 3, 4, 5)


@pytest.mark.parametrize("op,attrs", [
    ("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("Sigmoid", {}), ("Tanh", {}), ("Erf", {}),
    ("Exp", {}), ("Neg", {}), ("Identity", {}), ("Softmax", {"axis": -1}), ("Softmax", {"axis": 1}),
    ("LogSoftmax", {"axis": -1}), ("LogSoftmax", {"axis": 2}), ("Flatten", {"axis": 2}),
    ("Transpose", {"perm": [0, 2, 3, 1]}), ("Transpose", {}), ("GlobalAveragePool", {}),
    ("GlobalMaxPool", {}), ("Dropout", {}),
])
def test_unary(op, attrs):
    assert_vjp(op, X4, attrs=attrs)


@pytest.mark.parametrize("op", ["Log", "Sqrt"])
def test_positive_domain(op):
    assert_vjp(op, X4, x=np.abs(separated(X4, RNG)) + 0.5)


def test_hard_sigmoid():
    x = away_from(separated(X4, RNG) * 1.6, [-4 / 3, 2.0])
    assert_vjp("HardSigmoid", X4, attrs={"alpha": 0.3, "beta": 0.4}, x=x)


def test_hard_swish():
    assert_vjp("HardSwish", X4, x=away_from(separated(X4, RNG) * 1.6, [-3.0, 3.0]))


def test_cast():
    assert_vjp("Cast", X4, attrs={"to": 11})


@pytest.mark.parametrize("bounds", [(-1.0, 1.5), (0.0, 6.0)])
def test_clip(bounds):
    x = away_from(separated(X4, RNG) * 3, bounds)
    assert_vjp("Clip", X4, [np.array(bounds[0]), np.array(bounds[1])], x=x)


def test_clip_min_only():
    assert_vjp("Clip", X4, [np.array(-0.5), ""])


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("other_shape", [(1, 3, 1, 1), (5,), (2, 3, 4, 5), (4, 1)])
def test_broadcasting_binary(op, other_shape):
    other = RNG.uniform(0.5, 1.5, other_shape)
    assert_vjp(op, X4, [other])


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm(trans_a, trans_b):
    a_shape = (12, 5) if trans_a else (5, 12)  # x reshaped to [5, 12] or [12, 5]
    b = RNG.standard_normal((7, 12) if trans_b else (12, 7))
    attrs = {"transA": trans_a, "transB": trans_b, "alpha": 0.7, "beta": 1.3}
    assert_vjp("Gemm", (1, 5, 3, 4), [b, RNG.standard_normal(7)], attrs, reshape_to=a_shape)


@pytest.mark.parametrize("b_shape", [(5, 6), (1, 4, 5, 6), (2, 1, 5, 6)])
def test_matmul(b_shape):
    assert_vjp("MatMul", (2, 4, 3, 5), [RNG.standard_normal(b_shape)])


def test_batch_norm():
    c = X4[1]
    inputs = [RNG.uniform(0.5, 2, c), RNG.standard_normal(c), RNG.standard_normal(c),
              RNG.uniform(0.5, 2, c)]
    assert_vjp("BatchNormalization", X4, inputs, {"epsilon": 1e-3})


def _densenet_transition(batch: str):
    """x [batch, 16, 8, 8] -> BatchNormalization -> Relu -> 1x1 Conv -> AveragePool 2x2/2 ->
    Relu -> Flatten (DenseNet's transition, pre-activation), float32 with random weights."""
    rng = np.random.default_rng(8)
    stats = [rng.uniform(0.5, 2, 16), rng.standard_normal(16), rng.standard_normal(16),
             rng.uniform(0.5, 2, 16)]
    inits = [numpy_helper.from_array(v.astype(np.float32), name)
             for v, name in zip(stats, ["scale", "bias", "mean", "var"])]
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((16, 16, 1, 1)) / 4).astype(np.float32), "w"))
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["n"],
                          epsilon=1e-3),
         helper.make_node("Relu", ["n"], ["r"]), helper.make_node("Conv", ["r", "w"], ["c"]),
         helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Relu", ["p"], ["q"]), helper.make_node("Flatten", ["q"], ["y"])],
        "transition", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 256])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, stats


def test_blocked_backward_keeps_the_symbolic_batch(tmp_path):
    """onnxruntime keeps a backward Mul in its blocked layout only when it can prove both
    operands' shapes equal, symbolic batch included: the seed's batch takes the image's name
    (here "batch_size"), AveragePool's backward keeps the batch (no [N*C, ...] reshape), so that
    after onnxruntime's constant folding ONNX shape inference gives the input gradient the
    image's batch name, and so do the declared outputs; a blocked BatchNormalization's
    gradient is a per-channel affine BatchNormalization (no Mul by a [C, 1, 1] constant); the
    gradient is torch's (float64)."""
    model, (scale, bias, mean, var) = _densenet_transition("batch_size")
    augmented = augment_model(model)
    seed_batch = [i for i in augmented.graph.input if i.name == "swag.seed"][0]
    assert seed_batch.type.tensor_type.shape.dim[0].dim_param == "batch_size"
    # every output (score, gradients, activations) declares the image's batch by its name
    assert {o.type.tensor_type.shape.dim[0].dim_param for o in augmented.graph.output} == {
        "batch_size"}
    backward = [n for n in augmented.graph.node if n.name.startswith("swag/")]
    assert "Sqrt" not in {n.op_type for n in backward}  # scale / std folded in
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "folded.onnx")
    ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    folded = onnx.load(tmp_path / "folded.onnx")
    del folded.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(folded, data_prop=True)
    grad = [n.input[0] for n in inferred.graph.node if n.output[0] == "swag.grad.x"][0]
    dims = {v.name: v.type.tensor_type.shape.dim for v in inferred.graph.value_info}[grad]
    assert dims[0].dim_param == "batch_size"

    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    seed = rng.standard_normal((2, 256)).astype(np.float32)
    got = session(augmented).run(["swag.grad.x"], {"x": x, "swag.seed": seed})[0]
    np.testing.assert_allclose(got, _transition_grad(model, x, seed, (scale, bias, mean, var)),
                               rtol=1e-5, atol=1e-6)


def _transition_grad(model, x, seed, stats):
    """torch's float64 input gradient of _densenet_transition's model with BatchNormalization
    statistics `stats` (scale, bias, mean, var)."""
    import torch

    w = numpy_helper.to_array([i for i in model.graph.initializer if i.name == "w"][0])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    scale, bias, mean, var = (torch.tensor(v, dtype=torch.float64) for v in stats)
    normed = torch.nn.functional.batch_norm(xt, mean, var, scale, bias, eps=1e-3)
    conv = torch.nn.functional.conv2d(torch.relu(normed), torch.tensor(w, dtype=torch.float64))
    out = torch.relu(torch.nn.functional.avg_pool2d(conv, 2)).flatten(1)
    (out * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    return xt.grad.numpy()


def test_blocked_batch_norm_gradient_follows_an_overridden_scale():
    """With weights=True the BatchNormalization's scale is an input a run may override: its
    backward reads the fed scale instead of folding the initializer's value."""
    model, (scale, bias, mean, var) = _densenet_transition("N")
    augmented = augment_model(model, weights=True)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    seed = rng.standard_normal((2, 256)).astype(np.float32)
    fed = (scale * rng.uniform(-2, 2, 16)).astype(np.float32)
    got = session(augmented).run(["swag.grad.x"], {"x": x, "swag.seed": seed, "scale": fed})[0]
    np.testing.assert_allclose(got, _transition_grad(model, x, seed, (fed, bias, mean, var)),
                               rtol=1e-5, atol=1e-6)


def _inception(channels=16):
    """x [N, C, 8, 8] read by three Convs (1x1, 1x1, 3x3) and a MaxPool 3x3/1 (pad 1) whose
    output a 1x1 Conv reads (GoogLeNet's inception module), the four concatenated, flattened."""
    rng = np.random.default_rng(11)
    shapes = {"w1": [channels, channels, 1, 1], "w2": [channels, channels, 1, 1],
              "w3": [channels, channels, 3, 3], "w4": [channels, channels, 1, 1]}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), name)
             for name, s in shapes.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["b1"]),
             helper.make_node("Conv", ["x", "w2"], ["b2"]),
             helper.make_node("Conv", ["x", "w3"], ["b3"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p", "w4"], ["b4"]),
             helper.make_node("Concat", ["b1", "b2", "b3", "b4"], ["c"], axis=1),
             helper.make_node("Flatten", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "inception", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4 * channels * 64])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {i.name: numpy_helper.to_array(i) for i in inits}


def test_conv_terms_summed_first_in_onnxruntimes_blocked_layout(tmp_path):
    """The gradient of a blocked map read by three Convs and a MaxPool adds the Conv terms
    first, two at a time (onnxruntime folds each Add into a convolution), then the MaxPool's:
    onnxruntime converts one map back for that Sum instead of three; the gradient is torch's
    (float64)."""
    import torch

    model, w = _inception()
    augmented = augment_model(model)
    producers = {o: n for n in augmented.graph.node for o in n.output}
    total = producers[producers["swag.grad.x"].input[0]]
    assert total.op_type == "Sum" and len(total.input) == 2

    def convs_added(name):  # the number of Conv outputs a chain of two-input Sums adds
        node = producers[name]
        if node.op_type == "Sum" and len(node.input) == 2:
            counts = [convs_added(t) for t in node.input]
            return sum(counts) if all(counts) else 0
        return int(node.op_type == "Conv")

    assert sorted(convs_added(t) for t in total.input) == [0, 3]

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(tmp_path / "optimized.onnx")
    readers = {}
    for node in optimized.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    converted_for_sums = [n for n in optimized.graph.node if n.op_type == "ReorderOutput"
                          and "Sum" in readers.get(n.output[0], [])]
    if any(n.op_type == "ReorderInput" or n.domain == "com.microsoft.nchwc"
           for n in optimized.graph.node):  # a CPU with onnxruntime's blocked layout
        assert len(converted_for_sums) == 1

    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    seed = rng.standard_normal((2, 4 * 16 * 64)).astype(np.float32)
    got = session(augmented).run(["swag.grad.x"], {"x": x, "swag.seed": seed})[0]
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    conv = lambda t, name, pad=0: torch.nn.functional.conv2d(  # noqa: E731
        t, torch.tensor(w[name], dtype=torch.float64), padding=pad)
    pooled = torch.nn.functional.max_pool2d(xt, 3, stride=1, padding=1)
    out = torch.cat([conv(xt, "w1"), conv(xt, "w2"), conv(xt, "w3", 1), conv(pooled, "w4")], 1)
    (out.flatten(1) * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_layer_norm(axis):
    shape = X4[axis:] if axis != -1 else X4[-1:]
    assert_vjp("LayerNormalization", X4, [RNG.uniform(0.5, 2, shape), RNG.standard_normal(shape)],
               {"axis": axis, "epsilon": 1e-5})


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [17, 18])
def test_reduce(op, keepdims, opset):
    axes = np.array([1, -1])
    if op == "ReduceMean" and opset < 18:
        assert_vjp(op, X4, attrs={"axes": [1, -1], "keepdims": keepdims}, opset=opset)
    else:
        assert_vjp(op, X4, [axes], {"keepdims": keepdims}, opset=opset)


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "ReduceMean"])
def test_squeeze_excitation_as_torch(pool):
    """y = x * sigmoid(Conv(pool(x))) on a float32 map whose 16 channels onnxruntime blocks: the
    scale's gradient (summed over the map by GlobalAveragePool * HW) and the pool's gradient
    (left unexpanded: the Sum with the Mul's term broadcasts it) match torch's float64 autograd,
    and no backward Expand is emitted."""
    import torch

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 16, 6, 5)).astype(np.float32)
    w = (rng.standard_normal((16, 16, 1, 1)) / 4).astype(np.float32)
    pooling = (helper.make_node("GlobalAveragePool", ["x"], ["p"]) if pool == "GlobalAveragePool"
               else helper.make_node("ReduceMean", ["x"], ["p"], axes=[2, 3], keepdims=1))
    graph = helper.make_graph(
        [pooling, helper.make_node("Conv", ["p", "w"], ["c"]), helper.make_node("Sigmoid", ["c"], ["s"]),
         helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Flatten", ["m"], ["y"])],
        "se", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 6, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    augmented = augment_model(model)
    backward = [n.op_type for n in augmented.graph.node if n.name.startswith("swag/")]
    assert "Expand" not in backward and "GlobalAveragePool" in backward
    seed = rng.standard_normal((2, 480)).astype(np.float32)
    got = session(augmented).run(["swag.grad.x"], {"x": x, "swag.seed": seed})[0]

    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    scale = torch.sigmoid(torch.nn.functional.conv2d(xt.mean((2, 3), keepdim=True),
                                                     torch.tensor(w, dtype=torch.float64)))
    ((xt * scale).flatten(1) * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    reference = xt.grad.numpy()
    assert np.abs(got - reference).max() <= 1e-5 * np.abs(reference).max()


@pytest.mark.parametrize("rows", ["one-hot", "top-1", "mixed", "dense"])
@pytest.mark.parametrize("kernel,stride", [(1, 1), (3, 1), (3, 2)])  # Conv / ConvTranspose
def test_class_map_head_transposes_only_seeded_classes(rows, kernel, stride):
    """SqueezeNet's head, score = Flatten(GlobalAveragePool(Relu(Conv(x)))) with one map per
    class: the Conv's input gradient gathers the kernels of the classes some seed row selects
    (an all-zero row: its top-1 class) and matches torch's float64 autograd for one-hot, top-1,
    mixed and dense seeds."""
    import torch

    rng = np.random.default_rng(6)
    classes, x = 10, rng.standard_normal((3, 16, 5, 6)).astype(np.float32)
    w = (rng.standard_normal((classes, 16, kernel, kernel)) / 6).astype(np.float32)
    pad, elem = kernel // 2, TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[pad] * 4, strides=[stride] * 2),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["y"])],
        "head", [helper.make_tensor_value_info("x", elem, ["N", 16, 5, 6])],
        [helper.make_tensor_value_info("y", elem, ["N", classes])],
        initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    augmented = augment_model(model, layers=["r"])
    gathered = [n for n in augmented.graph.node if n.op_type == "Gather" and "w" in n.input]
    assert len(gathered) == 1
    seed = {"one-hot": np.eye(classes)[[2, 7, 2]], "top-1": np.zeros((3, classes)),
            "mixed": np.eye(classes)[[4, 0, 0]] * [[1.0], [0.0], [-2.5]],
            "dense": rng.standard_normal((3, classes))}[rows].astype(np.float32)
    got, layer_grad = session(augmented).run(["swag.grad.x", "swag.grad.r"],
                                             {"x": x, "swag.seed": seed})
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    maps = torch.relu(torch.nn.functional.conv2d(xt, torch.tensor(w, dtype=torch.float64),
                                                 padding=pad, stride=stride))
    scores = maps.mean((2, 3))
    effective = torch.tensor(seed, dtype=torch.float64)
    empty = effective.abs().sum(1) == 0
    effective[empty] = torch.nn.functional.one_hot(scores.argmax(1), classes)[empty].double()
    (scores * effective).sum().backward()
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer_grad, np.broadcast_to(
        effective.numpy()[:, :, None, None] / maps[0, 0].numel(), layer_grad.shape), rtol=1e-6)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_extremum(op, keepdims):
    assert_vjp(op, X4, attrs={"axes": [2, 3], "keepdims": keepdims}, opset=17)


def test_reduce_max_ties_share_the_gradient():
    x = np.zeros(X4)
    x[:, :, 1:3, 2] = 1.0  # two maxima per (n, c) map
    model = one_node_model("ReduceMax", X4, attrs={"axes": [2, 3]}, opset=17)
    grad = session(augment_model(model)).run(
        ["swag.grad.x"], {"x": x, "swag.seed": np.ones((2, 3))})[0]
    assert np.allclose(grad[:, :, 1:3, 2], 0.5) and np.isclose(grad.sum(), 6.0)


def test_reduce_all_axes():
    assert_vjp("ReduceSum", X4, attrs={"keepdims": 1}, opset=18)


@pytest.mark.parametrize("op,inputs", [
    ("Reshape", [np.array([2, -1, 5])]), ("Squeeze", [np.array([1])]),
    ("Unsqueeze", [np.array([0, 3])]), ("Expand", [np.array([3, 2, 3, 4, 5])]),
])
def test_data_movement(op, inputs):
    x_shape = (2, 1, 4, 5) if op == "Squeeze" else X4
    assert_vjp(op, x_shape, inputs)


def test_concat_with_constant():
    assert_vjp("Concat", X4, [RNG.standard_normal((2, 2, 4, 5))], {"axis": 1})


@pytest.mark.parametrize("used", [0, 1])
def test_split_unused_output_gets_zero(used):
    assert_vjp("Split", X4, [np.array([2, 3])], {"axis": 3}, n_outputs=2, used_output=used)


@pytest.mark.parametrize("starts,ends,axes", [
    ([1], [3], [2]), ([-3, 0], [10**9, -1], [3, 1]), ([0, 1, 1], [1, 3, 4], [0, 2, 3]),
])
def test_slice(starts, ends, axes):
    assert_vjp("Slice", X4, [np.array(starts), np.array(ends), np.array(axes)])


def test_pad_constant():
    assert_vjp("Pad", X4, [np.array([0, 1, 2, 0, 0, 0, 1, 3]), np.array(0.5)])


@pytest.mark.parametrize("indices", [np.array([2, 0]), np.array([[1, 1], [-1, 0]])])
def test_gather_scatter_adds_repeats(indices):
    assert_vjp("Gather", X4, [indices], {"axis": 2})


# ----- property tests over convolution and pooling configurations -------------------------------

def ceil_window_outside(size, kernel, stride, pads, ceil_mode, dilation=(1, 1)):
    """True when ceil mode would add a window that starts past the input: onnxruntime's run-time
    output drops it (as torch does) while its load-time shape inference keeps it, so such a model
    does not load once anything consumes the pooled shape. Exporters never produce it."""
    if not ceil_mode:
        return False
    for n, k, s, p0, p1, d in zip(size, kernel, stride, pads[:2], pads[2:], dilation):
        span = n + p0 + p1 - (k - 1) * d - 1
        if -(-span // s) > span // s and (-(-span // s)) * s >= n + p0:
            return True
    return False


@settings(max_examples=40, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 4]), per_group_in=st.integers(1, 3), per_group_out=st.integers(1, 3),
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), pads=st.tuples(*[st.integers(0, 2)] * 4),
    auto_pad=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]),
    size=st.tuples(st.integers(7, 12), st.integers(7, 12)),
)
def test_conv_property(groups, per_group_in, per_group_out, kernel, stride, dilation, pads,
                       auto_pad, size):
    assume(auto_pad in ("NOTSET", "VALID") or dilation == (1, 1))  # onnxruntime refuses these
    cin, cout = groups * per_group_in, groups * per_group_out
    pads = [min(p, k - 1) for p, k in zip(pads, kernel * 2)]
    attrs = {"group": groups, "strides": list(stride), "dilations": list(dilation),
             "auto_pad": auto_pad}
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    w = RNG.standard_normal((cout, per_group_in) + kernel)
    assert_vjp("Conv", (2, cin) + size, [w, RNG.standard_normal(cout)], attrs, float_eps=0.1)


def test_depthwise_strided_conv():
    w = RNG.standard_normal((6, 1, 3, 3))
    assert_vjp("Conv", (1, 6, 11, 10), [w], {"group": 6, "strides": [2, 2], "pads": [1, 1, 1, 1]},
               float_eps=0.1)


@settings(max_examples=40, deadline=None)
@given(
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pads=st.tuples(*[st.integers(0, 2)] * 4), ceil_mode=st.integers(0, 1),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    size=st.tuples(st.integers(6, 11), st.integers(6, 11)), seed=st.integers(0, 1000),
)
def test_max_pool_property(kernel, stride, pads, ceil_mode, dilation, size, seed):
    pads = [min(p, (k - 1) * d // 2) for p, k, d in zip(pads, kernel * 2, dilation * 2)]
    assume(all((k - 1) * d + 1 <= n + p0 + p1  # the dilated window fits: an output exists
               for k, d, n, p0, p1 in zip(kernel, dilation, size, pads[:2], pads[2:])))
    assume(not ceil_window_outside(size, kernel, stride, pads, ceil_mode, dilation))
    attrs = {"kernel_shape": list(kernel), "strides": list(stride), "pads": pads,
             "ceil_mode": ceil_mode, "dilations": list(dilation)}
    shape = (1, 2) + size
    x = separated(shape, np.random.default_rng(seed))  # gaps >= 0.02: steps of ~4e-3 cross none
    assert_vjp("MaxPool", shape, attrs=attrs, x=x)


@settings(max_examples=40, deadline=None)
@given(
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pads=st.tuples(*[st.integers(0, 2)] * 4), ceil_mode=st.integers(0, 1),
    include_pad=st.integers(0, 1), size=st.tuples(st.integers(6, 11), st.integers(6, 11)),
)
def test_average_pool_property(kernel, stride, pads, ceil_mode, include_pad, size):
    pads = [min(p, k // 2) for p, k in zip(pads, kernel * 2)]
    assume(not ceil_window_outside(size, kernel, stride, pads, ceil_mode))
    attrs = {"kernel_shape": list(kernel), "strides": list(stride), "pads": pads,
             "ceil_mode": ceil_mode, "count_include_pad": include_pad}
    assert_vjp("AveragePool", (1, 2) + size, attrs=attrs, float_eps=0.1)


def _float32_input_grad(model, x, seed):
    return session(augment_model(model)).run(["swag.grad.x"], {"x": x, "swag.seed": seed})[0]


@settings(max_examples=30, deadline=None)
@given(
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    pads=st.tuples(*[st.integers(0, 2)] * 4), ceil_mode=st.integers(0, 1),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    size=st.tuples(st.integers(6, 11), st.integers(6, 11)), seed=st.integers(0, 1000),
)
def test_max_pool_float32_ties_match_float64(kernel, stride, pads, ceil_mode, dilation,
                                                     size, seed):
    """The float32 gradient routes dY exactly as the float64 one (checked by finite differences
    above), on inputs full of ties (values in {0, 1, 2}: each window's first maximum takes it)."""
    pads = [min(p, (k - 1) * d // 2) for p, k, d in zip(pads, kernel * 2, dilation * 2)]
    assume(all((k - 1) * d + 1 <= n + p0 + p1
               for k, d, n, p0, p1 in zip(kernel, dilation, size, pads[:2], pads[2:])))
    assume(not ceil_window_outside(size, kernel, stride, pads, ceil_mode, dilation))
    attrs = {"kernel_shape": list(kernel), "strides": list(stride), "pads": pads,
             "ceil_mode": ceil_mode, "dilations": list(dilation)}
    shape = (2, 3) + size
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, shape).astype(np.float32)
    model32 = one_node_model("MaxPool", shape, attrs=attrs, dtype=TensorProto.FLOAT)
    model64 = one_node_model("MaxPool", shape, attrs=attrs)
    classes = session(model32).run(None, {"x": x})[0].shape[1]
    seed_row = rng.integers(1, 2**10, (2, classes)).astype(np.float32)  # sums stay exact
    got = _float32_input_grad(model32, x, seed_row)
    want = _float32_input_grad(model64, x.astype(np.float64), seed_row.astype(np.float64))
    assert np.array_equal(got, want)


@pytest.mark.parametrize("opset", [13, 17])  # ConvTranspose spread; ScatterElements from 16
def test_max_pool_float32_first_maximum_as_torch(opset):
    """All-zero windows (ties everywhere, as after a ReLU): torch gives each window's dY to its
    first element in row-major order; overlapping windows (3x3, stride 2, ceil mode; 3x3,
    stride 1, pad 1) add up."""
    import torch

    x = np.zeros((1, 2, 9, 8), np.float32)
    x[0, 1, 4, 4] = 1.0
    for kernel, stride, pad, ceil in ((3, 2, 0, 1), (3, 1, 1, 0), (2, 2, 0, 0)):
        attrs = {"kernel_shape": [kernel] * 2, "strides": [stride] * 2, "pads": [pad] * 4,
                 "ceil_mode": ceil}
        model = one_node_model("MaxPool", x.shape, attrs=attrs, dtype=TensorProto.FLOAT,
                               opset=opset)
        xt = torch.tensor(x, requires_grad=True)
        y = torch.nn.functional.max_pool2d(xt, kernel, stride, pad, ceil_mode=bool(ceil))
        seed_row = np.arange(1, y.numel() + 1, dtype=np.float32).reshape(1, -1)
        y.backward(torch.tensor(seed_row).reshape(y.shape))
        assert np.array_equal(_float32_input_grad(model, x, seed_row), xt.grad.numpy())



def _torch_max_pool_grad(x, attrs, seed_rows):
    """torch's float64 input gradient of max_pool{1,2,3}d (symmetric pads) for seed rows [N, M]."""
    import torch

    pool = getattr(torch.nn.functional, f"max_pool{x.ndim - 2}d")
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    y = pool(xt, attrs["kernel_shape"], attrs["strides"], attrs["pads"][:x.ndim - 2],
             attrs["dilations"], bool(attrs["ceil_mode"]))
    y.backward(torch.tensor(seed_rows, dtype=torch.float64).reshape(y.shape))
    return xt.grad.numpy()


@settings(max_examples=25, deadline=None)
@given(
    rank=st.integers(1, 3), kernel=st.integers(1, 4), stride=st.integers(1, 3),
    pad=st.integers(0, 2), ceil_mode=st.integers(0, 1), dilation=st.integers(1, 2),
    size=st.integers(5, 9), double=st.booleans(), seed=st.integers(0, 1000),
)
def test_max_pool_ties_as_torch_any_rank(rank, kernel, stride, pad, ceil_mode, dilation, size,
                                         double, seed):
    """1-D, 2-D and 3-D pools (the rule routes one axis at a time) on inputs full of ties, ceil
    mode edge windows (also ones that start past the input) included: dY goes where torch's
    float64 backward sends it, bit for bit (integer seeds keep every sum exact)."""
    pad = min(pad, kernel // 2)  # torch: at most half the kernel
    rng = np.random.default_rng(seed)
    shape = (2, 2) + tuple(int(v) for v in rng.integers(size - 1, size + 2, rank))
    assume((kernel - 1) * dilation + 1 <= min(shape[2:]) + 2 * pad)  # an output exists
    attrs = {"kernel_shape": [kernel] * rank, "strides": [stride] * rank, "pads": [pad] * 2 * rank,
             "ceil_mode": ceil_mode, "dilations": [dilation] * rank}
    x = rng.integers(0, 3, shape).astype(np.float64 if double else np.float32)
    image = x.reshape(shape[:3] + (-1,))  # the augmenter wants a rank-4 image: reshaped inside
    model = one_node_model("MaxPool", image.shape, attrs=attrs, reshape_to=shape,
                           dtype=TensorProto.DOUBLE if double else TensorProto.FLOAT)
    width = session(model).run(None, {"x": image})[0].shape[1]
    seed_rows = rng.integers(1, 2**10, (2, width)).astype(x.dtype)
    got = _float32_input_grad(model, image, seed_rows)
    assert np.array_equal(got.reshape(shape), _torch_max_pool_grad(x, attrs, seed_rows))


@pytest.mark.parametrize("values", ["relu", "signed"])
def test_max_pool_stem_shapes_as_torch(values):
    """The pools of the benchmark networks (squeezenet 3x3/2 ceil mode on an odd size, resnet's
    3x3/2 pad 1, googlenet's 3x3/1 pad 1 and 2x2/2 ceil mode), on ReLU-like inputs (a third of
    them zero: all-zero windows) and on signed ones."""
    rng = np.random.default_rng(7)
    for kernel, stride, pad, ceil, size in ((3, 2, 0, 1, 23), (3, 2, 1, 0, 24), (3, 1, 1, 1, 14),
                                            (2, 2, 0, 1, 13)):
        x = rng.standard_normal((1, 16, size, size)).astype(np.float32)
        if values == "relu":
            x = np.maximum(x, 0.0).astype(np.float32) * (rng.random(x.shape) > 0.2)
        attrs = {"kernel_shape": [kernel] * 2, "strides": [stride] * 2, "pads": [pad] * 4,
                 "ceil_mode": ceil, "dilations": [1, 1]}
        model = one_node_model("MaxPool", x.shape, attrs=attrs, dtype=TensorProto.FLOAT)
        width = session(model).run(None, {"x": x})[0].shape[1]
        seed_rows = rng.integers(-2**8, 2**8, (1, width)).astype(np.float32)
        got = _float32_input_grad(model, x, seed_rows)
        assert np.array_equal(got, _torch_max_pool_grad(x, attrs, seed_rows)), (kernel, stride)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_max_pool_same_size_shifts_rows_as_torch(rank):
    """A 3x3/1 pad-1 pool (GoogLeNet's inception branch) shifts its innermost axis on flattened
    maps, whose rows run into each other: what crosses a row's end is a tap in the padding,
    whose share is exactly 0 (a NaN-filled tap 0 never matches; a tap after the row takes
    dY - dY). Inputs full of ties (all-zero windows, rows ending in their maximum) and a column of
    -inf (a window whose only real taps are -inf gives its dY to the first, as in torch): dY goes
    where torch's float64 backward sends it, bit for bit."""
    rng = np.random.default_rng(13)
    shape = (2, 3) + (7, 6, 5)[:rank]
    x = rng.integers(0, 3, shape).astype(np.float32)
    x[..., 0] = -np.inf
    x[..., 1] = np.where(rng.random(shape[:-1]) < 0.5, -np.inf, 0.0)
    x[..., -1] = 2.0
    attrs = {"kernel_shape": [3] * rank, "strides": [1] * rank, "pads": [1] * 2 * rank,
             "ceil_mode": 0, "dilations": [1] * rank}
    image = x.reshape(shape[:3] + (-1,))
    model = one_node_model("MaxPool", image.shape, attrs=attrs, reshape_to=shape,
                           dtype=TensorProto.FLOAT)
    augmented = augment_model(model)
    constants = {i.name: numpy_helper.to_array(i) for i in augmented.graph.initializer}
    flattened = {n.output[0] for n in augmented.graph.node if n.op_type == "Reshape"
                 and list(constants.get(n.input[1], [])) == [0, -1]}
    assert any(n.op_type == "Pad" and n.input[0] in flattened for n in augmented.graph.node)
    width = session(model).run(None, {"x": image})[0].shape[1]
    seed_rows = rng.integers(1, 2**10, (2, width)).astype(np.float32)
    got = session(augmented).run(["swag.grad.x"], {"x": image, "swag.seed": seed_rows})[0]
    assert np.array_equal(got.reshape(shape), _torch_max_pool_grad(x, attrs, seed_rows))


def test_max_pool_float16_argmax_route_as_torch():
    """Float16 pools keep the argmax route (one-hot taps + ConvTranspose: onnxruntime's CPU
    ScatterElements cannot add float16), first maximum as torch."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (1, 2, 9, 8)).astype(np.float16)
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
             "dilations": [1, 1]}
    model = one_node_model("MaxPool", x.shape, attrs=attrs, dtype=TensorProto.FLOAT16)
    width = session(model).run(None, {"x": x})[0].shape[1]
    seed_rows = rng.integers(1, 2**6, (1, width)).astype(np.float16)
    got = _float32_input_grad(model, x, seed_rows)
    assert np.array_equal(got.astype(np.float64), _torch_max_pool_grad(x, attrs, seed_rows))


@pytest.mark.parametrize("channels", [16, 6])  # blocked masks and not
@pytest.mark.parametrize("concat,pool,route", [
    (False, True, "separable"), (True, True, "separable"), (True, False, "separable"),
    (False, True, "argmax"), (True, True, "argmax"),  # the Indices + ScatterElements route
])
def test_relu_mask_moved_to_pool_or_concat(concat, pool, route, channels, monkeypatch):
    """Conv -> Relu -> MaxPool 3x3/2 (ceil), Relu outputs -> Concat -> MaxPool (SqueezeNet's
    fire modules) and Relu outputs -> Concat read twice (GoogLeNet's inception modules): the
    Relu's gradient mask is applied to the pooled or concatenated dY (no mask reads a Relu
    output), by either MaxPool route; the input gradient equals, bit for bit, the one of the
    same model augmented with the Relu outputs requested as layers (masks where they were), and
    torch's float64 autograd. The input holds small integers, so windows tie, at 0 (all
    negative) included."""
    import torch

    monkeypatch.setattr(pooling, "FORMULATION", route)

    halves = [list(range(channels // 2)), list(range(channels // 2, channels))] if concat else [None]
    nodes, inits, relus = [], [], []
    for i, rows in enumerate(halves):
        eye = np.eye(channels, dtype=np.float32)[rows if rows else slice(None), :, None, None]
        inits.append(numpy_helper.from_array(eye, f"w{i}"))
        nodes += [helper.make_node("Conv", ["x", f"w{i}"], [f"c{i}"]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        relus.append(f"r{i}")
    if concat:
        nodes.append(helper.make_node("Concat", relus, ["r"], axis=1))
    carrier = "p" if pool else "r"
    if pool:
        nodes.append(helper.make_node("MaxPool", ["r" if concat else "r0"], ["p"],
                                      kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1))
    else:  # read twice: the mask applies to the sum of both readers' gradients
        nodes += [helper.make_node("Mul", ["r", "r"], ["p"])]
    nodes.append(helper.make_node("Flatten", ["p"], ["y"]))
    graph = helper.make_graph(
        nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 9, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    moved, kept = augment_model(model), augment_model(model, layers=relus)
    mask_inputs = {i for n in moved.graph.node if n.name.startswith("swag/")
                   and n.op_type in ("BatchNormalization", "Greater") for i in n.input}
    assert carrier in mask_inputs and not mask_inputs & set(relus)
    rng = np.random.default_rng(5)
    x = rng.integers(-2, 3, (2, channels, 9, 8)).astype(np.float32)
    width = channels * (4 * 4 if pool else 9 * 8)  # 4x4 windows
    seed = rng.standard_normal((2, width)).astype(np.float32)
    got = session(moved).run(["swag.grad.x"], {"x": x, "swag.seed": seed})[0]
    assert np.array_equal(got, session(kept).run(["swag.grad.x"], {"x": x, "swag.seed": seed})[0])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = torch.relu(xt)
    out = torch.nn.functional.max_pool2d(out, 3, 2, ceil_mode=True) if pool else out * out
    (out.flatten(1) * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-6, atol=1e-6)


def _identity_conv_then(op, inputs, channels):
    """x [2, channels, 4, 5] -> 1x1 Conv with identity weights (y = x exactly; with 16 channels
    onnxruntime runs it in its blocked NCHWc layout) -> op -> Flatten, float32."""
    shape = (2, channels, 4, 5)
    model = one_node_model(op, shape, inputs, dtype=TensorProto.FLOAT)
    graph = model.graph
    weight = numpy_helper.from_array(np.eye(channels, dtype=np.float32)[:, :, None, None], "w")
    graph.initializer.append(weight)
    graph.node.insert(0, helper.make_node("Conv", ["x", "w"], ["conv"]))
    graph.node[1].input[0] = "conv"
    return model


BOUNDARY_VALUES = np.array([
    0.0, -0.0, 6.0, np.nextafter(np.float32(6), np.float32(0)), np.nextafter(np.float32(6), np.float32(7)),
    2.0**-126, -(2.0**-126), 1e-30, 3e38, -3e38, -1.0, 1.5, np.nextafter(np.float32(-1), np.float32(0)),
    np.nextafter(np.float32(1.5), np.float32(0)), np.nextafter(np.float32(-1), np.float32(-2)),
    np.nextafter(np.float32(1.5), np.float32(2)), 0.1, np.nextafter(np.float32(0.1), np.float32(1)),
    20.0, np.nextafter(np.float32(20), np.float32(0)), -0.5, 1.0,
], np.float32)


@pytest.mark.parametrize("channels", [16, 3])  # blocked (BatchNormalization masks) and not
@pytest.mark.parametrize("op,bounds", [
    ("Relu", (0.0, None)), ("Clip", (0.0, 6.0)), ("Clip", (-1.0, 1.5)), ("Clip", (-0.5, None)),
    ("Clip", (None, 1.0)), ("Clip", (0.1, 20.0)),
])
def test_float32_activation_masks_exact_at_bounds(op, bounds, channels):
    """dX = dY exactly where lo < y < hi and 0 at the bounds (as torch's hardtanh / threshold
    backward), for values on, next to and far from each bound."""
    inputs = [] if op == "Relu" else [np.array(b, np.float32) if b is not None else ""
                                      for b in bounds]
    model = _identity_conv_then(op, inputs, channels)
    rng = np.random.default_rng(1)
    x = rng.uniform(-8, 8, (2, channels, 4, 5)).astype(np.float32)
    x.reshape(-1)[:len(BOUNDARY_VALUES)] = BOUNDARY_VALUES
    seed = rng.standard_normal((2, channels * 20)).astype(np.float32)
    lo, hi = bounds
    inside = (x > np.float32(lo) if lo is not None else True) & (
        x < np.float32(hi) if hi is not None else True)
    got = _float32_input_grad(model, x, seed)
    assert np.array_equal(got, seed.reshape(x.shape) * inside)


def _conv_then_swish(channels):
    """x [2, channels, 4, 5] -> identity 1x1 Conv -> y = conv * Sigmoid(conv) (SiLU as torch
    exports it, fused by augment into one backward pattern) -> Flatten, float32."""
    model = _identity_conv_then("Sigmoid", [], channels)
    graph = model.graph
    graph.node.insert(2, helper.make_node("Mul", ["conv", "out0"], ["swish"]))
    graph.node[3].input[0] = "swish"
    return model


@pytest.mark.parametrize("channels", [16, 3])  # blocked (1 - s as BatchNormalization) and not
def test_float32_swish_matches_torch(channels):
    """SiLU's input gradient dy * (s + y (1 - s)) against torch.autograd in float64."""
    import torch

    model = _conv_then_swish(channels)
    augmented = augment_model(model)
    ops = [n.op_type for n in augmented.graph.node]
    assert ("BatchNormalization" in ops) == (channels % 8 == 0)
    assert "Sigmoid" in ops and ops.count("Sigmoid") == 1  # the forward's, not recomputed
    rng = np.random.default_rng(3)
    x = rng.uniform(-8, 8, (2, channels, 4, 5)).astype(np.float32)
    seed = rng.standard_normal((2, channels * 20)).astype(np.float32)
    got = session(augmented).run(["swag.grad.x"], {"x": x, "swag.seed": seed})[0]
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (torch.nn.functional.silu(xt).reshape(2, -1) * torch.tensor(seed, dtype=torch.float64)
     ).sum().backward()
    np.testing.assert_allclose(got, xt.grad.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels", [16, 3])  # blocked (Relu / BatchNormalization) and not
def test_float32_hard_swish_matches_torch(channels):
    """HardSwish's input gradient against torch.autograd in float64 away from the kinks, and
    exactly 0 at x <= -3 and dy at x >= 3 (the kinks included, as the rule documents). A blocked
    map's HardSwish is rewritten as x * HardSigmoid(x), whose h the backward reads: one
    HardSigmoid either way, and the forward bit for bit as before."""
    import torch

    model = _identity_conv_then("HardSwish", [], channels)
    augmented = augment_model(model)
    ops = [n.op_type for n in augmented.graph.node]
    assert ("BatchNormalization" in ops) == (channels == 16)
    assert ops.count("HardSigmoid") == 1 and ("HardSwish" in ops) == (channels != 16)
    rng = np.random.default_rng(4)
    x = away_from(rng.uniform(-8, 8, (2, channels, 4, 5)), [-3.0, 3.0]).astype(np.float32)
    edges = np.array([-3.0, 3.0, -1e30, 1e30, np.nextafter(np.float32(-3), np.float32(-4)),
                      np.nextafter(np.float32(3), np.float32(4)), -20.0, 20.0], np.float32)
    x.reshape(-1)[:len(edges)] = edges
    seed = rng.standard_normal((2, channels * 20)).astype(np.float32)
    score, got = session(augmented).run(["swag.score", "swag.grad.x"], {"x": x, "swag.seed": seed})
    assert np.array_equal(score, session(model).run(None, {"x": x})[0])
    dy = seed.reshape(x.shape)
    outside = (x <= -3) | (x >= 3)
    assert np.array_equal(got[outside], np.where(x >= 3, dy, 0.0)[outside])
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (torch.nn.functional.hardswish(xt).reshape(2, -1) * torch.tensor(seed, dtype=torch.float64)
     ).sum().backward()
    np.testing.assert_allclose(got[~outside], xt.grad.numpy()[~outside], rtol=1e-5, atol=1e-6)
