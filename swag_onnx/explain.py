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
from swag_onnx.methods import registry
from swag_onnx.methods.registry import SHARED_RUN, Inputs, Method
from swag_onnx.methods.tokens import tokens_to_map
from swag_onnx.runtime import ModelRunner

META_LR = 0.0025  # the NormGrad authors' learning rate


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
    (or "auto") for the layer-based methods; default the card's default_layers. spinning: False
    when other work shares the cores while the model runs (the pipelined folder loop): the
    runtime's worker threads then sleep between ops instead of spinning.
    """

    def __init__(self, model: str | Path | None = None, *, card: dict | None = None,
                 layers: list[str] | None = None, provider: str = "auto",
                 threads: int | None = None, spinning: bool = True):
        self.onnx_path, self.card = cards.resolve(model, card)
        layers = layers or self.card.get("default_layers") or ["auto"]
        self.runner = ModelRunner(self.onnx_path, layers=layers, score=self.card.get("score"),
                                  provider=provider, threads=threads, spinning=spinning)
        self.card.setdefault("layout", self.runner.contract.layout)
        self.provider = self.runner.provider

    @property
    def num_classes(self) -> int:
        return self.runner.contract.num_classes

    def _top5(self, probabilities: np.ndarray) -> list[dict]:
        order = np.argsort(-probabilities, kind="stable")[:5]  # ties: as argmax (the target)
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
                target: str | int | None = None, on_progress=None, meta: bool = False,
                meta_lr: float = META_LR, parameters: dict | None = None,
                **params) -> list[Explanation]:
        """Saliency maps for a batch of images, sharing one forward+backward run between all
        methods that are made from it (the others add their own batched runs).

        method: one name or a list (`swag-onnx methods` lists them, swag_onnx.methods.METHODS
        holds them); "swag" stands for "swag-<superpixels>" (image, gradient or combined).
        target: class index or name (case-insensitive), default each image's top-1 class.
        params: method parameters (each method takes its own, see `swag-onnx methods`; a value
        of None means the default); every value is checked before the first model run.
        on_progress(method, done, total): called as the methods flagged `progress` (LIME, RISE,
        XRAI, ...) run their batches.
        meta: meta-saliency (Rebuffi et al.): each image's maps come from the model after one
        plain SGD step of learning rate `meta_lr` on the cross-entropy of its target class (all
        parameters, batch-norm statistics frozen; a negative rate gives the "adversarial"
        variant); the model itself is untouched. Only for methods flagged `meta`, with
        parameters that keep them on the shared run (registry.check_meta: e.g. not SWAG's
        average).
        parameters: {parameter name: array} replacing the model's own values in every model run
        of this call (the shared run and the model functions the methods call; names and shapes
        from `self.runner.parameter_values()`), fed through the parameter inputs of the
        weights-augmented model: nothing is written and later calls see the model's own values
        (the model-parameter randomisation test, swag_onnx.metrics.mprt).
        Returns the explanations image by image, each image's methods in the order given.
        """
        planned = plan(method, params, superpixels)
        if meta:
            meta_lr = registry.check_meta([m for m, _ in planned], meta_lr,
                                          {m.name: checked for m, checked in planned})
        fixed = cards.parse_target(self.card, target, self.num_classes)
        needs = set().union(*(m.needs_for(checked) for m, checked in planned))
        if needs & SHARED_RUN:  # augment and load now: not timed as a model run
            self.runner.gradient_session(input_grad="input_grad" in needs)
        start = time.perf_counter()
        rgbs = self._load(images)
        batch, geometries = imgs.batch_preprocess(rgbs, self.card)
        prepared = time.perf_counter()
        outputs, probabilities, targets = self._shared_run(batch, fixed, needs, meta, meta_lr,
                                                           parameters)
        shared = {"decode_preprocess": (prepared - start) * 1e3 / len(rgbs),
                  "forward_backward": (time.perf_counter() - prepared) * 1e3 / len(rgbs)}
        results = []
        for i, rgb in enumerate(rgbs):
            for entry, checked in planned:
                progress = functools.partial(on_progress, entry.name) \
                    if on_progress is not None and entry.progress else None
                t0 = time.perf_counter()
                inputs = self._inputs(entry.needs_for(checked), batch[i], outputs, i,
                                      targets[i], rgb, geometries[i], progress, parameters)
                output = entry.run(inputs, **checked)
                t1 = time.perf_counter()
                saliency = imgs.normalize(imgs.to_original(output.saliency, geometries[i]))
                labels = None if output.regions is None else \
                    imgs.labels_to_original(output.regions, geometries[i])
                used = {**checked, **output.info}
                results.append(Explanation(
                    saliency=saliency, method=entry.name,
                    target={"index": targets[i],
                            "label": cards.class_name(self.card, targets[i])},
                    top5=self._top5(probabilities[i]),
                    params={**used, "meta_lr": meta_lr} if meta else used,
                    provider=self.provider,
                    timings_ms=dict(shared, method=(t1 - t0) * 1e3,
                                    upsampling=(time.perf_counter() - t1) * 1e3),
                    labels=labels, image=rgb))
        return results

    def _shared_run(self, batch, fixed, needs, meta, meta_lr, parameters=None):
        """(gradient outputs or None, probabilities (N, K), target per image): one
        forward+backward run when a method is made from it, else one forward run."""
        if not needs & SHARED_RUN:
            probabilities = self.probabilities(batch, parameters)
            return None, probabilities, _targets(probabilities, fixed)
        seed = np.zeros((len(batch), self.num_classes), np.float32)  # zero row: the top-1 class
        if fixed is not None:
            seed[:, fixed] = 1.0
        outputs = self.runner.gradients(batch, seed, parameters,
                                        input_grad="input_grad" in needs)
        probabilities = softmax(outputs.scores)
        targets = _targets(probabilities, fixed)
        if meta:
            one_hot = np.eye(self.num_classes, dtype=np.float32)[targets]
            outputs = self.runner.stepped_gradients(batch, probabilities - one_hot, one_hot,
                                                    meta_lr, parameters)
        return outputs, probabilities, targets

    def _inputs(self, needs: frozenset[str], x, outputs, i: int, target: int, rgb, geometry,
                progress, parameters=None) -> Inputs:
        """The `needs` a method declared for its parameters (Method.needs_for), for image i
        (and nothing else); the model functions run with `parameters` (see `explain`)."""
        overridden = functools.partial(functools.partial, parameters=parameters) \
            if parameters else (lambda function: function)
        inputs = Inputs(x=x, channel_axis=0 if self.card["layout"] == "NCHW" else -1,
                        target=target, progress=progress)
        makers = {
            "input_grad": lambda: {"input_grad": outputs.input_grad[i]},
            "layers": lambda: {"layers": [self._layer(outputs, t, i) for t in self.runner.layers],
                               "layer_names": list(self.runner.layers)},
            "image": lambda: {"image": imgs.model_view(rgb, geometry)},
            "probabilities": lambda: {"probabilities": overridden(self.probabilities)},
            "scores": lambda: {"scores": overridden(self.scores)},
            "grad_fn": lambda: {"grad_fn": self._grad_fn(target, parameters)},
            "layer_scores": lambda: {"layer_scores": [self._layer_scores(t, x, parameters)
                                                      for t in self.runner.layers]},
            "preprocess": lambda: {"preprocess": lambda image: imgs.preprocess(image,
                                                                               self.card)[0][0]},
        }
        for need in needs:
            for key, value in makers[need]().items():
                setattr(inputs, key, value)
        return inputs

    def scores(self, batch: np.ndarray, parameters: dict | None = None) -> np.ndarray:
        """Logits [N, K] of a preprocessed batch in the model's input layout (parameters: see
        `explain`)."""
        return self.runner.scores(np.ascontiguousarray(batch, np.float32), parameters)

    def probabilities(self, batch: np.ndarray, parameters: dict | None = None) -> np.ndarray:
        """Softmax probabilities [N, K] of a preprocessed batch in the model's input layout (the
        model function of LIME, RISE and the metrics in swag_onnx.metrics; parameters: see
        `explain`)."""
        return softmax(self.scores(batch, parameters))

    def _layer(self, outputs, layer: str, i: int):
        """(activation, gradient) of a layer for image i, channels first (K, h, w); a token
        layer of a vision transformer (T, C) is folded onto its patch grid."""
        act, grad = outputs.activations[layer][i], outputs.layer_grads[layer][i]
        tokens = self.runner.contract.layer_tokens.get(layer)
        if tokens is not None:
            return tuple(tokens_to_map(a, tokens["grid"], tokens["offset"]) for a in (act, grad))
        if act.ndim != 3:
            raise BadOptionError(f"layer {layer!r} has shape {act.shape}, not a spatial map; "
                                 "choose a layer from `swag-onnx inspect`")
        if self._layer_layout(layer, act.shape) == "NHWC":
            act, grad = act.transpose(2, 0, 1), grad.transpose(2, 0, 1)
        return act, grad

    def _layer_layout(self, layer: str, shape) -> str:
        """NCHW or NHWC: as recorded in the contract, else guessed (channels are the longest
        axis) for a layer that is not a listed spatial map."""
        layout = self.runner.contract.layer_layouts.get(layer)
        if layout is None:
            nhwc = self.card["layout"] == "NHWC" and shape[-1] > shape[0]
            layout = "NHWC" if nhwc else "NCHW"
        return layout

    def _layer_scores(self, layer: str, x: np.ndarray, parameters=None):
        """acts (N, K, h, w) channels first -> logits (N, K) of the model on input x with the
        layer's activation replaced by acts (AblationCAM's layer override)."""
        if layer in self.runner.contract.layer_tokens:
            raise BadOptionError(f"ablationcam cannot feed an edited activation back into the "
                                 f"token layer {layer!r} yet; choose a spatial layer (--layer)")

        def head(acts: np.ndarray) -> np.ndarray:
            if self._layer_layout(layer, acts.shape[1:]) == "NHWC":
                acts = acts.transpose(0, 2, 3, 1)
            images = np.ascontiguousarray(x[None], np.float32)
            return self.runner.layer_scores(layer, acts, images, parameters)
        return head

    def _grad_fn(self, target: int, parameters=None):
        """batch (model layout) -> (target scores (N,), input gradients): the model function
        that integrated gradients and SmoothGrad call (in batches)."""
        def grad_fn(batch):
            seed = np.zeros((len(batch), self.num_classes), np.float32)
            seed[:, target] = 1.0
            out = self.runner.gradients(np.ascontiguousarray(batch, np.float32), seed,
                                        parameters)
            return out.scores[:, target], out.input_grad
        return grad_fn


def plan(method, params: dict, superpixels: str = "image") -> list[tuple[Method, dict]]:
    """The methods named (aliases resolved) with their checked parameters; options set to None
    count as not given. Raises BadOptionError for an unknown method or a bad or unused option."""
    methods = registry.resolve(method, {"superpixels": superpixels})
    checked = registry.split_params(methods, {k: v for k, v in params.items() if v is not None})
    return [(m, checked[m.name]) for m in methods]


def _targets(probabilities: np.ndarray, fixed: int | None) -> list[int]:
    return [fixed if fixed is not None else int(p.argmax()) for p in probabilities]
