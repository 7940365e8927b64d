"""Check that swag_onnx really runs on CUDA, that its gradients there match the CPU's, and time it.

For each model (the embedded default model, plus every ``--model``: an .onnx file or a model
folder with its card) the script:

1. opens the augmented model on the requested provider through swag_onnx's own runtime (the
   sessions users get) and fails in one line when onnxruntime falls back to the CPU for the
   whole session (onnxruntime-gpu without its CUDA libraries lists CUDAExecutionProvider anyway);
2. profiles one augmented run and counts the nodes each provider ran: a compute node (Conv,
   ConvTranspose, MatMul, Gemm) placed on the CPU is a silent per-node fallback and fails;
3. compares the scores, input gradient and layer gradients with the CPU's on the same preprocessed
   scikit-image photos: max|device - cpu| / max|cpu| <= ``--tolerance`` (1e-4) for each;
4. prints images/s of the augmented forward+backward pass (and of the plain forward) at each
   ``--batches`` size, fed from host memory and with IO binding (input copied to the device once,
   outputs left there), as a markdown table for the README.

``--provider cpu`` runs the same logic against the CPU itself (the self-test that the CPU-only
tests run). Exit status: 0 when every check passes, 1 when one fails, 2 on bad usage or when the
provider cannot run here.

    python tools/check_cuda.py                                   # default model on CUDA
    python tools/check_cuda.py --model resnet50.onnx --batches 1 8 32 128
    python tools/check_cuda.py --provider cpu --batches 1 2 --repeats 1   # the CPU self-test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swag_onnx import card as cards
from swag_onnx.errors import SwagError
from swag_onnx.graph import SCORE, SEED, act_name, grad_name
from swag_onnx.images import batch_preprocess
from swag_onnx.runtime import ModelRunner, augmented_path

DEVICE = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "FusedConv", "FusedMatMul",
               "FusedGemm", "NchwcConv"}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


class CheckFailed(Exception):
    """A check that ran and did not pass (exit 1)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[],
                        help="an .onnx file or model folder (repeatable); the default model is "
                             "always checked")
    parser.add_argument("--provider", choices=sorted(DEVICE), default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per batch size")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    if min(args.batches) < 1 or args.repeats < 1 or not args.tolerance > 0:
        parser.error("--batches and --repeats must be >= 1 and --tolerance > 0")
    return args


def photos(card: dict, count: int) -> np.ndarray:
    """`count` preprocessed scikit-image photos (cycled), [count, ...] in the model's layout."""
    from skimage import data

    rgbs = [getattr(data, name)() for name in PHOTOS]
    return batch_preprocess([rgbs[i % len(rgbs)] for i in range(count)], card)[0]


@dataclass
class Placement:
    """How many nodes of one augmented run each provider executed, and the compute ops that the
    CPU ran although another provider was asked for."""

    counts: dict[str, int]
    cpu_compute: list[str]


def placement(model_path: Path, provider: str, feed: dict) -> Placement:
    """Profile one run of `model_path` on `provider` and read each node's provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as folder:
        options.profile_file_prefix = str(Path(folder) / "profile")
        session = ort.InferenceSession(str(model_path), options,
                                       providers=list(dict.fromkeys([DEVICE[provider],
                                                                     DEVICE["cpu"]])))
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    counts: dict[str, int] = {}
    cpu_compute = []
    for event in events:
        args = event.get("args", {})
        if event.get("cat") != "Node" or "provider" not in args or "op_name" not in args:
            continue
        counts[args["provider"]] = counts.get(args["provider"], 0) + 1
        if (provider != "cpu" and args["provider"] == DEVICE["cpu"]
                and args["op_name"] in COMPUTE_OPS):
            cpu_compute.append(f"{args['op_name']} {event.get('name', '')}")
    return Placement(counts, sorted(set(cpu_compute)))


def relative_error(device: np.ndarray, reference: np.ndarray) -> float:
    """max|device - reference| / max|reference| (0 when both are all zero)."""
    scale = float(np.max(np.abs(reference)))
    error = float(np.max(np.abs(device.astype(np.float64) - reference)))
    return error / scale if scale else error


def compare(device: ModelRunner, cpu: ModelRunner, batch: np.ndarray) -> dict[str, float]:
    """Relative error of every output of one gradient run (top-1 seeds) against the CPU's."""
    seed = np.zeros((len(batch), cpu.contract.num_classes), np.float32)
    ours, ref = device.gradients(batch, seed), cpu.gradients(batch, seed)
    errors = {"scores": relative_error(ours.scores, ref.scores),
              "input gradient": relative_error(ours.input_grad, ref.input_grad)}
    for layer in ref.layer_grads:
        errors[f"gradient of {layer}"] = relative_error(ours.layer_grads[layer],
                                                        ref.layer_grads[layer])
    return errors


def _timed(run, repeats: int) -> float:
    """Median seconds of `run()` after two warm-up calls."""
    run(), run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _bound_run(session, feed: dict, fetch: list[str], device: str):
    """A run with IO binding: inputs copied to `device` once, outputs allocated there."""
    import onnxruntime as ort

    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
    for name in fetch:
        binding.bind_output(name, device)

    def run():
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
    return run


def throughput(runner: ModelRunner, card: dict, provider: str, batches, repeats: int) -> list:
    """[(batch, plain forward img/s, augmented img/s, augmented with IO binding img/s)]."""
    session, contract = runner.gradient, runner.contract
    fetch = [SCORE, grad_name(contract.image_input)]
    fetch += [act_name(t) for t in contract.layers] + [grad_name(t) for t in contract.layers]
    rows = []
    for size in batches:
        x = photos(card, size).astype(runner.input_type)
        feed = {contract.image_input: x,
                SEED: np.zeros((size, contract.num_classes), x.dtype)}
        plain = _timed(lambda: runner.scores(x), repeats)
        host = _timed(lambda: session.run(fetch, feed), repeats)
        bound = _timed(_bound_run(session, feed, fetch, provider), repeats)
        rows.append((size, size / plain, size / host, size / bound))
    return rows


def check_model(model, args) -> list[str]:
    """Run every check on one model; prints its section and returns the failures."""
    onnx_path, card = cards.resolve(model)
    layers = card.get("default_layers") or ["auto"]
    device = ModelRunner(onnx_path, layers=layers, score=card.get("score"),
                         provider=args.provider)
    cpu = ModelRunner(onnx_path, layers=layers, score=card.get("score"), provider="cpu")
    if device.gradient.get_providers()[0] != DEVICE[args.provider]:
        raise SwagError(f"{args.provider}: onnxruntime runs this model on "
                        f"{device.gradient.get_providers()[0]}")
    print(f"\n## {onnx_path}\n\nprovider: {device.gradient.get_providers()[0]}")
    failures = []
    batch = photos(card, len(PHOTOS)).astype(device.input_type)
    feed = {device.contract.image_input: batch,
            SEED: np.zeros((len(batch), device.contract.num_classes), batch.dtype)}
    where = placement(augmented_path(onnx_path, layers, card.get("score")), args.provider, feed)
    print(f"nodes per provider: {where.counts}")
    if where.cpu_compute:
        failures.append(f"{onnx_path.name}: compute nodes fell back to the CPU: "
                        + ", ".join(where.cpu_compute[:5]))
    for output, error in compare(device, cpu, batch).items():
        verdict = "ok" if error <= args.tolerance else "FAIL"
        print(f"{output}: max|{args.provider} - cpu| / max|cpu| = {error:.2e} ({verdict})")
        if error > args.tolerance:
            failures.append(f"{onnx_path.name}: {output} differs from the CPU's by {error:.2e}")
    print("\n| batch | forward img/s | augmented img/s | augmented, IO binding img/s |"
          "\n|---:|---:|---:|---:|")
    for size, plain, host, bound in throughput(device, card, args.provider, args.batches,
                                               args.repeats):
        print(f"| {size} | {plain:.1f} | {host:.1f} | {bound:.1f} |")
    return failures


def main(argv=None) -> int:
    args = parse_args(argv)
    import onnxruntime as ort

    if DEVICE[args.provider] not in ort.get_available_providers():
        print(f"error: onnxruntime {ort.__version__} has no {DEVICE[args.provider]} here "
              "(install onnxruntime-gpu, not onnxruntime, on a machine with CUDA)",
              file=sys.stderr)
        return 2
    failures = []
    try:
        for model in [None, *args.model]:
            failures += check_model(model, args)
    except SwagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("\nall checks passed" if not failures else f"\n{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
