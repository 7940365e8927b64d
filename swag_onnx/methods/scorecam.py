"""Score-CAM (Wang et al., CVPR Workshops 2020), as pytorch-grad-cam's ``ScoreCAM`` computes it.

Each channel of the layer activation, upsampled to the input size and min-max scaled, masks the
input; the channel's weight is the softmax, over channels, of the target's raw score (logit) on
its masked input; the map is ``ReLU(sum_k w_k A_k)``. The masked inputs are scored in batches,
so memory holds ``batch_size`` masked inputs whatever the number of channels K.

    x (C, H, W) or (H, W, C), act (K, h, w) --K masked inputs, batched--> scores (K,)
    --softmax--> weights (K,) --ReLU(sum_k w_k A_k)--> (h, w) --bilinear--> (H, W)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import numpy as np
from scipy import ndimage
from scipy.special import softmax

from swag_onnx.methods.cam import combine_layers, upsample
from swag_onnx.methods.layer_maps import COMBINE, COMBINE_HELP
from swag_onnx.methods.registry import Inputs, Output, input_size, method
from swag_onnx.validation import BATCH

Progress = Callable[[int, int], None]


def channel_masks(act: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Masks from activation channels: bilinear upsampling with aligned corners (the corner
    pixels of input and output coincide, as torch's ``UpsamplingBilinear2d`` that pytorch-grad-cam
    uses), then each channel scaled by ``(m - min) / (max - min + 1e-8)`` (a constant channel
    gives an all-zero mask, as in the library).

    act: (n, h, w). Returns (n, H, W) float64 in [0, 1].
    """
    act = np.asarray(act, dtype=np.float64)
    n, h, w = act.shape
    height, width = int(size_hw[0]), int(size_hw[1])
    # grid_mode=False maps corner to corner: scipy's name for align_corners=True
    up = ndimage.zoom(act, (1, height / h, width / w), order=1, grid_mode=False, mode="nearest")
    if up.shape != (n, height, width):  # rounding of the zoomed size; never seen, cheap to check
        raise ValueError(f"upsampled to {up.shape[1:]}, wanted {(height, width)}")
    lo = up.min(axis=(1, 2), keepdims=True)
    hi = up.max(axis=(1, 2), keepdims=True)
    return (up - lo) / (hi - lo + 1e-8)


def _masked(x: np.ndarray, masks: np.ndarray, axis: int) -> np.ndarray:
    """x (3-d, channels on `axis`) times each (H, W) mask, broadcast over the channels.
    Returns (n, *x.shape) in x's dtype."""
    return (x[None] * np.expand_dims(masks, axis + 1)).astype(x.dtype, copy=False)


def channel_scores(x: np.ndarray, act: np.ndarray, scores: Callable[[np.ndarray], np.ndarray],
                   target: int, axis: int, batch_size: int,
                   progress: Progress | None = None) -> np.ndarray:
    """The target's score on the input masked by each channel, ``batch_size`` channels per call
    of ``scores``. x: one input (3-d, channels on `axis`); act: (K, h, w). Returns (K,)."""
    size_hw = tuple(s for i, s in enumerate(x.shape) if i != axis)
    k = act.shape[0]
    out = np.empty(k, dtype=np.float64)
    for start in range(0, k, batch_size):
        stop = min(start + batch_size, k)
        batch = _masked(x, channel_masks(act[start:stop], size_hw), axis)
        logits = np.asarray(scores(batch))
        if logits.ndim != 2 or logits.shape[0] != stop - start:
            raise ValueError(f"scores must return (N, num_classes) for N={stop - start} inputs, "
                             f"got shape {logits.shape}")
        out[start:stop] = logits[:, target]
        if progress is not None:
            progress(stop, k)
    return out


def scorecam(x: np.ndarray, act: np.ndarray, scores: Callable[[np.ndarray], np.ndarray],
             target: int, *, channel_axis: int, batch_size: int = 32,
             progress: Progress | None = None) -> np.ndarray:
    """Score-CAM map of class `target` for one input.

    x: one preprocessed model input, (C, H, W) or (H, W, C), channels on ``channel_axis``.
    act: (K, h, w) the layer's activation on x (channels first).
    scores: ``batch (N, *x.shape) -> (N, num_classes)`` the model's raw scores (logits, as
    pytorch-grad-cam's ``ClassifierOutputTarget`` uses them).
    progress: called as ``progress(channels_done, K)`` after each batch.
    Returns (H, W) float64, >= 0: ``ReLU(sum_k w_k A_k)`` resized bilinearly (cv2, as the library's
    ``scale_cam_image``) to the input size; not normalised.

    Differences from the paper, as pytorch-grad-cam: the scores are raw logits of the masked
    inputs; the paper subtracts the baseline image's score, a constant over channels that the
    softmax removes anyway, so the weights are the same.
    """
    x = np.asarray(x)
    act = np.asarray(act, dtype=np.float64)
    if x.ndim != 3 or act.ndim != 3:
        raise ValueError(f"x must be one 3-d input and act (K, h, w); got {x.shape}, {act.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    axis = channel_axis % 3
    logits = channel_scores(x, act, scores, target, axis, batch_size, progress)
    weights = softmax(logits)
    cam = np.maximum(np.tensordot(weights, act, axes=1), 0.0)
    size_hw = tuple(s for i, s in enumerate(x.shape) if i != axis)
    return upsample(cam, size_hw)


@method("scorecam", needs={"layers", "scores"}, progress=True,
        summary="each channel's upsampled, normalised activation masks the input; weights = "
        "softmax over channels of the masked inputs' logits (one model run per channel, batched)",
        reference="Wang et al., CVPR-W 2020; pytorch-grad-cam ScoreCAM: Pearson 1 - 8e-13")
def _scorecam(inputs: Inputs, *,
              combine: Annotated[str, COMBINE, COMBINE_HELP] = "product",
              batch_size: Annotated[int, BATCH, "inputs per model call (speed and memory "
                                    "only)"] = 32) -> Output:
    maps = [scorecam(inputs.x, act, inputs.scores, inputs.target,
                     channel_axis=inputs.channel_axis, batch_size=batch_size,
                     progress=inputs.progress) for act, _ in inputs.layers]
    return Output(combine_layers(maps, input_size(inputs), mode=combine),
                  info={"layers": list(inputs.layer_names)})
