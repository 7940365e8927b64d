"""onnxruntime sessions on augmented models: providers, the augmentation cache, batched runs.

The only module (with graph/probe.py) that imports onnxruntime. A `ModelRunner` holds one plain
session (predictions) and one session on the augmented model (gradients); the augmented model is
built on first use and cached under the user's cache folder, keyed by the model's content hash,
the requested layers and score, so a read-only model folder is never written to.

onnxruntime (1.31) writes a device id and an event database under ~/.cache/Microsoft/
DeveloperTools/.onnxruntime when it is imported, unless ORT_DISABLE_TELEMETRY is set in the
environment before that import; importing swag_onnx sets it to 1 (unless already set), so that
nothing is written outside the output folder and the cache. swag_onnx must then be imported
before onnxruntime (a later setting has no effect).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from importlib import metadata

from swag_onnx.errors import BadModelError, BadOptionError
from swag_onnx.graph import SCORE, SEED, Contract, act_name, augment, grad_name
from swag_onnx.graph.augment import keep_outputs, weight_grad_name
from swag_onnx.graph.model_io import load_model

# TF32 (onnxruntime's CUDA default on Ampere and later) rounds convolution inputs to 10-bit
# mantissas: gradients would then differ from the CPU's by ~1e-3 (tools/check_cuda.py)
PROVIDERS = {"cpu": [("CPUExecutionProvider", {})],
             "cuda": [("CUDAExecutionProvider", {"use_tf32": "0"}), ("CPUExecutionProvider", {})]}


def _quiet_onnxruntime() -> None:
    """No telemetry files under ~/.cache/Microsoft (read by onnxruntime at its import)."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


_quiet_onnxruntime()  # swag_onnx/__init__ imports this module before any onnxruntime import


def cache_dir() -> Path:
    """$SWAG_ONNX_CACHE, else $XDG_CACHE_HOME/swag_onnx, else ~/.cache/swag_onnx; created if
    missing. BadOptionError (naming the variable) when it cannot be a folder we write to."""
    if os.environ.get("SWAG_ONNX_CACHE"):
        folder, source = Path(os.environ["SWAG_ONNX_CACHE"]), "SWAG_ONNX_CACHE"
    elif os.environ.get("XDG_CACHE_HOME"):
        folder, source = Path(os.environ["XDG_CACHE_HOME"]) / "swag_onnx", "XDG_CACHE_HOME"
    else:
        folder, source = Path.home() / ".cache" / "swag_onnx", "the home folder"
    _check_cache(folder, source)
    return folder


def _check_cache(folder: Path, source: str) -> None:
    hint = "point SWAG_ONNX_CACHE at a folder you can write to"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mode = os.stat(folder).st_mode
    except (FileExistsError, NotADirectoryError):
        raise BadOptionError(f"the cache folder {str(folder)!r} (from {source}) is, or is "
                             f"under, a file; {hint}") from None
    except OSError as exc:
        raise BadOptionError(f"cannot create the cache folder {str(folder)!r} (from {source}): "
                             f"{exc.strerror}; {hint}") from None
    if not stat.S_ISDIR(mode):
        raise BadOptionError(f"the cache folder {str(folder)!r} (from {source}) is not a "
                             f"folder; {hint}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadOptionError(f"the cache folder {str(folder)!r} (from {source}) is not "
                             f"writable; {hint}")


def file_sha256(path: Path) -> str:
    """sha256 of the model file (streamed, so large models need no extra memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


try:
    __version__ = metadata.version("swag-onnx")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


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
    input of a final Softmax): predictions then cost one plain forward pass. Its IR version is
    lowered when onnxruntime reads only older ones (graph.checks.fit_to_runtime)."""
    from onnx import helper

    from swag_onnx.graph.checks import fit_to_runtime

    model = load_model(path)
    fit_to_runtime(model, repr(str(path)))
    if score not in [o.name for o in model.graph.output]:
        model.graph.output.append(helper.make_empty_tensor_value_info(score))
    return model.SerializeToString()


def _baked_session(path: Path, score: str, values: dict, options: tuple):
    """A session on the original model (score as an output) with the initializers named in
    `values` replaced by them; None when one of the names is not an initializer there."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(_with_score_output(path, score))
    initializers = {t.name: t for t in model.graph.initializer}
    if not all(name in initializers and tuple(initializers[name].dims) == value.shape
               and onnx.helper.tensor_dtype_to_np_dtype(initializers[name].data_type)
               == value.dtype for name, value in values.items()):
        return None
    for name, value in values.items():
        initializers[name].CopyFrom(numpy_helper.from_array(value, name))
    # no arena: each kept session would otherwise hold its largest batch's activations (LIME's
    # 50 images: ~1 GB per session on the default model; 8 of them ran a 24 GB machine out)
    return _session(model.SerializeToString(), *options, arena=False)


_warned: set[str] = set()  # notes already printed on stderr (once per process)


def _note_once(text: str) -> None:
    if text not in _warned:
        _warned.add(text)
        print(f"note: {text}", file=sys.stderr)


def _cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _thread_count(threads) -> int | None:
    """--threads checked (an integer >= 1) and capped at the cores, said once on stderr."""
    if threads is None:
        return None
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise BadOptionError(f"--threads must be an integer >= 1, got {threads!r}")
    cores = _cores()
    if threads > cores:
        _note_once(f"--threads {threads} capped at this machine's {cores} cores")
    return min(threads, cores)


def _runtime_message(exc: Exception) -> str:
    """onnxruntime's error, first line, without its status prefix and C++ source location."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    return re.sub(r"^\S+\.(?:cc|h|cpp):\d+ .*?\) (?=\S)", "", text)


# Workers spin between the ops of a run, not after it: idle spinning workers of one session
# slow the next run of another on the same cores, and explaining alternates the plain and the
# augmented model (predict then explain on the default model, 2 cores: 71.5 -> 45.8 ms per
# image; back-to-back runs of one session unchanged within noise: tools/bench_spinning.py).
SPINNING_STOP = True


def _session(path: Path | bytes, provider: str, threads: int | None, spinning: bool = True,
             arena: bool = True):
    import onnxruntime as ort

    if provider not in ("auto", "cpu", "cuda"):
        raise BadOptionError(f"unknown provider {provider!r}; use auto, cpu or cuda")
    ort.set_default_logger_severity(4)  # a CPU-only machine must not print CUDA load errors
    options = ort.SessionOptions()
    # Spinning intra-op workers answer faster between ops (one call on an idle machine: 21 ms
    # against 29 ms without) but burn the cores that concurrent work needs (the folder
    # pipeline's other model thread, SLIC and PNG writing: README, folder throughput).
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1" if SPINNING_STOP else "0")
    options.enable_cpu_mem_arena = arena  # off: memory goes back after each run
    threads = _thread_count(threads)
    if threads:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    wanted = PROVIDERS["cuda"] if provider in ("auto", "cuda") else PROVIDERS["cpu"]
    source = path if isinstance(path, bytes) else str(path)
    try:
        session = ort.InferenceSession(source, options,
                                       providers=[p for p in wanted if p[0] in available])
    except Exception as exc:  # onnxruntime's own types (Fail, InvalidGraph, NotImplemented...)
        where = "" if isinstance(path, bytes) else f" {str(path)!r}"
        raise BadModelError(f"onnxruntime {ort.__version__} cannot load the model{where}: "
                            f"{_runtime_message(exc)}") from None
    if provider == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise BadOptionError("--provider cuda: CUDA could not be loaded here "
                             "(is onnxruntime-gpu installed with its CUDA libraries?)")
    return session


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64,
                "tensor(float16)": np.float16}


def _float32(values: np.ndarray) -> np.ndarray:
    """float16 outputs widened to float32 (maps and metrics compute in float32); others as
    they are."""
    return values.astype(np.float32) if values.dtype == np.float16 else values


@dataclass
class GradientOutputs:
    """One gradient run: scores [N, K], input gradient (model layout; None from a run that
    stopped at the layers), and per-layer activations/gradients (as the model computes them,
    e.g. [N, C, h, w])."""

    scores: np.ndarray
    input_grad: np.ndarray | None
    activations: dict[str, np.ndarray]
    layer_grads: dict[str, np.ndarray]


class ModelRunner:
    """Plain and gradient sessions on one model. The model is augmented (and cached) only when a
    gradient is first asked for: predictions, black-box methods and metrics run on any model
    onnxruntime loads. Batches and seeds are fed in the image input's element type (float16
    models), and every array returned is float32."""

    def __init__(self, model: str | os.PathLike, layers=("auto",), score: str | None = None,
                 provider: str = "auto", threads: int | None = None, spinning: bool = True):
        from swag_onnx.graph.analysis import basic_info

        self.model = Path(model)
        info = basic_info(load_model(self.model), score)
        self._basic = Contract(info.image_input, info.layout, info.score, info.num_classes, [])
        self._augmented = None  # (augmented model's path, its contract), made on first use
        self._gradient_sessions = {}  # with the input gradient (True) or not -> session
        self._plain = None
        self._meta = None  # (session, contract, original parameter values), made on first use
        self._stages = None  # parameter_stages, found with the weights-augmented model
        self._heads = {}  # layer -> session on the model from that layer on (layer_scores)
        self._baked = {}  # parameter digest -> plain session with those weights (_baked_plain)
        # False once a parameter set could not be baked: that depends only on the parameter
        # names, which are fixed per model, so later calls go straight to the fed path
        self._bakeable = True
        # the sessions above are built on first use, once, also when several threads ask at
        # once (swag_onnx.folder runs explain calls on two threads)
        self._building = threading.RLock()
        self._options = (provider, threads, spinning)
        self._layers_score = (tuple(layers), score)

    @property
    def contract(self) -> Contract:
        """The augmented model's contract once it is built; before, the same image input,
        layout, score and class count with no layers."""
        return self._augmented[1] if self._augmented is not None else self._basic

    @property
    def gradient(self):
        """The session on the augmented model (augmented and cached on first use; raises
        BadModelError naming the op that cuts the gradient path when there is none)."""
        return self.gradient_session(input_grad=True)

    def _augmentation(self) -> tuple[Path, Contract]:
        """The augmented model's path in the cache and its contract, augmented on first use."""
        with self._building:
            if self._augmented is None:
                import onnx

                grad_model = augmented_path(self.model, *self._layers_score)
                self._augmented = (grad_model, Contract.from_model(
                    onnx.load(str(grad_model), load_external_data=False)))
            return self._augmented

    def gradient_session(self, input_grad: bool):
        """A session on the augmented model; input_grad False (and the model has layers): one
        that returns the score and the layers only, the backward below the layers pruned
        (augment.keep_outputs), for runs that read no input gradient (the layer methods:
        Grad-CAM's run then costs little more than a forward pass)."""
        with self._building:
            path, contract = self._augmentation()
            input_grad = input_grad or not contract.layers
            if input_grad not in self._gradient_sessions:
                image = grad_name(contract.image_input)
                model = path if input_grad else \
                    _pruned(load_model(path), lambda name: name != image) or path
                self._gradient_sessions[input_grad] = _session(model, *self._options)
            return self._gradient_sessions[input_grad]

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (the plain session's first)."""
        return self.plain.get_providers()[0]

    @property
    def plain(self):
        """A session on the original model (with the score as an output), made on first use."""
        with self._building:
            if self._plain is None:
                plain = _session(_with_score_output(self.model, self._basic.score),
                                 *self._options)
                self._input_type = _NUMPY_TYPES.get(
                    {i.name: i.type for i in plain.get_inputs()}[self._basic.image_input],
                    np.float32)
                self._plain = plain
        return self._plain

    @property
    def input_type(self):
        """The NumPy element type of the image input (float32, or float16, float64)."""
        self.plain  # noqa: B018 (reads the type)
        return self._input_type

    @property
    def layers(self) -> list[str]:
        return self._augmentation()[1].layers  # resolved by the augmentation

    @property
    def requested_layers(self) -> list[str]:
        """The layers as asked for (names or "auto"), known without augmenting."""
        return list(self._layers_score[0])

    def scores(self, batch: np.ndarray, parameters: dict | None = None) -> np.ndarray:
        """Logits [N, K] float32 for a preprocessed batch (the score tensor, before any
        Softmax). parameters: {parameter name: array} that replace the model's own values for
        this call (see `parameter_values`): run on a plain session with those values written
        into its weights, or, when the model's parameters cannot be written back (int8 models
        with folded weights), fed to the weights-augmented model."""
        if parameters:
            baked = self._baked_plain(parameters)
            if baked is None:  # a parameter the original graph does not hold (folded int8)
                _, session, contract, _ = self._meta_parts()
                batch = np.asarray(batch, self.input_type)
                seed = np.zeros((len(batch), contract.num_classes), batch.dtype)
                feed = {contract.image_input: batch, SEED: seed, **self._overrides(parameters)}
                return _float32(session.run([SCORE], feed)[0])
            feed = {self._basic.image_input: np.asarray(batch, self.input_type)}
            return _float32(baked.run([self._basic.score], feed)[0])
        # the score of the original graph (a QOperator model's float logits exist only in its
        # augmented QDQ form)
        feed = {self._basic.image_input: np.asarray(batch, self.input_type)}
        return _float32(self.plain.run([self._basic.score], feed)[0])

    BAKED_SESSIONS = 8  # plain sessions with replaced parameters kept (MPRT: one per stage)

    def _baked_plain(self, parameters: dict):
        """A plain session on the original model with `parameters` written into its weights,
        or None when a name is not one of its initializers. Fed parameter values would run on
        the weights-augmented model, where onnxruntime can neither fuse nor pre-pack the
        weights (13-17x slower on the default model: LIME and RISE under MPRT); baked ones run
        at plain speed. The last BAKED_SESSIONS sessions are kept, keyed by a digest of the
        values (MPRT asks for the same few parameter sets for every image)."""
        if not self._bakeable:
            return None
        overrides = self._overrides(parameters)
        digest = hashlib.blake2b(digest_size=16)
        for name in sorted(overrides):
            digest.update(name.encode() + b"\0" + np.ascontiguousarray(overrides[name]).data)
        key = digest.hexdigest()
        with self._building:
            if key not in self._baked:
                session = _baked_session(self.model, self._basic.score, overrides, self._options)
                if session is None:
                    self._bakeable = False
                    return None
                self._baked[key] = session
            self._baked[key] = self._baked.pop(key)  # most recent last
            while len(self._baked) > self.BAKED_SESSIONS:
                self._baked.pop(next(iter(self._baked)))  # the oldest
            return self._baked[key]

    def gradients(self, batch: np.ndarray, seed: np.ndarray, parameters: dict | None = None,
                  input_grad: bool = True) -> GradientOutputs:
        """One forward+backward run: d sum(score * seed) / d (input, layers); an all-zero seed
        row stands for that image's top-1 class. parameters: as in `scores` (the run is then
        made on the weights-augmented model, fed the given values). input_grad False: the
        caller reads no input gradient (GradientOutputs.input_grad is then None where the
        model has layers), so the run stops at the layers (see gradient_session)."""
        c = self._augmentation()[1]
        input_grad = input_grad or not c.layers or bool(parameters)
        if parameters:
            session, feed = self._meta_parts()[1], self._overrides(parameters)
        else:
            session, feed = self.gradient_session(input_grad), {}
        fetch = [SCORE] + [grad_name(c.image_input)] * input_grad
        fetch += [act_name(t) for t in c.layers] + [grad_name(t) for t in c.layers]
        batch = np.asarray(batch, self.input_type)
        values = [_float32(v) for v in session.run(
            fetch, {c.image_input: batch, SEED: seed.astype(batch.dtype), **feed})]
        return self._outputs(values if input_grad else values[:1] + [None] + values[1:])

    def parameter_values(self) -> dict[str, np.ndarray]:
        """{parameter name: its value (read-only)} of every parameter a run may override, in
        graph order (the weights-augmented model's parameter inputs)."""
        return dict(self._meta_parts()[3])

    def _overrides(self, parameters: dict) -> dict[str, np.ndarray]:
        """The feeds of the parameter inputs: each value checked against the parameter's shape
        and cast to its element type. ValueError (a caller bug) for an unknown name or shape."""
        originals = self._meta_parts()[3]
        feeds = {}
        for name, value in parameters.items():
            if name not in originals:
                raise ValueError(f"{name!r} is not a parameter input of the model")
            value = np.asarray(value, originals[name].dtype)
            if value.shape != originals[name].shape:
                raise ValueError(f"parameter {name!r}: shape {value.shape}, expected "
                                 f"{originals[name].shape}")
            feeds[name] = value
        return feeds

    def parameter_stages(self) -> list[tuple[str, list[str]]]:
        """The parameters split into stages from the output down, for cascading randomisation
        (Adebayo et al. 2018): [("score", parameters after the last stage layer), (stage layer
        L_k, parameters between L_k-1 and L_k) for k = n .. 2, ("all", the rest)], stages
        without parameters left out (so the last stage completes the randomisation, named
        "all" when parameters before the first stage layer remain). The stage layers are the last
        spatial map at each resolution (graph.analysis.stage_outputs, as `inspect` lists them);
        a parameter belongs to the first stage (from the output) whose layer it consumes the
        output of, directly or not (forward nodes only)."""
        self._meta_parts()
        return [(name, list(names)) for name, names in self._stages]

    def _outputs(self, values) -> GradientOutputs:
        layers = self.layers
        n = len(layers)
        return GradientOutputs(values[0], values[1], dict(zip(layers, values[2:2 + n])),
                               dict(zip(layers, values[2 + n:2 + 2 * n])))

    def _meta_parts(self):
        """Sessions on the weights-augmented model (one returning the parameter gradients, one
        without those outputs and the nodes that only they need: augment.keep_outputs), its
        contract and the original parameter values."""
        with self._building:
            if self._meta is None:
                from onnx import numpy_helper

                model = load_model(augmented_path(self.model, *self._layers_score, weights=True))
                contract = Contract.from_model(model)
                wanted = set(contract.weights)
                originals = {t.name: numpy_helper.to_array(t)
                             for t in model.graph.initializer if t.name in wanted}
                self._stages = _parameter_stages(model, contract, _stage_layers(self.model,
                                                                                contract.score))
                for value in originals.values():
                    value.setflags(write=False)  # handed out by parameter_values
                with_weights = _session(model.SerializeToString(), *self._options)
                without = _pruned(model, lambda name: not name.startswith("swag.wgrad.")) \
                    or model.SerializeToString()
                self._meta = (with_weights, _session(without, *self._options), contract,
                              originals)
        return self._meta

    def stepped_gradients(self, batch: np.ndarray, loss_seed: np.ndarray, seed: np.ndarray,
                          lr: float, parameters: dict | None = None) -> GradientOutputs:
        """Gradients (as `gradients`) after one plain SGD step on every parameter, taken for
        each image alone: W' = W - lr * dL/dW with dL/dscore = loss_seed[i] (e.g. softmax - one-hot
        for cross-entropy); batch-norm statistics frozen; the model's own weights untouched.
        batch [N, ...], loss_seed and seed [N, K]. parameters: as in `scores` (the step starts
        from them)."""
        weights_session, session, contract, originals = self._meta_parts()
        overrides = self._overrides(parameters or {})
        originals = {**originals, **overrides}
        image = contract.image_input
        weight_outputs = [weight_grad_name(w) for w in contract.weights]
        fetch = [SCORE, grad_name(image)] + [act_name(t) for t in contract.layers] \
            + [grad_name(t) for t in contract.layers]
        runs = []
        batch = np.asarray(batch, self.input_type)
        for i in range(len(batch)):
            x = batch[i:i + 1]
            steps = weights_session.run(weight_outputs,
                                        {image: x, SEED: loss_seed[i:i + 1].astype(x.dtype),
                                         **overrides})
            updated = {w: (originals[w] - lr * g).astype(originals[w].dtype)
                       for w, g in zip(contract.weights, steps)}
            runs.append(session.run(fetch, {image: x, SEED: seed[i:i + 1].astype(x.dtype),
                                            **updated}))
        return self._outputs([_float32(np.concatenate(parts)) for parts in zip(*runs)])

    def layer_scores(self, layer: str, acts: np.ndarray, batch: np.ndarray,
                     parameters: dict | None = None) -> np.ndarray:
        """Logits [N, K] of the model with `layer`'s activation replaced by `acts` (N, ...; the
        layer's own layout, as the model computes it); `batch` (N or 1, ...) the preprocessed
        images, used only where the score also depends on them without passing through the
        layer (one image is repeated N times). The head session (graph.head.layer_head) is built
        on first use per layer and kept. parameters: as in `scores` (those of the head are fed
        to a second head session whose parameters are inputs)."""
        overridable = bool(parameters)
        with self._building:
            if (layer, overridable) not in self._heads:
                self._heads[layer, overridable] = self._head_session(layer, overridable)
        session = self._heads[layer, overridable]
        inputs = {i.name: _NUMPY_TYPES.get(i.type, np.float32) for i in session.get_inputs()}
        feeds = {layer: np.ascontiguousarray(acts, dtype=inputs[layer])}
        if overridable:
            names = {i.name for i in session.get_overridable_initializers()}
            feeds.update({k: v for k, v in self._overrides(parameters).items() if k in names})
        if self.contract.image_input in inputs and self.contract.image_input != layer:
            images = batch if len(batch) == len(acts) else np.repeat(batch[:1], len(acts), 0)
            feeds[self.contract.image_input] = np.asarray(images, inputs[self.contract.image_input])
        return _float32(session.run([self.contract.score], feeds)[0])

    def _head_session(self, layer: str, overridable: bool):
        """A session on the model from `layer` on (graph.head.layer_head), on the graph the
        layers were found in (QOperator models: its QDQ form); `overridable`: its parameters
        (those of `parameter_values`) are also optional graph inputs."""
        from onnx import helper

        from swag_onnx.graph.head import layer_head
        from swag_onnx.graph.rules.quantization import as_qdq

        head = layer_head(as_qdq(load_model(self.model)), layer, self.contract.score)
        if overridable:
            wanted = set(self._meta_parts()[3])
            head.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                    for t in head.graph.initializer if t.name in wanted)
        return _session(head.SerializeToString(), *self._options)


def _pruned(model, keep) -> bytes | None:
    """augment.keep_outputs(model, keep), serialised; None where that cannot be (onnx's
    Extractor takes no sparse initializers or quantization annotations, protobuf serialises no
    model beyond 2 GiB): the caller then runs the whole model, slower with the same results."""
    try:
        return keep_outputs(model, keep).SerializeToString()
    except ValueError:
        return None


def _stage_layers(model: Path, score: str) -> list[str]:
    """The stage layers of `model` (the last spatial map at each resolution), in graph order."""
    from swag_onnx.graph import describe
    from swag_onnx.graph.analysis import stage_outputs

    info = describe(model, score)
    return [name for name, _ in stage_outputs(info.layers, info.layout)]


def _parameter_stages(model, contract: Contract, layers: list[str]) -> list[tuple[str, tuple]]:
    """See ModelRunner.parameter_stages. `model`: the weights-augmented ModelProto (its nodes
    in topological order, as ONNX requires); its gradient nodes all depend on the seed input,
    so the forward nodes are those that do not."""
    seeded = _downstream(model, {SEED})[0]
    stages, taken = [], set()
    for name, boundary in zip(["score", *reversed(layers[1:])], reversed(layers)):
        consumers = _downstream(model, {boundary}, skip=seeded)[1]
        names = tuple(w for w in contract.weights if w in consumers and w not in taken)
        taken.update(names)
        if names:
            stages.append((name, names))
    rest = tuple(w for w in contract.weights if w not in taken)
    return stages + [("all", rest)] if rest or not stages else stages


def _downstream(model, sources: set[str], skip=frozenset()) -> tuple[set[str], set[str]]:
    """(tensors computed from `sources`, the inputs read by the nodes that compute them),
    leaving out nodes with an output in `skip`."""
    reached, read = set(sources), set()
    for node in model.graph.node:
        if any(i in reached for i in node.input) and not set(node.output) & skip:
            reached.update(o for o in node.output if o)
            read.update(node.input)
    return reached, read
