"""Evaluation metrics for saliency maps: pure NumPy functions on arrays and a model function.

Metrics never import onnxruntime: they receive the model as ``probabilities(batch) -> (N, K)``
softmax probabilities, the batch in the model's input layout (see each module; the PIC curves
take uint8 RGB batches, the caller's preprocessing inside the function). Each metric is
registered (swag_onnx.metrics.registry) with its direction, needs and protocol options.
"""

from swag_onnx.metrics import (  # noqa: F401  (entries fills the registry)
    energy, entries, insertion_deletion, pic, pointing, road, sensitivity,
)
from swag_onnx.metrics.insertion_deletion import *  # noqa: F401,F403  (its __all__)
from swag_onnx.metrics.pic import *  # noqa: F401,F403
from swag_onnx.metrics.pointing import *  # noqa: F401,F403
from swag_onnx.metrics.sensitivity import *  # noqa: F401,F403

__all__ = [*insertion_deletion.__all__, *pic.__all__, *pointing.__all__, *sensitivity.__all__]
