"""Gradient rules of broadcasting arithmetic (Add, Sub, Mul, Div, Sum, Max, Min) and products
(MatMul, Gemm)."""

from __future__ import annotations

from swag_onnx.graph.rules import rule


def _back(g, n, grads):
    """Un-broadcast each input gradient to its operand's shape (None stays None)."""
    return [None if d is None else g.unbroadcast(d, x, n.outputs[0])
            for d, x in zip(grads, n.inputs)]


@rule("Add", "Sum")
def add(g, n, dys, needs):
    return _back(g, n, [dys[0] if need else None for need in needs])


@rule("Sub")
def sub(g, n, dys, needs):
    return _back(g, n, [dys[0] if needs[0] else None,
                        g.op("Neg", dys[0]) if needs[1] else None])


@rule("Mul")
def mul(g, n, dys, needs):
    a, b = n.inputs
    return _back(g, n, [g.op("Mul", dys[0], b) if needs[0] else None,
                        g.op("Mul", dys[0], a) if needs[1] else None])


@rule("Div")
def div(g, n, dys, needs):
    # y = a / b: da = dy / b, db = -dy * y / b
    a, b = n.inputs
    y = n.outputs[0]
    da = g.op("Div", dys[0], b) if needs[0] else None
    db = g.op("Neg", g.op("Div", g.op("Mul", dys[0], y), b)) if needs[1] else None
    return _back(g, n, [da, db])


def _swap_last_two(g, x):
    rank = g.rank(x)
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return g.op("Transpose", x, perm=perm)


def _matmul_check(g, n):
    ranks = [len(g.shape(x) or ()) for x in n.inputs]
    if min(ranks) < 2:
        return "MatMul with a 1-D operand"
    return None


@rule("MatMul", check=_matmul_check)
def matmul(g, n, dys, needs):
    # y = a @ b (batched, broadcasting): da = dy @ b^T, db = a^T @ dy
    a, b = n.inputs
    da = g.op("MatMul", dys[0], _swap_last_two(g, b)) if needs[0] else None
    db = g.op("MatMul", _swap_last_two(g, a), dys[0]) if needs[1] else None
    return _back(g, n, [da, db])


@rule("Gemm")
def gemm(g, n, dys, needs):
    # y = alpha * A' @ B' + beta * C, A' = A^T if transA else A (same for B)
    dy = dys[0]
    alpha, beta = n.attrs["alpha"], n.attrs["beta"]
    trans_a, trans_b = n.attrs["transA"], n.attrs["transB"]
    a, b = n.inputs[:2]
    grads = [None] * len(n.inputs)
    if needs[0]:  # dA' = alpha dy B'^T
        grads[0] = (g.op("Gemm", b, dy, alpha=alpha, transA=trans_b, transB=1) if trans_a
                    else g.op("Gemm", dy, b, alpha=alpha, transB=1 - trans_b))
    if needs[1]:  # dB' = alpha A'^T dy
        grads[1] = (g.op("Gemm", dy, a, alpha=alpha, transA=1, transB=trans_a) if trans_b
                    else g.op("Gemm", a, dy, alpha=alpha, transA=1 - trans_a))
    if len(needs) > 2 and needs[2]:
        scaled = dy if beta == 1.0 else g.op("Mul", dy, g.scalar_like(beta, n.outputs[0]))
        grads[2] = g.unbroadcast(scaled, n.inputs[2], n.outputs[0])
    return grads


@rule("Max", "Min")
def extremum(g, n, dys, needs):
    # y = max (min) of broadcast inputs: the gradient goes to the input that equals y; on ties to
    # the first one (as TensorFlow's Maximum/Minimum, which favour their first operand).
    y = n.outputs[0]
    taken, grads = None, []
    for x, need in zip(n.inputs, needs):
        equal = g.op("Equal", x, y)
        mine = equal if taken is None else g.op("And", equal, g.op("Not", taken))
        taken = equal if taken is None else g.op("Or", taken, equal)
        grads.append(g.op("Mul", dys[0], g.mask(mine, y)) if need else None)
    return _back(g, n, grads)
