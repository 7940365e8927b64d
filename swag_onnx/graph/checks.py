"""Checks of a model when it is loaded: against the installed onnxruntime and against what
swag_onnx can explain (one image input, one score per class), before any analysis or session.

`fit_to_runtime` compares the model's IR version and opset with the highest ones the installed
onnxruntime loads (probed once per process on a one-node model: onnxruntime publishes neither)
and lowers the IR version in place when the model's opsets allow it (onnx 1.23 stamps IR 14 on
every model it saves, onnxruntime 1.31 reads up to IR 13). `check_model` finds the image input and
the score tensor and refuses, in one line, what would otherwise fail later inside onnxruntime or
NumPy: a model already augmented by swag_onnx, ops of a domain onnxruntime does not know, more
than one input to feed, a score that is not [N, K] (a segmentation or detection output).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import onnx
from onnx import helper

from swag_onnx.errors import BadModelError, BadOptionError

# Domains whose ops onnxruntime implements; any other is a custom op library it cannot load.
RUNTIME_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
AUGMENTED_MARKS = ("swag.seed", "swag.contract")  # augment.SEED, augment.CONTRACT_KEY
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.BFLOAT16}
MIN_PROBE_OPSET = 13  # the lowest opset swag_onnx accepts (analysis.MIN_OPSET)


@dataclass(frozen=True)
class ModelFacts:
    """What the card is checked against: the image input, its shape (None for a dynamic dim),
    the score tensor and its shape (None when unknown), and the number of classes (None when
    the class dim is dynamic or unknown)."""

    image_input: str
    image_shape: tuple | None
    score: str
    score_shape: tuple | None
    num_classes: int | None


def _identity_model(ir_version: int, opset: int) -> bytes:
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model.SerializeToString()


def _loads(ir_version: int, opset: int) -> bool:
    import onnxruntime as ort

    try:
        ort.InferenceSession(_identity_model(ir_version, opset),
                             providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own types (Fail, InvalidGraph, ...)
        return False
    return True


@functools.lru_cache(maxsize=1)
def runtime_limits() -> tuple[int, int]:
    """(highest IR version, highest default-domain opset) the installed onnxruntime loads;
    the candidates are those the installed onnx knows (a model cannot claim more)."""
    ir = next((v for v in range(onnx.IR_VERSION, 6, -1) if _loads(v, MIN_PROBE_OPSET)), 7)
    opset = next((v for v in range(onnx.defs.onnx_opset_version(), MIN_PROBE_OPSET - 1, -1)
                  if _loads(ir, v)), MIN_PROBE_OPSET)
    return ir, opset


def runtime_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def default_opset(model: onnx.ModelProto) -> int | None:
    return next((i.version for i in model.opset_import if i.domain in ("", "ai.onnx")), None)


def fit_to_runtime(model: onnx.ModelProto, name: str) -> bool:
    """Make `model` loadable by the installed onnxruntime, in place: lower its IR version to the
    highest one onnxruntime reads when its opsets allow it (they fix the lowest IR version).
    Returns whether the model was changed; BadModelError (one line, both versions named) when
    the opset or the needed IR version is beyond onnxruntime."""
    max_ir, max_opset = runtime_limits()
    opset = default_opset(model)
    if opset is not None and opset > max_opset:
        raise BadModelError(
            f"{name}: the model uses ONNX opset {opset}, onnxruntime {runtime_version()} runs up "
            f"to opset {max_opset}; re-export it with opset {max_opset} or upgrade onnxruntime")
    if model.ir_version <= max_ir:
        return False
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.functions:
        needed = max(needed, 8)  # model-local functions came with IR 8
    if needed > max_ir:
        raise BadModelError(
            f"{name}: the model has IR version {model.ir_version} (its opsets need at least "
            f"{needed}), onnxruntime {runtime_version()} reads up to IR version {max_ir}; "
            "re-export it with an older onnx or upgrade onnxruntime")
    model.ir_version = max_ir
    return True


def check_model(model: onnx.ModelProto, name: str, score: str | None = None) -> ModelFacts:
    """Refuse, in one line, a model swag_onnx cannot explain; returns its ModelFacts.
    `score`: the score tensor the card or --score names (None: found as analysis does)."""
    _check_not_augmented(model, name)
    _check_domains(model, name)
    image, image_shape = _image_input(model, name)
    given = score is not None
    if given:
        _check_named_score(model, score)
    else:
        score = _default_score(model)
    shape = _shape_of(model, score)
    if shape is not None and len(shape) > 2 and any(d not in (1, None) for d in shape[1:-1]):
        dims = "x".join("N" if d is None else str(d) for d in shape)
        text = (f"has shape {dims}, not one score per class ([N, classes]) as a classifier's; "
                "swag_onnx explains image classifiers, not segmentation or detection outputs")
        if given:
            raise BadOptionError(f"score tensor {score!r} {text}; name the logits")
        raise BadModelError(f"{name}: the score tensor {score!r} {text}")
    classes = shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None
    return ModelFacts(image, image_shape, score, shape, classes)


def _check_not_augmented(model: onnx.ModelProto, name: str) -> None:
    names = {i.name for i in model.graph.input} | {p.key for p in model.metadata_props}
    if any(mark in names for mark in AUGMENTED_MARKS):
        raise BadModelError(f"{name} is already augmented by swag_onnx (it has swag.seed and "
                            "swag.contract); pass the original model")


def _check_domains(model: onnx.ModelProto, name: str) -> None:
    local = {f.domain for f in model.functions}  # model-local functions: inlined by onnxruntime
    for node in model.graph.node:
        if node.domain not in RUNTIME_DOMAINS and node.domain not in local:
            raise BadModelError(
                f"{name}: node {node.name or node.output[0]!r} is op {node.op_type!r} of the "
                f"custom domain {node.domain!r}, which onnxruntime cannot run without its "
                "library; re-export the model with standard ONNX ops")


def _image_input(model: onnx.ModelProto, name: str) -> tuple[str, tuple | None]:
    """The one graph input to feed (not an initializer) and its shape."""
    inits = {t.name for t in model.graph.initializer}
    fed = [i for i in model.graph.input if i.name not in inits]
    if len(fed) != 1:
        listed = ", ".join(repr(i.name) for i in fed) or "none"
        raise BadModelError(f"{name}: the model takes {len(fed)} inputs ({listed}); swag_onnx "
                            "feeds exactly one image input (export the others as constants)")
    return fed[0].name, _dims(fed[0])


def _check_named_score(model: onnx.ModelProto, score: str) -> None:
    graph = model.graph
    if score in {i.name for i in graph.input} or score in {t.name for t in graph.initializer}:
        raise BadOptionError(f"score tensor {score!r} is a model input, not the classifier's "
                             "scores; name the logits (see `swag-onnx inspect`)")


def _default_score(model: onnx.ModelProto) -> str:
    """The first float output, or the input of a final Softmax/LogSoftmax (as analysis does)."""
    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = [o for o in model.graph.output
               if o.type.tensor_type.elem_type in FLOAT_TYPES | {0}]
    name = (outputs or list(model.graph.output))[0].name
    node = producer.get(name)
    while node is not None and node.op_type == "Identity":
        name, node = node.input[0], producer.get(node.input[0])
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        return node.input[0]
    return name


def _dims(value: onnx.ValueInfoProto) -> tuple | None:
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                 for d in tensor.shape.dim)


def _shape_of(model: onnx.ModelProto, tensor: str) -> tuple | None:
    """The declared shape of `tensor`, else the one ONNX shape inference finds (None when
    neither knows it). A Softmax input has its output's shape."""
    graph = model.graph
    for value in [*graph.output, *graph.value_info, *graph.input]:
        if value.name == tensor:
            found = _dims(value)
            if found is not None:
                return found
    try:  # no data propagation: a few hundred ms at most, only for unlabelled scores
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference fails on some valid exports; analysis reports those
        return None
    value = next((v for v in inferred.graph.value_info if v.name == tensor), None)
    return None if value is None else _dims(value)
