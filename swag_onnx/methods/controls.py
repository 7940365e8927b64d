"""Control maps: what a metric gives to maps that know nothing of the model.

``random`` is uniform noise (seeded), ``center`` a centred Gaussian (photos tend to centre their
subject). A metric on which a control beats real methods measures something other than
faithfulness on that model (METHODS.md, "Controls").
"""

from __future__ import annotations

from typing import Annotated

import numpy as np

from swag_onnx.methods.registry import Inputs, Output, input_size, method
from swag_onnx.validation import SEED, Number


def random_map(size: tuple[int, int], seed: int) -> np.ndarray:
    """Uniform noise (H, W) float32 in [0, 1) from numpy.random.default_rng(seed)."""
    return np.random.default_rng(seed).random(size, dtype=np.float32)


def center_map(size: tuple[int, int], spread: float) -> np.ndarray:
    """exp(-r^2 / (2 s^2)) (H, W) float32, r the distance to the image centre in pixels and
    s = spread * the shorter side."""
    height, width = size
    rows = np.arange(height, dtype=np.float64) - (height - 1) / 2
    cols = np.arange(width, dtype=np.float64) - (width - 1) / 2
    s = spread * min(height, width)
    r2 = rows[:, None] ** 2 + cols[None, :] ** 2
    return np.exp(-r2 / (2 * s * s)).astype(np.float32)


@method("random", needs=set(), control=True, summary="control: uniform noise, seeded",
        reference="Adebayo et al., NeurIPS 2018 (controls)")
def _random(inputs: Inputs, *, seed: Annotated[int, SEED, "random seed"] = 0) -> Output:
    return Output(random_map(input_size(inputs), seed))


@method("center", needs=set(), control=True,
        summary="control: a centred Gaussian, std spread x the shorter side",
        reference="centre bias of photos (controls)")
def _center(inputs: Inputs, *,
            spread: Annotated[float, Number(0.0, low_open=True), "center: Gaussian std, "
                              "fraction of the shorter side"] = 0.25) -> Output:
    return Output(center_map(input_size(inputs), spread))
