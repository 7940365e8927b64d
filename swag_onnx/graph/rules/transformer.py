"""Gradient rules of ops that transformer exports put on the gradient path: Gelu (opset 20, both
approximations) and Einsum (contractions of any number of operands, the attention products
'bhid,bhjd->bhij' among them).

Einsum: the gradient of operand k is itself an Einsum, of the output gradient and the other
operands, written to operand k's labels. A label of operand k that occurs nowhere else was
summed away; a constant ones operand of its size spreads the gradient back over it. Ellipsis
dimensions may broadcast: the gradient is then summed back to the operand's own shape.
"""

from __future__ import annotations

import math
import string

import numpy as np
from onnx import helper

from swag_onnx.graph.rules import rule

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


def _gelu_check(g, n):
    if n.attrs.get("approximate", "none") not in ("none", "tanh"):
        return f"Gelu with approximate={n.attrs.get('approximate')!r}"
    return None


@rule("Gelu", check=_gelu_check)
def gelu(g, n, dys, needs):
    x = n.inputs[0]
    if n.attrs.get("approximate", "none") == "tanh":
        return [g.op("Mul", dys[0], _gelu_tanh_slope(g, x))]
    # y = x Phi(x): dy/dx = Phi(x) + x phi(x)
    cdf = g.op("Mul", g.op("Add", g.op("Erf", g.op("Mul", x, g.scalar_like(math.sqrt(0.5), x))),
                           g.scalar_like(1.0, x)), g.scalar_like(0.5, x))
    density = g.op("Mul", g.op("Exp", g.op("Mul", g.op("Mul", x, x), g.scalar_like(-0.5, x))),
                   g.scalar_like(1.0 / math.sqrt(2.0 * math.pi), x))
    return [g.op("Mul", dys[0], g.op("Add", cdf, g.op("Mul", x, density)))]


def _gelu_tanh_slope(g, x):
    """d/dx of 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3):
    0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)."""
    square = g.op("Mul", x, x)
    inner = g.op("Add", g.op("Mul", square, g.scalar_like(_TANH_CUBIC, x)), g.scalar_like(1.0, x))
    t = g.op("Tanh", g.op("Mul", g.op("Mul", x, inner), g.scalar_like(_SQRT_2_OVER_PI, x)))
    du = g.op("Add", g.op("Mul", square, g.scalar_like(3 * _TANH_CUBIC * _SQRT_2_OVER_PI, x)),
              g.scalar_like(_SQRT_2_OVER_PI, x))
    sech2 = g.op("Sub", g.scalar_like(1.0, x), g.op("Mul", t, t))
    half = g.scalar_like(0.5, x)
    return g.op("Add", g.op("Mul", g.op("Add", t, g.scalar_like(1.0, x)), half),
                g.op("Mul", g.op("Mul", g.op("Mul", x, sech2), du), half))


# ----- Einsum ------------------------------------------------------------------------------------

def parse_einsum(equation: str, ranks: list[int]) -> tuple[list[str], str, int]:
    """Explicit labels of an Einsum: (one string per operand, the output, ellipsis rank), with
    each '...' replaced by the same run of unused labels (right-aligned, as NumPy
    broadcasts). Raises ValueError on a malformed equation."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"einsum {equation!r} has {len(terms)} operands, the node {len(ranks)}")
    ellipsis_rank = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks)
                         if "..." in t), default=0)
    used = set(equation) - set(".,->")
    spare = [c for c in string.ascii_letters if c not in used][:ellipsis_rank]
    if len(spare) < ellipsis_rank:
        raise ValueError(f"einsum {equation!r}: not enough free labels for its ellipsis")
    explicit = []
    for term, rank in zip(terms, ranks):
        own = rank - len(term.replace("...", ""))
        explicit.append(term.replace("...", "".join(spare[ellipsis_rank - own:])))
    if arrow:
        output = rhs.replace("...", "".join(spare))
    else:  # implicit output: the ellipsis, then the labels used once, in alphabetical order
        counts = "".join(t.replace("...", "") for t in terms)
        output = "".join(spare) + "".join(sorted(c for c in set(counts) if counts.count(c) == 1))
    return explicit, output, ellipsis_rank


def _einsum_labels(g, n):
    ranks = [len(g.shape(x) or ()) for x in n.inputs]
    return parse_einsum(n.attrs["equation"], ranks)


def _einsum_check(g, n):
    if any(g.shape(x) is None for x in n.inputs):
        return "Einsum whose operand ranks are unknown"
    try:
        terms, output, _ = _einsum_labels(g, n)
    except ValueError as exc:
        return str(exc)
    for term in terms + [output]:
        if len(set(term)) != len(term):
            return f"Einsum with a repeated label in one term ({n.attrs['equation']!r}: diagonals)"
    sizes = _label_sizes(g, n, terms)
    for k, term in enumerate(terms):
        others = set(output).union(*(t for j, t in enumerate(terms) if j != k))
        if any(sizes.get(c) is None for c in term if c not in others):
            return "Einsum that sums over a label of non-static size in one operand only"
    return None


def _label_sizes(g, n, terms) -> dict[str, int | None]:
    """Size of each label (the largest static size seen: ellipsis labels may broadcast)."""
    sizes: dict[str, int | None] = {}
    for x, term in zip(n.inputs, terms):
        for label, dim in zip(term, g.shape(x)):
            if dim is not None and (sizes.get(label) or 0) < dim:
                sizes[label] = dim
            sizes.setdefault(label, dim)
    return sizes


@rule("Einsum", check=_einsum_check)
def einsum(g, n, dys, needs):
    terms, output, _ = _einsum_labels(g, n)
    sizes = _label_sizes(g, n, terms)
    grads = []
    for k, (x, term, need) in enumerate(zip(n.inputs, terms, needs)):
        if not need:
            grads.append(None)
            continue
        operands = [dys[0]] + [y for j, y in enumerate(n.inputs) if j != k]
        labels = [output] + [t for j, t in enumerate(terms) if j != k]
        lonely = "".join(c for c in term if c not in "".join(labels))
        if lonely:  # summed in operand k only: spread the gradient back with ones
            dtype = helper.tensor_dtype_to_np_dtype(g.dtype(x) or 1)
            operands.append(g.const(np.ones([sizes[c] for c in lonely]), dtype))
            labels.append(lonely)
        grad = g.op("Einsum", *operands, equation=",".join(labels) + "->" + term)
        grads.append(_sum_broadcast(g, grad, x, term, sizes))
    return grads


def _sum_broadcast(g, grad, x, term, sizes):
    """Sum the gradient over the dims where operand x (labels `term`) has size 1 but the label is
    longer elsewhere (ellipsis broadcasting)."""
    stretched = [i for i, (c, d) in enumerate(zip(term, g.shape(x)))
                 if d == 1 and (sizes.get(c) or 1) != 1]
    return g.reduce_sum(grad, stretched, keepdims=True)


# ----- Where ---------------------------------------------------------------------------------------
# y = Where(c, a, b) (attention masks; onnxruntime's quantiser turns it into QLinearWhere): the
# gradient goes to a where c holds and to b elsewhere, summed down to each operand's shape.

@rule("Where")
def where(g, n, dys, needs):
    condition, a, b = n.inputs[:3]
    y, dy = n.outputs[0], dys[0]
    zero = g.scalar_like(0.0, y)
    grads = [None, None, None]
    if needs[1]:
        grads[1] = g.unbroadcast(g.op("Where", condition, dy, zero), a, y)
    if needs[2]:
        grads[2] = g.unbroadcast(g.op("Where", condition, zero, dy), b, y)
    return grads
