"""ROAD: RemOve And Debias (Rong, Leemann, Nguyen, Fiedler, Qian, Unhelkar, Kasneci, ICML 2022).

Pixels are removed in the order of a saliency map and filled by *noisy linear imputation*, which
leaks far less of the removed shape than a constant or a blur; the model's probability of the
target class is read at each removal percentage.

Protocol (defaults are the module constants):

- Everything happens at the MODEL input resolution, on the preprocessed (normalised) input, as in
  ``swag_onnx.metrics.insertion_deletion``; a map at the original size must first be brought to
  the model grid (``to_model_resolution``).
- Order: ``pixel_order(saliency)``, most salient first, ties by the lower row-major index.
- MoRF at ``p``: the first ``floor(n * p / 100)`` pixels of that order are removed (``n = h * w``,
  all channels), as the ROAD authors' ``int(n * th_p)``. LeRF at ``p``: the LAST
  ``floor(n * p / 100)`` pixels are removed, so LeRF at ``p`` and MoRF at ``100 - p`` remove
  complementary sets. Percentages are ``PERCENTAGES`` (10, 20, ..., 90), each strictly inside
  (0, 100).
- Imputation (``noisy_linear_impute``): each removed pixel equals the weighted mean of its valid
  (in-image) 8 neighbours, weights 1/6 for the 4 direct and 1/12 for the 4 diagonal ones (the
  weights of the authors' ``NoisyLinearImputer``); the removed pixels' values solve that sparse
  linear system jointly (scipy ``spsolve``), each channel alike; then ``noise`` times standard
  normal noise is added to the removed pixels only. Being a weighted mean, the imputation
  commutes with the per-channel affine normalisation, so imputing the normalised input equals
  normalising the imputed photo; only the noise scale depends on the space. ``NOISE`` = 0.01 is
  pytorch-grad-cam's value, applied in the space it is given (the model input, as grad-cam
  does); the authors apply 0.01 to pixel/255 images, which is ``0.01 / std`` per channel on a
  mean/std-normalised input (pass that as a (C,) ``noise``).
- Noise: each (curve, percentage) draws from its own generator, spawned from
  ``numpy.random.SeedSequence(seed)`` in the order MoRF p1..pP, LeRF p1..pP, so results do not
  depend on ``batch_size``.
- Score: the probability of ``target`` (default: the class predicted on the clean input).
- Summary (``road_scores``), following pytorch-grad-cam's ``ROAD*Average`` (a plain mean over the
  percentages, no trapezoid): ``road-morf`` = mean of the MoRF curve (lower is better),
  ``road-lerf`` = mean of the LeRF curve (higher is better), ``road`` = mean(LeRF - MoRF)
  (higher is better). pytorch-grad-cam's ``ROADCombined`` is (mean LeRF - mean MoRF) / 2 on
  probability differences from the clean input: half of ``road``.

Differences from pytorch-grad-cam (``pytorch_grad_cam.metrics.road``): its ``ROADMostRelevantFirst
(percentile=q)`` keeps the pixels whose saliency is strictly below ``np.percentile(map, q)``, so it
removes the top ``100 - q`` percent, and ties at the threshold are all removed; here ``p`` is the
percentage removed and ties follow the ranking. With distinct saliency values and ``n * p / 100``
an integer both remove the same pixels (checked in tests/test_road.py). The authors add
1e-4 * N(0, 1) to the rescaled map to break ties at random; here ties are broken by position.

The model is a function ``probabilities(batch) -> (N, K)`` softmax probabilities, ``batch`` float32
in the model's input layout ((N, C, H, W) for ``layout="CHW"``, (N, H, W, C) for ``"HWC"``).
Imputed inputs are built and scored ``batch_size`` at a time: one batch in memory. Pure NumPy and
SciPy: no onnxruntime here.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

from swag_onnx.validation import Int, require

from swag_onnx.metrics.insertion_deletion import (
    DEFAULT_BATCH_SIZE,
    ProbabilityFn,
    one_image,
    pixel_order,
    spatial_size,
)

PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # percent of pixels removed (the paper's)
NOISE = 0.01  # imputation noise std, in the units of the input it is applied to
SEED = 0
# (row offset, column offset, weight) of the 8 neighbours; the weights sum to 1
NEIGHBOURS = tuple((dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))
PERCENTAGES_HELP = ("percent of pixels removed, each strictly between 0 and 100 "
                    "(default 10 20 ... 90)")

__all__ = [
    "check_percentages",
    "noisy_linear_impute",
    "removal_mask",
    "removed_count",
    "road_curves",
    "road_scores",
]


# ------------------------------------------------------------------------------------- checking

def check_percentages(percentages) -> np.ndarray:
    """Percentages of pixels to remove -> float64 (P,); ValueError unless a non-empty sequence of
    finite numbers each strictly between 0 and 100."""
    try:
        p = np.asarray(percentages, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"ROAD percentages must be numbers, got {percentages!r}") from None
    if p.size == 0:
        raise ValueError("ROAD needs at least one percentage")
    bad = [float(v) for v in p if not (0 < v < 100)]  # also catches NaN
    if bad:
        raise ValueError("ROAD percentages must lie strictly between 0 and 100, got "
                         + ", ".join(f"{v:g}" for v in bad))
    return p


def removed_count(n: int, percentage: float) -> int:
    """Pixels removed at ``percentage`` of ``n``: floor(n * percentage / 100)."""
    return int(math.floor(n * float(percentage) / 100))


def removal_mask(saliency: np.ndarray, percentage: float, *, most_relevant: bool = True
                 ) -> np.ndarray:
    """bool (h, w), True where a pixel is removed: the ``removed_count`` first (MoRF,
    ``most_relevant=True``) or last (LeRF) pixels of ``pixel_order(saliency)``."""
    order = pixel_order(saliency)
    return _mask_from_order(order, np.shape(saliency), float(check_percentages(percentage)[0]),
                            most_relevant)


def _mask_from_order(order: np.ndarray, shape: tuple[int, int], percentage: float,
                     most_relevant: bool) -> np.ndarray:
    k = removed_count(order.size, percentage)
    chosen = order[:k] if most_relevant else order[order.size - k:]
    mask = np.zeros(order.size, bool)
    mask[chosen] = True
    return mask.reshape(shape)


# ----------------------------------------------------------------------------------- imputation

def _system(mask: np.ndarray) -> tuple[sparse.csc_matrix, sparse.csr_matrix, np.ndarray]:
    """The imputation system of a (h, w) removal mask with m removed pixels.

    For removed pixel i with valid neighbours j (weights w_ij): sum_j w_ij (x_i - x_j) = 0. With
    the removed values as unknowns this is A x = B v: A (m, m) (diagonal: the valid weight sum;
    off-diagonal: -w_ij between removed neighbours), B (m, n) the weights to kept neighbours, v
    the kept values. Returns (A, B, flat indices of the removed pixels (m,))."""
    h, w = mask.shape
    removed = np.flatnonzero(mask)
    unknown = np.full(h * w, -1, np.int64)
    unknown[removed] = np.arange(removed.size)
    rows, cols = np.divmod(removed, w)
    diag = np.zeros(removed.size)
    a_rows, a_cols, a_vals, b_rows, b_cols, b_vals = [], [], [], [], [], []
    for dy, dx, weight in NEIGHBOURS:
        r, c = rows + dy, cols + dx
        inside = (r >= 0) & (r < h) & (c >= 0) & (c < w)
        eq, nb = np.flatnonzero(inside), (r * w + c)[inside]
        diag[eq] += weight
        is_unknown = unknown[nb] >= 0
        a_rows.append(eq[is_unknown]), a_cols.append(unknown[nb[is_unknown]])
        a_vals.append(np.full(int(is_unknown.sum()), -weight))
        b_rows.append(eq[~is_unknown]), b_cols.append(nb[~is_unknown])
        b_vals.append(np.full(int((~is_unknown).sum()), weight))
    m = removed.size
    a = sparse.coo_matrix((np.concatenate(a_vals + [diag]),
                           (np.concatenate(a_rows + [np.arange(m)]),
                            np.concatenate(a_cols + [np.arange(m)]))), shape=(m, m)).tocsc()
    b = sparse.coo_matrix((np.concatenate(b_vals), (np.concatenate(b_rows),
                                                    np.concatenate(b_cols))),
                          shape=(m, h * w)).tocsr()
    return a, b, removed


def noisy_linear_impute(image: np.ndarray, mask: np.ndarray, noise=NOISE,
                        rng: np.random.Generator | None = None, *, layout: str = "CHW"
                        ) -> np.ndarray:
    """Fill the removed pixels of one image by noisy linear imputation (module docstring).

    image: (C, h, w) for layout "CHW" or (h, w, C) for "HWC" (a leading batch axis of 1 is
        accepted), any float values.
    mask: bool (h, w), True where the pixel is removed; at least one pixel must be kept.
    noise: standard deviation of the Gaussian noise added to the removed pixels: a number or
        per channel (C,); 0 for none.
    rng: numpy Generator for the noise (needed when noise is not 0); draws one (m, C) standard
        normal array for the m removed pixels, in row-major order.
    Returns float32, the shape and layout of ``image`` (batch axis dropped); kept pixels are
    unchanged.
    """
    x, layout = one_image(image, layout)
    h, w = spatial_size(x, layout)
    mask = np.asarray(mask)
    if mask.shape != (h, w):
        raise ValueError(f"mask has shape {mask.shape}, the image is {(h, w)}")
    mask = mask.astype(bool)
    if mask.all():
        raise ValueError("the mask removes every pixel; imputation needs at least one kept pixel")
    pixels = x.reshape(x.shape[0], -1).T if layout == "CHW" else x.reshape(-1, x.shape[2])
    sigma = _noise(noise, pixels.shape[1])
    if not mask.any():
        return x
    a, b, removed = _system(mask)
    values = spsolve(a, b @ pixels.astype(np.float64)).reshape(removed.size, -1)
    if np.any(sigma != 0):
        if rng is None:
            raise ValueError("noise is not 0, so an rng (numpy Generator) is needed")
        values = values + sigma * rng.standard_normal(values.shape)
    out = pixels.copy()  # (h * w, C), float32
    out[removed] = values
    return (np.ascontiguousarray(out.T.reshape(x.shape)) if layout == "CHW"
            else out.reshape(x.shape))


def _noise(noise, channels: int) -> np.ndarray:
    sigma = np.asarray(noise, np.float64)
    if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.size != channels):
        raise ValueError(f"noise must be a number or one per channel ({channels}), "
                         f"got shape {sigma.shape}")
    if not np.all(np.isfinite(sigma)) or np.any(sigma < 0):
        raise ValueError(f"noise must be finite and >= 0, got {noise!r}")
    return sigma


# ------------------------------------------------------------------------------------ the curves

def road_curves(model_input: np.ndarray, saliency: np.ndarray, probabilities: ProbabilityFn,
                target: int | None = None, *, layout: str = "CHW",
                percentages=PERCENTAGES, noise=NOISE, seed: int = SEED,
                batch_size: int = DEFAULT_BATCH_SIZE
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROAD MoRF and LeRF curves of one image (protocol in the module docstring).

    model_input: one preprocessed input, (C, h, w) for layout "CHW" or (h, w, C) for "HWC"
        ("NCHW"/"NHWC" and a leading batch axis of 1 accepted).
    saliency: (h, w) map at the model input resolution (higher = more important).
    probabilities: model function, batch (N, C, h, w) or (N, h, w, C) float32 -> (N, K).
    target: class index; None = the class predicted on ``model_input`` (one extra forward pass).
    percentages: percent of pixels removed, each in (0, 100) (``check_percentages``).
    noise: imputation noise std in input units, a number or (C,); seed: the noise's seed.
    batch_size: imputed inputs per model call (memory: one batch).
    Returns (percentages float64 (P,), morf float64 (P,), lerf float64 (P,)): the probability of
    ``target`` after removing the most / least relevant p percent.
    """
    x, layout = one_image(model_input, layout)
    hw = spatial_size(x, layout)
    if np.shape(saliency) != hw:
        raise ValueError(f"saliency has shape {np.shape(saliency)}, the model input is {hw}; "
                         "bring it to the model input resolution first (to_model_resolution)")
    p = check_percentages(percentages)
    batch_size = require(Int(1), "batch_size", batch_size)
    order = pixel_order(saliency)
    if target is None:
        target = int(np.asarray(probabilities(x[None]))[0].argmax())
    jobs = [(most, q) for most in (True, False) for q in p]
    streams = np.random.SeedSequence(seed).spawn(len(jobs))
    scores = np.empty(len(jobs), np.float64)
    for start in range(0, len(jobs), batch_size):
        batch = np.stack([
            noisy_linear_impute(x, _mask_from_order(order, hw, q, most), noise,
                                np.random.default_rng(streams[j]), layout=layout)
            for j, (most, q) in enumerate(jobs[start:start + batch_size], start)])
        probs = np.asarray(probabilities(batch))
        if probs.ndim != 2 or probs.shape[0] != len(batch):
            raise ValueError(f"probabilities returned shape {probs.shape} for a batch of "
                             f"{len(batch)}; expected (N, K)")
        scores[start:start + len(batch)] = probs[:, int(target)]
    return p, scores[:p.size], scores[p.size:]


def road_scores(morf: np.ndarray, lerf: np.ndarray) -> dict[str, float]:
    """Summary of one image's curves (P,) each: {"road": mean(lerf - morf) (higher is better),
    "road-morf": mean(morf) (lower is better), "road-lerf": mean(lerf) (higher is better)}."""
    m, l_ = np.asarray(morf, np.float64), np.asarray(lerf, np.float64)
    if m.ndim != 1 or m.shape != l_.shape or m.size == 0:
        raise ValueError(f"morf and lerf must be non-empty 1-D curves of one length, got "
                         f"{m.shape} and {l_.shape}")
    return {"road": float(np.mean(l_ - m)), "road-morf": float(np.mean(m)),
            "road-lerf": float(np.mean(l_))}
