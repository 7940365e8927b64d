"""tools/make_composites.py: boxes inside the images, same seed -> identical files, the class rate
printed, and a known-evidence toy model (its class score is the most colourful 5 x 5 window)
scoring pointing 1.0 on composites of colour photos on grey textures. The harder options:
--scale sizes the box, --avoid-center makes the `center` control miss (checked with the control's
own map and the pointing game), --distractors pastes other classes clear of the target box (a
map peaking on a distractor misses it), --keep top5 keeps what the top-5 holds."""

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
from swag_onnx.methods.controls import center_map
from swag_onnx.metrics.energy import energy_in_boxes
from swag_onnx.metrics.pointing import TOLERANCE, load_annotations, pointing_hit

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


def _peak(shape, x: int, y: int) -> np.ndarray:
    """An (H, W) map whose only maximum is at column x, row y."""
    m = np.zeros(shape)
    m[y, x] = 1.0
    return m


def _misses_center(box, size: int = 320) -> bool:
    """The `center` control's map (its own code) scored by the pointing game: a miss."""
    return not pointing_hit(center_map((size, size), 0.25), np.array([box], float))


def test_box_near_point_and_boxes_clear_agree_with_the_pointing_game():
    tool = _tool()
    rng = np.random.default_rng(0)
    shape = (80, 80)
    for _ in range(300):
        x0, y0 = rng.integers(0, 60, 2)
        box = (int(x0), int(y0), int(x0 + rng.integers(1, 20)), int(y0 + rng.integers(1, 20)))
        px, py = (int(v) for v in rng.integers(0, 80, 2))
        hit = pointing_hit(_peak(shape, px, py), np.array([box], float))
        # near within TOLERANCE - 1 (integer distances): the game's strict "< TOLERANCE"
        assert tool.box_near_point(box, (px, py), TOLERANCE - 1e-9) == hit
        other = (int(px), int(py), int(px) + 5, int(py) + 5)
        if tool.boxes_clear(box, other, TOLERANCE):  # no pixel of `other` hits `box`
            assert not any(pointing_hit(_peak(shape, x, y), np.array([box], float))
                           for x in range(other[0], min(other[2], 80))
                           for y in range(other[1], min(other[3], 80)))
    assert not tool.boxes_clear((0, 0, 10, 10), (20, 0, 30, 10), TOLERANCE)  # 10 px apart


def test_hard_options_scale_avoid_center_reproducible_on_known_evidence_model(tmp_path):
    tool = _tool()
    model = _colour_model(tmp_path / "colour")
    argv = ["--count", "8", "--seed", "3", "--model", str(model), "--photo", "coffee",
            "--photo", "chelsea", "--scale", "0.25", "0.35", "--avoid-center"]
    first, again = tmp_path / "a", tmp_path / "b"
    for out in (first, again):
        assert tool.main(["--out", str(out)] + argv) == 0
    for name in sorted(p.name for p in first.iterdir()):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    summary = json.loads((first / "composites.json").read_text())
    assert summary["scale"] == [0.25, 0.35] and summary["avoid_center"] is True
    assert summary["kept"] == summary["made"] == 8
    explainer = Explainer(model)
    annotations = _check_folder(first, explainer)
    x0, y0, x1, y1 = summary["visible_region"]  # 64 x 64 view: the whole canvas
    view = min(x1 - x0, y1 - y0)
    for name, (box,) in annotations.items():
        assert x0 <= box.x0 and y0 <= box.y0 and box.x1 <= x1 and box.y1 <= y1
        side = max(box.x1 - box.x0, box.y1 - box.y0)
        assert 0.25 * view - 1 <= side <= 0.35 * view + 1
        assert _misses_center(box.xyxy)
        result, = explainer.explain([first / name], method="gradient", target="colour")
        assert pointing_hit(result.saliency, np.array([box.xyxy]))  # still found by the map
    # the same draws without --avoid-center put some box over the centre: the option matters
    tool.main(["--out", str(tmp_path / "c")] + argv[:-1])
    plain = load_annotations(tmp_path / "c" / "boxes.csv")
    assert not all(_misses_center(b.xyxy) for (b,) in plain.values())


def test_distractors_on_the_default_model(tmp_path, capsys):
    """Two classes (espresso, tripod): each composite has the other one as a distractor, clear
    of the target's box; --keep top5 keeps the composites whose top-5 holds the target."""
    tool = _tool()
    explainer = Explainer()
    out = tmp_path / "hard"
    summary = tool.make(explainer, out, 6, 2, photo_names=["coffee", "camera"],
                        layout=tool.Layout((0.3, 0.45), True, 1), keep="top5")
    printed = capsys.readouterr().out
    assert (f"class rate: {summary['top1']}/{summary['made']} composites have the pasted "
            f"object's class as top-1") in printed
    assert f"{summary['top5']} among the top-5" in printed
    made = [d for d in summary["draws"] if "top1" in d]
    assert summary["made"] == len(made) >= 4 and summary["kept"] == summary["top5"] >= 1
    assert summary["class_rate"] == summary["top1"] / summary["made"]
    annotations = _check_folder(out, explainer)
    for d in made:
        (other,) = d["distractors"]
        assert other["class"] != d["class"] and _misses_center(d["box"])
        ox0, oy0, ox1, oy1 = other["box"]
        corners = [(ox0, oy0), (ox1 - 1, oy0), (ox0, oy1 - 1), (ox1 - 1, oy1 - 1)]
        assert not any(pointing_hit(_peak((320, 320), x, y), np.array([d["box"]], float))
                       for x, y in corners)
    for name, (box,) in annotations.items():  # kept: the target among the top-5
        top5 = explainer.predict([out / name])[0].top5
        assert parse_target(explainer.card, box.class_name, 1000) in [t["index"] for t in top5]
    # the same seed draws the same composites (the objects' crops are deterministic: reused)
    from eval_devset import photos  # on sys.path once the tool is loaded

    objects = tool.find_objects
    found = objects(explainer, [(n, r) for n, r in photos() if n in ("coffee", "camera")],
                    0.3, print)
    tool.find_objects = lambda *a: found
    try:
        tool.make(explainer, tmp_path / "again", 6, 2, photo_names=["coffee", "camera"],
                  layout=tool.Layout((0.3, 0.45), True, 1), keep="top5")
    finally:
        tool.find_objects = objects
    for name in sorted(p.name for p in out.iterdir()):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name


def test_too_many_distractors_exit_2(tmp_path, capsys):
    model = _colour_model(tmp_path / "colour")  # one object class: no distractor possible
    assert _tool().main(["--out", str(tmp_path / "o"), "--model", str(model), "--photo",
                         "coffee", "--distractors", "1"]) == 2
    assert "--distractors 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--count", "0"], ["--size", "10"], ["--confidence", "0"],
                                  ["--scale", "0.5", "0.2"], ["--scale", "0", "0.3"],
                                  ["--distractors", "-1"], ["--keep", "top3"]])
def test_bad_options_exit_2(tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        _tool().main(["--out", str(tmp_path)] + argv)
    assert exc.value.code == 2
