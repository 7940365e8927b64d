"""Input-gradient saliency: plain gradient, gradient x input, integrated gradients, SmoothGrad.

Every method explains ONE input ``x`` (any layout, e.g. (C, H, W) or (H, W, C); only
``saliency_map`` needs to know which axis holds the channels) and reaches the model only through

    grad_fn(batch) -> (scores (N,), grads (N, *x.shape))

where ``batch`` has shape (N, *x.shape) and dtype of ``x``, ``scores[i]`` is the target score
S_c(batch[i]) of a class fixed by the caller, and ``grads[i]`` is dS_c / d batch[i]. The caller
(``swag_onnx.explain``) builds it from onnxruntime; this module never imports a runtime.

Attributions have the shape of ``x`` and dtype ``result_type(x, float32)``; sums along paths and
over noise samples are accumulated in float64. Memory is bounded by ``batch_size`` inputs per call
of ``grad_fn``, whatever ``steps`` / ``samples``.

Methods:

- ``gradient``: dS_c/dx (Simonyan et al., 2014), one call.
- ``gradient_x_input``: (x - baseline) * dS_c/dx (Shrikumar et al., 2016).
- ``integrated_gradients``: (x - b) * integral_0^1 dS_c/dx (b + a (x - b)) da (Sundararajan et al.,
  2017) by the trapezoid rule; completeness says sum(attr) = S_c(x) - S_c(b) up to the
  quadrature error (exact for a linear model).
- ``smoothgrad``: mean gradient over Gaussian-noised copies of x (Smilkov et al., 2017).

The registry entries (swag_onnx.methods.registry) at the end of the module reduce each
attribution to an (H, W) map with ``saliency_map``.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable

import numpy as np

from swag_onnx.methods.registry import Inputs, Output, method
from swag_onnx.validation import BATCH, SEED, Choice, Int, Number, require

GradFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

REDUCES = ("max_abs", "sum", "l2", "sum_abs")


# ---------------------------------------------------------------------------------------------
# grad_fn plumbing
# ---------------------------------------------------------------------------------------------


def _as_input(x: Any) -> np.ndarray:
    """``x`` as a floating array (integers become float32)."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return x


def _out_dtype(x: np.ndarray) -> np.dtype:
    return np.result_type(x.dtype, np.float32)


def _as_baseline(baseline: Any, x: np.ndarray) -> np.ndarray:
    """A baseline (scalar or array broadcastable to x) as a float64 array of x's shape."""
    try:
        b = np.broadcast_to(np.asarray(baseline, dtype=np.float64), x.shape)
    except (TypeError, ValueError):
        raise ValueError(
            f"baseline must be a number or an array broadcastable to {x.shape}, got "
            f"{type(baseline).__name__} {np.shape(baseline)}"
        ) from None
    if not np.all(np.isfinite(b)):
        raise ValueError("baseline must be finite")
    return b


def _call(grad_fn: GradFn, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Call ``grad_fn`` and check its answer: scores (N,) and grads (N, *x.shape), as float64."""
    scores, grads = grad_fn(batch)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    grads = np.asarray(grads, dtype=np.float64)
    if scores.shape != (len(batch),) or grads.shape != batch.shape:
        raise ValueError(
            f"grad_fn returned scores {scores.shape} and grads {grads.shape} for a batch "
            f"{batch.shape}; expected ({len(batch)},) and {batch.shape}"
        )
    return scores, grads


# ---------------------------------------------------------------------------------------------
# Channel reduction
# ---------------------------------------------------------------------------------------------


def saliency_map(attribution: np.ndarray, channel_axis: int, reduce: str = "max_abs") -> np.ndarray:
    """Reduce an attribution (3-D, channels on ``channel_axis``) to an (H, W) map.

    - ``"max_abs"``: max over channels of |a| (Simonyan et al., 2014; the default).
    - ``"sum"``: signed sum over channels.
    - ``"sum_abs"``: sum over channels of |a|.
    - ``"l2"``: Euclidean norm over channels.
    """
    require(Choice(REDUCES), "reduce", reduce)
    require(Int(-3, 2), "channel_axis", channel_axis)
    a = np.asarray(attribution)
    if a.ndim != 3:
        raise ValueError(f"attribution must have 3 dimensions, got shape {a.shape}")
    if reduce == "max_abs":
        return np.abs(a).max(axis=channel_axis)
    if reduce == "sum":
        return a.sum(axis=channel_axis)
    if reduce == "sum_abs":
        return np.abs(a).sum(axis=channel_axis)
    return np.sqrt(np.square(a).sum(axis=channel_axis))


# ---------------------------------------------------------------------------------------------
# Gradient, gradient x input
# ---------------------------------------------------------------------------------------------


def gradient(x: np.ndarray, grad_fn: GradFn) -> np.ndarray:
    """dS_c/dx at ``x``: one call of ``grad_fn``. Returns an array shaped like ``x``."""
    x = _as_input(x)
    _, grads = _call(grad_fn, x[None])
    return grads[0].astype(_out_dtype(x))


def gradient_x_input(x: np.ndarray, grad_fn: GradFn, baseline: Any = 0.0) -> np.ndarray:
    """(x - baseline) * dS_c/dx at ``x`` (baseline: number or array broadcastable to x)."""
    x = _as_input(x)
    b = _as_baseline(baseline, x)
    _, grads = _call(grad_fn, x[None])
    return ((x.astype(np.float64) - b) * grads[0]).astype(_out_dtype(x))


# ---------------------------------------------------------------------------------------------
# Integrated gradients
# ---------------------------------------------------------------------------------------------


def ig_quadrature(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alphas`` in [0, 1] and weights (summing to 1) of the IG path integral, (steps,)
    each: the composite trapezoid rule on ``steps`` >= 2 equally spaced nodes 0, 1/(steps-1),
    ..., 1 (error O(1/steps^2) for smooth models; the ends give S_c(baseline) and S_c(x) for
    free). captum's "riemann_trapezoid" uses the same nodes but weights 1/steps (ends halved),
    which sum to (steps-1)/steps: its attributions are ours times (steps-1)/steps.
    """
    steps = require(Int(2), "steps", steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2.0
    return np.linspace(0.0, 1.0, steps), weights


def _ig_one(
    x: np.ndarray, grad_fn: GradFn, b: np.ndarray, alphas: np.ndarray, weights: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, dict[str, float]]:
    """IG from one baseline ``b`` (float64, x's shape): attribution (float64) and the scores at
    both ends (the trapezoid rule's first and last nodes), for completeness."""
    x64 = x.astype(np.float64)
    diff = x64 - b
    total = np.zeros(x.shape, dtype=np.float64)
    scores = np.empty(len(alphas), dtype=np.float64)
    expand = (slice(None),) + (None,) * x.ndim
    for start in range(0, len(alphas), batch_size):
        a = alphas[start:start + batch_size]
        batch = (b[None] + a[expand] * diff[None]).astype(x.dtype)
        s, g = _call(grad_fn, batch)
        scores[start:start + batch_size] = s
        total += np.tensordot(weights[start:start + batch_size], g, axes=1)
    return diff * total, {"score_x": float(scores[-1]), "score_baseline": float(scores[0])}


def _completeness(attribution_sum: float, delta: float) -> float:
    """|sum(attr) - delta| / |delta| (absolute error when delta is 0)."""
    err = abs(attribution_sum - delta)
    return err / abs(delta) if delta != 0.0 else err


def integrated_gradients(
    x: np.ndarray,
    grad_fn: GradFn,
    baseline: Any = None,
    *,
    baselines: list[Any] | None = None,
    steps: int = 64,
    batch_size: int = 16,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Integrated gradients of ``x``: (attribution shaped like x, info).

    attribution = (x - b) * sum_k w_k dS_c/dx(b + alpha_k (x - b)), with nodes / weights from
    ``ig_quadrature(steps)`` (the trapezoid rule on ``steps`` equally spaced points including
    both ends). ``grad_fn`` is called on at most ``batch_size`` path points at a time.

    ``baseline``: a number or an array broadcastable to x (None: zeros). ``baselines``: a list of
    such baselines instead (e.g. XRAI's black and white); the attribution is the mean of the
    per-baseline attributions. Give at most one of the two.

    info: ``attribution_sum`` = sum(attr); ``score_x`` = S_c(x); ``score_baseline`` = S_c(b)
    (mean over baselines); ``delta`` = score_x - score_baseline; ``relative_error`` =
    |attribution_sum - delta| / |delta| (completeness: 0 up to the quadrature error);
    ``per_baseline``: the same keys for each baseline; ``steps``, ``calls``.
    """
    x = _as_input(x)
    if baseline is not None and baselines is not None:
        raise ValueError("give baseline or baselines, not both")
    if baselines is None:
        baselines = [0.0 if baseline is None else baseline]
    elif isinstance(baselines, (str, bytes)) or not hasattr(baselines, "__len__") or (
        len(baselines) == 0
    ):
        raise ValueError("baselines must be a non-empty list of numbers or arrays")
    batch_size = require(BATCH, "batch_size", batch_size)
    alphas, weights = ig_quadrature(steps)
    bs = [_as_baseline(b, x) for b in baselines]

    total = np.zeros(x.shape, dtype=np.float64)
    per_baseline = []
    for b in bs:
        attribution, info = _ig_one(x, grad_fn, b, alphas, weights, batch_size)
        total += attribution
        s = float(attribution.sum())
        delta = info["score_x"] - info["score_baseline"]
        per_baseline.append({
            **info, "attribution_sum": s, "delta": delta,
            "relative_error": _completeness(s, delta),
        })
    attribution = total / len(bs)
    score_x = float(np.mean([p["score_x"] for p in per_baseline]))
    score_b = float(np.mean([p["score_baseline"] for p in per_baseline]))
    s = float(attribution.sum())
    info = {
        "attribution_sum": s,
        "score_x": score_x,
        "score_baseline": score_b,
        "delta": score_x - score_b,
        "relative_error": _completeness(s, score_x - score_b),
        "per_baseline": per_baseline,
        "steps": int(steps),
        "calls": len(bs) * -(-len(alphas) // batch_size),
    }
    return attribution.astype(_out_dtype(x)), info


# ---------------------------------------------------------------------------------------------
# SmoothGrad
# ---------------------------------------------------------------------------------------------


def smoothgrad(
    x: np.ndarray,
    grad_fn: GradFn,
    *,
    samples: int = 50,
    noise: float = 0.15,
    batch_size: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """SmoothGrad: mean gradient over ``samples`` noisy copies x + e, e ~ N(0, sigma^2).

    sigma = ``noise`` * (max(x) - min(x)) (Smilkov et al. recommend 10-20 %). The noise comes
    from ``numpy.random.default_rng(seed)``, drawn in sample order, so the result depends on
    ``seed`` but not on ``batch_size``.
    """
    x = _as_input(x)
    samples = require(Int(1), "samples", samples)
    batch_size = require(BATCH, "batch_size", batch_size)
    noise = require(Number(0.0), "noise", noise)
    seed = require(SEED, "seed", seed)
    x64 = x.astype(np.float64)
    sigma = noise * float(x64.max() - x64.min())
    rng = np.random.default_rng(seed)
    total = np.zeros(x.shape, dtype=np.float64)
    for start in range(0, samples, batch_size):
        n = min(batch_size, samples - start)
        batch = (x64[None] + sigma * rng.standard_normal((n, *x.shape))).astype(x.dtype)
        total += _call(grad_fn, batch)[1].sum(axis=0)
    return (total / samples).astype(_out_dtype(x))


# ---------------------------------------------------------------------------------------------
# Registry entries: each attribution reduced to (H, W) by the max of |.| over the channels
# ---------------------------------------------------------------------------------------------

BATCH_HELP = "inputs per model call (speed and memory only)"


def _map(inputs: Inputs, attribution: np.ndarray) -> np.ndarray:
    return saliency_map(attribution, inputs.channel_axis)


@method("gradient", needs={"input_grad"}, meta=True,
        summary="input gradient, max of |.| over channels",
        reference="Simonyan et al., 2014; captum Saliency: identical")
def _gradient(inputs: Inputs) -> Output:
    return Output(_map(inputs, inputs.input_grad))


@method("gradient-x-input", needs={"input_grad"}, meta=True,
        summary="input gradient times the input, max of |.| over channels",
        reference="Shrikumar et al., 2016; captum InputXGradient: identical")
def _gradient_x_input(inputs: Inputs) -> Output:
    return Output(_map(inputs, inputs.input_grad * inputs.x))


@method("integrated-gradients", needs={"grad_fn"},
        summary="zero baseline, trapezoid rule, batched; max of |.| over channels",
        reference="Sundararajan et al., 2017; captum IntegratedGradients: 1.6e-7 relative")
def _integrated_gradients(
        inputs: Inputs, *,
        steps: Annotated[int, Int(2, 100_000), "integrated-gradients: path steps"] = 64,
        batch_size: Annotated[int, BATCH, BATCH_HELP] = 16,
        baseline: Annotated[float, Number(), "integrated-gradients: baseline value in the "
                            "normalised input space"] = 0.0) -> Output:
    attribution, _ = integrated_gradients(inputs.x, inputs.grad_fn, baseline, steps=steps,
                                          batch_size=batch_size)
    return Output(_map(inputs, attribution))


@method("smoothgrad", needs={"grad_fn"},
        summary="mean gradient over noisy copies; max of |.| over channels",
        reference="Smilkov et al., 2017; reproducibility, zero-noise limit")
def _smoothgrad(
        inputs: Inputs, *,
        samples: Annotated[int, Int(1, 1_000_000), "smoothgrad: noisy samples"] = 50,
        noise: Annotated[float, Number(0.0), "smoothgrad: noise std, fraction of the input "
                         "range"] = 0.15,
        batch_size: Annotated[int, BATCH, BATCH_HELP] = 16,
        seed: Annotated[int, SEED, "random seed"] = 0) -> Output:
    return Output(_map(inputs, smoothgrad(inputs.x, inputs.grad_fn, samples=samples,
                                          noise=noise, batch_size=batch_size, seed=seed)))
