"""Python API: `Explainer(model).predict(images)` and `.explain(images, method="swag", ...)`.

Images are file paths or uint8 RGB arrays (H, W, 3). Results are arrays and records; nothing is
written to disk (the CLI does that). Maps are float32 (H, W) in [0, 1] at each image's original
size.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from swag_onnx import card as cards
from swag_onnx import images as imgs
from swag_onnx.errors import BadOptionError
from swag_onnx.methods import SOURCES, cam, gradients, swag
from swag_onnx.methods.lime import lime
from swag_onnx.methods.rise import rise
from swag_onnx.methods.xrai import DEFAULT_STEPS as XRAI_STEPS
from swag_onnx.methods.xrai import xrai
from swag_onnx.runtime import ModelRunner

SWAG_METHODS = tuple(f"swag-{source}" for source in SOURCES)
PROGRESS_METHODS = ("lime", "rise", "xrai")  # the ones that report progress (many model runs)
# Meta-saliency (NormGrad paper): the methods made from the one shared gradient run
META_METHODS = SWAG_METHODS + ("gradcam", "gradcam++", "normgrad", "normgrad-selective",
                               "gradient", "gradient-x-input")
META_LR = 0.0025  # the NormGrad authors' learning rate
METHODS = SWAG_METHODS + ("gradcam", "gradcam++", "normgrad", "normgrad-selective", "gradient",
                          "gradient-x-input", "integrated-gradients", "smoothgrad", "lime",
                          "rise", "xrai")


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
    for the card's (input_size, scaling, layout, resize, class_names, ...). layers: tensor names
    (or "auto") for the layer-based methods; default the card's default_layers.
    """

    def __init__(self, model: str | Path | None = None, *, card: dict | None = None,
                 layers: list[str] | None = None, provider: str = "auto",
                 threads: int | None = None):
        self.onnx_path, self.card = cards.resolve(model, card)
        layers = layers or self.card.get("default_layers") or ["auto"]
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

    def explain(self, images, method: str | list[str] = "swag", superpixels: str = "image",
                target: str | int | None = None, combine: str = "product",
                on_progress=None, meta: bool = False, meta_lr: float = META_LR,
                **params) -> list[Explanation]:
        """Saliency maps for a batch of images, sharing one forward+backward run between all
        methods (integrated gradients and SmoothGrad add their own batched runs).

        method: one name or a list (see METHODS): "swag" (with `superpixels` image|gradient|
        combined) or "swag-<source>", "gradcam", "gradcam++", "normgrad", "normgrad-selective"
        (at the Explainer's layers; several layers combine by `combine`: product or sum),
        "gradient", "gradient-x-input", "integrated-gradients", "smoothgrad", "lime", "rise",
        "xrai".
        target: class index or name (case-insensitive), default each image's top-1 class.
        params: method parameters (SWAG: n_segments, top_k, ...; integrated-gradients: steps;
        smoothgrad: samples, noise, seed; lime: samples, seed; rise: masks, grid, p, seed;
        xrai: steps per baseline).
        on_progress(method, done, total): called as LIME, RISE and XRAI run their batches.
        meta: meta-saliency (Rebuffi et al.): each image's maps come from the model after one
        plain SGD step of learning rate `meta_lr` on the cross-entropy of its target class (all
        parameters, batch-norm statistics frozen; a negative rate gives the "adversarial"
        variant); the model itself is untouched. Only for META_METHODS.
        Returns the explanations image by image, each image's methods in the order given.
        """
        names = _method_names(method, superpixels)
        params_for = _split_params(names, params)
        if meta:
            _check_meta(names, meta_lr)
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
        if meta:
            one_hot = np.eye(self.num_classes, dtype=np.float32)[targets]
            outputs = self.runner.stepped_gradients(batch, probabilities - one_hot, one_hot,
                                                    meta_lr)
        shared = {"decode_preprocess": (prepared - start) * 1e3 / len(rgbs),
                  "forward_backward": (time.perf_counter() - prepared) * 1e3 / len(rgbs)}
        results = []
        for i, rgb in enumerate(rgbs):
            for name in names:
                t0 = time.perf_counter()
                extra = {}
                if on_progress is not None and name in PROGRESS_METHODS:
                    extra["progress"] = functools.partial(on_progress, name)
                model_map, labels, used = self._method_map(
                    name, batch[i], outputs, i, targets[i], rgb, geometries[i], combine,
                    {**params_for[name], **extra})
                t1 = time.perf_counter()
                saliency = imgs.normalize(imgs.to_original(model_map, geometries[i]))
                if labels is not None:
                    labels = imgs.labels_to_original(labels, geometries[i])
                timings = dict(shared, method=(t1 - t0) * 1e3,
                               upsampling=(time.perf_counter() - t1) * 1e3)
                results.append(Explanation(
                    saliency=saliency, method=name,
                    target={"index": targets[i], "label": cards.class_name(self.card, targets[i])},
                    top5=self._top5(probabilities[i]),
                    params={**used, "meta_lr": meta_lr} if meta else used, provider=self.provider,
                    timings_ms=timings, labels=labels, image=rgb))
        return results

    def _method_map(self, name, x, outputs, i, target, rgb, geometry, combine, params):
        """One method's map at the model input resolution (h, w), its superpixels (or None),
        and the parameters used."""
        channels_first = self.card["layout"] == "NCHW"
        size = geometry.input_size
        if name.startswith("swag-"):
            grad = outputs.input_grad[i]
            x_hwc, grad_hwc = (x.transpose(1, 2, 0), grad.transpose(1, 2, 0)) if channels_first \
                else (x, grad)
            view = imgs.model_view(rgb, geometry).astype(np.float32) / 255.0
            result = swag(grad_hwc, view, model_input=x_hwc, source=name[5:], **params)
            return result.saliency, result.labels, result.params
        if name in cam.CAM_METHODS:
            maps = [cam.CAM_METHODS[name](*self._layer(outputs, layer, i))
                    for layer in self.runner.layers]
            return cam.combine_layers(maps, size, mode=combine), None, \
                {"layers": self.runner.layers, "combine": combine}
        channel_axis = 0 if channels_first else -1
        if name == "rise":
            saliency = rise(x, self.probabilities, target, channel_axis=channel_axis, **params)
            return saliency, None, _recorded(params)
        if name == "xrai":
            view = imgs.model_view(rgb, geometry)
            progress = params.pop("progress", None)
            grad_fn = self._grad_fn(target)
            if progress is not None:
                grad_fn = _counting(grad_fn, progress, 2 * params.get("steps", XRAI_STEPS))
            saliency, ranks, info = xrai(x, grad_fn, view, self._black_white(),
                                         channel_axis=channel_axis, **params)
            return saliency, ranks, {**params, **info}
        if name == "lime":
            view = imgs.model_view(rgb, geometry)
            saliency, segments, _ = lime(x, view, self.probabilities, target,
                                         channel_axis=channel_axis, **params)
            return np.maximum(saliency, 0.0), segments, _recorded(params)  # class evidence
        if name in ("gradient", "gradient-x-input"):
            attribution = outputs.input_grad[i]
            if name == "gradient-x-input":
                attribution = attribution * x
        else:
            attribution = gradients.GRADIENT_METHODS[name](x, self._grad_fn(target), **params)
        return gradients.saliency_map(attribution, channel_axis), None, dict(params)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities [N, K] of a preprocessed batch in the model's input layout (the
        model function of LIME, RISE and the metrics in swag_onnx.metrics)."""
        return softmax(self.runner.scores(np.ascontiguousarray(batch, np.float32)))

    def _black_white(self) -> list[np.ndarray]:
        """A black and a white image in the model-input space (XRAI's IG baselines)."""
        height, width = self.card["input_size"]
        return [imgs.preprocess(np.full((height, width, 3), value, np.uint8), self.card)[0][0]
                for value in (0, 255)]

    def _layer(self, outputs, layer: str, i: int):
        """(activation, gradient) of a layer for image i, channels first (K, h, w)."""
        act, grad = outputs.activations[layer][i], outputs.layer_grads[layer][i]
        if act.ndim != 3:
            raise BadOptionError(f"layer {layer!r} has shape {act.shape}, not a spatial map; "
                                 "choose a layer from `swag-onnx inspect`")
        layout = self.runner.contract.layer_layouts.get(layer)
        if layout is None:  # not a listed spatial map: guess (channels are the longest axis)
            nhwc = self.card["layout"] == "NHWC" and act.shape[-1] > act.shape[0]
            layout = "NHWC" if nhwc else "NCHW"
        if layout == "NHWC":
            act, grad = act.transpose(2, 0, 1), grad.transpose(2, 0, 1)
        return act, grad

    def _grad_fn(self, target: int):
        """batch (model layout) -> (target scores (N,), input gradients): the model function
        that integrated gradients and SmoothGrad call (in batches)."""
        def grad_fn(batch):
            seed = np.zeros((len(batch), self.num_classes), np.float32)
            seed[:, target] = 1.0
            out = self.runner.gradients(np.ascontiguousarray(batch, np.float32), seed)
            return out.scores[:, target], out.input_grad
        return grad_fn


SWAG_PARAMS = {"attribution", "sign", "reduce", "smooth_sigma", "n_segments", "compactness",
               "sigma", "gradient_weight", "clip_quantile", "top_k"}
METHOD_PARAMS = {"integrated-gradients": {"steps", "batch_size", "baseline"},
                 "smoothgrad": {"samples", "noise", "batch_size", "seed"},
                 "lime": {"samples", "kernel_width", "batch_size", "seed"},
                 "rise": {"masks", "grid", "p", "batch_size", "seed"},
                 "xrai": {"steps", "batch_size"}}


def _check_meta(names: list[str], lr) -> None:
    wrong = [n for n in names if n not in META_METHODS]
    if wrong:
        raise BadOptionError(f"--meta applies to methods made from one gradient run "
                             f"({', '.join(META_METHODS)}), not to {', '.join(wrong)}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not np.isfinite(lr) \
            or lr == 0:
        raise BadOptionError(f"--meta-lr must be a non-zero number, got {lr!r}")


def _counting(grad_fn, progress, total: int):
    """grad_fn that reports progress(inputs done, total) after each batch."""
    done = 0

    def counted(batch):
        nonlocal done
        result = grad_fn(batch)
        done += len(batch)
        progress(min(done, total), total)
        return result
    return counted


def _recorded(params: dict) -> dict:
    """The parameters worth recording (not callbacks)."""
    return {k: v for k, v in params.items() if not callable(v)}


def _method_names(method, superpixels: str) -> list[str]:
    names = [method] if isinstance(method, str) else list(method)
    resolved = []
    for name in names:
        if name == "swag":
            if superpixels not in SOURCES:
                raise BadOptionError(f"unknown superpixel source {superpixels!r}; choose one "
                                     "of: " + ", ".join(SOURCES))
            name = f"swag-{superpixels}"
        if name not in METHODS:
            raise BadOptionError(f"unknown method {name!r}; choose one of: swag, "
                                 + ", ".join(METHODS))
        if name not in resolved:
            resolved.append(name)
    return resolved


def _split_params(names: list[str], params: dict) -> dict[str, dict]:
    """Each method's own parameters; a parameter no chosen method takes is an error."""
    accepted = {n: SWAG_PARAMS if n.startswith("swag-") else METHOD_PARAMS.get(n, set())
                for n in names}
    unused = set(params) - set().union(*accepted.values())
    if unused:
        raise BadOptionError(f"option(s) {', '.join(sorted(unused))} do not apply to "
                             f"{', '.join(names)}")
    return {n: {k: v for k, v in params.items() if k in accepted[n]} for n in names}
