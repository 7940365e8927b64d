"""Saliency methods: pure NumPy / SciPy / scikit-image functions on arrays, each registered
(swag_onnx.methods.registry) with what it needs from the model, its parameters and flags.

Methods receive gradients, activations and images as NumPy arrays (or call a small model-function
protocol); they never import onnxruntime (nor any training framework), so they can be tested and
reused without a model runtime. Importing this package fills the registry.
"""

# Each module registers its methods; the import order is the listing order (SWAG first).
from swag_onnx.methods.swag import (  # noqa: I001
    DEFAULTS, SOURCES, SwagResult, normalize_map, pixel_map, region_scores, superpixels, swag,
)
from swag_onnx.methods import layer_maps  # noqa: F401
from swag_onnx.methods import ablationcam, scorecam  # noqa: F401
from swag_onnx.methods import gradients  # noqa: F401
from swag_onnx.methods import lime, rise, xrai  # noqa: F401
from swag_onnx.methods import controls  # noqa: F401
from swag_onnx.methods.registry import ALIASES, METHODS, Inputs, Method, Output, resolve

__all__ = ["ALIASES", "METHODS", "Inputs", "Method", "Output", "resolve", "DEFAULTS", "SOURCES",
           "SwagResult", "normalize_map", "pixel_map", "region_scores", "superpixels", "swag"]
