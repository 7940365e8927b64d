"""Token layers of vision transformers as feature maps.

A ViT layer holds, per image, T tokens of C channels: `offset` leading tokens that are not on
the patch grid (the class token; distillation or register tokens), then the h x w patch tokens
in row-major order (T = offset + h * w). Layer methods (Grad-CAM, NormGrad, ...) want a
channel-first map (C, h, w): drop the leading tokens and fold the rest onto the grid, as
pytorch-grad-cam's `reshape_transform` does by hand. The same function turns the layer's gradient
into its map, so activation and gradient stay aligned.
"""

from __future__ import annotations

import numpy as np


def tokens_to_map(act: np.ndarray, grid, offset: int) -> np.ndarray:
    """(T, C) tokens of one image -> (C, h, w) map of its grid tokens.

    `grid` is (h, w) and `offset` the number of leading non-grid tokens; T must equal
    offset + h * w. Works for activations and gradients alike (any float dtype, kept)."""
    act = np.asarray(act)
    h, w = (int(d) for d in grid)
    if act.ndim != 2:
        raise ValueError(f"expected (T, C) tokens of one image, got shape {act.shape}")
    if offset < 0 or act.shape[0] != offset + h * w:
        raise ValueError(f"{act.shape[0]} tokens do not hold {offset} leading tokens and a "
                         f"{h}x{w} grid")
    return act[offset:].reshape(h, w, act.shape[1]).transpose(2, 0, 1)
