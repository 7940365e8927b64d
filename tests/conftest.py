"""Test-wide settings: the augmentation cache goes to a temporary folder, never ~/.cache;
triton is loaded before any test imports TensorFlow."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (CI must not pass or fail by chance);
# HYPOTHESIS_PROFILE=explore draws new ones.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Loading triton (torch's compiler, imported by torchvision and torch.export) after TensorFlow
# 2.21 crashes the process (a segmentation fault in triton's extension module); loaded first,
# both work, so the PyTorch and Keras tests run in one process in any order.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

sys.path.insert(0, str(Path(__file__).parent))  # helpers: zoo, gradcheck


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    previous = os.environ.get("SWAG_ONNX_CACHE")
    os.environ["SWAG_ONNX_CACHE"] = str(tmp_path_factory.mktemp("swag_cache"))
    yield
    if previous is None:
        os.environ.pop("SWAG_ONNX_CACHE", None)
    else:
        os.environ["SWAG_ONNX_CACHE"] = previous
