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
  2017), a quadrature rule chosen by ``method``; completeness says sum(attr) = S_c(x) - S_c(b)
  up to the quadrature error (exact for a linear model).
- ``smoothgrad``: mean of a gradient method over Gaussian-noised copies of x (Smilkov et al.,
  2017); ``squared=True`` averages the squares (SmoothGrad-Squared, Hooker et al., 2019).

``GRADIENT_METHODS`` maps CLI names to callables ``(x, grad_fn, **params) -> attribution``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import numpy as np

from swag_onnx.errors import BadOptionError

GradFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

REDUCES = ("max_abs", "sum", "l2", "sum_abs")
IG_METHODS = (
    "riemann_trapezoid",
    "riemann_middle",
    "riemann_left",
    "riemann_right",
    "gausslegendre",
)
SMOOTHGRAD_BASES = ("gradient", "gradient_x_input")


# ---------------------------------------------------------------------------------------------
# Option checks and grad_fn plumbing
# ---------------------------------------------------------------------------------------------


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise BadOptionError (one line) unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise BadOptionError(f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def _check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int; BadOptionError unless an integer (not bool) >= minimum."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise BadOptionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise BadOptionError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_number(name: str, value: Any, minimum: float) -> float:
    """``value`` as a float; BadOptionError unless finite and >= minimum."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadOptionError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not np.isfinite(number) or number < minimum:
        raise BadOptionError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return number


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
        raise BadOptionError(
            f"baseline must be a number or an array broadcastable to {x.shape}, got "
            f"{type(baseline).__name__} {np.shape(baseline)}"
        ) from None
    if not np.all(np.isfinite(b)):
        raise BadOptionError("baseline must be finite")
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
    _check_choice("reduce", reduce, REDUCES)
    a = np.asarray(attribution)
    if a.ndim != 3:
        raise ValueError(f"attribution must have 3 dimensions, got shape {a.shape}")
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)) or not (
        -3 <= channel_axis <= 2
    ):
        raise BadOptionError(f"channel_axis must be an axis of a 3-D array, got {channel_axis!r}")
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


def ig_quadrature(steps: int, method: str = "riemann_trapezoid") -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alphas`` in [0, 1] and weights (summing to 1) of the IG path integral, (steps,) each.

    - ``"riemann_trapezoid"`` (default): ``steps`` equally spaced nodes 0, 1/(steps-1), ..., 1,
      weights 1/(steps-1) with both ends halved (the composite trapezoid rule: error O(1/steps^2)
      for smooth models, and the endpoints give S_c(baseline) and S_c(x) for free). Needs
      steps >= 2. Note: captum's "riemann_trapezoid" uses the same nodes but weights 1/steps
      (ends halved), which sum to (steps-1)/steps; its attributions are ours times (steps-1)/steps.
    - ``"riemann_middle"``: nodes (k + 1/2)/steps, weights 1/steps (same as captum).
    - ``"riemann_left"`` / ``"riemann_right"``: nodes k/steps / (k+1)/steps, weights 1/steps.
    - ``"gausslegendre"``: Gauss-Legendre nodes and weights mapped to [0, 1] (same as captum).
    """
    _check_choice("method", method, IG_METHODS)
    steps = _check_int("steps", steps, 2 if method == "riemann_trapezoid" else 1)
    if method == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2.0
    elif method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        alphas, weights = 0.5 * (nodes + 1.0), 0.5 * w
    else:
        offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
        alphas = (np.arange(steps) + offset) / steps
        weights = np.full(steps, 1.0 / steps)
    return alphas, weights


def _ig_one(
    x: np.ndarray, grad_fn: GradFn, b: np.ndarray, alphas: np.ndarray, weights: np.ndarray,
    batch_size: int,
) -> tuple[np.ndarray, dict[str, float]]:
    """IG from one baseline ``b`` (float64, x's shape): attribution (float64) and completeness."""
    # S_c(baseline) and S_c(x) are needed for completeness: evaluate alpha 0 and 1 with weight 0
    # when the rule does not already contain them.
    alphas, weights = list(alphas), list(weights)
    for end in (0.0, 1.0):
        if end not in alphas:
            alphas.append(end)
            weights.append(0.0)
    alphas_a, weights_a = np.asarray(alphas), np.asarray(weights)
    x64 = x.astype(np.float64)
    diff = x64 - b
    total = np.zeros(x.shape, dtype=np.float64)
    scores = np.empty(len(alphas_a), dtype=np.float64)
    expand = (slice(None),) + (None,) * x.ndim
    for start in range(0, len(alphas_a), batch_size):
        a = alphas_a[start:start + batch_size]
        batch = (b[None] + a[expand] * diff[None]).astype(x.dtype)
        s, g = _call(grad_fn, batch)
        scores[start:start + batch_size] = s
        total += np.tensordot(weights_a[start:start + batch_size], g, axes=1)
    attribution = diff * total
    score_x = float(scores[alphas.index(1.0)])
    score_b = float(scores[alphas.index(0.0)])
    return attribution, {"score_x": score_x, "score_baseline": score_b}


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
    method: str = "riemann_trapezoid",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Integrated gradients of ``x``: (attribution shaped like x, info).

    attribution = (x - b) * sum_k w_k dS_c/dx(b + alpha_k (x - b)), with nodes / weights from
    ``ig_quadrature(steps, method)`` (default: trapezoid rule on ``steps`` equally spaced points
    including both ends). ``grad_fn`` is called on at most ``batch_size`` path points at a time
    (plus the points alpha = 0 and 1 if the rule lacks them, for the completeness check).

    ``baseline``: a number or an array broadcastable to x (None: zeros). ``baselines``: a list of
    such baselines instead (e.g. XRAI's black and white); the attribution is the mean of the
    per-baseline attributions. Give at most one of the two.

    info: ``attribution_sum`` = sum(attr); ``score_x`` = S_c(x); ``score_baseline`` = S_c(b)
    (mean over baselines); ``delta`` = score_x - score_baseline; ``relative_error`` =
    |attribution_sum - delta| / |delta| (completeness: 0 up to the quadrature error);
    ``per_baseline``: the same keys for each baseline; ``steps``, ``method``, ``calls``.
    """
    x = _as_input(x)
    if baseline is not None and baselines is not None:
        raise BadOptionError("give baseline or baselines, not both")
    if baselines is None:
        baselines = [0.0 if baseline is None else baseline]
    elif isinstance(baselines, (str, bytes)) or not hasattr(baselines, "__len__") or (
        len(baselines) == 0
    ):
        raise BadOptionError("baselines must be a non-empty list of numbers or arrays")
    batch_size = _check_int("batch_size", batch_size, 1)
    alphas, weights = ig_quadrature(steps, method)
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
    n_points = len(set(alphas.tolist()) | {0.0, 1.0})
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
        "method": method,
        "calls": len(bs) * -(-n_points // batch_size),
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
    base: str = "gradient",
    squared: bool = False,
) -> np.ndarray:
    """SmoothGrad: mean of ``base`` over ``samples`` noisy copies x + e, e ~ N(0, sigma^2).

    sigma = ``noise`` * (max(x) - min(x)) (Smilkov et al. recommend 10-20 %). ``base``:
    ``"gradient"`` (g(x + e)) or ``"gradient_x_input"`` ((x + e) * g(x + e), as captum's
    NoiseTunnel over InputXGradient). ``squared``: mean of the squares (SmoothGrad-Squared).
    The noise comes from ``numpy.random.default_rng(seed)``, drawn in sample order, so the result
    depends on ``seed`` but not on ``batch_size``.
    """
    x = _as_input(x)
    samples = _check_int("samples", samples, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    noise = _check_number("noise", noise, 0.0)
    _check_choice("base", base, SMOOTHGRAD_BASES)
    if not isinstance(squared, (bool, np.bool_)):
        raise BadOptionError(f"squared must be true or false, got {squared!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise BadOptionError(f"seed must be an integer, got {seed!r}")
    x64 = x.astype(np.float64)
    sigma = noise * float(x64.max() - x64.min())
    rng = np.random.default_rng(int(seed))
    total = np.zeros(x.shape, dtype=np.float64)
    for start in range(0, samples, batch_size):
        n = min(batch_size, samples - start)
        batch = (x64[None] + sigma * rng.standard_normal((n, *x.shape))).astype(x.dtype)
        _, g = _call(grad_fn, batch)
        if base == "gradient_x_input":
            g = batch.astype(np.float64) * g
        total += np.square(g).sum(axis=0) if squared else g.sum(axis=0)
    return (total / samples).astype(_out_dtype(x))


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def _ig_attribution(x: np.ndarray, grad_fn: GradFn, **params: Any) -> np.ndarray:
    """``integrated_gradients`` without the info dict."""
    return integrated_gradients(x, grad_fn, **params)[0]


def _uniform(fn: Callable[..., Any], signature_of: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``fn`` as ``(x, grad_fn, **params)``: unknown params raise BadOptionError."""
    allowed = tuple(list(inspect.signature(signature_of).parameters)[2:])

    def method(x: np.ndarray, grad_fn: GradFn, **params: Any) -> np.ndarray:
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise BadOptionError(
                f"unknown option(s) {', '.join(unknown)} for {signature_of.__name__}; "
                f"choose from: {', '.join(allowed) or '(none)'}"
            )
        return fn(x, grad_fn, **params)

    method.__name__ = signature_of.__name__
    method.__doc__ = signature_of.__doc__
    return method


GRADIENT_METHODS: dict[str, Callable[..., np.ndarray]] = {
    "gradient": _uniform(gradient, gradient),
    "gradient-x-input": _uniform(gradient_x_input, gradient_x_input),
    "integrated-gradients": _uniform(_ig_attribution, integrated_gradients),
    "smoothgrad": _uniform(smoothgrad, smoothgrad),
}
