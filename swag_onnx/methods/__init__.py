"""Saliency methods: pure NumPy / SciPy / scikit-image functions on arrays.

Methods receive gradients, activations and images as NumPy arrays (or call a small model-function
protocol); they never import onnxruntime (nor any training framework), so they can be tested and
reused without a model runtime.
"""

from swag_onnx.methods.swag import (
    DEFAULTS,
    SOURCES,
    SwagResult,
    normalize_map,
    pixel_map,
    region_scores,
    superpixels,
    swag,
)

__all__ = [
    "DEFAULTS",
    "SOURCES",
    "SwagResult",
    "normalize_map",
    "pixel_map",
    "region_scores",
    "superpixels",
    "swag",
]
