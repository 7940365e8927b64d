"""onnxruntime sessions on augmented models: providers, the augmentation cache, batched runs.

The only module (with graph/probe.py) that imports onnxruntime. A `ModelRunner` holds one plain
session (predictions) and one session on the augmented model (gradients); the augmented model is
built on first use and cached under the user's cache folder, keyed by the model's content hash,
the requested layers and score, so a read-only model folder is never written to.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swag_onnx import __version__
from swag_onnx.errors import BadOptionError
from swag_onnx.graph import SCORE, SEED, Contract, act_name, augment, grad_name
from swag_onnx.graph.augment import weight_grad_name
from swag_onnx.graph.model_io import load_model

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def cache_dir() -> Path:
    """$SWAG_ONNX_CACHE, else $XDG_CACHE_HOME/swag_onnx, else ~/.cache/swag_onnx."""
    if os.environ.get("SWAG_ONNX_CACHE"):
        return Path(os.environ["SWAG_ONNX_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "swag_onnx"


def file_sha256(path: Path) -> str:
    """sha256 of the model file (streamed, so large models need no extra memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def augmenter_digest() -> str:
    """sha256 of the augmentation code (swag_onnx/graph): a cached model built by other code
    (an older or newer swag_onnx) is never reused."""
    digest = hashlib.sha256(__version__.encode())
    for source in sorted((Path(__file__).parent / "graph").rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()


def augmented_path(model: Path, layers, score, weights: bool = False) -> Path:
    """Where the augmented copy of `model` lives in the cache (built there if missing);
    `weights`: the variant with parameter gradients and overridable parameters."""
    key = "|".join([file_sha256(model), ",".join(layers), score or "", augmenter_digest()]
                   + (["weights"] if weights else []))
    name = hashlib.sha256(key.encode()).hexdigest()[:24]
    target = cache_dir() / f"{model.stem}.{name}.{'meta' if weights else 'grad'}.onnx"
    if not target.exists():
        augment(model, target, layers=list(layers), score=score, weights=weights)
    return target


def _with_score_output(path: Path, score: str) -> bytes:
    """The original model, serialised, with the score tensor as an extra output (it may be the
    input of a final Softmax): predictions then cost one plain forward pass."""
    from onnx import helper

    model = load_model(path)
    if score not in [o.name for o in model.graph.output]:
        model.graph.output.append(helper.make_empty_tensor_value_info(score))
    return model.SerializeToString()


def _session(path: Path | bytes, provider: str, threads: int | None):
    import onnxruntime as ort

    if provider not in ("auto", "cpu", "cuda"):
        raise BadOptionError(f"unknown provider {provider!r}; use auto, cpu or cuda")
    ort.set_default_logger_severity(4)  # a CPU-only machine must not print CUDA load errors
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    wanted = PROVIDERS["cuda"] if provider in ("auto", "cuda") else PROVIDERS["cpu"]
    source = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(source, options,
                                   providers=[p for p in wanted if p in available])
    if provider == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise BadOptionError("--provider cuda: CUDA could not be loaded here "
                             "(is onnxruntime-gpu installed with its CUDA libraries?)")
    return session


@dataclass
class GradientOutputs:
    """One gradient run: scores [N, K], input gradient (model layout), and per-layer
    activations/gradients (as the model computes them, e.g. [N, C, h, w])."""

    scores: np.ndarray
    input_grad: np.ndarray
    activations: dict[str, np.ndarray]
    layer_grads: dict[str, np.ndarray]


class ModelRunner:
    """Plain and gradient sessions on one model (augmented on first use, cached)."""

    def __init__(self, model: str | os.PathLike, layers=("auto",), score: str | None = None,
                 provider: str = "auto", threads: int | None = None):
        import onnx

        self.model = Path(model)
        grad_model = augmented_path(self.model, tuple(layers), score)
        self.contract = Contract.from_model(onnx.load(str(grad_model), load_external_data=False))
        self.gradient = _session(grad_model, provider, threads)
        self.provider = self.gradient.get_providers()[0]
        self._plain = None
        self._meta = None  # (session, contract, original parameter values), made on first use
        self._options = (provider, threads)
        self._layers_score = (tuple(layers), score)

    @property
    def plain(self):
        """A session on the original model (with the score as an output), made on first use."""
        if self._plain is None:
            self._plain = _session(_with_score_output(self.model, self.contract.score),
                                   *self._options)
        return self._plain

    @property
    def layers(self) -> list[str]:
        return self.contract.layers

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Logits [N, K] for a preprocessed batch (the score tensor, before any Softmax)."""
        return self.plain.run([self.contract.score], {self.contract.image_input: batch})[0]

    def gradients(self, batch: np.ndarray, seed: np.ndarray) -> GradientOutputs:
        """One forward+backward run: d sum(score * seed) / d (input, layers); an all-zero seed
        row stands for that image's top-1 class."""
        c = self.contract
        fetch = [SCORE, grad_name(c.image_input)]
        fetch += [act_name(t) for t in c.layers] + [grad_name(t) for t in c.layers]
        values = self.gradient.run(fetch, {c.image_input: batch, SEED: seed.astype(batch.dtype)})
        return self._outputs(values)

    def _outputs(self, values) -> GradientOutputs:
        n = len(self.contract.layers)
        layers = self.contract.layers
        return GradientOutputs(values[0], values[1], dict(zip(layers, values[2:2 + n])),
                               dict(zip(layers, values[2 + n:2 + 2 * n])))

    def _meta_parts(self):
        """Sessions on the weights-augmented model (one returning the parameter gradients, one
        without those outputs, so that onnxruntime drops their nodes), its contract and the
        original parameter values."""
        if self._meta is None:
            from onnx import numpy_helper

            model = load_model(augmented_path(self.model, *self._layers_score, weights=True))
            contract = Contract.from_model(model)
            wanted = set(contract.weights)
            originals = {t.name: numpy_helper.to_array(t)
                         for t in model.graph.initializer if t.name in wanted}
            with_weights = _session(model.SerializeToString(), *self._options)
            outputs = [o for o in model.graph.output if not o.name.startswith("swag.wgrad.")]
            del model.graph.output[:]
            model.graph.output.extend(outputs)
            self._meta = (with_weights, _session(model.SerializeToString(), *self._options),
                          contract, originals)
        return self._meta

    def stepped_gradients(self, batch: np.ndarray, loss_seed: np.ndarray, seed: np.ndarray,
                          lr: float) -> GradientOutputs:
        """Gradients (as `gradients`) after one plain SGD step on every parameter, taken for
        each image alone: W' = W - lr * dL/dW with dL/dscore = loss_seed[i] (e.g. softmax - one-hot
        for cross-entropy); batch-norm statistics frozen; the model's own weights untouched.
        batch [N, ...], loss_seed and seed [N, K]."""
        weights_session, session, contract, originals = self._meta_parts()
        image = contract.image_input
        weight_outputs = [weight_grad_name(w) for w in contract.weights]
        fetch = [SCORE, grad_name(image)] + [act_name(t) for t in contract.layers] \
            + [grad_name(t) for t in contract.layers]
        runs = []
        for i in range(len(batch)):
            x = batch[i:i + 1]
            steps = weights_session.run(weight_outputs,
                                        {image: x, SEED: loss_seed[i:i + 1].astype(x.dtype)})
            updated = {w: (originals[w] - lr * g).astype(originals[w].dtype)
                       for w, g in zip(contract.weights, steps)}
            runs.append(session.run(fetch, {image: x, SEED: seed[i:i + 1].astype(x.dtype),
                                            **updated}))
        return self._outputs([np.concatenate(parts) for parts in zip(*runs)])
