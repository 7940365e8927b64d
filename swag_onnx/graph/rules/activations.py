"""Gradient rules of unary element-wise activations: dx = dy * f'(x)."""

from __future__ import annotations

import math

from swag_onnx.graph.rules import rule


@rule("Relu")
def relu(g, n, dys, needs):
    y = n.outputs[0]
    return [g.op("Mul", dys[0], g.mask(g.op("Greater", y, g.scalar_like(0.0, y)), y))]


@rule("LeakyRelu")
def leaky_relu(g, n, dys, needs):
    y = n.outputs[0]  # sign(y) = sign(x) for alpha > 0; reading y keeps x fused in its Conv
    slope = g.op("Where", g.op("Greater", y, g.scalar_like(0.0, y)),
                 g.scalar_like(1.0, y), g.scalar_like(n.attrs["alpha"], y))
    return [g.op("Mul", dys[0], slope)]


def _clip_bound_is_constant(g, n):
    for i in (1, 2):
        if n.input(i) and g.value(n.input(i)) is None:
            return "Clip with a computed (non-constant) min or max"
    return None


@rule("Clip", check=_clip_bound_is_constant)
def clip(g, n, dys, needs):
    # Gradient flows strictly inside (min, max), as in torch's hardtanh / clamp backward.
    # lo < x < hi exactly when lo < y < hi, and reading y (not x) lets onnxruntime keep
    # Conv + Clip fused: the pre-activation is never materialised.
    x = n.outputs[0]
    inside = None
    for i, (attr, cmp) in enumerate((("min", "Greater"), ("max", "Less")), start=1):
        bound = g.value(n.input(i)) if n.input(i) else n.attrs.get(attr)
        if bound is None:
            continue
        cond = g.op(cmp, x, g.scalar_like(float(bound), x))
        inside = cond if inside is None else g.op("And", inside, cond)
    grads = [dys[0] if inside is None else g.op("Mul", dys[0], g.mask(inside, x))]
    return grads + [None] * (len(n.inputs) - 1)


@rule("Sigmoid")
def sigmoid(g, n, dys, needs):
    y = n.outputs[0]
    one_minus = g.op("Sub", g.scalar_like(1.0, y), y)
    return [g.op("Mul", dys[0], g.op("Mul", y, one_minus))]


def _hard_sigmoid_slope(g, x, alpha, beta):
    """alpha where 0 < alpha * x + beta < 1, else 0."""
    z = g.op("Add", g.op("Mul", x, g.scalar_like(alpha, x)), g.scalar_like(beta, x))
    inside = g.op("And", g.op("Greater", z, g.scalar_like(0.0, x)),
                  g.op("Less", z, g.scalar_like(1.0, x)))
    return g.op("Mul", g.mask(inside, x), g.scalar_like(alpha, x)), z


@rule("HardSigmoid")
def hard_sigmoid(g, n, dys, needs):
    slope, _ = _hard_sigmoid_slope(g, n.inputs[0], n.attrs["alpha"], n.attrs["beta"])
    return [g.op("Mul", dys[0], slope)]


@rule("HardSwish")
def hard_swish(g, n, dys, needs):
    # y = x * hs(x), hs = clip(x/6 + 1/2, 0, 1); dy/dx = hs(x) + x * hs'(x)
    x = n.inputs[0]
    slope, z = _hard_sigmoid_slope(g, x, 1.0 / 6.0, 0.5)
    hs = g.op("Clip", z, g.scalar_like(0.0, x), g.scalar_like(1.0, x))
    return [g.op("Mul", dys[0], g.op("Add", hs, g.op("Mul", x, slope)))]


@rule("Tanh")
def tanh(g, n, dys, needs):
    y = n.outputs[0]
    return [g.op("Mul", dys[0], g.op("Sub", g.scalar_like(1.0, y), g.op("Mul", y, y)))]


@rule("Erf")
def erf(g, n, dys, needs):
    x = n.inputs[0]
    gauss = g.op("Exp", g.op("Neg", g.op("Mul", x, x)))
    return [g.op("Mul", dys[0], g.op("Mul", gauss, g.scalar_like(2.0 / math.sqrt(math.pi), x)))]


@rule("Exp")
def exp(g, n, dys, needs):
    return [g.op("Mul", dys[0], n.outputs[0])]


@rule("Log")
def log(g, n, dys, needs):
    return [g.op("Div", dys[0], n.inputs[0])]


@rule("Sqrt")
def sqrt(g, n, dys, needs):
    y = n.outputs[0]
    return [g.op("Div", dys[0], g.op("Mul", y, g.scalar_like(2.0, y)))]


@rule("Neg")
def neg(g, n, dys, needs):
    return [g.op("Neg", dys[0])]


@rule("Identity", "Dropout")
def identity(g, n, dys, needs):
    # Dropout in inference is the identity; its mask output and ratio inputs carry no gradient.
    return [dys[0]] + [None] * (len(n.inputs) - 1)


@rule("Cast")
def cast(g, n, dys, needs):
    return [g.op("Cast", dys[0], to=g.dtype(n.inputs[0]))]


@rule("Reciprocal")
def reciprocal(g, n, dys, needs):
    # y = 1 / x: dx = -dy * y^2 (tf2onnx writes rsqrt, in LayerNormalization, as Reciprocal(Sqrt))
    y = n.outputs[0]
    return [g.op("Neg", g.op("Mul", dys[0], g.op("Mul", y, y)))]


def _positive(g, x):
    """Boolean x > 0."""
    return g.op("Greater", x, g.scalar_like(0.0, x))


@rule("Elu")
def elu(g, n, dys, needs):
    # y = x (x > 0), alpha (exp(x) - 1) otherwise: dy/dx = 1, or y + alpha
    x, y = n.inputs[0], n.outputs[0]
    slope = g.op("Where", _positive(g, x), g.scalar_like(1.0, y),
                 g.op("Add", y, g.scalar_like(n.attrs["alpha"], y)))
    return [g.op("Mul", dys[0], slope)]


@rule("Selu")
def selu(g, n, dys, needs):
    # y = gamma x (x > 0), gamma alpha (exp(x) - 1) otherwise: dy/dx = gamma, or y + gamma alpha
    x, y = n.inputs[0], n.outputs[0]
    gamma, alpha = n.attrs["gamma"], n.attrs["alpha"]
    slope = g.op("Where", _positive(g, x), g.scalar_like(gamma, y),
                 g.op("Add", y, g.scalar_like(gamma * alpha, y)))
    return [g.op("Mul", dys[0], slope)]


@rule("Softplus")
def softplus(g, n, dys, needs):
    # y = log(1 + exp(x)): dy/dx = sigmoid(x)
    return [g.op("Mul", dys[0], g.op("Sigmoid", n.inputs[0]))]
