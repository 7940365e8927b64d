"""Python API: `Explainer(model).predict(images)` and `.explain(images, method="swag", ...)`.

Images are file paths or uint8 RGB arrays (H, W, 3). Results are arrays and records; nothing is
written to disk (the CLI does that). Maps are float32 (H, W) in [0, 1] at each image's original
size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from swag_onnx import card as cards
from swag_onnx import images as imgs
from swag_onnx.errors import BadOptionError
from swag_onnx.methods import SOURCES, swag
from swag_onnx.runtime import ModelRunner

METHODS = tuple(f"swag-{source}" for source in SOURCES)


@dataclass
class Prediction:
    """Top classes of one image: [{index, label, probability}, ...], best first."""

    top5: list[dict]


@dataclass
class Explanation:
    """One saliency map and everything needed to show or record it."""

    saliency: np.ndarray  # float32 (H0, W0) in [0, 1]
    method: str  # e.g. "swag-image"
    target: dict  # {index, label}
    top5: list[dict]
    params: dict
    provider: str
    timings_ms: dict = field(default_factory=dict)
    labels: np.ndarray | None = None  # int32 (H0, W0) superpixels, -1 outside the crop
    image: np.ndarray | None = None  # the uint8 RGB (H0, W0, 3) explained

    def record(self) -> dict:
        """The JSON-serialisable part (what `explain` writes beside each map)."""
        return {"method": self.method, "target": self.target, "top5": self.top5,
                "params": self.params, "provider": self.provider,
                "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()}}


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Explainer:
    """An ONNX classifier with its model card, ready to predict and explain.

    model: a folder with model.onnx and card.json, an .onnx file (card.json or <stem>.card.json
    beside it), or None for the embedded default model. card: fields that replace or stand in
    for the card's (input_size, scaling, layout, resize, class_names, ...).
    """

    def __init__(self, model: str | Path | None = None, *, card: dict | None = None,
                 provider: str = "auto", threads: int | None = None):
        self.onnx_path, self.card = cards.resolve(model, card)
        layers = self.card.get("default_layers") or ["auto"]
        self.runner = ModelRunner(self.onnx_path, layers=layers, score=self.card.get("score"),
                                  provider=provider, threads=threads)
        self.card.setdefault("layout", self.runner.contract.layout)
        self.provider = self.runner.provider

    @property
    def num_classes(self) -> int:
        return self.runner.contract.num_classes

    def _top5(self, probabilities: np.ndarray) -> list[dict]:
        order = np.argsort(-probabilities)[:5]
        return [{"index": int(i), "label": cards.class_name(self.card, int(i)),
                 "probability": float(probabilities[i])} for i in order]

    def _load(self, images) -> list[np.ndarray]:
        return [imgs.load_image(i) if isinstance(i, (str, Path)) else np.asarray(i)
                for i in images]

    def predict(self, images) -> list[Prediction]:
        """Top-5 classes for each image (paths or uint8 RGB arrays)."""
        rgbs = self._load(images)
        batch, _ = imgs.batch_preprocess(rgbs, self.card)
        return [Prediction(self._top5(p)) for p in softmax(self.runner.scores(batch))]

    def explain(self, images, method: str = "swag", superpixels: str = "image",
                target: str | int | None = None, **params) -> list[Explanation]:
        """SWAG maps for a batch of images (one forward+backward run for the whole batch).

        method "swag" with superpixels image|gradient|combined (or method "swag-<source>");
        target: class index or name (case-insensitive), default each image's top-1 class;
        params: SWAG parameters (see swag_onnx.methods.swag), e.g. n_segments, top_k.
        """
        source = _swag_source(method, superpixels)
        start = time.perf_counter()
        rgbs = self._load(images)
        batch, geometries = imgs.batch_preprocess(rgbs, self.card)
        prepared = time.perf_counter()
        fixed = cards.parse_target(self.card, target, self.num_classes)
        seed = np.zeros((len(rgbs), self.num_classes), np.float32)  # zero row: the top-1 class
        if fixed is not None:
            seed[:, fixed] = 1.0
        outputs = self.runner.gradients(batch, seed)  # one run: scores and gradients
        probabilities = softmax(outputs.scores)
        targets = [fixed if fixed is not None else int(p.argmax()) for p in probabilities]
        grads = outputs.input_grad
        if self.card["layout"] == "NCHW":
            grads, batch = grads.transpose(0, 2, 3, 1), batch.transpose(0, 2, 3, 1)
        passed = time.perf_counter()
        per_image_shared = {"decode_preprocess": (prepared - start) * 1e3 / len(rgbs),
                            "forward_backward": (passed - prepared) * 1e3 / len(rgbs)}
        results = []
        for i, rgb in enumerate(rgbs):
            view = imgs.model_view(rgb, geometries[i]).astype(np.float32) / 255.0
            t0 = time.perf_counter()
            result = swag(grads[i], view, model_input=batch[i], source=source, **params)
            t1 = time.perf_counter()
            saliency = imgs.normalize(imgs.to_original(result.saliency, geometries[i]))
            labels = imgs.labels_to_original(result.labels, geometries[i])
            t2 = time.perf_counter()
            timings = dict(per_image_shared, segmentation_scoring=(t1 - t0) * 1e3,
                           upsampling=(t2 - t1) * 1e3)
            results.append(Explanation(
                saliency=saliency, method=f"swag-{source}",
                target={"index": targets[i], "label": cards.class_name(self.card, targets[i])},
                top5=self._top5(probabilities[i]), params=result.params, provider=self.provider,
                timings_ms=timings, labels=labels, image=rgb))
        return results


def _swag_source(method: str, superpixels: str) -> str:
    if method in METHODS:
        return method.split("-", 1)[1]
    if method != "swag":
        raise BadOptionError(f"unknown method {method!r}; choose swag or one of: "
                             + ", ".join(METHODS))
    if superpixels not in SOURCES:
        raise BadOptionError(f"unknown superpixel source {superpixels!r}; choose one of: "
                             + ", ".join(SOURCES))
    return superpixels
