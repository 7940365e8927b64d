"""Test-wide settings: the augmentation cache goes to a temporary folder, never ~/.cache."""

import os
import sys
from pathlib import Path

import pytest

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
