"""report.html and index.html (swag_onnx.html), opened in Debian's chromium through Playwright.

The browser is /usr/bin/chromium (.ci/run installs it with apt-get); a missing browser fails
these tests, it does not skip them. Each page test asserts no console error, no request leaving
the disk, every <img> decoded, and that sorting and the filters change what is shown; it saves a
screenshot under its tmp_path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from playwright.sync_api import sync_playwright

from swag_onnx import html, images
from swag_onnx.report import Stat

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
METRIC_INFO = {
    "deletion": {"title": "deletion AUC", "higher_is_better": False,
                 "x_label": "fraction of pixels deleted", "y_label": "probability"},
    "insertion": {"title": "insertion AUC", "higher_is_better": True},
    "pointing": {"title": "pointing accuracy", "higher_is_better": True, "per_class": True},
}
ODD = 'cat & <dog> "x"\'s'  # an image name that must be escaped in text, attributes and URLs
IMAGES = ["img_a", ODD, "img_c"]
METHODS = ["gradcam", "swag-image", "random", "center"]
METRICS = ["deletion", "insertion", "pointing"]
# per method, per image: deletion AUC (lower better) and insertion AUC (higher better); the
# random control beats gradcam on insertion only, so only insertion is flagged
VALUES = {
    "deletion": {"gradcam": [0.10, 0.20, 0.15], "swag-image": [0.05, 0.10, 0.08],
                 "random": [0.30, 0.35, 0.40], "center": [0.25, 0.20, 0.30]},
    "insertion": {"gradcam": [0.40, 0.50, 0.45], "swag-image": [0.70, 0.75, 0.72],
                  "random": [0.50, 0.55, 0.60], "center": [0.30, 0.35, 0.25]},
}
HITS = {"gradcam": [1, 0, 1], "swag-image": [1, 1, 1], "random": [0, 0, 1], "center": [1, 0, 0]}
POINT_LABELS = ["cat", "dog", "cat"]
CLEAN_P = [0.81, 0.62, 0.93]  # the explained class's probability on each clean image
MODEL = {"file": "model.onnx", "sha256": "ab" * 32, "layers": ["features.<8>"],
         "layout": "CHW", "input_size": [64, 64], "resize": 72, "crop": "center",
         "scaling": {"mean": [0.5] * 3, "std": [0.25] * 3}, "color_order": "RGB", "score": None}
RUN_INFO = {"images": 3, "seconds": 1.5, "provider": "CPUExecutionProvider",
            "methods": METHODS, "metrics": METRICS}


# ------------------------------------------------------------------------------- browser

@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Opened:
    """A page of `browser` that records console errors, page errors and every request."""

    def __init__(self, browser, path):
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.errors, self.requests = [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error"
                     else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed: {r.url}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")

    def check_loaded(self, expected_images: int) -> None:
        assert self.errors == []
        assert all(u.startswith(("file://", "data:")) for u in self.requests), self.requests
        loaded = self.page.eval_on_selector_all(
            "img", "els => els.map(e => [e.getAttribute('src'), e.complete, e.naturalWidth])")
        assert len(loaded) == expected_images
        assert all(done and width > 0 for _, done, width in loaded), loaded

    def visible(self, selector: str) -> list[bool]:
        loc = self.page.locator(selector)
        return [loc.nth(k).is_visible() for k in range(loc.count())]

    def order(self) -> list[str]:
        return self.page.eval_on_selector_all(
            "#summary-table tbody tr", "rows => rows.map(r => r.dataset.method)")

    def click_header(self, text: str) -> None:
        self.page.locator("#summary-table thead th button", has_text=text).click()


# ------------------------------------------------------------------------------- a folder

def _curve(metric: str, p: float, rate: float) -> np.ndarray:
    """(2, 17) x and y: deletion falls from p, insertion rises to p."""
    x = np.linspace(0.0, 1.0, 17)
    y = p * np.exp(-x / rate) if metric == "deletion" else p * (1 - np.exp(-x / rate)) / (
        1 - np.exp(-1 / rate))
    return np.stack([x, y])


def synthetic_folder(out):
    """An evaluate folder: rows, thumbnails (all but img_c x center) and curves."""
    rows = []
    for i, image in enumerate(IMAGES):
        for k, method in enumerate(METHODS):
            if (image, method) != ("img_c", "center"):
                colour = np.array([60 * k, 200 - 40 * i, 90], np.uint8)
                images.write_png(out / "thumbs" / f"{image}__{method}.png",
                                 np.broadcast_to(colour, (24, 32, 3)).copy())
            for metric in ("deletion", "insertion"):
                value = VALUES[metric][method][i]
                images.write_npy(out / "curves" / f"{image}__{method}__{metric}.npy",
                                 _curve(metric, CLEAN_P[i], value))
                rows.append(dict(image=image, method=method, metric=metric, target=7,
                                 label="tabby <cat>", value=value, seconds=0.01 * (k + 1),
                                 detail=""))
            hit = HITS[method][i]
            rows.append(dict(image=image, method=method, metric="pointing", target=3,
                             label=POINT_LABELS[i], value=float(hit), seconds=0.02,
                             detail="hit" if hit else "miss"))
    return rows


def settings() -> dict:
    """settings.json's "settings" as swag_onnx.evaluate.settings_of writes them: every
    protocol option (the defaults, step 256) on a 64x64 model."""
    from swag_onnx.metrics import registry

    return {"format": 2, "model": MODEL, "methods": {},
            "protocol": {"resolution": [64, 64], **registry.check_protocol({"step": 256})}}


def metric_info(names) -> dict:
    """What the CLI passes: each row's title and direction (and its curves' axis labels) from
    the metric registry."""
    from swag_onnx.metrics import registry

    info = {}
    for name in names:
        row, curves = registry.rows_info()[name], registry.owner(name).curves
        info[name] = {"title": row.title, "higher_is_better": row.higher_is_better,
                      "per_class": registry.owner(name).per_class}
        if curves:
            info[name].update(x_label=curves[0], y_label=curves[1])
    return info


def _mean_std(values) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def _pointing_mean(method) -> float:
    by_class = {c: [h for h, cc in zip(HITS[method], POINT_LABELS) if cc == c]
                for c in set(POINT_LABELS)}
    return float(np.mean([np.mean(v) for v in by_class.values()]))


# ---------------------------------------------------------------------------------- tests

def test_control_flags_direction_ties_and_nan():
    stats = {("a", "del"): Stat(0.2, 0, 3), ("random", "del"): Stat(0.2, 0, 3),
             ("a", "ins"): Stat(0.4, 0, 3), ("b", "ins"): Stat(0.8, 0, 3),
             ("random", "ins"): Stat(0.5, 0, 3), ("center", "ins"): Stat(math.nan, 0, 0),
             ("center", "del"): Stat(0.1, 0, 3), ("b", "del"): Stat(math.nan, 0, 0)}
    info = {"del": {"higher_is_better": False}, "ins": {"higher_is_better": True}}
    flags = html.control_flags(stats, ["a", "b", "random", "center"], ["del", "ins"], info)
    # a tie is not a win; NaN means are left out; lower is better for "del"
    assert flags == {"del": {"center": ["a"]}, "ins": {"random": ["a"]}}
    assert html.control_flags(stats, ["a", "b", "random"], ["del"], info) == {}


def test_evaluation_page_in_chromium(tmp_path, browser):
    out = tmp_path / "eval"
    rows = synthetic_folder(out)
    path = html.write_evaluation_page(out, rows, METHODS, METRICS, settings(), RUN_INFO,
                                      METRIC_INFO)
    assert path == out / "report.html"
    view = Opened(browser, path)
    page = view.page
    view.check_loaded(len(IMAGES) * len(METHODS) - 1)  # img_c x center has no thumbnail
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)

    # table: every mean +- std, computed here independently
    for method in METHODS:
        row = page.locator(f"#summary-table tr[data-method='{method}']")
        for metric in ("deletion", "insertion"):
            cell = row.locator(f"td[data-metric='{metric}']").inner_text()
            assert cell.startswith(_mean_std(VALUES[metric][method])), (method, metric, cell)
        assert row.locator("td[data-metric='pointing']").inner_text().startswith(
            f"{_pointing_mean(method):.3f} ± ")
    # sorting: deletion (lower is better) puts the best first, a second click reverses
    by_deletion = sorted(METHODS, key=lambda m: np.mean(VALUES["deletion"][m]))
    assert view.order() == METHODS
    view.click_header("deletion AUC")
    assert view.order() == by_deletion
    view.click_header("deletion AUC")
    assert view.order() == by_deletion[::-1]
    view.click_header("insertion AUC")
    assert view.order() == sorted(METHODS, key=lambda m: -np.mean(VALUES["insertion"][m]))
    view.click_header("method")
    assert view.order() == sorted(METHODS)

    # controls: insertion flagged (random beats gradcam), deletion not
    flags = page.locator("#controls li.flag")
    assert flags.count() == 1
    assert flags.get_attribute("data-metric") == "insertion"
    assert "random beats gradcam" in flags.inner_text()
    assert page.locator("#summary-table th[data-flagged]").get_attribute(
        "data-metric") == "insertion"

    # curves: one panel per curve metric, one line per method
    assert page.locator("#curves figure").count() == 2
    assert page.locator("#curves figure[data-metric='deletion'] polyline").count() == 4

    # gallery: the odd name is text (not markup); class and clean probability per cell
    assert page.locator("dog").count() == 0
    assert page.locator("#gallery tbody th").nth(1).inner_text() == ODD
    cell = page.locator("#gallery tr[data-image='img_a'] td[data-method='swag-image']")
    assert cell.locator(".cls").inner_text() == f"tabby <cat> ({CLEAN_P[0]:.1%})"
    assert "pointing accuracy (cat): hit" in cell.inner_text()
    assert page.locator("#gallery tr[data-image='img_c'] td[data-method='center'] "
                        ".missing").count() == 1

    # method filter: gradcam's row, gallery cells and curves disappear, the others stay
    page.locator("input[data-filter='method'][value='gradcam']").uncheck()
    assert view.visible("#summary-table tr[data-method='gradcam']") == [False]
    assert view.visible("#gallery [data-method='gradcam']") == [False] * (1 + len(IMAGES))
    assert view.visible("polyline[data-method='gradcam']") == [False, False]
    assert all(view.visible("#gallery td[data-method='swag-image']"))
    assert len(view.order()) == 4 and view.visible("#summary-table tbody tr").count(True) == 3
    page.screenshot(path=str(tmp_path / "report-filtered.png"), full_page=True)
    page.locator("input[data-filter='method'][value='gradcam']").check()
    assert view.visible("#summary-table tr[data-method='gradcam']") == [True]
    # metric filter: insertion's column, curve panel and gallery values disappear
    page.locator("input[data-filter='metric'][value='insertion']").uncheck()
    assert not any(view.visible("#summary-table [data-metric='insertion']"))
    assert view.visible("#curves figure[data-metric='insertion']") == [False]
    assert not any(view.visible("#gallery li[data-metric='insertion']"))
    assert all(view.visible("#summary-table td[data-metric='deletion']"))
    assert view.errors == []
    page.close()


def test_evaluation_page_without_controls_says_so(tmp_path, browser):
    out = tmp_path / "eval"
    rows = [r for r in synthetic_folder(out) if r["method"] in ("gradcam", "swag-image")]
    path = html.write_evaluation_page(out, rows, ["gradcam", "swag-image"], METRICS, settings(),
                                      RUN_INFO, METRIC_INFO)
    view = Opened(browser, path)
    view.check_loaded(len(IMAGES) * 2)
    assert "No control map" in view.page.locator("#controls").inner_text()
    assert view.page.locator("[data-flagged]").count() == 0
    view.page.close()


def test_evaluation_page_needs_every_metric_described(tmp_path):
    with pytest.raises(ValueError, match="pointing"):
        html.write_evaluation_page(tmp_path, [], ["gradcam"], ["deletion", "pointing"],
                                   settings(), RUN_INFO, {"deletion": METRIC_INFO["deletion"]})


def _top5(first: str, p: float) -> list[dict]:
    rest = (1 - p) / 4
    return [{"index": 5, "label": first, "probability": p}] + [
        {"index": i, "label": f"class {i}", "probability": rest} for i in range(4)]


def test_explain_index_in_chromium(tmp_path, browser):
    records = []
    for s, (stem, label, p) in enumerate([("photo", "tabby", 0.9), (ODD, "<b>dog</b>", 0.6)]):
        for k, method in enumerate(["swag-image", "gradcam"]):
            png = f"{stem}.{method}.png"
            images.write_png(tmp_path / png, np.full((30, 40, 3), 80 * k + 40 * s, np.uint8))
            records.append({"stem": stem, "method": method, "png": png,
                            "target": {"index": 5, "label": label}, "top5": _top5(label, p)})
    path = html.write_explain_index(tmp_path, records)
    assert path == tmp_path / "index.html"
    view = Opened(browser, path)
    page = view.page
    view.check_loaded(4)
    page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
    sections = page.locator("section.image")
    assert sections.count() == 2
    assert sections.nth(1).locator("h2").inner_text() == ODD
    assert page.locator("b", has_text="dog").count() == 0  # the label is text, not markup
    top = sections.nth(1).locator(".top5 tbody tr")
    assert top.count() == 5
    assert top.nth(0).inner_text().split("\t") == ["1", "<b>dog</b>", "5", "60.0%"]
    assert sections.nth(0).locator("figcaption").nth(1).inner_text() == "gradcam: tabby (90.0%)"
    page.locator("input[data-filter='method'][value='gradcam']").uncheck()
    assert view.visible("figure[data-method='gradcam']") == [False, False]
    assert view.visible("figure[data-method='swag-image']") == [True, True]
    assert view.errors == []
    page.close()


def test_explain_index_needs_complete_records(tmp_path):
    with pytest.raises(ValueError, match="top5"):
        html.write_explain_index(tmp_path, [{"stem": "a", "method": "m", "png": "a.m.png",
                                             "target": {"index": 0, "label": "x"}}])


@pytest.mark.slow
def test_pages_of_a_real_run(tmp_path, browser):
    """evaluate.run and Explainer.explain on the embedded model, both pages opened; the
    probability shown is the model's top-1 probability from Explainer.predict."""
    import cv2
    from skimage import data

    from swag_onnx import Explainer, evaluate

    explainer = Explainer()
    pictures = {"astronaut": data.astronaut(), "coffee": data.coffee()}
    pictures = {k: cv2.resize(v, (96, 72), interpolation=cv2.INTER_AREA)
                for k, v in pictures.items()}
    methods, metrics = ["gradcam", "gradient"], ["deletion", "insertion"]
    out = tmp_path / "eval"
    plan = evaluate.plan(methods, metrics, {"step": 224 * 224 // 8})  # 9 points per curve
    result = evaluate.run(explainer, [evaluate.Item(k, rgb=v) for k, v in pictures.items()],
                          out, plan)
    stored = evaluate.load_settings(out)
    path = html.write_evaluation_page(out, result.rows, methods, metrics, stored["settings"],
                                      stored["runs"][-1], metric_info(metrics))
    view = Opened(browser, path)
    view.check_loaded(len(pictures) * len(methods))
    view.page.screenshot(path=str(tmp_path / "real-report.png"), full_page=True)
    for name, rgb in pictures.items():
        top = explainer.predict([rgb])[0].top5[0]
        text = view.page.locator(f"#gallery tr[data-image='{name}'] td .cls").nth(0).inner_text()
        assert text == f"{top['label']} ({top['probability']:.1%})"
    view.page.close()

    records = []
    for name, rgb in pictures.items():
        for result in explainer.explain([rgb], method=methods):
            png = f"{name}.{result.method}.png"
            images.write_png(tmp_path / png, images.overlay(result.image, result.saliency,
                                                            result.method))
            records.append({"stem": name, "method": result.method, "png": png,
                            "target": result.target, "top5": result.top5})
    view = Opened(browser, html.write_explain_index(tmp_path, records))
    view.check_loaded(len(records))
    view.page.screenshot(path=str(tmp_path / "real-index.png"), full_page=True)
    first = view.page.locator("section.image").nth(0).locator(".top5 tbody tr").nth(0)
    top = records[0]["top5"][0]
    assert first.inner_text().split("\t") == ["1", top["label"], str(top["index"]),
                                              f"{top['probability']:.1%}"]
    view.page.close()
