"""Gradient rules of unary element-wise activations: dx = dy * f'(x)."""

from __future__ import annotations

import math

import numpy as np

from swag_onnx.graph.emitter import wiring
from swag_onnx.graph.rules import rule


@rule("Relu")
def relu(g, n, dys, needs):
    y = n.outputs[0]
    if y in g.relu_masks_moved:  # the MaxPool or Concat reading y masks its own dY
        return [dys[0]]
    return [relu_grad(g, dys[0], y)]


def relu_grad(g, dy: str, y: str) -> str:
    """dy * [y > 0] for y = Relu(x) [N, C, ...] (also for y a MaxPool or Concat of Relu
    outputs: see relu_mask_carriers)."""
    if g.blocked(y):
        return g.op("Mul", dy, _inside_mask(g, y, 0.0, None))
    return g.op("Mul", dy, g.mask(g.op("Greater", y, g.scalar_like(0.0, y)), y))


def relu_mask_carriers(nodes, keep: set[str]) -> tuple[set[str], set[str]]:
    """Relu outputs whose gradient mask moves to the node reading them, and the outputs of
    those nodes, whose rules apply the mask [y > 0] to their own dY: a MaxPool whose input is
    a Relu's output, or a Concat of Relu outputs that is read by a MaxPool alone (SqueezeNet's
    fire modules), and any other Concat of Relu outputs (GoogLeNet's inception modules), every
    moved Relu output read by that node alone and none in `keep`.

    Relu commutes with both (a window's maximum is positive exactly when the element it routes
    dY to is; a Concat's parts are its slices), so the moved mask equals the Relu's bit for
    bit. A pool's runs on a map stride**2 times smaller (SqueezeNet's first: 64x55x55, not
    64x111x111); a Concat's runs on the whole map in onnxruntime's blocked layout, which the
    Split of its gradient leaves (GoogLeNet: 4 layout conversions per inception module)."""
    readers, producers = wiring(nodes)

    def alone(name, op):  # produced by `op`, read once, its own gradient not requested
        node = producers.get(name)
        return (node is not None and node.op == op and not node.domain
                and readers.get(name) == 1 and name not in keep)

    def concatenated(node):  # the inputs of a Concat of Relu outputs each read by it alone
        parts = list(node.inputs)
        return parts if all(alone(part, "Relu") for part in parts) else None

    def pooled(node):  # the Relu outputs a MaxPool reads, directly or through a Concat
        x = node.inputs[0]
        if alone(x, "Relu"):
            return [x]
        return concatenated(producers[x]) if alone(x, "Concat") else None

    moved, carriers = set(), set()
    for op, parts_of in (("MaxPool", pooled), ("Concat", concatenated)):  # pools first
        for node in nodes:
            parts = node.op == op and not node.domain and parts_of(node)
            if parts and not moved & set(parts):
                moved.update(parts)
                carriers.add(node.outputs[0])
    return moved, carriers


# Masks of blocked float32 maps. onnxruntime runs convolutions on CPUs in a blocked channel
# layout (NCHWc) and converts a map back (ReorderOutput) for every reader that it cannot run
# blocked: Greater/Less/Cast masks cost three reorders per activation (the activation, its dY,
# and dX back for the next backward Conv), more than the masks themselves. BatchNormalization
# (run as a 1x1 depthwise NCHWc Conv into which a following Add and Relu fuse), Relu, Add and Mul
# stay blocked, so the masks are built from affine maps and Relu alone (see _inside_mask).
_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32
_MAX_SCALE = 2.0 ** 100  # larger scales could overflow S * w in _inside_mask


def affine(g, x, channels: int, scale, bias) -> str:
    """scale * x + bias for x [N, channels, H, W] (scale, bias: numbers or [channels] arrays),
    as a BatchNormalization (mean 0, variance 1, epsilon 0: one rounding of the exact value)
    that onnxruntime runs blocked."""

    def full(v):
        return g.const(np.broadcast_to(np.asarray(v, np.float32), (channels,)))

    return g.op("BatchNormalization", x, full(scale), full(bias), full(0.0), full(1.0),
                epsilon=0.0)


def _inverse_spacing(bound: float, above: bool) -> float:
    """1 / (distance from float32 `bound` to its neighbour above or below), a power of two; for
    bound 0 the smallest normal float32 stands in for the subnormal neighbour."""
    b = np.float32(bound)
    neighbour = np.nextafter(b, np.float32(np.inf if above else -np.inf))
    return 1.0 / max(abs(float(neighbour) - float(b)), _TINY)


def _inside_mask(g, y, lo: float | None, hi: float | None) -> str:
    """1.0 where lo < y < hi, 0.0 where y equals a bound, for y [N, C, H, W] clipped to [lo, hi].

    With B = 1 / (float spacing at a bound b), B |y - b| is 0 at b and >= 1 for every other
    float y (B y is a power-of-two scaling, B b an integer below 2^24 exactly), so
    u = Relu(1 - B (y - lo)) is exactly [y == lo] and 1 - u the one-sided mask. Two-sided:
    w = Relu((1 - B2 (hi - y)) / S + u) with S a power of two >= 2 B2 (hi - lo) is 1 / S at hi,
    >= 1/2 at lo and 0 inside, so Relu(1 - S w) is the mask: three blocked passes. Caveat of
    bound 0 only: subnormal y (0 < |y| < 2^-126) counts as on the bound."""
    channels = g.shape(y)[1]
    if hi is None or lo is None:  # one-sided: u = [y == bound], mask 1 - u
        bound, above = (lo, True) if hi is None else (hi, False)
        step = _inverse_spacing(bound, above) * (1.0 if above else -1.0)  # 1 - B |y - b|
        hit = g.op("Relu", affine(g, y, channels, -step, 1.0 + step * bound))
        return affine(g, hit, channels, -1.0, 1.0)
    b1, b2 = _inverse_spacing(lo, True), _inverse_spacing(hi, False)
    scale = 2.0 ** np.ceil(np.log2(2.0 * b2 * (hi - lo)))
    at_lo = g.op("Relu", affine(g, y, channels, -b1, 1.0 + b1 * lo))
    at_hi = affine(g, y, channels, b2 / scale, (1.0 - b2 * hi) / scale)
    either = g.op("Relu", g.op("Add", at_hi, at_lo))
    return g.op("Relu", affine(g, either, channels, -scale, 1.0))


def _blocked_mask_exact(lo, hi) -> bool:
    """Bounds for which _inside_mask is exact: 0 or normal float32s, lo < hi, scales finite."""
    bounds = [float(b) for b in (lo, hi) if b is not None]
    if not bounds or not all(b == 0.0 or _TINY <= abs(b) < 2.0 ** 100 for b in bounds):
        return False
    if lo is None or hi is None:
        return True
    return lo < hi and 2.0 * _inverse_spacing(hi, False) * (hi - lo) <= _MAX_SCALE


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
    lo, hi = (g.value(n.input(i)) if n.input(i) else n.attrs.get(attr)
              for i, attr in ((1, "min"), (2, "max")))
    lo, hi = (None if b is None else float(np.float32(b)) for b in (lo, hi))
    if g.blocked(x) and _blocked_mask_exact(lo, hi):
        return [g.op("Mul", dys[0], _inside_mask(g, x, lo, hi))] + [None] * (len(n.inputs) - 1)
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


def _strictly_inside_unit(g, h, like):
    """Boolean 0 < h < 1 for h = HardSigmoid(...) (clipped to [0, 1]); like: a forward tensor
    of h's element type (a tensor made here has no recorded type)."""
    return g.op("And", g.op("Greater", h, g.scalar_like(0.0, like)),
                g.op("Less", h, g.scalar_like(1.0, like)))


@rule("HardSigmoid")
def hard_sigmoid(g, n, dys, needs):
    # y = clip(alpha x + beta, 0, 1): dy/dx = alpha strictly inside (0, 1), else 0. Reading y
    # (not alpha x + beta recomputed) costs four passes instead of seven.
    y = n.outputs[0]
    slope = g.op("Where", _strictly_inside_unit(g, y, y), g.scalar_like(n.attrs["alpha"], y),
                 g.scalar_like(0.0, y))
    return [g.op("Mul", dys[0], slope)]


@rule("HardSwish")
def hard_swish(g, n, dys, needs):
    x = n.inputs[0]
    return [hard_swish_grad(g, dys[0], g.op("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5), x)]


def hard_swish_grad(g, dy, h, x):
    """dx of y = x h, h = HardSigmoid(x) = clip(x/6 + 1/2, 0, 1), for x, h, dy [N, C, ...]:
    dy/dx = h + x h' = x/3 + 1/2 = 2h - 1/2 strictly inside (0, 1), else h (0 below -3, 1
    above 3)."""
    if g.blocked(x):
        return g.op("Mul", dy, _blocked_hard_swish_slope(g, h, g.shape(x)[1]))
    inner = g.op("Sub", g.op("Mul", h, g.scalar_like(2.0, x)), g.scalar_like(0.5, x))
    slope = g.op("Where", _strictly_inside_unit(g, h, x), inner, h)
    return g.op("Mul", dy, slope)


def _blocked_hard_swish_slope(g, h, channels: int) -> str:
    """2h - 1/2 where 0 < h < 1, h at h = 0 and h = 1, for h = HardSigmoid(x) [N, C, H, W], from
    ops onnxruntime keeps in its blocked layout (see _inside_mask): (2h - 1/2) + [h = 0] / 2 -
    [h = 1] / 2 with [h = 0] / 2 = Relu(1/2 - 2^125 h) and [h = 1] = Relu(2^24 h + 1 - 2^24),
    exact for every float32 h in [0, 1] (2^24 h is h's integer grid below 1); as there,
    subnormal h count as 0."""
    half_at_lo = g.op("Relu", affine(g, h, channels, -0.5 * _inverse_spacing(0.0, True), 0.5))
    base = g.op("Add", affine(g, h, channels, 2.0, -0.5), half_at_lo)
    step = _inverse_spacing(1.0, False)
    at_hi = g.op("Relu", affine(g, h, channels, step, 1.0 - step))
    return g.op("Add", affine(g, at_hi, channels, -0.5, 0.0), base)


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
