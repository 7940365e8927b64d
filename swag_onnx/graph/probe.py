"""Static shapes as onnxruntime computes them, by running the model once.

ONNX shape inference is not enough: exports that compute shapes at run time ("same" padding
subgraphs, channel shuffles written with Shape/Gather/Div) defeat it, and for ceil-mode pooling
its output sizes can differ from onnxruntime's. For an image model with a fixed image size every
tensor's non-batch dims are fixed, so we run the model on zeros at batch 1 and 2 with every node
output as an extra output: dims that change with the batch are batch dims (kept symbolic), the
others are static.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from swag_onnx.errors import BadModelError


def node_outputs(model: onnx.ModelProto) -> list[str]:
    return [out for node in model.graph.node for out in node.output if out]


def probe_shapes(model: onnx.ModelProto, image: str, image_shape: tuple, image_dtype: int,
                 names: list[str]) -> dict[str, tuple]:
    """Run `model` on zeros and return {name: shape with None for batch-dependent dims}."""
    import onnxruntime as ort

    if not names or any(d is None for d in image_shape[1:]):
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    ort.set_default_logger_severity(3)
    batches = (1, 2) if image_shape[0] is None else (image_shape[0],)
    runs = []
    try:
        session = ort.InferenceSession(probe.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        for batch in batches:
            feed = {image: np.zeros((batch,) + tuple(image_shape[1:]),
                                    helper.tensor_dtype_to_np_dtype(image_dtype))}
            runs.append([np.shape(v) for v in session.run(names, feed)])
    except Exception as exc:  # onnxruntime raises its own types, with C++ detail
        detail = str(exc).splitlines()[0].split("] ")[-1][:300]
        raise BadModelError(f"onnxruntime cannot run the model on a blank image ({detail}); "
                            "check that it loads in onnxruntime, or re-export it") from None
    shapes = {}
    for i, name in enumerate(names):
        observed = [run[i] for run in runs]
        if len({len(s) for s in observed}) != 1:
            continue
        shapes[name] = tuple(d if all(s[k] == d for s in observed) else None
                             for k, d in enumerate(observed[0]))
    return shapes
