"""swag_onnx: gradient-based saliency for ONNX image classifiers on stock onnxruntime.

`augment` rewrites an ONNX classifier so that it also returns the gradient of a class score with
respect to its image input and chosen layers (standard ONNX ops only); `Explainer` predicts and
explains images with SWAG on such a model.
"""


from swag_onnx.errors import BadModelError, BadOptionError, SwagError, UnsupportedOpsError
from swag_onnx.explain import Explainer
from swag_onnx.graph import augment, augment_model, describe
from swag_onnx.runtime import __version__  # the installed distribution's (importlib.metadata)

__all__ = [
    "Explainer",
    "augment",
    "augment_model",
    "describe",
    "SwagError",
    "BadModelError",
    "BadOptionError",
    "UnsupportedOpsError",
]
