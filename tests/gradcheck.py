"""One-node models and a finite-difference check of the augmented model's vector-Jacobian product.

The model is x [rank 4] -> (optional Reshape) -> the op under test -> Flatten -> score [N, K];
the augmented graph returns d<c, score>/dx for a seed c. We compare <t, vjp(c)> with the central
difference (<c, f(x + eps t)> - <c, f(x - eps t)>) / (2 eps) in random directions t (float64
where onnxruntime has float64 kernels).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from swag_onnx import augment_model
from swag_onnx.graph.augment import SEED, grad_name

ort.set_default_logger_severity(3)
NP = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}


def one_node_model(op_type, x_shape, inputs=(), attrs=None, reshape_to=None,
                   dtype=TensorProto.DOUBLE, opset=17, n_outputs=1, used_output=0,
                   input_name="x"):
    """A model x -> [Reshape] -> op(x, *inputs) -> Flatten -> y. `inputs` are numpy constants
    (initializers) or '' for an absent optional input."""
    nodes, inits = [], []
    current = input_name
    if reshape_to is not None:
        inits.append(numpy_helper.from_array(np.asarray(reshape_to, np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", [current, "shape"], ["reshaped"]))
        current = "reshaped"
    names = [current]
    for i, value in enumerate(inputs):
        if isinstance(value, str):
            names.append(value)
            continue
        arr = np.asarray(value)
        if arr.dtype == np.float64 and dtype == TensorProto.FLOAT:
            arr = arr.astype(np.float32)
        inits.append(numpy_helper.from_array(arr, f"in{i}"))
        names.append(f"in{i}")
    outputs = [f"out{i}" for i in range(n_outputs)]
    nodes.append(helper.make_node(op_type, names, outputs, **(attrs or {})))
    nodes.append(helper.make_node("Flatten", [outputs[used_output]], ["y"], axis=1))
    graph = helper.make_graph(
        nodes, "one_node", [helper.make_tensor_value_info(input_name, dtype, list(x_shape))],
        [helper.make_tensor_value_info("y", dtype, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def stage_layer_session(path):
    """(describe(path), its stage layers, a session on the model augmented with them): the setup
    of the whole-network tests. Asserts that only default-domain ops were emitted."""
    from swag_onnx import describe
    from swag_onnx.graph.analysis import stage_outputs

    info = describe(path)
    layers = [layer for layer, _ in stage_outputs(info.layers, info.layout)]
    augmented = augment_model(onnx.load(path), layers=layers)
    assert {node.domain for node in augmented.graph.node} <= {"", "ai.onnx"}
    return info, layers, session(augmented)


def vjp_error(model, x, eps=1e-4, directions=3, seed=0):
    """Max relative error of <t, vjp(c)> against central finite differences of <c, f(x)>."""
    rng = np.random.default_rng(seed)
    plain = session(model)
    augmented = augment_model(model)
    aug = session(augmented)
    input_name = model.graph.input[0].name
    y = plain.run(None, {input_name: x})[0]
    worst = 0.0
    for _ in range(directions):
        c = rng.standard_normal(y.shape).astype(x.dtype)
        t = rng.standard_normal(x.shape).astype(x.dtype)
        grad = aug.run([grad_name(input_name)], {input_name: x, SEED: c})[0]
        f_plus = plain.run(None, {input_name: x + eps * t})[0]
        f_minus = plain.run(None, {input_name: x - eps * t})[0]
        numeric = float(np.sum(c * (f_plus - f_minus)) / (2 * eps))
        analytic = float(np.sum(t * grad))
        # relative to |numeric|, unless its terms cancel by more than 1000x (a random c and t can
        # make <c, J t> tiny): then relative to the terms' own size, where rounding lives
        terms = float(np.sum(np.abs(c * (f_plus - f_minus))) / (2 * eps))
        worst = max(worst, abs(numeric - analytic) / max(abs(numeric), 1e-3 * terms, 1e-8))
    return worst


# float64 models still spread pooled gradients in float32 (onnxruntime has no float64
# ConvTranspose), hence 1e-4 rather than ~1e-9; any wrong rule is off by far more.
TOLERANCE = {TensorProto.DOUBLE: 1e-4, TensorProto.FLOAT: 1e-3}


def assert_vjp(op_type, x_shape, inputs=(), attrs=None, x=None, seed=0, float_eps=1e-3,
               **kwargs) -> None:
    """Assert the vjp of a one-node model against finite differences: float64 where onnxruntime
    has the kernels (tolerance 1e-4), else float32 (larger step, tolerance 1e-3). Also asserts
    that only default-domain ops were emitted. Linear ops can take a large `float_eps`."""
    rng = np.random.default_rng(seed)
    x = separated(x_shape, rng) if x is None else x
    for dtype, eps in ((TensorProto.DOUBLE, 1e-6), (TensorProto.FLOAT, float_eps)):
        model = one_node_model(op_type, x_shape, inputs, attrs, dtype=dtype, **kwargs)
        try:
            session(model), session(augment_model(model))
        except (ort.capi.onnxruntime_pybind11_state.NotImplemented,
                ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.InvalidGraph):
            continue
        assert {n.domain for n in augment_model(model).graph.node} <= {"", "ai.onnx"}
        error = vjp_error(model, x.astype(NP[dtype]), eps=eps)
        assert error < TOLERANCE[dtype], f"{op_type}: relative vjp error {error:.2e}"
        return
    raise AssertionError(f"onnxruntime runs {op_type} in neither float64 nor float32")


def separated(shape, rng, gap=0.05, dtype=np.float64):
    """Values with distinct magnitudes, all at least `gap` away from 0 and from each other
    (no ReLU kinks, no max-pool ties): a random permutation of a spaced grid, random signs."""
    size = int(np.prod(shape))
    values = (np.arange(size) + 1) * gap
    values = rng.permutation(values) * rng.choice([-1.0, 1.0], size)
    return (values / values.max() * 2.5).reshape(shape).astype(dtype)


def away_from(x: np.ndarray, kinks, margin: float = 0.03) -> np.ndarray:
    """x with values within `margin` of a kink moved 2 * margin away from it."""
    x = x.copy()
    for kink in kinks:
        near = np.abs(x - kink) < margin
        x[near] = kink + 2 * margin * np.where(x[near] >= kink, 1.0, -1.0)
    return x
