"""tools/make_composites.py: boxes inside the images, same seed -> identical files, the class rate
printed, and a known-evidence toy model (its class score is the most colourful 5 x 5 window)
scoring pointing 1.0 on composites of colour photos on grey textures."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from swag_onnx import Explainer
from swag_onnx.card import parse_target
from swag_onnx.images import load_image
from swag_onnx.metrics.energy import energy_in_boxes
from swag_onnx.metrics.pointing import load_annotations, pointing_hit

TOOL = Path(__file__).resolve().parents[1] / "tools" / "make_composites.py"


def _tool():
    if "make_composites" not in sys.modules:  # dataclasses need the module registered
        spec = importlib.util.spec_from_file_location("make_composites", TOOL)
        module = importlib.util.module_from_spec(spec)
        sys.modules["make_composites"] = module
        spec.loader.exec_module(module)
    return sys.modules["make_composites"]


def _colour_model(folder: Path) -> Path:
    """Two classes (grey, colour): logits (6, 400 * m), m the largest 5 x 5 mean of
    (R - G)^2 + (G - B)^2 on pixel/255: a grey image is 'grey', a colourful patch 'colour', and
    the evidence (the gradient) lies in the most colourful window."""
    inits = [numpy_helper.from_array(np.array([[1, -1, 0], [0, 1, -1]], np.float32)
                                     .reshape(2, 3, 1, 1), "diff"),
             numpy_helper.from_array(np.ones((1, 2, 1, 1), np.float32), "sum"),
             numpy_helper.from_array(np.array([[0.0, 400.0]], np.float32), "w"),
             numpy_helper.from_array(np.array([6.0, 0.0], np.float32), "b")]
    nodes = [helper.make_node("Conv", ["image", "diff"], ["d"]),
             helper.make_node("Mul", ["d", "d"], ["d2"]),
             helper.make_node("Conv", ["d2", "sum"], ["c"]),
             helper.make_node("AveragePool", ["c"], ["a"], kernel_shape=[5, 5], pads=[2] * 4,
                              count_include_pad=0),
             helper.make_node("GlobalMaxPool", ["a"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "colour", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                        ["N", 3, 64, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    (folder / "card.json").write_text(json.dumps({
        "model": "model.onnx", "input_name": "image", "layout": "NCHW", "input_size": [64, 64],
        "resize": None, "scaling": {"mean": [0, 0, 0], "std": [1, 1, 1]},
        "color_order": "RGB", "class_names": ["grey", "colour"], "score": "logits",
        "default_layers": ["c"]}))
    return folder


def _check_folder(out: Path, explainer) -> dict:
    """Boxes inside the images, every listed image exists, classes resolve; the annotations."""
    annotations = load_annotations(out / "boxes.csv")
    assert annotations
    for name, boxes in annotations.items():
        h, w = load_image(out / name).shape[:2]
        for box in boxes:
            assert 0 <= box.x0 < box.x1 <= w and 0 <= box.y0 < box.y1 <= h
            parse_target(explainer.card, box.class_name, explainer.num_classes)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(annotations)  # only the kept composites are written
    return annotations


def test_default_model_composites_and_class_rate(tmp_path, capsys):
    tool = _tool()
    out = tmp_path / "default"
    assert tool.main(["--out", str(out), "--count", "4", "--seed", "1",
                      "--photo", "coffee", "--photo", "camera"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "composites.json").read_text())
    assert f"class rate: {summary['kept']}/{summary['made']}" in printed
    assert summary["made"] == 4 and summary["kept"] >= 1
    explainer = Explainer()
    annotations = _check_folder(out, explainer)
    for name, boxes in annotations.items():  # kept means: the model's top-1 is the box's class
        top = explainer.predict([out / name])[0].top5[0]
        assert top["index"] == parse_target(explainer.card, boxes[0].class_name, 1000)


def test_known_evidence_model_points_inside_every_box_and_seed_reproducibility(tmp_path):
    tool = _tool()
    model = _colour_model(tmp_path / "colour")
    first, again = tmp_path / "a", tmp_path / "b"
    for out in (first, again):
        assert tool.main(["--out", str(out), "--count", "6", "--seed", "7", "--model", str(model),
                          "--photo", "coffee", "--photo", "chelsea"]) == 0
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    explainer = Explainer(model)
    annotations = _check_folder(first, explainer)
    summary = json.loads((first / "composites.json").read_text())
    # colour backgrounds (retina, immunohistochemistry, Hubble) are refused for class 'colour'
    assert {d["background"] for d in summary["draws"] if "background" in d} <= {
        "brick", "grass", "gravel", "moon", "coins", "cell"}
    assert summary["kept"] == summary["made"] == 6  # a colour patch on grey: always 'colour'
    for name, boxes in annotations.items():
        result, = explainer.explain([first / name], method="gradient", target="colour")
        xyxy = np.array([b.xyxy for b in boxes])
        assert pointing_hit(result.saliency, xyxy)
        # the evidence lies in the box on the 64 x 64 model grid; mapping the map back to the
        # 320 x 320 canvas (bilinear) spreads it by at most one model pixel, 5 canvas pixels
        assert energy_in_boxes(result.saliency, xyxy) > 0.5
        grown = xyxy + np.array([-5, -5, 5, 5])
        assert energy_in_boxes(result.saliency, grown) > 0.999

    other = tmp_path / "c"
    tool.main(["--out", str(other), "--count", "6", "--seed", "8", "--model", str(model),
               "--photo", "coffee", "--photo", "chelsea"])
    with open(first / "boxes.csv") as f, open(other / "boxes.csv") as g:
        assert list(csv.reader(f)) != list(csv.reader(g))


def test_visible_region_is_the_model_view():
    tool = _tool()
    card = {"input_size": [224, 224], "resize": 256, "crop": "center", "layout": "NCHW",
            "scaling": {"mean": [0, 0, 0], "std": [1, 1, 1]}}
    assert tool.visible_region(card, 320) == (20, 20, 300, 300)  # 320 -> 256, crop 16..240


@pytest.mark.parametrize("argv", [["--count", "0"], ["--size", "10"], ["--confidence", "0"]])
def test_bad_options_exit_2(tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        _tool().main(["--out", str(tmp_path)] + argv)
    assert exc.value.code == 2
