"""Evaluation metrics for saliency maps: pure NumPy functions on arrays and a model function.

Metrics never import onnxruntime: they receive the model as ``probabilities(batch) -> (N, K)``
softmax probabilities, the batch in the model's input layout (see each module).
"""

from swag_onnx.metrics.insertion_deletion import (
    auc,
    blur,
    curve_fractions,
    default_step,
    deletion_curve,
    insertion_curve,
    pixel_order,
    to_model_resolution,
)

__all__ = [
    "auc",
    "blur",
    "curve_fractions",
    "default_step",
    "deletion_curve",
    "insertion_curve",
    "pixel_order",
    "to_model_resolution",
]
