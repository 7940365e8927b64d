"""Complete static shapes that ONNX shape inference leaves open, by running the model once.

Exports that compute shapes at run time (\"same\" padding subgraphs, channel shuffles written with
Shape/Gather/Div) defeat symbolic inference, but for an image model with a fixed image size every
tensor's non-batch dims are fixed. We run the model on zeros at batch 1 and 2 with every
incompletely known tensor as an extra output: dims that change with the batch are batch dims
(kept symbolic), the others are static.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def incomplete_tensors(model: onnx.ModelProto, known: dict[str, tuple | None]) -> list[str]:
    """Node outputs whose rank is unknown or that have an unknown dim besides the first."""
    names = []
    for node in model.graph.node:
        for out in node.output:
            shape = known.get(out)
            if out and (shape is None or any(d is None for d in shape[1:])):
                names.append(out)
    return names


def probe_shapes(model: onnx.ModelProto, image: str, image_shape: tuple,
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
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    batches = (1, 2) if image_shape[0] is None else (image_shape[0],)
    runs = []
    for batch in batches:
        feed = {image: np.zeros((batch,) + tuple(image_shape[1:]), np.float32)}
        runs.append([np.shape(v) for v in session.run(names, feed)])
    shapes = {}
    for i, name in enumerate(names):
        observed = [run[i] for run in runs]
        if len({len(s) for s in observed}) != 1:
            continue
        shapes[name] = tuple(d if all(s[k] == d for s in observed) else None
                             for k, d in enumerate(observed[0]))
    return shapes
