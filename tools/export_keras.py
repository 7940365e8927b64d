"""Export a Keras 3 image classifier to ONNX, with a model card (card.json) beside it.

Usage:
    python tools/export_keras.py --model MobileNetV2 --out exported_models/mobilenet_v2
    python tools/export_keras.py --model ResNet50 --weights none --input-size 64 --out /tmp/r50
    python tools/export_keras.py --model my_model.keras --preprocessing tf --labels classes.txt \
        --out exported_models/mine
    python tools/export_keras.py --model saved_model_folder/ --preprocessing raw --out /tmp/sm

`--model` is the name of a `keras.applications` network (MobileNetV2, ResNet50, EfficientNetB0,
...; weights `imagenet`, Keras' default, are downloaded by Keras; `--weights none` gives random
weights, seeded), a `.keras` or `.h5` file, or a TensorFlow SavedModel folder. A model that was
never called is built by calling it once on zeros (`--input-size` gives the size when the model
does not fix it).

The model is converted with tf2onnx (`tf2onnx.convert.from_keras`, the default) or with Keras'
own `model.export(format="onnx")` (`--exporter keras`, itself built on tf2onnx), opset 17 by
default, input `image` [N, H, W, C] float32 (channels-last, as Keras models are) with a dynamic
batch. The ONNX model is checked against Keras with onnxruntime and written atomically with its
card: layout, input size, the preprocessing that the application's `preprocess_input` applies
(detected by running it, see PREPROCESSING), ImageNet class names for 1000-class applications
(from the default model's card; nothing is downloaded), the score tensor (the logits before the
final Softmax) and provenance.

Bad input (a missing or unreadable model file, a model without a rank-4 image input, an unknown
application name, a bad option) prints one line on stderr and exits with code 2; an export that
fails or does not reproduce Keras' outputs exits with code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import difflib
import importlib
import importlib.metadata
import json
import os
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_torch import package_version, publish, write_atomic  # noqa: E402  (shared helpers)

SEED = 0
OPSET = 17
INPUT_NAME = "image"
TOLERANCE = 1e-3  # max |onnx - keras| relative to max |keras output|
REPO = Path(__file__).resolve().parents[1]
IMAGENET_CARD = REPO / "exported_models" / "efficientnet_lite0" / "card.json"

# keras.applications' `preprocess_input` modes as model-card fields (swag_onnx/card.py):
# pixel values x in [0, 255], RGB; "offset"/"divisor" are per channel in the model's colour order.
PREPROCESSING = {
    # caffe: RGB -> BGR, minus the ImageNet mean (BGR order), no scaling
    "caffe": {"color_order": "BGR", "scaling": {"offset": [103.939, 116.779, 123.68],
                                                "divisor": 1.0}},
    # tf: x / 127.5 - 1
    "tf": {"color_order": "RGB", "scaling": {"offset": 127.5, "divisor": 127.5}},
    # torch: x / 255, then the ImageNet mean and std
    "torch": {"color_order": "RGB", "scaling": {"mean": [0.485, 0.456, 0.406],
                                                "std": [0.229, 0.224, 0.225],
                                                "scale": 1 / 255}},
    # raw: the model takes pixels in [0, 255] and normalises them itself (EfficientNet, ConvNeXt)
    "raw": {"color_order": "RGB", "scaling": {"offset": 0.0, "divisor": 1.0}},
}


class ToolError(Exception):
    """A failure reported as one line on stderr; `code` 2 for bad input, 1 for export failures."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------- quiet TensorFlow

@contextlib.contextmanager
def quiet_stderr(enabled: bool = True):
    """Send file descriptor 2 to /dev/null: TensorFlow's C++ start-up and conversion logs bypass
    Python's logging. Python exceptions still propagate and are printed after it is restored."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras():
    """(keras, tensorflow), imported with TensorFlow's log lines silenced."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise ToolError(f"Keras runs on the {keras.backend.backend()!r} backend; set "
                        "KERAS_BACKEND=tensorflow")
    return keras, tf


# ---------------------------------------------------------------------------------- preprocessing

def card_preprocess(pixels: np.ndarray, mode: str) -> np.ndarray:
    """What the card of `mode` does to RGB pixels: float (..., 3) in [0, 255] -> float32 (..., 3),
    computed by swag_onnx.images' own recipe (so the card and Keras can be compared)."""
    from swag_onnx.images import card_recipe

    spec = PREPROCESSING[mode]
    recipe = card_recipe({"layout": "NHWC", "input_size": [1, 1], **spec})
    x = np.asarray(pixels, np.float32)
    if recipe.bgr:
        x = x[..., ::-1]
    return ((x - recipe.offset) / recipe.divisor).astype(np.float32)


def detect_preprocessing(preprocess_input) -> str | None:
    """The PREPROCESSING mode that `preprocess_input` (a keras.applications function on
    channels-last float arrays in [0, 255]) computes, found by running it; None if none fits."""
    pixels = np.array([[[[0.0, 64.0, 128.0], [255.0, 32.0, 200.0], [17.0, 230.0, 99.0]]]],
                      np.float32)  # (1, 1, 3, 3)
    got = np.asarray(preprocess_input(pixels.copy()), np.float32)
    for mode in PREPROCESSING:
        if got.shape == pixels.shape and np.allclose(got, card_preprocess(pixels, mode),
                                                     rtol=1e-5, atol=1e-4):
            return mode
    return None


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names (the default model's card; same order as Keras)."""
    try:
        names = json.loads(IMAGENET_CARD.read_text())["class_names"]
    except (OSError, ValueError, KeyError) as exc:
        raise ToolError(f"cannot read the ImageNet class names from {IMAGENET_CARD}: {exc}",
                        1) from None
    return list(names)


def read_labels(path: Path, num_classes: int) -> list[str]:
    """One class name per line (blank lines ignored); the count must match the model."""
    try:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ToolError(f"cannot read labels file {str(path)!r}: {exc}") from None
    if len(names) != num_classes:
        raise ToolError(f"labels file {str(path)!r} has {len(names)} names, the model has "
                        f"{num_classes} classes")
    return names


# --------------------------------------------------------------------------------------- loading

def application_names(keras) -> list[str]:
    """Names of the keras.applications model builders (MobileNetV2, ResNet50, ...)."""
    return sorted(n for n in dir(keras.applications)
                  if n[:1].isupper() and callable(getattr(keras.applications, n)))


def load_application(keras, name: str, weights: str, input_size: int | None, seed: int):
    """A keras.applications network; returns (model, preprocessing mode or None, source)."""
    names = application_names(keras)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}" if close else ""
        raise ToolError(f"{name!r} is not a keras.applications network nor an existing model "
                        f"file or folder{hint}")
    builder = getattr(keras.applications, name)
    kwargs = {}
    if weights == "none":
        kwargs["weights"] = None
        keras.utils.set_random_seed(seed)
    elif weights == "imagenet":
        kwargs["weights"] = "imagenet"
    else:
        path = Path(weights)
        if not path.is_file():
            raise ToolError(f"--weights: no such weights file {weights!r} (or pass none, "
                            "imagenet)")
        kwargs["weights"] = str(path)
    if input_size is not None:
        kwargs["input_shape"] = (input_size, input_size, 3)
    try:
        model = builder(**kwargs)
    except ValueError as exc:  # bad input size for this network or these weights
        raise ToolError(f"{name}: {first_line(exc)}") from None
    module = importlib.import_module(builder.__module__)
    mode = detect_preprocessing(module.preprocess_input) \
        if hasattr(module, "preprocess_input") else None
    source = {"source": f"keras.applications.{name}", "weights": weights,
              "seed": seed if weights == "none" else None}
    return model, mode, source


def load_file(keras, tf, path: Path):
    """A model from a .keras / .h5 file or a SavedModel folder; returns (model, source)."""
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ToolError(f"{str(path)!r} is a folder without saved_model.pb (not a SavedModel)")
        return load_saved_model(keras, tf, path), {"source": f"SavedModel {path.name}"}
    if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        raise ToolError(f"{str(path)!r}: expected a .keras or .h5 file or a SavedModel folder")
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise ToolError(f"cannot read Keras model {str(path)!r}: not a zip archive (a .keras "
                        "file is one); is the file complete?")
    try:
        model = keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for unreadable files
        raise ToolError(f"cannot read Keras model {str(path)!r}: {first_line(exc)}") from None
    if not isinstance(model, keras.Model):
        raise ToolError(f"{str(path)!r} holds a {type(model).__name__}, not a Keras model")
    return model, {"source": f"Keras file {path.name}"}


def load_saved_model(keras, tf, path: Path):
    """Wrap a SavedModel's serving signature (one rank-4 input, one output) as a Keras model."""
    try:
        loaded = tf.saved_model.load(str(path))
        endpoint = loaded.signatures["serving_default"]
    except Exception as exc:  # noqa: BLE001
        raise ToolError(f"cannot read SavedModel {str(path)!r}: {first_line(exc)}") from None
    specs = list(endpoint.structured_input_signature[1].values())
    if len(specs) != 1 or specs[0].shape.rank != 4:
        raise ToolError(f"SavedModel {str(path)!r}: expected one rank-4 image input, found "
                        f"{[s.shape.as_list() for s in specs]}")
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    inputs = keras.Input(tuple(specs[0].shape[1:]), dtype="float32")
    outputs = layer(inputs)
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise ToolError(f"SavedModel {str(path)!r}: expected one output, found "
                            f"{sorted(outputs)}")
        outputs = next(iter(outputs.values()))
    return keras.Model(inputs, outputs)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def image_shape(keras, model, input_size: int | None) -> tuple[int, int, int]:
    """The (H, W, C) of the model's single rank-4 input, building (calling) the model on zeros
    first when it was never called. ToolError for anything but one channels-last RGB image."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if not inputs:
        if input_size is None:
            raise ToolError("the model was never built and its input size is unknown; pass "
                            "--input-size")
        try:
            model(np.zeros((1, input_size, input_size, 3), np.float32))
        except Exception as exc:  # noqa: BLE001
            raise ToolError(f"the model does not take a {input_size}x{input_size} RGB image: "
                            f"{first_line(exc)}") from None
        shape = (None, input_size, input_size, 3)
    else:
        if len(inputs) != 1:
            raise ToolError(f"the model has {len(inputs)} inputs; expected one image input")
        shape = tuple(inputs[0].shape)
    if len(shape) != 4:
        raise ToolError(f"the model input has shape {list(shape)}, not a rank-4 image input "
                        "(N, H, W, C)")
    height, width, channels = shape[1:]
    if channels != 3:
        raise ToolError(f"the model input has shape {list(shape)}; expected channels-last RGB "
                        "(N, H, W, 3)")
    if height is None or width is None:
        if input_size is None:
            raise ToolError("the model accepts any image size; pass --input-size")
        height = width = input_size
    elif input_size is not None and (height, width) != (input_size, input_size):
        raise ToolError(f"the model's input size is fixed at {height}x{width}; "
                        f"--input-size {input_size} does not match")
    if not getattr(model, "_called", True):  # Keras' exporter refuses models never called
        model(np.zeros((1, height, width, channels), np.float32))
    return int(height), int(width), int(channels)


# -------------------------------------------------------------------------------------- exporting

def export_onnx(model, path: Path, shape: tuple[int, int, int], exporter: str = "tf2onnx",
                opset: int = OPSET) -> None:
    """Convert `model` to ONNX at `path`: input INPUT_NAME [N, H, W, C] float32, dynamic batch.

    exporter "tf2onnx": tf2onnx.convert.from_keras; "keras": model.export(format="onnx").
    ToolError (code 1) when the conversion fails.
    """
    keras, tf = import_keras()
    spec = tf.TensorSpec((None,) + tuple(shape), tf.float32, name=INPUT_NAME)
    try:
        if exporter == "tf2onnx":
            import tf2onnx

            if type(model).__name__ != "Functional":
                # tf2onnx 1.17 cannot name the outputs of Keras 3 Sequential (and subclassed)
                # models (a KeyError on 'keras_tensor_N'); a functional wrapper it can
                inputs = keras.Input(tuple(shape), name=INPUT_NAME)
                model = keras.Model(inputs, model(inputs))
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=(spec,), opset=opset)
            path.write_bytes(proto.SerializeToString())
        elif exporter == "keras":
            model.export(str(path), format="onnx", input_signature=[spec], opset_version=opset,
                         verbose=False)
        else:
            raise ToolError(f"unknown exporter {exporter!r} (tf2onnx or keras)")
    except ToolError:
        raise
    except Exception as exc:  # noqa: BLE001 - converter errors of every kind
        raise ToolError(f"the {exporter} export failed: {first_line(exc)}", 1) from None
    check_model(path)


def check_model(path: Path) -> None:
    """The ONNX model must be made of ONNX ops (tf2onnx leaves TensorFlow ops it cannot convert,
    such as Erfc from the exact GELU or a StatefulPartitionedCall, in the graph) and need exactly
    one input, the image (an exporter that leaves weights as graph inputs, as Keras' exporter
    does with Normalization constants, made an unusable model). ToolError (code 1) otherwise."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    foreign = sorted({n.op_type for n in model.graph.node
                      if not onnx.defs.has(n.op_type, n.domain or "")})
    if foreign:
        raise ToolError(f"the converter left TensorFlow ops it could not convert to ONNX: "
                        f"{', '.join(foreign)}", 1)
    inits = {i.name for i in model.graph.initializer}
    needed = [i.name for i in model.graph.input if i.name not in inits]
    if len(needed) != 1:
        extra = ", ".join(n for n in needed if n != INPUT_NAME) or "none"
        raise ToolError(f"the exported ONNX model needs {len(needed)} inputs (extra: {extra}); "
                        "the exporter left constants as inputs, try --exporter tf2onnx", 1)


def verify(model, session, shape: tuple[int, int, int], seed: int = SEED) -> dict:
    """Compare onnxruntime and Keras outputs on a random batch of 2 in [0, 255]; ToolError
    (code 1) if they differ by more than TOLERANCE relative to the largest Keras output."""
    x = np.random.default_rng(seed).uniform(0, 255, (2,) + tuple(shape)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    got = session.run(None, {INPUT_NAME: x})[0]
    if got.shape != expected.shape:
        raise ToolError(f"ONNX output shape {got.shape} differs from Keras' {expected.shape}", 1)
    if centered_log(expected) is not None and centered_log(got) is not None:
        # softmax outputs of random weights are all close to 1/K: compare the logits instead
        # (log-probabilities minus their mean), which keep every difference visible
        got, expected = centered_log(got), centered_log(expected)
    diff = float(np.abs(got - expected).max())
    relative = diff / max(float(np.abs(expected).max()), 1e-30)
    print(f"keras vs onnxruntime outputs: max abs diff {diff:.3g} (relative {relative:.3g})")
    if not relative <= TOLERANCE:
        raise ToolError(f"ONNX outputs differ from Keras by {relative:.3g} > {TOLERANCE}", 1)
    return {"max_abs_diff": diff, "relative": relative}


def centered_log(p: np.ndarray) -> np.ndarray | None:
    """Rows of probabilities (N, K) -> log p minus its row mean, float64 (the logits up to a
    constant); None when `p` is not positive rows that sum to 1."""
    p = np.asarray(p, np.float64)
    if p.ndim != 2 or np.any(p <= 0) or not np.allclose(p.sum(-1), 1.0, atol=1e-4):
        return None
    logp = np.log(p)
    return logp - logp.mean(-1, keepdims=True)


# ------------------------------------------------------------------------------------------ main

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2 (argparse prints the usage too)
        raise ToolError(message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True,
                        help="keras.applications name (e.g. MobileNetV2), .keras/.h5 file or "
                             "SavedModel folder")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (gets model.onnx and card.json)")
    parser.add_argument("--weights", default="imagenet",
                        help="applications: imagenet (downloaded by Keras), none (random, "
                             "seed --seed) or a weights file; default imagenet")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of random weights")
    parser.add_argument("--input-size", type=int,
                        help="image side in pixels (applications: default the network's own)")
    parser.add_argument("--exporter", choices=["tf2onnx", "keras"], default="tf2onnx")
    parser.add_argument("--opset", type=int, default=OPSET)
    parser.add_argument("--preprocessing", choices=sorted(PREPROCESSING),
                        help="scaling of the model input; applications: detected from "
                             "preprocess_input; model files: required")
    parser.add_argument("--resize", type=int,
                        help="card: resize the shorter side to N, then centre-crop; default a "
                             "direct resize to the input size")
    parser.add_argument("--labels", type=Path, help="class names, one per line")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's and the converter's log lines")
    args = parser.parse_args(argv)
    if args.input_size is not None and args.input_size <= 0:
        raise ToolError("--input-size must be a positive integer")
    if args.resize is not None and args.resize <= 0:
        raise ToolError("--resize must be a positive integer")
    if args.opset < 13:
        raise ToolError("--opset must be >= 13 (swag_onnx needs it)")
    return args


def export(args: argparse.Namespace) -> Path:
    """Load, export, verify and describe the model; write model.onnx and card.json."""
    target = Path(args.model)
    is_file = target.exists() or target.suffix.lower() in (".keras", ".h5", ".hdf5") \
        or os.sep in args.model
    if is_file and not target.exists():
        raise ToolError(f"model {args.model!r} does not exist")
    if is_file and args.preprocessing is None:
        raise ToolError("model files need --preprocessing (caffe, raw, tf or torch): how "
                        "pixels in [0, 255] were scaled when the model was trained")
    if args.resize is not None and args.input_size is not None and args.resize < args.input_size:
        raise ToolError("--resize must be at least --input-size")

    with quiet_stderr(not args.verbose):
        keras, tf = import_keras()
        if is_file:
            model, source = load_file(keras, tf, target)
            mode = args.preprocessing
        else:
            model, detected, source = load_application(keras, args.model, args.weights,
                                                       args.input_size, args.seed)
            mode = args.preprocessing or detected
            if mode is None:
                raise ToolError(f"cannot tell how {args.model} scales its input; pass "
                                "--preprocessing")
        shape = image_shape(keras, model, args.input_size)
    num_classes = int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else None
    if args.labels is not None:
        class_names = read_labels(args.labels, num_classes or 0)
    elif not is_file and num_classes == 1000:
        class_names = imagenet_class_names()
    else:
        class_names = None

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "model.onnx"
    fd, tmp_name = tempfile.mkstemp(dir=args.out, prefix=".model.", suffix=".onnx")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with quiet_stderr(not args.verbose):
            export_onnx(model, tmp, shape, args.exporter, args.opset)
        import onnxruntime as ort

        from swag_onnx.graph import describe

        ort.set_default_logger_severity(3)
        try:
            session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types
            raise ToolError(f"onnxruntime cannot load the exported model: {first_line(exc)}",
                            1) from None
        check = verify(model, session, shape, args.seed)
        del session
        info = describe(tmp)
        publish(tmp, model_path)
    finally:
        tmp.unlink(missing_ok=True)
    if info.unsupported:
        print(f"warning: {len(info.unsupported)} op(s) have no gradient rule: "
              + "; ".join(info.unsupported[:5]), file=sys.stderr)

    from swag_onnx.runtime import file_sha256

    exporter = ("tf2onnx.convert.from_keras" if args.exporter == "tf2onnx"
                else "keras Model.export(format='onnx')") + f", opset {args.opset}"
    card = {
        "model": model_path.name,
        "input_name": info.image_input,
        "layout": info.layout,
        "input_size": [shape[0], shape[1]] if info.layout == "NHWC" else list(info.input_shape[2:]),
        "resize": args.resize,
        "crop": "center" if args.resize else "none",
        "scaling": PREPROCESSING[mode]["scaling"],
        "color_order": PREPROCESSING[mode]["color_order"],
        "preprocessing": mode,
        "class_names": class_names,
        "score": info.score,
        "default_layers": ["auto"],
        "provenance": {
            **source,
            "model_name": args.model if not is_file else target.name,
            "exporter": exporter,
            "keras_version": package_version("keras"),
            "tensorflow_version": tf.__version__,
            "tf2onnx_version": package_version("tf2onnx"),
            "onnx_sha256": file_sha256(model_path),
            "onnx_check": check,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
    }
    write_atomic(args.out / "card.json", (json.dumps(card, indent=1) + "\n").encode())
    print(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.1f} MB) and "
          f"{args.out / 'card.json'} (layout {info.layout}, preprocessing {mode}, "
          f"score {info.score})")
    return model_path


def main(argv: list[str] | None = None) -> None:
    try:
        export(parse_args(argv))
    except ToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    except Exception as exc:  # noqa: BLE001 - from the swag_onnx checks (BadModelError, ...)
        from swag_onnx.errors import SwagError

        if isinstance(exc, SwagError):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
