"""Side-by-side timings of backward formulations in onnxruntime (CPU), to justify the rules.

1. Input gradient of a strided depthwise 3x3 Conv (96 channels, 112x112 -> 56x56, stride 2):
   ConvTranspose (group=96) | zero insertion by padding a 6-D reshape + flipped Conv |
   zero insertion by a 1x1 depthwise ConvTranspose of ones + flipped Conv (the rule's choice).
2. MaxPool 3x3 backward (augmented models: 1x1 Conv + ReLU -> pool -> 1x1 Conv, so that the pool
   reads and feeds onnxruntime's blocked layout as in a network) on 64x111x111 stride 2 ceil mode
   (SqueezeNet), 64x112x112 stride 2 pad 1 (ResNet stem) and 480x28x28 stride 1 pad 1 (GoogLeNet):
   the rule's one-axis-at-a-time routing (float32/float64) against the argmax routes (a copy of
   the pool with its Indices output, then ScatterElements(add) from opset 16, or one-hot taps +
   one ConvTranspose below). Reported: the augmented model's time minus the plain model's.
Each variant is checked against the first of its group before timing (CPU time of the calling
thread, one onnxruntime thread: machine load does not inflate it).

    python tools/bench_rules.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
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
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # cpu_timed: all work on the calling thread
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


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


def max_pool_variants(c, size, stride, pad, ceil):
    """The plain model and the MaxPool rule's formulations, each as an augmented model."""
    from swag_onnx.graph.rules import pooling

    x = np.random.default_rng(2).standard_normal((1, c, size, size)).astype(np.float32)
    node = helper.make_node
    graph = helper.make_graph(
        [node("Conv", ["x", "w"], ["a"]), node("Relu", ["a"], ["r"]),
         node("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[stride] * 2,
              pads=[pad] * 4, ceil_mode=ceil),
         node("Conv", ["p", "w"], ["q"]), node("Flatten", ["q"], ["y"])], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.eye(c, dtype=np.float32)[:, :, None, None], "w")])
    pool = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    pool.ir_version = 8
    variants = {"plain model (forward only)": pool}
    for name, form, min_opset in (
            ("one axis at a time (rule)", "separable", 16),
            ("argmax indices + ScatterElements(add) (float16 route, opset >= 16)", "argmax", 16),
            ("argmax taps + one-hot ConvTranspose (float16 route, opset < 16)", "argmax", 99)):
        saved = pooling.FORMULATION, pooling.SCATTER_MIN_OPSET
        pooling.FORMULATION, pooling.SCATTER_MIN_OPSET = form, min_opset
        try:
            variants[name] = augment_model(pool)
        finally:
            pooling.FORMULATION, pooling.SCATTER_MIN_OPSET = saved
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # cpu_timed: all work on the calling thread
    sessions = {k: ort.InferenceSession(m.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])
                for k, m in variants.items()}
    width = next(iter(sessions.values())).run(None, {"x": x})[0].shape[1]
    seed = np.random.default_rng(3).standard_normal((1, width)).astype(np.float32)
    return sessions, {"x": x, SEED: seed}


def cpu_timed(fn, repeats):
    """Median CPU time (ms) of the calling thread over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
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
            times[k].append(cpu_timed(lambda: s.run(None, feed), 1))
    base = np.median(times["ConvTranspose (depthwise)"])
    print("| strided depthwise Conv, input gradient | ms | vs ConvTranspose |\n|---|---:|---:|")
    for k, v in times.items():
        print(f"| {k} | {np.median(v):.2f} | {np.median(v) / base:.2f} |")

    for c, size, stride, pad, ceil in ((64, 111, 2, 0, 1), (64, 112, 2, 1, 0), (480, 28, 1, 1, 1)):
        sessions, feed = max_pool_variants(c, size, stride, pad, ceil)
        plain, *augmented = sessions
        grads = [sessions[k].run([grad_name("x")], feed)[0] for k in augmented]
        for k, grad in zip(augmented[1:], grads[1:]):
            assert np.allclose(grad, grads[0], atol=1e-5), f"MaxPool formulations disagree: {k}"
        t = {k: [] for k in sessions}
        for _ in range(repeats):  # interleaved
            for k, v in sessions.items():
                feeds = {"x": feed["x"]} if k == plain else feed
                t[k].append(cpu_timed(lambda: v.run(None, feeds), 1))
        base = np.median(t[plain])
        print(f"\n| MaxPool 3x3/{stride} pad {pad} ceil {ceil}, {c}x{size}x{size}, backward | "
              f"ms (augmented - plain {base:.2f}) |\n|---|---:|")
        for k in augmented:
            print(f"| {k} | {np.median(t[k]) - base:.2f} |")


if __name__ == "__main__":
    main()
