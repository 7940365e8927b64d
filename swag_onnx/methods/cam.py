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

pytorch-grad-cam's family (METHODS.md, "More layer methods"; matched to pytorch-grad-cam where it
differs from the papers): HiResCAM, XGradCAM, LayerCAM, EigenCAM, EigenGradCAM here; ScoreCAM and
AblationCAM, which need extra model runs, in ``scorecam.py`` and ``ablationcam.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


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



def hirescam(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos and Carin, 2020): ``ReLU(sum_k G_k * A_k)``, element-wise, no spatial
    averaging of the gradient (pytorch-grad-cam ``HiResCAM``: the same).

    act, grad: (K, h, w). Returns (h, w), >= 0, at layer resolution.
    """
    act, grad = _check(act, grad)
    return np.maximum((act * grad).sum(axis=0), 0.0)


def xgradcam(act: np.ndarray, grad: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """XGradCAM (Fu et al., BMVC 2020): ``w_k = sum_u A_uk G_uk / (sum_u A_uk + eps)``,
    map ``= ReLU(sum_k w_k A_k)``.

    The paper has no ``eps``; pytorch-grad-cam (``xgrad_cam.py``) adds ``eps = 1e-7`` to the
    denominator, which we match by default (it keeps an all-zero channel at weight 0).

    act, grad: (K, h, w). Returns (h, w), >= 0, at layer resolution.
    """
    act, grad = _check(act, grad)
    denom = act.sum(axis=(1, 2)) + eps  # (K,)
    numer = (act * grad).sum(axis=(1, 2))
    weights = np.divide(numer, denom, out=np.zeros_like(numer), where=denom != 0)
    return np.maximum(np.tensordot(weights, act, axes=1), 0.0)


def layercam(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """LayerCAM (Jiang et al., TIP 2021): ``ReLU(sum_k ReLU(G_k) * A_k)``, element-wise
    positive gradients (pytorch-grad-cam ``LayerCAM``: the same).

    act, grad: (K, h, w). Returns (h, w), >= 0, at layer resolution.
    """
    act, grad = _check(act, grad)
    return np.maximum((np.maximum(grad, 0.0) * act).sum(axis=0), 0.0)


def first_component(features: np.ndarray) -> np.ndarray:
    """Projection of the (K, h, w) features, seen as h*w samples of K values, on their first
    principal component: centre each channel over the locations, take the first right singular
    vector ``v`` (K,) of the (h*w, K) matrix, project. Returns (h, w), signed, zero mean.

    SVD leaves the sign of ``v`` arbitrary. We choose ``sum_k v_k >= 0``: since ``v`` is an
    eigenvector of the channel covariance ``C``, the projection's covariance with the summed
    channels ``sum_k X_k`` is ``lambda * sum_k v_k``, so the map rises where the channels
    together rise (e.g. for A * G, where the linear approximation ``sum_k A_k G_k`` rises).
    pytorch-grad-cam (``get_2d_projection``) keeps whatever sign LAPACK returns.
    """
    k = features.shape[0]
    samples = features.reshape(k, -1).T  # (h*w, K)
    centred = samples - samples.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    v = vt[0]
    if v.sum() < 0:
        v = -v
    return (centred @ v).reshape(features.shape[1:])


def eigencam(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """EigenCAM (Muhammad and Yeasin, IJCNN 2020): ``ReLU`` of the projection of the activations
    on their first principal component (``first_component``; the gradient is not used, the
    argument only keeps every layer map's signature).

    As pytorch-grad-cam (``EigenCAM``), the channels are centred over the locations before the
    SVD (the paper projects the uncentred activations) and the map is ReLU'd. The sign of the
    component is ours (``sum_k v_k >= 0``, see ``first_component``); the library keeps
    LAPACK's arbitrary sign, so on some inputs its map is the ReLU of the opposite projection.

    act, grad: (K, h, w). Returns (h, w), >= 0, at layer resolution.
    """
    act, _ = _check(act, grad)
    return np.maximum(first_component(act), 0.0)


def eigengradcam(act: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """EigenGradCAM (pytorch-grad-cam's variant of EigenCAM, no paper): ``ReLU`` of the first
    principal component projection (``first_component``) of ``A * G``; the sign is chosen so that
    the map rises where ``sum_k A_k G_k`` rises.

    act, grad: (K, h, w). Returns (h, w), >= 0, at layer resolution.
    """
    act, grad = _check(act, grad)
    return np.maximum(first_component(act * grad), 0.0)

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


def combine_layers(maps: Sequence[np.ndarray], size_hw: tuple[int, int],
                   mode: str = "product") -> np.ndarray:
    """Combine per-layer maps: upsample and normalise each, then multiply them ("product") or
    average them ("sum", uniform weights); the result is normalised again.

    maps: (h_i, w_i) arrays, one per layer. Returns (H, W) in [0, 1].
    """
    if mode not in COMBINE_MODES:
        raise ValueError(f"unknown combine mode {mode!r}; choose from {', '.join(COMBINE_MODES)}")
    if len(maps) == 0:
        raise ValueError("combine_layers needs at least one map")
    ups = [normalize(upsample(m, size_hw)) for m in maps]
    return normalize(np.prod(ups, axis=0) if mode == "product" else np.mean(ups, axis=0))
