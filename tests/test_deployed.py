"""Models as deployed: float16 conversions, int8 quantisation (QDQ, QOperator, dynamic), and
models whose gradient path is cut (black-box methods still run; gradient methods name the op).

Oracles: torch.fake_quantize_per_tensor_affine / per_channel_affine backward (QDQ straight
through with the clipping mask), the QDQ model for QOperator models quantised with the same
parameters, and the float32 model for float16 conversions.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from swag_onnx import augment_model
from swag_onnx.errors import BadModelError
from swag_onnx.graph.augment import SEED, grad_name
from swag_onnx.runtime import ModelRunner

from gradcheck import session

RNG = np.random.default_rng(7)
RANGES = {TensorProto.INT8: (-128, 127), TensorProto.UINT8: (0, 255)}


def _model(nodes, inits, x_shape, dtype=TensorProto.FLOAT, opset=17):
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", dtype, x_shape)],
                              [helper.make_tensor_value_info("y", dtype, None)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _input_grad(model, x, seed, optimise=True):
    """d <seed, score> / dx from the augmented model; `optimise` False: without onnxruntime's
    graph rewrites (its fused integer kernels differ from the QDQ arithmetic on CPUs without
    VNNI: per-channel int8 weights saturate 16-bit sums)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    aug = ort.InferenceSession(augment_model(model).SerializeToString(), options,
                               providers=["CPUExecutionProvider"])
    return aug.run([grad_name("x")], {"x": x, SEED: seed.astype(x.dtype)})[0]


def _quant_params(int_type, channels):
    """(scale, zero point) per tensor (channels None) or per channel, in the zero point's type."""
    np_type = np.int8 if int_type == TensorProto.INT8 else np.uint8
    low, high = RANGES[int_type]
    count = () if channels is None else (channels,)
    scale = RNG.uniform(0.01, 0.03, count).astype(np.float32)
    zero = RNG.integers(low // 4 + high // 4, high // 2 + 1, count).astype(np_type)
    return scale, zero


def _torch_fake_quant(x, scale, zero, int_type, axis=None):
    low, high = RANGES[int_type]
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), low, high)
    return torch.fake_quantize_per_channel_affine(
        x, torch.from_numpy(scale), torch.from_numpy(zero.astype(np.int32)), axis, low, high)


CASES = [(TensorProto.INT8, None), (TensorProto.UINT8, None), (TensorProto.INT8, 3),
         (TensorProto.UINT8, 3)]
IDS = ["int8-tensor", "uint8-tensor", "int8-channel", "uint8-channel"]


@pytest.mark.parametrize("int_type,channels", CASES, ids=IDS)
def test_quantize_dequantize_pair_is_straight_through_with_clipping_mask(int_type, channels):
    scale, zero = _quant_params(int_type, channels)
    weights = RNG.normal(size=(1, 3, 5, 5)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=1),
             helper.make_node("Mul", ["d", "w"], ["m"]),
             helper.make_node("Flatten", ["m"], ["y"], axis=1)]
    model = _model(nodes, {"s": scale, "z": zero, "w": weights}, [2, 3, 5, 5])
    x = RNG.uniform(-6, 6, (2, 3, 5, 5)).astype(np.float32)  # beyond the range: saturates
    seed = RNG.normal(size=(2, 75)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    fq = _torch_fake_quant(xt, scale, zero, int_type, None if channels is None else 1)
    ((fq * torch.from_numpy(weights)).flatten(1) * torch.from_numpy(seed)).sum().backward()
    expected = xt.grad.numpy()
    assert 0.1 < np.mean(expected == 0) < 0.9  # saturated and unsaturated values both present
    np.testing.assert_allclose(_input_grad(model, x, seed), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("int_type", [TensorProto.INT8, TensorProto.UINT8], ids=["int8", "uint8"])
@pytest.mark.parametrize("per_channel", [False, True], ids=["tensor", "channel"])
def test_clipping_mask_at_the_rounding_ties_matches_torch(int_type, per_channel):
    """x / scale exactly on the half-integers next to the saturation limits, and one float
    either side: round half to even keeps low - 1/2 inside only when low - zero point is even
    (and high + 1/2 only when high - zero point is even). Zero points of both parities; scale
    a power of two so that torch's x * (1 / scale) equals x / scale."""
    low, high = RANGES[int_type]
    np_type = np.int8 if int_type == TensorProto.INT8 else np.uint8
    zeros = np.array([high // 2, high // 2 + 1], np_type)  # both parities of low - zp
    scale = np.float32(0.25)
    rows = []
    for zero in zeros:
        edges = [np.float32(low - int(zero) - 0.5), np.float32(high - int(zero) + 0.5)]
        values = [f for e in edges for f in (np.nextafter(e, np.float32(-np.inf)), e,
                                             np.nextafter(e, np.float32(np.inf)))]
        rows.append(np.array(values, np.float32) * scale)
    x = np.stack(rows)[None, :, :, None]  # [1, 2 zero points, 6 values, 1]
    seed = np.ones((1, x.size), np.float32)
    s_init, z_init = (np.full(2, scale), zeros) if per_channel else (scale, zeros[0])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=1),
             helper.make_node("Flatten", ["d"], ["y"], axis=1)]
    model = _model(nodes, {"s": np.asarray(s_init, np.float32), "z": np.asarray(z_init)},
                   list(x.shape))
    xt = torch.from_numpy(x).requires_grad_(True)
    fq = _torch_fake_quant(xt, np.asarray(s_init, np.float32), np.asarray(z_init, np_type),
                           int_type, 1 if per_channel else None)
    fq.sum().backward()
    expected = xt.grad.numpy()
    assert 0 < expected.sum() < expected.size  # ties on both sides of the limits
    np.testing.assert_array_equal(_input_grad(model, x, seed), expected)


@pytest.mark.parametrize("channels", [None, 4], ids=["per-tensor", "per-channel"])
def test_small_qdq_network_matches_torch_fake_quant(channels):
    # x -Q/DQ-> Conv (weights DQ'd per output channel or per tensor) -Q/DQ-> Relu -> GAP -> Gemm
    u8 = TensorProto.UINT8
    xs, xz = _quant_params(u8, None)
    ys, yz = _quant_params(u8, None)
    ws = RNG.uniform(0.005, 0.02, () if channels is None else (channels,)).astype(np.float32)
    w_float = RNG.normal(scale=0.3, size=(4, 3, 3, 3)).astype(np.float32)
    axis_scale = ws if channels is None else ws[:, None, None, None]
    wq = np.clip(np.round(w_float / axis_scale), -127, 127).astype(np.int8)
    wz = np.zeros_like(ws, dtype=np.int8)
    bias = RNG.normal(size=4).astype(np.float32)
    fc = RNG.normal(size=(4, 6)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["cd"]),
             helper.make_node("Relu", ["cd"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc"], ["y"])]
    inits = {"xs": xs, "xz": xz, "ys": ys, "yz": yz, "wq": wq, "ws": ws, "wz": wz, "b": bias,
             "fc": fc}
    model = _model(nodes, inits, [2, 3, 8, 8])
    x = RNG.uniform(-3, 3, (2, 3, 8, 8)).astype(np.float32)
    seed = RNG.normal(size=(2, 6)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    w = torch.from_numpy(wq.astype(np.float32) * axis_scale)
    conv = torch.nn.functional.conv2d(_torch_fake_quant(xt, xs, xz, u8), w,
                                      torch.from_numpy(bias), stride=2, padding=1)
    relu = torch.relu(_torch_fake_quant(conv, ys, yz, u8))
    score = relu.mean(dim=(2, 3)) @ torch.from_numpy(fc)
    (score * torch.from_numpy(seed)).sum().backward()
    expected = xt.grad.numpy()
    assert np.mean(expected == 0) > 0.05  # the input saturates somewhere
    got = _input_grad(model, x, seed)
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-4)


def _float_net(path, with_ops=True):
    """A small float32 network with the ops onnxruntime's quantiser turns into QLinear* ops
    (Conv, Add, Mul, Sigmoid, LeakyRelu, AveragePool, Concat, GlobalAveragePool, MatMul)."""
    c = 4
    inits = {"w1": RNG.normal(scale=0.4, size=(c, 3, 3, 3)).astype(np.float32),
             "b1": RNG.normal(scale=0.1, size=c).astype(np.float32),
             "w2": RNG.normal(scale=0.3, size=(c, c, 3, 3)).astype(np.float32),
             "b2": RNG.normal(scale=0.1, size=c).astype(np.float32),
             "fc": RNG.normal(size=(2 * c, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("LeakyRelu", ["c1"], ["l1"], alpha=0.1),
             helper.make_node("Conv", ["l1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "l1"], ["a"]),
             helper.make_node("Sigmoid", ["a"], ["s"]),
             helper.make_node("Mul", ["a", "s"], ["m"]),
             helper.make_node("AveragePool", ["m"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("AveragePool", ["l1"], ["ap2"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Concat", ["ap", "ap2"], ["cat"], axis=1),
             helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    model = _model(nodes, inits, [1, 3, 8, 8])
    onnx.save(model, path)
    return model


def _cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _calibration() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(-6, 6, (1, 3, 8, 8)).astype(np.float32) for _ in range(8)]


def _quantize(src, dst, fmt, per_channel=False):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = iter([{"x": x} for x in _calibration()])

        def get_next(self):
            return next(self.data, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt),
                    per_channel=per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return onnx.load(str(dst))


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
def test_qoperator_gradient_is_that_of_the_qdq_model(tmp_path, per_channel):
    _float_net(tmp_path / "f.onnx")
    qdq = _quantize(tmp_path / "f.onnx", tmp_path / "qdq.onnx", "QDQ", per_channel)
    qop = _quantize(tmp_path / "f.onnx", tmp_path / "qop.onnx", "QOperator", per_channel)
    ops = {n.op_type for n in qop.graph.node}
    assert {"QLinearConv", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu",
            "QLinearAveragePool", "QLinearConcat", "QLinearGlobalAveragePool"} <= ops
    # The QOperator model requantises where the QDQ one does not (each QLinearAveragePool
    # output, before QLinearConcat), so the two agree only where neither saturates: an input
    # well inside the calibrated ranges (inputs 3 times smaller than the calibration's).
    x = _calibration()[0] / 3
    seed = RNG.normal(size=(1, 5)).astype(np.float32)
    expected = _input_grad(qdq, x, seed, optimise=False)
    assert np.abs(expected).max() > 0
    # The extra requantisation moves some forward values by a quantisation step, which the
    # gradients of Mul and Sigmoid read: agreement to 2% of the largest entry, not to rounding.
    got = _input_grad(qop, x, seed, optimise=False)
    np.testing.assert_allclose(got, expected, atol=2e-2 * np.abs(expected).max(), rtol=0)
    assert _cosine(got, expected) > 0.999


def _softmax_net(path):
    """x -> Conv -> Softmax(axis 1) -> GAP -> MatMul: the float Softmax becomes QLinearSoftmax
    in onnxruntime's QOperator format."""
    inits = {"w": RNG.normal(scale=0.5, size=(4, 3, 3, 3)).astype(np.float32),
             "fc": RNG.normal(size=(4, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["c"], ["s"], axis=1),
             helper.make_node("GlobalAveragePool", ["s"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    onnx.save(_model(nodes, inits, [1, 3, 8, 8]), path)


def test_qlinear_softmax_is_its_qdq_equivalent(tmp_path):
    _softmax_net(tmp_path / "f.onnx")
    qdq = _quantize(tmp_path / "f.onnx", tmp_path / "qdq.onnx", "QDQ")
    qop = _quantize(tmp_path / "f.onnx", tmp_path / "qop.onnx", "QOperator")
    assert "QLinearSoftmax" in {n.op_type for n in qop.graph.node}
    x = _calibration()[1] / 3
    seed = RNG.normal(size=(1, 5)).astype(np.float32)
    expected = _input_grad(qdq, x, seed, optimise=False)
    got = _input_grad(qop, x, seed, optimise=False)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, atol=2e-2 * np.abs(expected).max(), rtol=0)
    assert _cosine(got, expected) > 0.999


def test_qlinear_where_matches_torch_fake_quant():
    """QLinearWhere(c, Q(x), Q(b)) with per-tensor uint8 parameters (onnxruntime's quantiser
    writes it for Where; its QOperator pass fails on this small graph, so the node is written
    here): torch's fake-quant backward of where(c, fq(x), fq(b)), output fake-quantised."""
    u8 = TensorProto.UINT8
    (xs, xz), (bs, bz), (ys, yz) = (_quant_params(u8, None) for _ in range(3))
    condition = RNG.random((1, 1, 5, 5)) < 0.5
    other = RNG.uniform(-4, 4, (1, 3, 5, 5)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("QuantizeLinear", ["b", "bs", "bz"], ["bq"]),
             helper.make_node("QLinearWhere", ["c", "xq", "xs", "xz", "bq", "bs", "bz", "ys",
                                               "yz"], ["wq"], domain="com.microsoft"),
             helper.make_node("DequantizeLinear", ["wq", "ys", "yz"], ["w"]),
             helper.make_node("Flatten", ["w"], ["y"], axis=1)]
    inits = {"xs": xs, "xz": xz, "bs": bs, "bz": bz, "ys": ys, "yz": yz, "c": condition,
             "b": other}
    model = _model(nodes, inits, [1, 3, 5, 5])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    x = RNG.uniform(-6, 6, (1, 3, 5, 5)).astype(np.float32)
    seed = RNG.normal(size=(1, 75)).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    where = torch.where(torch.from_numpy(condition), _torch_fake_quant(xt, xs, xz, u8),
                        _torch_fake_quant(torch.from_numpy(other), bs, bz, u8))
    (_torch_fake_quant(where, ys, yz, u8).flatten(1) * torch.from_numpy(seed)).sum().backward()
    expected = xt.grad.numpy()
    assert 0.1 < np.mean(expected == 0) < 0.9  # masked out or saturated, and passed through
    np.testing.assert_allclose(_input_grad(model, x, seed), expected, atol=1e-5, rtol=1e-5)


def test_dynamic_quantisation_matches_torch_fake_quant(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = _float_net(tmp_path / "f.onnx")
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "d.onnx"),
                     weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv", "MatMul"])
    dynamic = onnx.load(str(tmp_path / "d.onnx"))
    assert {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"} <= \
        {n.op_type for n in dynamic.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in dynamic.graph.initializer}
    x = RNG.uniform(-3, 3, (1, 3, 8, 8)).astype(np.float32)
    seed = RNG.normal(size=(1, 5)).astype(np.float32)

    def fq(t):  # DynamicQuantizeLinear's own scale and zero point, fake-quantised like torch
        lo, hi = min(float(t.min()), 0.0), max(float(t.max()), 0.0)
        scale = np.float32((hi - lo) / 255)
        zero = int(np.clip(np.round(-lo / scale), 0, 255))
        return _torch_fake_quant(t, scale, zero, TensorProto.UINT8)

    def weight(name):
        q, s, z = (inits[f"{name}{k}"] for k in ("_quantized", "_scale", "_zero_point"))
        return torch.from_numpy((q.astype(np.float32) - z.astype(np.float32)) * s)

    xt = torch.from_numpy(x).requires_grad_(True)
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    f = torch.nn.functional
    l1 = f.leaky_relu(f.conv2d(fq(xt), weight("w1"), torch.from_numpy(w["b1"]), padding=1), 0.1)
    a = f.conv2d(fq(l1), weight("w2"), torch.from_numpy(w["b2"]), padding=1) + l1
    m = a * torch.sigmoid(a)
    cat = torch.cat([f.avg_pool2d(m, 2), f.avg_pool2d(l1, 2)], 1)
    score = fq(cat.mean(dim=(2, 3))) @ weight("fc")
    (score * torch.from_numpy(seed)).sum().backward()
    expected = xt.grad.numpy()
    got = _input_grad(dynamic, x, seed)
    np.testing.assert_allclose(got, expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-4)


# ----- float16 -----------------------------------------------------------------------------------

def _float16_net():
    """A float32 net whose backward graph needs constants (strided depthwise Conv, MaxPool,
    AveragePool, Resize, Gemm with beta, HardSwish, Clip)."""
    inits = {"w1": RNG.normal(scale=0.4, size=(6, 3, 3, 3)).astype(np.float32),
             "w2": RNG.normal(scale=0.4, size=(6, 1, 3, 3)).astype(np.float32),
             "fc": RNG.normal(scale=0.3, size=(6, 4)).astype(np.float32),
             "fb": RNG.normal(size=4).astype(np.float32),
             "scales": np.array([1, 1, 2, 2], np.float32),
             "lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2],
                              group=6),
             helper.make_node("HardSwish", ["c2"], ["h"]),
             helper.make_node("Resize", ["h", "", "scales"], ["u"], mode="linear"),
             helper.make_node("MaxPool", ["u"], ["mp"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("AveragePool", ["mp"], ["ap"], kernel_shape=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["ap"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], beta=0.5)]
    return _model(nodes, inits, ["N", 3, 12, 12])


@pytest.mark.parametrize("keep_io_types", [True, False], ids=["io-float32", "io-float16"])
def test_float16_model_gradients_in_its_own_types(keep_io_types):
    from onnxconverter_common import float16

    model = _float16_net()
    half = float16.convert_float_to_float16(model, keep_io_types=keep_io_types)
    augmented = augment_model(half)
    io_type = TensorProto.FLOAT if keep_io_types else TensorProto.FLOAT16
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(augmented.graph.input) + list(augmented.graph.output)}
    assert types[SEED] == io_type and types[grad_name("x")] == io_type
    x = RNG.uniform(-2, 2, (2, 3, 12, 12)).astype(np.float32)
    seed = RNG.normal(size=(2, 4)).astype(np.float32)
    expected = _input_grad(model, x, seed)
    feed_type = np.float32 if keep_io_types else np.float16
    got = session(augmented).run([grad_name("x")], {"x": x.astype(feed_type),
                                                    SEED: seed.astype(feed_type)})[0]
    assert got.dtype == feed_type
    got, expected = got.astype(np.float64).ravel(), expected.astype(np.float64).ravel()
    cosine = got @ expected / np.linalg.norm(got) / np.linalg.norm(expected)
    assert cosine > 0.99, cosine


# ----- models whose gradient path is cut ---------------------------------------------------------

def _cut_model(path):
    """x -> Conv -> Cast(int32) -> Cast(float) -> GAP -> Gemm: runs, but no gradient flows."""
    inits = {"w": RNG.normal(size=(4, 3, 3, 3)).astype(np.float32),
             "fc": RNG.normal(size=(4, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Cast", ["c"], ["ci"], to=TensorProto.INT32, name="to_int"),
             helper.make_node("Cast", ["ci"], ["cf"], to=TensorProto.FLOAT),
             helper.make_node("GlobalAveragePool", ["cf"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc"], ["y"])]
    onnx.save(_model(nodes, inits, ["N", 3, 16, 16]), path)


def test_cut_path_black_box_methods_run_and_gradient_methods_name_the_op(tmp_path,
                                                                         monkeypatch):
    from swag_onnx.explain import Explainer

    monkeypatch.setenv("SWAG_ONNX_CACHE", str(tmp_path / "cache"))
    _cut_model(tmp_path / "cut.onnx")
    runner = ModelRunner(tmp_path / "cut.onnx")
    assert runner.contract.num_classes == 5 and runner.contract.score == "y"
    assert runner.scores(np.zeros((2, 3, 16, 16), np.float32)).shape == (2, 5)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    with pytest.raises(BadModelError, match=r"cut at Cast \(to_int\): output int32"):
        runner.gradient
    card = {"input_size": [16, 16], "layout": "NCHW", "scaling": {"offset": 127, "divisor": 128}}
    explainer = Explainer(tmp_path / "cut.onnx", card=card)
    image = RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    maps = explainer.explain([image], method=["rise", "random"], masks=16)
    assert all(m.saliency.shape == (20, 24) for m in maps)
    with pytest.raises(BadModelError, match=r"Cast \(to_int\)"):
        explainer.explain([image], method="gradcam")


# ----- the default model as deployed (whole network) ---------------------------------------------

def _default_batch():
    from skimage import data

    from swag_onnx import card as cards

    src, card = cards.resolve(None, None)
    photos = [data.chelsea(), data.coffee()]
    return src, card, photos


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b))[0])


@pytest.mark.slow
def test_float16_default_model_explains_like_float32(tmp_path, monkeypatch):
    from onnxconverter_common import float16

    from swag_onnx import images as imgs
    from swag_onnx.explain import Explainer

    monkeypatch.setenv("SWAG_ONNX_CACHE", str(tmp_path / "cache"))
    src, card, photos = _default_batch()
    folder = tmp_path / "fp16"
    folder.mkdir()
    onnx.save(float16.convert_float_to_float16(onnx.load(src)), folder / "model.onnx")
    shutil.copy(src.parent / "card.json", folder / "card.json")
    full, half = Explainer(None), Explainer(folder)
    assert half.runner.input_type == np.float16
    batch, _ = imgs.batch_preprocess(photos, card)
    zero = np.zeros((len(photos), 1000), np.float32)
    g32, g16 = full.runner.gradients(batch, zero), half.runner.gradients(batch, zero)
    assert g16.input_grad.dtype == np.float32  # widened for the maps
    # Rounding the weights to float16 alone (float32 arithmetic) moves the input gradient to
    # cosine 0.985-0.991 on these photos: 0.97 is what the float16 model itself allows.
    assert all(_cosine(a, b) > 0.97 for a, b in zip(g32.input_grad, g16.input_grad))
    maps32 = full.explain(photos, method=["gradcam", "swag"])
    maps16 = half.explain(photos, method=["gradcam", "swag"])
    for a, b in zip(maps32, maps16):
        assert a.target == b.target and _spearman(a.saliency, b.saliency) > 0.95, a.method


@pytest.mark.slow
def test_int8_default_model_through_the_cli(tmp_path, monkeypatch):
    import json

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from PIL import Image
    from skimage import data
    from typer.testing import CliRunner

    from swag_onnx import images as imgs
    from swag_onnx.cli import app

    monkeypatch.setenv("SWAG_ONNX_CACHE", str(tmp_path / "cache"))
    src, card, photos = _default_batch()
    calibration, _ = imgs.batch_preprocess([data.rocket(), data.retina()], card)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"image": b[None]} for b in calibration])

        def get_next(self):
            return next(self.feeds, None)

    folder = tmp_path / "int8"
    folder.mkdir()
    quant_pre_process(str(src), str(tmp_path / "pre.onnx"))
    quantize_static(str(tmp_path / "pre.onnx"), str(folder / "model.onnx"), Reader(),
                    quant_format=QuantFormat.QOperator)
    own = {k: v for k, v in json.loads((src.parent / "card.json").read_text()).items()
           if k != "score"}  # the logits before their output quantisation (find_score)
    (folder / "card.json").write_text(json.dumps(own))
    Image.fromarray(photos[0]).save(tmp_path / "cat.png")
    methods = ["gradcam", "swag", "integrated-gradients", "rise", "random"]
    args = ["explain", "--model", str(folder), "--out", str(tmp_path / "out"), "--steps", "4",
            "--masks", "32", str(tmp_path / "cat.png")] + [a for m in methods
                                                           for a in ("--method", m)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").glob("*.npy"))) == len(methods)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["float16", "int8-qdq"])
def test_meta_saliency_on_the_deployed_default_model_through_the_cli(kind, tmp_path,
                                                                     monkeypatch):
    """--meta takes its SGD step on the float16 weights, or on the int8 model's dequantised
    weights (folded into float parameters): the map moves away from the plain one."""
    import json

    from onnxconverter_common import float16
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from PIL import Image
    from skimage import data
    from typer.testing import CliRunner

    from swag_onnx import images as imgs
    from swag_onnx.cli import app

    monkeypatch.setenv("SWAG_ONNX_CACHE", str(tmp_path / "cache"))
    src, card, photos = _default_batch()
    folder = tmp_path / kind
    folder.mkdir()
    own = json.loads((src.parent / "card.json").read_text())
    if kind == "float16":
        onnx.save(float16.convert_float_to_float16(onnx.load(src)), folder / "model.onnx")
    else:
        calibration, _ = imgs.batch_preprocess([data.rocket()], card)

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.feeds = iter([{"image": calibration}])

            def get_next(self):
                return next(self.feeds, None)

        quantize_static(str(src), str(folder / "model.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ)
        own.pop("score")  # the logits before their output quantisation (find_score)
    (folder / "card.json").write_text(json.dumps(own))
    Image.fromarray(photos[0]).save(tmp_path / "cat.png")
    maps = {}
    for meta in ([], ["--meta"]):
        out = tmp_path / f"out{len(meta)}"
        result = CliRunner().invoke(app, ["explain", "--model", str(folder), "--out", str(out),
                                          "--method", "gradient", *meta, str(tmp_path / "cat.png")])
        assert result.exit_code == 0, result.output
        maps[bool(meta)] = np.load(out / "cat.gradient.npy")
    assert np.isfinite(maps[True]).all()
    assert np.abs(maps[True] - maps[False]).max() > 1e-3 * np.abs(maps[False]).max()


@pytest.mark.slow
def test_float16_backward_own_error_against_the_rounded_weights_model(tmp_path, monkeypatch):
    """The float16 model's input gradient against our float32 backward of the float32 model with
    its weights rounded to float16: isolates the error of float16 execution (forward and
    backward) from that of the weights' rounding. Measured (4 photos, this CPU): 1 - cosine
    <= 2e-6, while both are at cosine 0.982-0.991 to the float32 model: the weights' rounding
    alone sets the gap to 0.99."""
    from onnxconverter_common import float16

    from swag_onnx import images as imgs

    monkeypatch.setenv("SWAG_ONNX_CACHE", str(tmp_path / "cache"))
    src, card, photos = _default_batch()
    model = onnx.load(src)
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    for t in rounded.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            value = numpy_helper.to_array(t).astype(np.float16).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(value, t.name))
    onnx.save(rounded, tmp_path / "rounded.onnx")
    onnx.save(float16.convert_float_to_float16(model), tmp_path / "half.onnx")
    batch, _ = imgs.batch_preprocess(photos, card)
    zero = np.zeros((len(photos), 1000), np.float32)
    half = ModelRunner(tmp_path / "half.onnx").gradients(batch, zero).input_grad
    ours32 = ModelRunner(tmp_path / "rounded.onnx").gradients(batch, zero).input_grad
    assert all(1 - _cosine(a, b) < 1e-4 for a, b in zip(half, ours32))


@pytest.mark.parametrize("op, base", [("QAttention", "Attention"),
                                      ("DynamicQuantizeLSTM", "LSTM"),
                                      ("QEmbedLayerNormalization", "EmbedLayerNormalization")])
def test_quantised_contrib_ops_name_the_qdq_alternative(op, base):
    from swag_onnx.graph.analysis import unsupported_nodes
    from swag_onnx.graph.emitter import Node

    node = Node(op, "q0", ("x",), ("y",), {}, "com.microsoft")
    problem, = unsupported_nodes([node], facts=None)
    assert problem.startswith(f"{op} (q0): custom domain 'com.microsoft'; quantise with ")
    assert "QuantFormat.QDQ" in problem and f"leave {base} out of op_types_to_quantize" in problem
