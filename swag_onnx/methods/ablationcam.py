"""Ablation-CAM (Desai and Ramaswamy, WACV 2020), as pytorch-grad-cam's ``AblationCAM`` computes it.

Each channel k of the layer activation is ablated in turn and the rest of the model (the "head",
from the layer to the score) is run on the ablated activation, ``batch_size`` channels per call:
the image part of the model runs once, not once per channel, and there is no model copy per
channel. With ``y`` the target's raw score (logit) and ``y_k`` its score with channel k ablated,
``w_k = (y - y_k) / y`` and the map is ``ReLU(sum_k w_k A_k)``.

    act (K, h, w) --K ablated copies, batched--> head --> y_k (K,) --w_k--> ReLU(sum_k w_k A_k)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import numpy as np

from swag_onnx.methods.cam import combine_layers
from swag_onnx.methods.layer_maps import COMBINE, COMBINE_HELP
from swag_onnx.methods.registry import Inputs, Output, input_size, method
from swag_onnx.validation import BATCH

Progress = Callable[[int, int], None]

# pytorch-grad-cam (ablation_layer.py): below the activation's minimum when it is not 0
ABLATION_OFFSET = 1e7


def ablation_value(act: np.ndarray) -> float:
    """The value an ablated channel is set to: 0 when the activation's minimum is exactly 0
    (a ReLU output: zeroing is the paper's ablation), else ``min(act) - 1e7`` (pytorch-grad-cam,
    for layers that can be negative, where 0 would not switch a channel off)."""
    low = float(np.min(act))
    return 0.0 if low == 0.0 else low - ABLATION_OFFSET


def ablated_scores(act: np.ndarray, head: Callable[[np.ndarray], np.ndarray], target: int,
                   batch_size: int, progress: Progress | None = None) -> np.ndarray:
    """The target's score with each channel ablated, ``batch_size`` channels per head call.
    act: (K, h, w) in the dtype the head expects. Returns (K,) float64."""
    k = act.shape[0]
    value = ablation_value(act)
    out = np.empty(k, dtype=np.float64)
    for start in range(0, k, batch_size):
        stop = min(start + batch_size, k)
        batch = np.repeat(act[None], stop - start, axis=0)  # (n, K, h, w)
        batch[np.arange(stop - start), np.arange(start, stop)] = value
        out[start:stop] = _target_scores(head, batch, target)
        if progress is not None:
            progress(stop, k)
    return out


def _target_scores(head, batch: np.ndarray, target: int) -> np.ndarray:
    logits = np.asarray(head(batch))
    if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
        raise ValueError(f"head must return (N, num_classes) for N={batch.shape[0]} inputs, "
                         f"got shape {logits.shape}")
    return logits[:, target].astype(np.float64)


def ablationcam(act: np.ndarray, head: Callable[[np.ndarray], np.ndarray], target: int, *,
                batch_size: int = 32, progress: Progress | None = None) -> np.ndarray:
    """Ablation-CAM map of class `target` at layer resolution.

    act: (K, h, w) the layer activation of one image (channels first; kept in its dtype for the
    head). head: ``acts (N, K, h, w) -> (N, num_classes)`` raw scores (logits) of the model with
    the layer's activation replaced by ``acts``. progress: ``progress(channels_done, K)`` after
    each batch. Returns (h, w) float64, >= 0.

    As pytorch-grad-cam (and unlike the paper, which assumes a positive score): ``y`` is the raw
    logit and the weights are divided by it even when it is negative (which flips their sign);
    a non-ReLU layer is ablated to ``min - 1e7`` rather than 0 (``ablation_value``). Not
    reproduced: the library compounds that offset over the rows of a batch (row i gets
    ``min - (i + 1) * 1e7``), a bug; every row here gets the same value. ``y == 0`` leaves the
    weights undivided (``y - y_k``), where the library divides by zero.
    """
    act = np.asarray(act)
    if act.ndim != 3:
        raise ValueError(f"act must be (K, h, w), got shape {act.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    y = float(_target_scores(head, act[None], target)[0])
    drops = y - ablated_scores(act, head, target, batch_size, progress)
    weights = drops / y if y != 0 else drops
    return np.maximum(np.tensordot(weights, act.astype(np.float64), axes=1), 0.0)


@method("ablationcam", needs={"layers", "layer_scores"}, progress=True,
        summary="weight_k = (y - y_k) / y with channel k ablated at the layer; ReLU(sum_k w_k "
        "A_k) (batched through the layer's activation fed back in)",
        reference="Desai and Ramaswamy, WACV 2020; pytorch-grad-cam AblationCAM: Pearson "
        "1 - 1e-11")
def _ablationcam(inputs: Inputs, *,
                 combine: Annotated[str, COMBINE, COMBINE_HELP] = "product",
                 batch_size: Annotated[int, BATCH, "inputs per model call (speed and memory "
                                       "only)"] = 32) -> Output:
    maps = [ablationcam(act, head, inputs.target, batch_size=batch_size,
                        progress=inputs.progress)
            for (act, _), head in zip(inputs.layers, inputs.layer_scores)]
    return Output(combine_layers(maps, input_size(inputs), mode=combine),
                  info={"layers": list(inputs.layer_names)})
