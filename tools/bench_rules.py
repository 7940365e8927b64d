"""Side-by-side timings of backward formulations in onnxruntime (CPU), to justify the rules.

1. Input gradient of a strided depthwise 3x3 Conv (96 channels, 112x112 -> 56x56, stride 2):
   ConvTranspose (group=96) | zero insertion by padding a 6-D reshape + flipped Conv |
   zero insertion by a 1x1 depthwise ConvTranspose of ones + flipped Conv (the rule's choice).
2. MaxPool 3x3 forward+backward (augmented one-pool models) on 64x112x112 stride 2 (ResNet stem)
   and 480x28x28 stride 1 (GoogLeNet): the rule's two formulations, ScatterElements(add) on the
   argmax indices (opset >= 16) and argmax offset -> one-hot taps -> one ConvTranspose.
Each variant is checked against the first of its group before timing.

    python tools/bench_rules.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from swag_onnx.graph import augment_model
from swag_onnx.graph.augment import SEED, grad_name


def session(nodes, inits, inputs, output="o"):
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def depthwise_variants(c=96, h=56):
    """Three ways to compute dX of Conv(x, w, group=c, stride 2, pads 1) from dY [1, c, h, h]."""
    w = np.random.default_rng(0).standard_normal((c, 1, 3, 3)).astype(np.float32)
    flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1])
    node = helper.make_node
    variants = {
        "ConvTranspose (depthwise)": ([node("ConvTranspose", ["d", "w"], ["o"], group=c,
                                            strides=[2, 2], pads=[1, 1, 1, 1],
                                            output_padding=[1, 1])], {"w": w}),
        "pad 6-D + Conv": ([node("Reshape", ["d", "s6"], ["r"]), node("Pad", ["r", "p"], ["q"]),
                            node("Reshape", ["q", "s4"], ["u"]),
                            node("Conv", ["u", "w"], ["o"], group=c, pads=[1, 1, 1, 1])],
                           {"w": flipped, "s6": np.array([0, c, h, 1, h, 1]),
                            "p": np.array([0] * 6 + [0, 0, 0, 1, 0, 1]),
                            "s4": np.array([0, c, 2 * h, 2 * h])}),
        "1x1 ConvTranspose + Conv (rule)": ([node("ConvTranspose", ["d", "one"], ["u"], group=c,
                                                  strides=[2, 2]),
                                             node("Conv", ["u", "w"], ["o"], group=c,
                                                  pads=[1, 1, 2, 2])],
                                            {"w": flipped, "one": np.ones((c, 1, 1, 1), np.float32)}),
    }
    feed = {"d": np.random.default_rng(1).standard_normal((1, c, h, h)).astype(np.float32)}
    return {k: session(n, i, [("d", [1, c, h, h])]) for k, (n, i) in variants.items()}, feed


def max_pool_variants(c, size, stride):
    """The MaxPool rule's two formulations, each as an augmented one-pool model."""
    from swag_onnx.graph.rules import pooling

    x = np.random.default_rng(2).standard_normal((1, c, size, size)).astype(np.float32)
    node = helper.make_node
    graph = helper.make_graph([node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3],
                                    strides=[stride] * 2, pads=[1, 1, 1, 1]),
                               node("Flatten", ["p"], ["y"])], "pool",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    pool = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    pool.ir_version = 8
    variants = {}
    for name, min_opset in (("ScatterElements(add) on argmax indices (rule, opset >= 16)", 16),
                            ("argmax taps + one-hot ConvTranspose (rule, opset < 16)", 99)):
        pooling.SCATTER_MIN_OPSET, saved = min_opset, pooling.SCATTER_MIN_OPSET
        try:
            variants[name] = ort.InferenceSession(augment_model(pool).SerializeToString(),
                                                  providers=["CPUExecutionProvider"])
        finally:
            pooling.SCATTER_MIN_OPSET = saved
    out = (size + 2 - 3) // stride + 1
    seed = np.random.default_rng(3).standard_normal((1, c * out * out)).astype(np.float32)
    return variants, {"x": x, SEED: seed}


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    repeats = parser.parse_args().repeats
    ort.set_default_logger_severity(3)

    sessions, feed = depthwise_variants()
    outputs = {k: s.run(None, feed)[0] for k, s in sessions.items()}
    reference = next(iter(outputs.values()))
    for name, value in outputs.items():
        assert np.allclose(value, reference, atol=1e-4), name
    times = {k: [] for k in sessions}
    for _ in range(repeats):  # interleaved
        for k, s in sessions.items():
            times[k].append(timed(lambda: s.run(None, feed), 1))
    base = np.median(times["ConvTranspose (depthwise)"])
    print("| strided depthwise Conv, input gradient | ms | vs ConvTranspose |\n|---|---:|---:|")
    for k, v in times.items():
        print(f"| {k} | {np.median(v):.2f} | {np.median(v) / base:.2f} |")

    for c, size, stride in ((64, 112, 2), (480, 28, 1)):
        variants, feed = max_pool_variants(c, size, stride)
        grads = [v.run([grad_name("x")], feed)[0] for v in variants.values()]
        assert np.allclose(grads[0], grads[1], atol=1e-5), "MaxPool formulations disagree"
        t = {k: [] for k in variants}
        for _ in range(repeats):
            for k, v in variants.items():
                t[k].append(timed(lambda: v.run([grad_name("x")], feed), 1))
        print(f"\n| MaxPool 3x3/{stride} forward+backward, {c}x{size}x{size} | ms |\n|---|---:|")
        for k, v in t.items():
            print(f"| {k} | {np.median(v):.2f} |")

if __name__ == "__main__":
    main()
