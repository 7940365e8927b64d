"""Pointing game (swag_onnx.metrics.pointing): TorchRay's hit rule, box conventions, accuracy,
and the three annotation formats with their error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from swag_onnx.errors import BadInputError, SwagError
from swag_onnx.metrics import (
    Box,
    boxes_by_class,
    load_annotations,
    pointing_accuracy,
    pointing_hit,
    saliency_point,
)

H0, W0 = 100, 120


def _peak(x: int, y: int, h: int = H0, w: int = W0) -> np.ndarray:
    s = np.zeros((h, w), np.float32)
    s[y, x] = 1.0
    return s


def _torchray_hit(saliency, boxes, tolerance) -> bool:
    """TorchRay's rule on an explicit mask: any box pixel with d^2 < tolerance^2."""
    h, w = saliency.shape
    mask = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in boxes:
        mask[max(int(np.floor(y0)), 0):max(int(np.ceil(y1)), 0),
             max(int(np.floor(x0)), 0):max(int(np.ceil(x1)), 0)] = True
    py, px = np.unravel_index(np.argmax(saliency), saliency.shape)
    v, u = np.mgrid[:h, :w]
    return bool(np.any(mask & ((v - py) ** 2 + (u - px) ** 2 < tolerance ** 2)))


# ------------------------------------------------------------------------------------ the game

def test_saliency_point_ties_go_to_the_first_in_row_major_order():
    s = np.zeros((5, 6))
    s[3, 1] = s[2, 4] = s[4, 0] = 2.0
    assert saliency_point(s) == (4, 2)


@pytest.mark.parametrize("distance, hit", [(14, True), (15, False), (16, False)])
def test_tolerance_boundary_is_strict(distance, hit):
    s = _peak(50, 40)
    # a box whose nearest column is `distance` px to the right of the point
    assert pointing_hit(s, [[50 + distance, 30, 80, 50]]) is hit
    # ... to the left (x1 exclusive: the last column is x1 - 1)
    assert pointing_hit(s, [[10, 30, 50 - distance + 1, 50]]) is hit
    # ... below and above
    assert pointing_hit(s, [[40, 40 + distance, 60, 90]]) is hit
    assert pointing_hit(s, [[40, 0, 60, 40 - distance + 1]]) is hit


def test_diagonal_distance_and_tolerance_option():
    s = _peak(50, 40)
    assert pointing_hit(s, [[59, 52, 70, 60]]) is False  # (9, 12): exactly 15
    assert pointing_hit(s, [[59, 51, 70, 60]]) is True  # (9, 11): sqrt(202) < 15
    assert pointing_hit(s, [[59, 52, 70, 60]], tolerance=16) is True
    assert pointing_hit(s, [[55, 40, 70, 60]], tolerance=5) is False
    assert pointing_hit(s, [[55, 40, 70, 60]], tolerance=5.5) is True


def test_box_edges_inside_and_outside_the_image():
    s = _peak(50, 40)
    assert pointing_hit(s, [[45, 35, 55, 45]], tolerance=1) is True  # point inside
    assert pointing_hit(s, [[50, 40, 51, 41]], tolerance=1) is True  # the one pixel (50, 40)
    assert pointing_hit(s, [[51, 40, 52, 41]], tolerance=1) is False  # x0 = 51: next column
    assert pointing_hit(s, [[49, 40, 50, 41]], tolerance=1) is False  # x1 = 50 excludes it
    assert pointing_hit(s, [[49.5, 40, 49.9, 41]], tolerance=1) is False  # column 49 only
    assert pointing_hit(s, [[49.5, 40, 50.1, 41]], tolerance=1) is True  # touches column 50
    corner = _peak(0, 0)
    assert pointing_hit(corner, [[-30, -30, -14, -14]]) is False  # outside the image: no pixel
    assert pointing_hit(corner, [[-30, -30, 5, 5]], tolerance=1) is True  # clipped, contains it
    edge = _peak(W0 - 1, 50)
    assert pointing_hit(edge, [[W0 + 1, 40, W0 + 30, 60]], tolerance=50) is False
    assert pointing_hit(s, np.zeros((0, 4))) is False
    assert pointing_hit(s, [Box("cat", 55, 40, 70, 60)], tolerance=6) is True
    assert pointing_hit(s, [55, 40, 70, 60], tolerance=6) is True  # one box as a flat 4-vector


def test_analytic_rule_matches_torchray_mask_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = rng.integers(20, 60, size=2)
        s = rng.random((h, w))
        boxes = []
        for _ in range(rng.integers(1, 4)):
            x0, y0 = rng.uniform(-10, w), rng.uniform(-10, h)
            boxes.append([x0, y0, x0 + rng.uniform(0.5, 20), y0 + rng.uniform(0.5, 20)])
        tol = int(rng.integers(1, 20))
        assert pointing_hit(s, boxes, tolerance=tol) == _torchray_hit(s, boxes, tol)


def test_bad_boxes_and_maps():
    s = _peak(5, 5, 10, 10)
    with pytest.raises(ValueError, match="x1 > x0"):
        pointing_hit(s, [[5, 5, 5, 8]])
    with pytest.raises(ValueError, match=r"\(M, 4\)"):
        pointing_hit(s, [[1, 2, 3]])
    with pytest.raises(ValueError, match="tolerance"):
        pointing_hit(s, [[1, 2, 3, 4]], tolerance=-1)
    with pytest.raises(ValueError, match="non-finite"):
        pointing_hit(np.full((4, 4), np.nan), [[1, 1, 2, 2]])


def test_accuracy_is_the_mean_of_per_class_accuracies():
    hits = [("cat", True), ("cat", True), ("cat", False), ("dog", False), ("bus", None)]
    acc = pointing_accuracy(hits)
    assert acc["per_class"] == pytest.approx({"cat": 2 / 3, "dog": 0.0})
    assert acc["accuracy"] == pytest.approx(1 / 3)
    assert acc["hit_rate"] == pytest.approx(0.5)
    assert (acc["hits"], acc["trials"]) == (2, 4)
    assert acc["per_class_trials"] == {"cat": 3, "dog": 1}
    empty = pointing_accuracy([])
    assert np.isnan(empty["accuracy"]) and np.isnan(empty["hit_rate"])


def test_boxes_by_class_skips_all_difficult_classes():
    boxes = [Box("dog", 0, 0, 5, 5), Box("dog", 10, 10, 20, 20, difficult=True),
             Box("cat", 1, 1, 2, 2, difficult=True)]
    grouped = boxes_by_class(boxes)
    assert list(grouped) == ["dog"]
    np.testing.assert_array_equal(grouped["dog"], [[0, 0, 5, 5], [10, 10, 20, 20]])


# ---------------------------------------------------------------------------------- the readers

VOC = """<annotation>
  <folder>VOC2007</folder>
  <filename>{name}</filename>
  <size><width>120</width><height>100</height><depth>3</depth></size>
  <object><name>dog</name><difficult>0</difficult>
    <bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>
  <object><name>person</name><difficult>1</difficult>
    <bndbox><xmin>30</xmin><ymin>40</ymin><xmax>35.5</xmax><ymax>41</ymax></bndbox></object>
</annotation>
"""


def test_voc_folder_and_single_file(tmp_path):
    folder = tmp_path / "ann"
    folder.mkdir()
    (folder / "000001.xml").write_text(VOC.format(name="000001.jpg"))
    (folder / "000002.xml").write_text(VOC.format(name="000002.jpg").replace("dog", "cat"))
    (folder / "notes.txt").write_text("ignored")
    ann = load_annotations(folder)
    assert sorted(ann) == ["000001.jpg", "000002.jpg"]
    dog, person = ann["000001.jpg"]
    assert dog == Box("dog", 0.0, 1.0, 10.0, 20.0, False)  # 1-based inclusive -> half-open
    assert person == Box("person", 29.0, 39.0, 35.5, 41.0, True)
    assert ann["000002.jpg"][0].class_name == "cat"
    single = load_annotations(folder / "000001.xml")
    assert single == {"000001.jpg": ann["000001.jpg"]}
    # TorchRay's mask for xmin=1..xmax=10 is columns 0..9: a point at column 24 is 15 px away
    assert pointing_hit(_peak(24, 5), [dog]) is False
    assert pointing_hit(_peak(23, 5), [dog]) is True


def test_csv(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("class,image,x0,y0,x1,y1,difficult\n"
                    "dog,imgs/a.jpg,0,1,10,20,0\n"
                    "\n"
                    "cat,a.jpg,5.5,6,7,8,true\n"
                    "cat,b.png,1,1,3,3,\n")
    ann = load_annotations(path)
    assert ann == {"a.jpg": [Box("dog", 0, 1, 10, 20), Box("cat", 5.5, 6, 7, 8, True)],
                   "b.png": [Box("cat", 1, 1, 3, 3)]}
    plain = tmp_path / "plain.csv"
    plain.write_text("image,class,x0,y0,x1,y1\nc.jpg,bird,1,2,3,4\n")
    assert load_annotations(plain) == {"c.jpg": [Box("bird", 1, 2, 3, 4)]}


def test_json_list_and_mapping(tmp_path):
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([
        {"image": "a.jpg", "class": "dog", "x0": 0, "y0": 1, "x1": 10, "y1": 20},
        {"image": "a.jpg", "class": "cat", "x0": "2", "y0": 3, "x1": 4.5, "y1": 6,
         "difficult": True}]))
    expected = {"a.jpg": [Box("dog", 0, 1, 10, 20), Box("cat", 2, 3, 4.5, 6, True)]}
    assert load_annotations(listed) == expected
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"dir/a.jpg": [
        {"class": "dog", "x0": 0, "y0": 1, "x1": 10, "y1": 20},
        {"class": "cat", "x0": 2, "y0": 3, "x1": 4.5, "y1": 6, "difficult": 1}], "b.jpg": []}))
    assert load_annotations(mapping) == {**expected, "b.jpg": []}


def _error(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BadInputError) as info:
        load_annotations(path)
    assert isinstance(info.value, SwagError)
    message = str(info.value)
    assert str(path) in message
    return message


def test_csv_errors_name_file_and_line(tmp_path):
    assert "line 1: missing column(s) x1" in _error(
        tmp_path, "a.csv", "image,class,x0,y0,y1\na.jpg,dog,1,2,3\n")
    assert "line 3: x0 is not a number: 'abc'" in _error(
        tmp_path, "b.csv", "image,class,x0,y0,x1,y1\na.jpg,dog,1,2,3,4\na.jpg,dog,abc,2,3,4\n")
    assert "line 2: x1 (1) must be greater than x0 (5)" in _error(
        tmp_path, "c.csv", "image,class,x0,y0,x1,y1\na.jpg,dog,5,2,1,4\n")
    assert "line 2: 5 fields, the header has 6" in _error(
        tmp_path, "d.csv", "image,class,x0,y0,x1,y1\na.jpg,dog,5,2,9\n")
    assert "line 2: the class name is missing" in _error(
        tmp_path, "e.csv", "image,class,x0,y0,x1,y1\na.jpg, ,5,2,9,9\n")
    assert "line 2: y1 is not finite" in _error(
        tmp_path, "f.csv", "image,class,x0,y0,x1,y1\na.jpg,dog,5,2,9,inf\n")
    assert "empty file" in _error(tmp_path, "g.csv", "")


def test_json_errors_name_file_and_index(tmp_path):
    assert "[1]: missing key(s) y1" in _error(tmp_path, "a.json", json.dumps([
        {"image": "a.jpg", "class": "dog", "x0": 0, "y0": 1, "x1": 10, "y1": 20},
        {"image": "a.jpg", "class": "dog", "x0": 0, "y0": 1, "x1": 10}]))
    assert "['a.jpg'][0]: y0 is not a number: True" in _error(tmp_path, "b.json", json.dumps(
        {"a.jpg": [{"class": "dog", "x0": 0, "y0": True, "x1": 10, "y1": 20}]}))
    assert "['a.jpg'][0]: y1 (0) must be greater than y0 (1)" in _error(
        tmp_path, "c.json", json.dumps(
            {"a.jpg": [{"class": "dog", "x0": 0, "y0": 1, "x1": 10, "y1": 0}]}))
    assert "line 3: not valid JSON" in _error(tmp_path, "d.json", '[\n{"image": "a.jpg",\n,]')
    assert "expected a list of boxes" in _error(tmp_path, "e.json", '"a.jpg"')
    assert "[0]: expected an object" in _error(tmp_path, "f.json", "[[1, 2, 3, 4]]")


def test_xml_errors_name_file_and_element(tmp_path):
    bad_number = VOC.format(name="a.jpg").replace("<xmax>10</xmax>", "<xmax>ten</xmax>")
    assert "<object> #1: <bndbox>/<xmax> is not a number: 'ten'" in _error(
        tmp_path, "a.xml", bad_number)
    reversed_box = VOC.format(name="a.jpg").replace("<xmin>30</xmin>", "<xmin>36</xmin>")
    assert "<object> #2: <bndbox> has xmax < xmin" in _error(tmp_path, "b.xml", reversed_box)
    assert "line 3: not well-formed XML" in _error(
        tmp_path, "c.xml", "<annotation>\n<filename>a.jpg</filename>\n<object></annotation>")
    no_box = VOC.format(name="a.jpg").replace("<bndbox>", "<box>").replace("</bndbox>", "</box>")
    assert "<object> #1: no <bndbox>" in _error(tmp_path, "d.xml", no_box)
    assert "<filename>: the image name is missing" in _error(
        tmp_path, "e.xml", "<annotation><object/></annotation>")
    assert "expected <annotation>" in _error(tmp_path, "f.xml", "<root/>")
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x "xxxxxxxx">]>\n'
            "<annotation><filename>&x;</filename></annotation>")
    assert "DOCTYPE/ENTITY declarations are not accepted" in _error(tmp_path, "g.xml", bomb)
    missing_name = VOC.format(name="a.jpg").replace("<name>dog</name>", "")
    assert "<object> #1: the class name is missing" in _error(tmp_path, "h.xml", missing_name)


def test_missing_paths_and_unknown_formats(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        load_annotations(tmp_path / "nope.csv")
    with pytest.raises(BadInputError, match="no .xml annotation files"):
        load_annotations(tmp_path)
    _error(tmp_path, "boxes.txt", "a.jpg dog 1 2 3 4")
    bad = tmp_path / "bin.csv"
    bad.write_bytes(b"image,class,x0,y0,x1,y1\n\xff\xfe,dog,1,2,3,4\n")
    with pytest.raises(BadInputError, match="cannot read"):
        load_annotations(bad)
