"""Registry of gradient rules: op type -> rule, one rule per op.

A rule is `rule(g, node, dys, needs) -> grads`: `g` is the Emitter, `node` the forward Node,
`dys[i]` the gradient name of output i (None if nothing flows back), `needs[i]` whether input i
needs a gradient. It returns one entry per input: a gradient name or None. An optional `check`
returns a reason string when a node's configuration is not supported (so every problem in a
model can be reported at once, before anything is emitted).

Ops in NON_DIFFERENTIABLE pass no gradient (shape arithmetic, comparisons, constants).
"""

from __future__ import annotations

from typing import Callable

RULES: dict[str, Callable] = {}
CHECKS: dict[str, Callable] = {}

NON_DIFFERENTIABLE = frozenset({
    "Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero", "ArgMax", "ArgMin",
    "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
    "IsNaN", "IsInf", "Floor", "Ceil", "Round", "Sign", "EyeLike", "RandomNormal",
    "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli",
})


def rule(*op_types: str, check: Callable | None = None):
    """Register the decorated function as the gradient rule of `op_types`."""

    def register(fn: Callable) -> Callable:
        for op_type in op_types:
            RULES[op_type] = fn
            if check is not None:
                CHECKS[op_type] = check
        return fn

    return register


def supported_ops() -> list[str]:
    return sorted(RULES)


# Importing the rule modules fills the registry.
from swag_onnx.graph.rules import (  # noqa: E402,F401
    activations, arithmetic, conv, normalization, pooling, quantization, resampling, tensor_ops,
    transformer,
)
from swag_onnx.graph.rules.quantization import INTEGER_OUTPUTS, INTEGER_PASSTHROUGH  # noqa: E402,F401
