"""Evaluation metrics for saliency maps: pure NumPy functions on arrays and a model function.

Metrics never import onnxruntime: they receive the model as ``probabilities(batch) -> (N, K)``
softmax probabilities, the batch in the model's input layout (see each module).
"""

from swag_onnx.metrics import insertion_deletion
from swag_onnx.metrics.insertion_deletion import *  # noqa: F401,F403  (its __all__)

__all__ = list(insertion_deletion.__all__)
