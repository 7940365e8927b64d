"""Layer-based saliency maps: Grad-CAM, Grad-CAM++, NormGrad (Rebuffi et al., CVPR 2020).

Every map is built from one layer's activation ``A`` and the gradient ``G = dS_c/dA`` of the class
score, for ONE image, channel-first: ``act`` and ``grad`` are ``(K, h, w)`` arrays (the caller
transposes NHWC layers). ``u`` below is a spatial location, ``k`` a channel. All functions are pure
NumPy (cv2 only for resizing) and compute in float64.

    act, grad (K, h, w) --gradcam / normgrad / ...--> map (h, w)
    map (h, w) --upsample--> (H, W) --normalize--> [0, 1]
    [map (h_i, w_i), ...] --combine_layers--> (H, W) in [0, 1]

Per-location terms (METHODS.md, "NormGrad and the unified view"):

- gradient x activation ("linear approximation"): ``sum_k A_uk G_uk``
- Grad-CAM: ``ReLU(sum_k A_uk mean_u(G_k))``
- NormGrad: ``||A_u||_2 ||G_u||_2``
- selective NormGrad: ``|| max(A_u * G_u, 0) ||_2``
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from swag_onnx.errors import BadOptionError

COMBINE_MODES = ("product", "sum")


def _check(act: np.ndarray, grad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    act = np.asarray(act, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    if act.ndim != 3 or act.shape != grad.shape:
        raise ValueError(
            "act and grad must both be (K, h, w) of the same shape, "
            f"got {act.shape} and {grad.shape}"
        )
    return act, grad


def gradcam(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017): ``ReLU(sum_k a_k A_k)`` with ``a_k = mean_u G_k``.

    act, grad: (K, h, w). Returns (h, w), >= 0, at layer resolution.
    """
    act, grad = _check(act, grad)
    weights = grad.mean(axis=(1, 2))  # (K,)
    return np.maximum(np.tensordot(weights, act, axes=1), 0.0)


def gradcam_plus_plus(act: np.ndarray, grad: np.ndarray, eps: float = 0.0) -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018), Eq. 19 of the paper.

    ``alpha_uk = G_uk^2 / (2 G_uk^2 + sum_v(A_vk) G_uk^3)``, set to 0 where the denominator is 0
    (in particular where ``G = 0``); ``w_k = sum_u alpha_uk ReLU(G_uk)``;
    map ``= ReLU(sum_k w_k A_k)``.
    The gradient is that of the raw class score (the paper's exponential-score trick is not used;
    pytorch-grad-cam does the same).

    With the default ``eps=0`` this is exactly the formula above. pytorch-grad-cam
    (``grad_cam_plusplus.py``) uses the same Eq. 19 but adds ``eps = 1e-6`` to the denominator
    (and then zeroes alpha where ``G == 0``); since the denominator scales as ``G^2``, that
    constant is not negligible for the small gradients of typical classifiers (``G ~ 1e-3`` gives
    ``2 G^2 ~ 2e-6``) and shifts its weights towards ``sum_u G^2 ReLU(G) / eps``. Pass
    ``eps=1e-6`` to reproduce pytorch-grad-cam.

    act, grad: (K, h, w). Returns (h, w), >= 0, at layer resolution.
    """
    act, grad = _check(act, grad)
    g2 = grad * grad
    g3 = g2 * grad
    sum_act = act.sum(axis=(1, 2), keepdims=True)  # (K, 1, 1)
    denom = 2.0 * g2 + sum_act * g3 + eps
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=denom != 0)
    alpha = np.where(grad != 0, alpha, 0.0)
    weights = (alpha * np.maximum(grad, 0.0)).sum(axis=(1, 2))  # (K,)
    return np.maximum(np.tensordot(weights, act, axes=1), 0.0)


def normgrad(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """NormGrad: ``||A_u||_2 * ||G_u||_2`` per location, norms over channels.

    This is the Frobenius norm of the outer product ``A_u G_u^T`` (the per-location gradient of a
    virtual identity 1x1 layer). act, grad: (K, h, w). Returns (h, w), >= 0.
    """
    act, grad = _check(act, grad)
    return np.linalg.norm(act, axis=0) * np.linalg.norm(grad, axis=0)


def normgrad_selective(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Selective NormGrad: ``|| max(A_u * G_u, 0) ||_2`` over channels.

    Only channels whose contribution raises the class score count. act, grad: (K, h, w).
    Returns (h, w), >= 0.
    """
    act, grad = _check(act, grad)
    return np.linalg.norm(np.maximum(act * grad, 0.0), axis=0)


def gradient_x_activation(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Gradient x activation, the "linear approximation": ``sum_k A_uk G_uk`` (signed).

    act, grad: (K, h, w). Returns (h, w).
    """
    act, grad = _check(act, grad)
    return (act * grad).sum(axis=0)


def upsample(map_hw: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize (``cv2.resize``, ``INTER_LINEAR``) of an (h, w) map to ``(H, W)``."""
    m = np.asarray(map_hw, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"map must be (h, w), got shape {m.shape}")
    height, width = int(size_hw[0]), int(size_hw[1])
    if m.shape == (height, width):
        return m.copy()
    return cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)


def normalize(map_hw: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant map gives zeros. Any shape."""
    m = np.asarray(map_hw, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    if hi <= lo:
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


def combine_layers(
    maps: Sequence[np.ndarray],
    size_hw: tuple[int, int],
    mode: str = "product",
    weights: Sequence[float] | None = None,
) -> np.ndarray:
    """Combine per-layer maps: upsample and normalise each, then product or weighted sum.

    maps: (h_i, w_i) arrays, one per layer. ``mode="product"`` multiplies the normalised maps
    (``weights`` must then be None); ``mode="sum"`` takes ``sum_i weights_i * map_i`` with uniform
    weights by default. The result is normalised again. Returns (H, W) in [0, 1].
    """
    if mode not in COMBINE_MODES:
        raise BadOptionError(
            f"unknown combine mode {mode!r}; choose from {', '.join(COMBINE_MODES)}"
        )
    if len(maps) == 0:
        raise BadOptionError("combine_layers needs at least one map")
    ups = [normalize(upsample(m, size_hw)) for m in maps]
    if mode == "product":
        if weights is not None:
            raise BadOptionError("weights apply to mode='sum' only")
        out = np.ones_like(ups[0])
        for m in ups:
            out = out * m
        return normalize(out)
    if weights is None:
        w = np.full(len(ups), 1.0 / len(ups))
    else:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.size != len(ups):
            raise BadOptionError(f"{w.size} weights given for {len(ups)} maps")
        if not np.all(np.isfinite(w)):
            raise BadOptionError("combine weights must be finite")
    return normalize(sum(wi * m for wi, m in zip(w, ups)))


CAM_METHODS = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plus_plus,
    "normgrad": normgrad,
    "normgrad-selective": normgrad_selective,
}
