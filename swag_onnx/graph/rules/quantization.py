"""Gradient rules of quantisation: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.

An integer tensor on the gradient path stands for the real value it dequantises to,
(q - zero_point) * scale; its gradient is expressed in those real units. So:
- DequantizeLinear passes the gradient through unchanged;
- QuantizeLinear (and DynamicQuantizeLinear, output 0) is the straight-through estimator with
  the clipping mask: dx = dy where round(x / scale) + zero_point lies inside the integer range,
  0 where it saturates. A QuantizeLinear -> DequantizeLinear pair then has exactly the backward
  of torch.fake_quantize_per_tensor_affine / fake_quantize_per_channel_affine.
Scales and zero points are constants of the rounding (no gradient), as in torch's fake-quant;
DynamicQuantizeLinear's scale and zero point outputs carry none either (INTEGER_OUTPUTS).
"""

from __future__ import annotations

import numpy as np
import onnx

from swag_onnx.graph.rules import rule

# Integer ranges of the quantised types (the zero point's type, uint8 when it is absent).
RANGES = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127),
          onnx.TensorProto.UINT16: (0, 65535), onnx.TensorProto.INT16: (-32768, 32767),
          onnx.TensorProto.UINT4: (0, 15), onnx.TensorProto.INT4: (-8, 7)}

# Outputs (by op) whose integer values stand for dequantised reals, so the gradient path goes on
# through them; the other outputs of these ops carry no gradient, float or not.
INTEGER_OUTPUTS = {"QuantizeLinear": (0,), "DynamicQuantizeLinear": (0,)}
# Ops that only move data: on an integer tensor that stands for dequantised reals, their integer
# output stands for the moved reals (same scale and zero point), and their float rules apply.
INTEGER_PASSTHROUGH = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
                                 "Identity", "Slice"})


def _integer_type(g, n) -> int | None:
    """The quantised element type: the output's, else the zero point's, else uint8."""
    return g.dtype(n.outputs[0]) or (g.dtype(n.input(2)) if n.input(2) else None) \
        or onnx.TensorProto.UINT8


def _quantize_check(g, n):
    if n.attrs.get("block_size", 0):
        return "QuantizeLinear with block_size (blocked quantisation)"
    if _integer_type(g, n) not in RANGES:
        name = onnx.TensorProto.DataType.Name(_integer_type(g, n))
        return f"QuantizeLinear to {name} (only integer types have a rule)"
    if g.shape(n.inputs[0]) is None:
        return "QuantizeLinear whose input rank is unknown"
    return None


def _per_axis(g, param, x, axis):
    """A scale or zero point broadcast against x: a 1-D per-axis parameter reshaped to
    [C, 1, ..., 1] from `axis` on; a scalar as it is."""
    shape = g.shape(param)
    if not shape or int(np.prod(shape)) == 1 and len(shape) <= 1:
        return param
    rank = g.rank(x)
    return g.op("Reshape", param, g.ints([-1] + [1] * (rank - 1 - axis % rank)))


def inside_range(g, x, scale, zero_point, int_type, axis=1):
    """Boolean: round(x / scale) + zero_point within the integer range of `int_type` (the
    values that do not saturate). x float; scale (and zero_point, '' if absent) scalar or
    per-axis along `axis`."""
    v = g.op("Div", x, _per_axis(g, scale, x, axis))
    bounds = _rounding_bounds(g, x, zero_point, int_type, axis)
    if bounds is not None:
        low, high = bounds
        return g.op("And", g.op("GreaterOrEqual", v, low), g.op("LessOrEqual", v, high))
    q = g.op("Round", v)
    if zero_point:
        zp = g.op("Cast", _per_axis(g, zero_point, x, axis), to=g.dtype(x) or 1)
        q = g.op("Add", q, zp)
    low, high = RANGES[int_type]
    return g.op("And", g.op("GreaterOrEqual", q, g.scalar_like(float(low), x)),
                g.op("LessOrEqual", q, g.scalar_like(float(high), x)))


def _rounding_bounds(g, x, zero_point, int_type, axis):
    """Constants (lo, hi) with lo <= v <= hi exactly when low <= round(v) + zero_point <= high,
    for v = x / scale (round: half to even, as ONNX's Round and QuantizeLinear), shaped to
    broadcast against v; None unless x is float32 or float64 and the zero point a constant
    (inside_range then keeps its Round route). Two compares of v replace Round, the zero
    point's Add and two compares (61 quantisers in the default model's int8 QDQ form).
    round(v) >= a exactly when v > a - 1/2, or v = a - 1/2 with a even; so lo is a - 1/2 for
    even a = low - zero_point, else the next float up (and hi likewise, with b + 1/2 and the
    next float down). a +- 1/2 is exact in float32 for every integer range."""
    dtype = np.dtype(g.np_dtype(x)).type
    zero = g.value(zero_point) if zero_point else np.zeros((), np.int64)
    if dtype not in (np.float32, np.float64) or zero is None:
        return None
    zero = np.asarray(zero, np.int64)
    low, high = RANGES[int_type]
    a, b = low - zero, high - zero
    lo = np.where(a % 2 == 0, a - 0.5, np.nextafter((a - 0.5).astype(dtype), dtype(np.inf)))
    hi = np.where(b % 2 == 0, b + 0.5, np.nextafter((b + 0.5).astype(dtype), dtype(-np.inf)))
    if zero.size > 1:  # per axis: [C, 1, ..., 1] against v
        shape = [-1] + [1] * (g.rank(x) - 1 - axis % g.rank(x))
        lo, hi = lo.reshape(shape), hi.reshape(shape)
    return g.const(lo.astype(dtype), dtype), g.const(hi.astype(dtype), dtype)


@rule("QuantizeLinear", check=_quantize_check)
def quantize_linear(g, n, dys, needs):
    x = n.inputs[0]
    inside = inside_range(g, x, n.inputs[1], n.input(2), _integer_type(g, n),
                          n.attrs.get("axis", 1))
    return [g.op("Mul", dys[0], g.mask(inside, x))] + [None] * (len(n.inputs) - 1)


@rule("DequantizeLinear")
def dequantize_linear(g, n, dys, needs):
    return [dys[0]] + [None] * (len(n.inputs) - 1)


@rule("DynamicQuantizeLinear")
def dynamic_quantize_linear(g, n, dys, needs):
    # y = saturate(round(x / y_scale) + y_zero_point) to uint8, with scale and zero point
    # computed from x's range (constants of the rounding, as in fake-quant)
    x, (_, scale, zero_point) = n.inputs[0], n.outputs
    if dys[0] is None:
        return [None]
    inside = inside_range(g, x, scale, zero_point, onnx.TensorProto.UINT8)
    return [g.op("Mul", dys[0], g.mask(inside, x))]


# ----- QOperator and integer ops as their QDQ equivalent -------------------------------------
# QLinearConv, QLinearAdd, ... compute on integer tensors inside one kernel, so the float values
# a gradient rule reads (the pre-quantisation output that decides saturation) are never there.
# `as_qdq` rewrites each such node into DequantizeLinear on its inputs, the float op, and
# QuantizeLinear on its output (same output name and type): the QDQ computation the operator
# stands for, whose gradient the rules above and the float op's rule give. ConvInteger and
# MatMulInteger become the float op on the zero-point-shifted integers; their int32 output turns
# float (the Cast after it, to float, then casts float to float).

MS = "com.microsoft"
# op -> (float op, [(input index of x, its scale, its zero point, DequantizeLinear axis)],
#        (output scale index, output zero point index) or None, attributes passed on)
_POOL_ATTRS = ("auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides")
_QOPS = {
    ("", "QLinearConv"): ("Conv", [(0, 1, 2, 1), (3, 4, 5, 0)], (6, 7),
                          ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")),
    ("", "QLinearMatMul"): ("MatMul", [(0, 1, 2, -2), (3, 4, 5, -1)], (6, 7), ()),
    (MS, "QLinearAdd"): ("Add", [(0, 1, 2, 1), (3, 4, 5, 1)], (6, 7), ()),
    (MS, "QLinearMul"): ("Mul", [(0, 1, 2, 1), (3, 4, 5, 1)], (6, 7), ()),
    (MS, "QLinearSigmoid"): ("Sigmoid", [(0, 1, 2, 1)], (3, 4), ()),
    (MS, "QLinearLeakyRelu"): ("LeakyRelu", [(0, 1, 2, 1)], (3, 4), ("alpha",)),
    (MS, "QLinearGlobalAveragePool"): ("GlobalAveragePool", [(0, 1, 2, 1)], (3, 4), ()),
    (MS, "QLinearAveragePool"): ("AveragePool", [(0, 1, 2, 1)], (3, 4), _POOL_ATTRS),
    (MS, "QLinearSoftmax"): ("Softmax", [(0, 1, 2, 1)], (3, 4), ("axis",)),
    (MS, "QLinearWhere"): ("Where", [(1, 2, 3, 1), (4, 5, 6, 1)], (7, 8), ()),
}
QOPERATOR_OPS = sorted([op for _, op in _QOPS] + ["QLinearConcat", "QGemm", "ConvInteger",
                                                  "MatMulInteger"])


class _Rewriter:
    """Builds the replacement nodes of one model (fresh tensor names, constants)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.taken = {o for n in model.graph.node for o in n.output} \
            | {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
        self.inits = {t.name: t for t in model.graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self.retyped: set[str] = set()  # outputs whose element type changed (int32 -> float)
        self.producers = {o: n for n in model.graph.node for o in n.output}
        self.opset = next((i.version for i in model.opset_import
                           if i.domain in ("", "ai.onnx")), 13)

    def quantiser_scale(self, x: str) -> str:
        """The scale of the (Dynamic)QuantizeLinear that made x (a per-tensor scale), or ''."""
        node = self.producers.get(x)
        if node is not None and node.op_type == "DynamicQuantizeLinear":
            return node.output[1]
        if node is not None and node.op_type == "QuantizeLinear":
            init = self.inits.get(node.input[1])
            if init is None or int(np.prod(init.dims)) == 1:
                return node.input[1]
        return ""

    def fresh(self, hint: str) -> str:
        name, k = hint, 0
        while name in self.taken:
            k += 1
            name = f"{hint}/{k}"
        self.taken.add(name)
        return name

    def add(self, op, inputs, output=None, hint="t", **attrs) -> str:
        output = output or self.fresh(hint)
        self.nodes.append(onnx.helper.make_node(op, list(inputs), [output],
                                                name=self.fresh(f"{hint}/{op}_node"), **attrs))
        return output

    def const(self, value, hint) -> str:
        name = self.fresh(hint)
        self.model.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def dequantize(self, x, scale, zero_point, axis) -> str:
        inputs = [x, scale] + ([zero_point] if zero_point else [])
        return self.add("DequantizeLinear", inputs, hint=x + "/dequantized", axis=axis)


def as_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every QOperator / integer node (QOPERATOR_OPS) replaced by its
    QDQ equivalent, then every DequantizeLinear of constants (the quantised weights and biases)
    folded into a float initializer of the same name; the model itself when it has neither."""
    if not any(n.op_type in QOPERATOR_OPS for n in model.graph.node):
        return fold_constant_dequantize(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    r = _Rewriter(copy)
    kept = []
    for node in copy.graph.node:
        rewrite = _rewrite_for(node)
        if rewrite is None:
            kept.append(node)
            continue
        r.nodes = []
        rewrite(r, node)
        kept.extend(r.nodes)
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    stale = [vi for vi in copy.graph.value_info if vi.name not in r.retyped]
    del copy.graph.value_info[:]
    copy.graph.value_info.extend(stale)
    return fold_constant_dequantize(copy)


def fold_constant_dequantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each DequantizeLinear whose inputs are all initializers replaced by its float
    value, (q - zero_point) * scale in the scale's type as onnxruntime computes it: quantised
    weights become float parameters, which meta-saliency's SGD step updates (in float: rounding
    the step back to the integer grid would undo nearly all of it). The forward values are
    unchanged. A copy when anything is folded, else the model itself."""
    inits = {t.name: t for t in model.graph.initializer}
    foldable = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                and n.input and all(i in inits for i in n.input if i)
                and not _attrs(n, ("block_size",)).get("block_size")]
    if not foldable:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    folded = {n.output[0] for n in foldable}
    kept = [n for n in copy.graph.node if not (n.op_type == "DequantizeLinear"
                                               and n.output[0] in folded)]
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    for node in foldable:
        copy.graph.initializer.append(onnx.numpy_helper.from_array(
            _dequantized(node, inits), node.output[0]))
    used = {i for n in copy.graph.node for i in n.input} | {o.name for o in copy.graph.output}
    unused = [t for t in copy.graph.initializer if t.name not in used]
    for t in unused:
        copy.graph.initializer.remove(t)
    stale = [vi for vi in copy.graph.value_info if vi.name not in folded]
    del copy.graph.value_info[:]
    copy.graph.value_info.extend(stale)
    return copy


def _dequantized(node, inits) -> np.ndarray:
    """The value of DequantizeLinear(q, scale[, zero_point]) on initializers."""
    q = onnx.numpy_helper.to_array(inits[node.input[0]]).astype(np.int64)
    scale = onnx.numpy_helper.to_array(inits[node.input[1]])
    zero = (onnx.numpy_helper.to_array(inits[node.input[2]]).astype(np.int64)
            if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, np.int64))
    if scale.size > 1:  # per axis
        axis = _attrs(node, ("axis",)).get("axis", 1) % q.ndim
        shape = [-1 if a == axis else 1 for a in range(q.ndim)]
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero).astype(scale.dtype) * scale).astype(scale.dtype)


def _rewrite_for(node: onnx.NodeProto):
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    if (domain, node.op_type) in _QOPS:
        return _rewrite_qlinear
    return {("", "ConvInteger"): _rewrite_integer, ("", "MatMulInteger"): _rewrite_integer,
            (MS, "QLinearConcat"): _rewrite_concat, (MS, "QGemm"): _rewrite_qgemm}.get(
        (domain, node.op_type))


def _attrs(node, names) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name in names}


def _quantize_output(r, node, value, scale_index, zero_point_index):
    inputs = [value, node.input[scale_index]]
    if len(node.input) > zero_point_index and node.input[zero_point_index]:
        inputs.append(node.input[zero_point_index])
    r.add("QuantizeLinear", inputs, output=node.output[0], hint=node.output[0])


def _rewrite_qlinear(r, node):
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    float_op, operands, (ys, yz), names = _QOPS[(domain, node.op_type)]
    floats = [r.dequantize(node.input[x], node.input[s], node.input[z], axis)
              for x, s, z, axis in operands]
    if float_op == "Conv" and len(node.input) > 8 and node.input[8]:  # int32 bias, zero point 0,
        bias_scale = r.add("Mul", [node.input[1], node.input[4]], hint=node.input[8])  # x_s w_s
        floats.append(r.add("DequantizeLinear", [node.input[8], bias_scale], hint=node.input[8],
                            axis=0))
    attrs = _attrs(node, names)
    if _attrs(node, ("channels_last",)).get("channels_last"):
        raise_unsupported(node, "channels_last=1")
    if float_op == "Softmax":
        _check_softmax_opset(r, node, attrs)
    if float_op == "Where":  # the condition is not quantised
        floats.insert(0, node.input[0])
    value = r.add(float_op, floats, hint=node.output[0] + "/float", **attrs)
    _quantize_output(r, node, value, ys, yz)


def _check_softmax_opset(r, node, attrs):
    """QLinearSoftmax's `opset` attribute picks Softmax's semantics (before 13: over the
    flattened axes from `axis` on; from 13: over `axis` alone); the float Softmax takes the
    model's. They agree on the last axis only."""
    own = _attrs(node, ("opset",)).get("opset", r.opset)
    axis = attrs.get("axis", -1 if own >= 13 else 1)
    if (own >= 13) != (r.opset >= 13) and axis != -1:
        raise_unsupported(node, f"opset={own} in a model of opset {r.opset} (axis {axis})")


def raise_unsupported(node, what):
    from swag_onnx.errors import UnsupportedOpsError

    raise UnsupportedOpsError(f"{node.op_type} ({node.name or node.output[0]}) with {what} has no "
                              f"gradient rule; quantise the model in QDQ format instead "
                              f"(onnxruntime.quantization, quant_format=QuantFormat.QDQ)")


def _rewrite_concat(r, node):
    # inputs: Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per operand
    parts = [r.dequantize(node.input[i], node.input[i + 1], node.input[i + 2], 1)
             for i in range(2, len(node.input), 3)]
    value = r.add("Concat", parts, hint=node.output[0], **_attrs(node, ("axis",)))
    _quantize_output(r, node, value, 0, 1)


def _rewrite_qgemm(r, node):
    # A, a_scale, a_zp, B, b_scale, b_zp, C (int32, scale alpha a_scale b_scale), y_scale, y_zp;
    # float output when y_scale is absent
    attrs = _attrs(node, ("alpha", "transA", "transB"))
    b_axis = 0 if attrs.get("transB", 0) else 1
    a = r.dequantize(node.input[0], node.input[1], node.input[2], 1)
    b = r.dequantize(node.input[3], node.input[4], node.input[5], b_axis)
    inputs = [a, b]
    if len(node.input) > 6 and node.input[6]:
        scale = r.add("Mul", [node.input[1], node.input[4]], hint=node.input[6])
        scale = r.add("Mul", [scale, r.const(np.float32(attrs.get("alpha", 1.0)),
                                             node.input[6] + "/alpha")], hint=node.input[6])
        inputs.append(r.add("DequantizeLinear", [node.input[6], scale], hint=node.input[6], axis=0))
    quantized = len(node.input) > 7 and node.input[7]
    value = r.add("Gemm", inputs, output=None if quantized else node.output[0],
                  hint=node.output[0], **attrs)
    if quantized:
        _quantize_output(r, node, value, 7, 8)


def _rewrite_integer(r, node):
    # ConvInteger(x, w, x_zp, w_zp) / MatMulInteger(a, b, a_zp, b_zp) -> int32: the float op on
    # (x - x_zp) and (w - w_zp), exact while the sums stay below 2^24. An operand made by a
    # quantiser is dequantised with its scale s (so that its gradient is in real units, as
    # everywhere on the path) and the result divided by s again.
    conv = node.op_type == "ConvInteger"
    shifted, scales = [], []
    for i, axis in ((0, 1), (1, 0 if conv else -1)):
        zp = node.input[i + 2] if len(node.input) > i + 2 else ""
        scale = r.quantiser_scale(node.input[i])
        shifted.append(_shift(r, node.input[i], zp, axis, scale))
        scales += [scale] if scale else []
    names = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides") if conv else ()
    value = r.add("Conv" if conv else "MatMul", shifted,
                  output=None if scales else node.output[0], hint=node.output[0] + "/float",
                  **_attrs(node, names))
    for k, scale in enumerate(scales):
        value = r.add("Div", [value, scale], hint=node.output[0] + "/float",
                      output=node.output[0] if k == len(scales) - 1 else None)
    r.retyped.add(node.output[0])


def _shift(r, x, zero_point, axis, scale=""):
    """float(x - zero_point) (times `scale` when given), by DequantizeLinear with unit scales
    shaped like the zero point."""
    if scale:
        return r.dequantize(x, scale, zero_point, axis)
    if not zero_point:
        return r.add("Cast", [x], hint=x, to=onnx.TensorProto.FLOAT)
    zp = r.inits.get(zero_point)
    dims = () if zp is None else tuple(zp.dims)
    per_axis = int(np.prod(dims)) > 1
    ones = r.const(np.ones(dims if per_axis else (), np.float32), x + "/unit_scale")
    zero_point = zero_point if per_axis or not dims else \
        r.add("Reshape", [zero_point, r.const(np.zeros(0, np.int64), x + "/scalar")], hint=x)
    return r.add("DequantizeLinear", [x, ones, zero_point], hint=x, axis=axis)
