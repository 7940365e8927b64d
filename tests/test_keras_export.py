"""tools/export_keras.py: Keras applications and model files become model folders that
`swag-onnx explain` uses (NHWC input, the application's preprocessing in the card); bad input
gives one line and exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from skimage import data
from typer.testing import CliRunner

import keras_zoo as kz
from swag_onnx import describe
from swag_onnx import images as imgs
from swag_onnx.cli import app
from swag_onnx.explain import Explainer
from swag_onnx.graph.analysis import stage_outputs

keras = kz.keras


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(kz.TOOL), *args], capture_output=True, text=True,
                          timeout=600)


def tool_main(capfd, *args: str) -> tuple[int, str, str]:
    """Run the tool in this process (TensorFlow is already imported): (exit code, out, err)."""
    with pytest.raises(SystemExit) as exit_info:
        kz.tool().main([*args])
        raise SystemExit(0)
    out, err = capfd.readouterr()
    return exit_info.value.code or 0, out, err


def small_cnn(built: bool = True) -> keras.Model:
    """Conv-BN-ReLU-MaxPool-Dense classifier over 3 classes; built=False: a Sequential that has
    never been called (no input shape)."""
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Conv2D(8, 3, padding="same", use_bias=False),
              keras.layers.BatchNormalization(), keras.layers.ReLU(),
              keras.layers.MaxPooling2D(2), keras.layers.Conv2D(8, 3, activation="relu"),
              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, activation="softmax")]
    if built:
        layers.insert(0, keras.Input((24, 24, 3)))
    return keras.Sequential(layers)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "coffee.png"
    cv2.imwrite(str(path), data.coffee()[:, :, ::-1])
    return path


def test_export_application_then_explain_cli(tmp_path, photo):
    out = tmp_path / "mobilenet"
    run = run_tool("--model", "MobileNetV2", "--weights", "none", "--input-size", "32",
                   "--out", str(out))
    assert run.returncode == 0, run.stderr[-2000:]
    card = json.loads((out / "card.json").read_text())
    assert card["layout"] == "NHWC" and card["input_size"] == [32, 32]
    assert card["preprocessing"] == "tf" and card["scaling"] == {"offset": 127.5,
                                                                 "divisor": 127.5}
    assert len(card["class_names"]) == 1000 and card["class_names"][0] == "tench"
    assert card["input_name"] == "image" and card["provenance"]["onnx_sha256"]
    assert card["score"].endswith("MatMul:0") or "predictions" in card["score"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    # tf2onnx runs convolutions channels-first between Transposes: layers are found per layout
    info = describe(out / "model.onnx")
    stages = stage_outputs(info.layers, info.layout)
    assert [shape.spatial for _, shape in stages] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert info.auto_layer == stages[-1][0] and stages[-1][1].layout == "NCHW"

    maps = tmp_path / "maps"
    result = CliRunner().invoke(app, ["explain", str(photo), "--model", str(out), "--method",
                                      "swag", "--method", "gradcam", "--out", str(maps)])
    assert result.exit_code == 0, result.output
    height, width = data.coffee().shape[:2]
    for method in ("swag-image", "gradcam"):
        saliency = np.load(maps / f"coffee.{method}.npy")
        assert saliency.shape == (height, width) and saliency.dtype == np.float32
        assert saliency.min() >= 0.0 and saliency.max() <= 1.0 and saliency.max() > 0.0
        assert cv2.imread(str(maps / f"coffee.{method}.png")).shape[:2] == (height, width)
        record = json.loads((maps / f"coffee.{method}.json").read_text())
        assert record["method"] == method and len(record["top5"]) == 5


@pytest.mark.parametrize("kind", ["keras", "h5", "savedmodel", "unbuilt", "keras-exporter"])
def test_export_model_files(kind, tmp_path, capfd):
    """.keras, .h5, SavedModel folders and never-called models export; the card carries the
    given preprocessing and labels; gradients and predictions work through Explainer."""
    model = small_cnn(built=kind != "unbuilt")
    args = ["--preprocessing", "caffe"]
    if kind == "savedmodel":
        path = tmp_path / "saved"
        with kz.tool().quiet_stderr():
            model.export(str(path), format="tf_saved_model", verbose=False)
    else:
        path = tmp_path / ("model.h5" if kind == "h5" else "model.keras")
        model.save(str(path))
    if kind == "unbuilt":
        args += ["--input-size", "24"]
    if kind == "keras-exporter":
        args += ["--exporter", "keras"]
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\n")
    code, out, err = tool_main(capfd, "--model", str(path), "--out", str(tmp_path / "o"),
                               "--labels", str(labels), *args)
    assert code == 0, err
    card = json.loads((tmp_path / "o" / "card.json").read_text())
    assert card["class_names"] == ["cat", "dog", "bird"] and card["color_order"] == "BGR"
    assert card["input_size"] == [24, 24] and card["layout"] == "NHWC"
    explainer = Explainer(tmp_path / "o")
    result, = explainer.explain([data.coffee()], method="gradient")
    assert result.saliency.shape == data.coffee().shape[:2]
    # the ONNX model gives what Keras gives on the same preprocessed image
    x, _ = imgs.preprocess(data.coffee(), card)
    probabilities = [p["probability"] for p in explainer.predict([data.coffee()])[0].top5]
    assert np.allclose(sorted(probabilities, reverse=True)[:3],
                       np.sort(np.asarray(model(x))[0])[::-1], atol=1e-5)


@pytest.mark.parametrize("module,mode", [
    ("vgg16", "caffe"), ("resnet50", "caffe"), ("mobilenet_v2", "tf"), ("inception_v3", "tf"),
    ("densenet", "torch"), ("efficientnet", "raw"),
])
def test_card_preprocessing_equals_keras_preprocess_input(module, mode):
    """The card written for each preprocess_input mode makes swag_onnx.images compute exactly
    what the application's preprocess_input computes (caffe: BGR and mean subtraction)."""
    preprocess_input = getattr(keras.applications, module).preprocess_input
    assert kz.tool().detect_preprocessing(preprocess_input) == mode
    card = {"layout": "NHWC", "input_size": [40, 48], **kz.tool().PREPROCESSING[mode]}
    rgb = data.astronaut()
    x, geometry = imgs.preprocess(rgb, card)
    expected = preprocess_input(imgs.model_view(rgb, geometry).astype(np.float32)[None])
    assert x.shape == (1, 40, 48, 3)
    assert np.allclose(x, np.asarray(expected), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", ["unknown-name", "unreadable-file", "missing-file"])
def test_bad_input_subprocess(case, tmp_path):
    """The real command line: one line on stderr, exit code 2, no traceback, nothing written."""
    if case == "unknown-name":
        model, message = "MobileNetV9", "not a keras.applications network"
    elif case == "unreadable-file":
        model, message = str(tmp_path / "broken.keras"), "cannot read Keras model"
        (tmp_path / "broken.keras").write_bytes(b"this is not a zip archive")
    else:
        model, message = str(tmp_path / "absent.keras"), "does not exist"
    run = run_tool("--model", model, "--weights", "none", "--preprocessing", "tf",
                   "--out", str(tmp_path / "o"))
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("error: "), lines
    assert not (tmp_path / "o").exists()


def _dense_model(path):
    keras.Sequential([keras.Input((10,)), keras.layers.Dense(3)]).save(str(path))


def _gray_model(path):
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3),
                      keras.layers.Flatten(), keras.layers.Dense(3)]).save(str(path))


@pytest.mark.parametrize("make,args,message", [
    (_dense_model, ["--preprocessing", "tf"], "not a rank-4 image input"),
    (_gray_model, ["--preprocessing", "tf"], "expected channels-last RGB"),
    (_dense_model, [], "need --preprocessing"),
    (None, ["--model", "ResNet50", "--weights", "none", "--input-size", "8"], "ResNet50: "),
    (None, ["--model", "MobileNetV2", "--exporter", "onnxscript"], "invalid choice"),
    (None, ["--model", "MobileNetV2", "--weights", "missing.h5"], "no such weights file"),
])
def test_bad_input(make, args, message, tmp_path, capfd):
    if make is not None:
        make(tmp_path / "m.keras")
        args = ["--model", str(tmp_path / "m.keras"), *args]
    code, _, err = tool_main(capfd, *args, "--out", str(tmp_path / "o"))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_unconvertible_model_is_reported(tmp_path, capfd):
    """tf2onnx cannot convert the exact GELU (TensorFlow's Erfc): one line, exit code 1, and no
    model.onnx is left behind."""
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, activation="gelu"),
                      keras.layers.Flatten(), keras.layers.Dense(3)]).save(tmp_path / "m.keras")
    code, _, err = tool_main(capfd, "--model", str(tmp_path / "m.keras"), "--preprocessing",
                             "tf", "--out", str(tmp_path / "o"))
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "could not convert" in lines[0], lines
    assert "Erfc" in lines[0] and not any((tmp_path / "o").iterdir())
