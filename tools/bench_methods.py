"""Benchmark every saliency method on the default model, and LIME / RISE against references.

One 224-px image (scikit-image's chelsea photo, resize 256 + centre crop) and the embedded
EfficientNet-Lite0 on onnxruntime's CPU provider. Three parts, each interleaved so machine noise
hits all contenders alike:

1. Per method (``Explainer.explain`` on the decoded image, everything from preprocessing to the
   map at the original size): seconds per image, model passes used (forward-only images and
   forward+backward images, counted at the runner), and the ratio to ONE augmented
   forward+backward run (``runner.gradients`` alone on the preprocessed batch of one).
   Targets: Grad-CAM and NormGrad <= 1.1x that run.
2. LIME, 1000 samples: ``swag_onnx.methods.lime`` against the ``lime`` package's
   ``LimeImageExplainer.explain_instance`` (quickshift with lime's defaults computed by each,
   hide_color None, batch 50, seed 0), both scoring through the same onnxruntime session
   (lime's classifier function preprocesses its RGB batches). Target: ours >= 1.5x faster.
3. RISE, 4000 masks: ``swag_onnx.methods.rise`` (onnxruntime) against a straightforward batched
   torch implementation on the same network in eager mode (torch.no_grad, masks generated in
   batches of 64 with torch.rand + F.interpolate + random shifts, softmax, weighted sum).
   Target: ours >= 1.5x faster.

Run from the repository root (needs the `bench` or `test` extra: torch, efficientnet packages,
lime):

    python tools/bench_methods.py [--repeats 3] [--masks 4000] [--samples 1000]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_torch import load_lite0  # noqa: E402

from swag_onnx import images as imgs  # noqa: E402
from swag_onnx.explain import Explainer, softmax  # noqa: E402
from swag_onnx.methods import METHODS  # noqa: E402
from swag_onnx.methods.lime import lime  # noqa: E402
from swag_onnx.methods.rise import rise  # noqa: E402

# timed once: the methods that make many model runs
SLOW = {name for name, m in METHODS.items() if m.progress or "grad_fn" in m.needs}


class PassCounter:
    """Wraps a ModelRunner's entry points and counts the images each one processed."""

    def __init__(self, runner):
        self.forward = self.backward = 0
        for name in ("scores", "gradients", "stepped_gradients", "layer_scores"):
            setattr(runner, name, self._wrap(getattr(runner, name), name))

    def _wrap(self, fn, name):
        def counted(*args, **kwargs):
            batch = args[1] if name == "layer_scores" else args[0]  # (layer, acts, images)
            if name in ("scores", "layer_scores"):  # a head run is at most one forward
                self.forward += len(batch)
            else:  # a stepped run is two forward+backward runs per image
                self.backward += len(batch) * (2 if name == "stepped_gradients" else 1)
            return fn(*args, **kwargs)
        return counted

    def reset(self) -> tuple[int, int]:
        counts, self.forward, self.backward = (self.forward, self.backward), 0, 0
        return counts


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_method(explainer: Explainer, rgb: np.ndarray, repeats: int) -> list[tuple]:
    """Rows (method, seconds, forward images, fwd+bwd images, ratio to one augmented run)."""
    counter = PassCounter(explainer.runner)
    batch, _ = imgs.batch_preprocess([rgb], explainer.card)
    seed = np.zeros((1, explainer.num_classes), np.float32)
    methods = [(m, {}) for m in METHODS] + [("normgrad", {"meta": True})]
    for method, options in methods:  # warm-up: sessions, caches, augmented models
        explainer.explain([rgb], method=method, steps=4, **options) if method == "xrai" else \
            explainer.explain([rgb], method=method, **options)
    counter.reset()
    times = {f"{m}{' --meta' if o else ''}": [] for m, o in methods}
    reference = []
    for r in range(repeats):
        for method, options in methods:
            name = f"{method}{' --meta' if options else ''}"
            if method in SLOW and r > 0:
                continue
            reference.append(timed(lambda: explainer.runner.gradients(batch, seed)))
            counter.reset()
            times[name].append(timed(lambda: explainer.explain([rgb], method=method, **options)))
            times[name + "#passes"] = counter.reset()
    one_run = float(np.median(reference))
    rows = [("one augmented forward+backward", one_run, 0, 1, 1.0)]
    for name in [n for n in times if not n.endswith("#passes")]:
        seconds = float(np.median(times[name]))
        forward, backward = times[name + "#passes"]
        rows.append((name, seconds, forward, backward, seconds / one_run))
    return rows


def lime_reference(view, seg_fn, classify, target, samples):
    from lime.lime_image import LimeImageExplainer

    LimeImageExplainer(random_state=0).explain_instance(
        view, classify, labels=(target,), top_labels=None, hide_color=None,
        num_samples=samples, batch_size=50, segmentation_fn=seg_fn, random_seed=0)


def torch_rise(net, x, target, masks, grid=7, p=0.5, batch_size=64, seed=0):
    """A straightforward batched RISE in torch (eager, no_grad)."""
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy(x)
    _, height, width = x.shape
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    total = torch.zeros(height, width, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, masks, batch_size):
            n = min(batch_size, masks - start)
            cells = (torch.rand(n, 1, grid, grid, generator=generator) < p).float()
            up = F.interpolate(cells, size=((grid + 1) * cell_h, (grid + 1) * cell_w),
                               mode="bilinear", align_corners=False)
            dy = torch.randint(0, cell_h, (n,), generator=generator)
            dx = torch.randint(0, cell_w, (n,), generator=generator)
            m = torch.stack([up[i, 0, dy[i]:dy[i] + height, dx[i]:dx[i] + width]
                             for i in range(n)])
            probs = torch.softmax(net(xt[None] * m[:, None]), dim=1)[:, target]
            total += torch.tensordot(probs.double(), m.double(), dims=1)
    return (total / (masks * p)).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--masks", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    from skimage import data

    rgb = data.chelsea()
    explainer = Explainer(provider="cpu")
    print(f"model: embedded EfficientNet-Lite0, provider {explainer.provider}, image chelsea "
          f"{rgb.shape[1]}x{rgb.shape[0]} -> 224x224\n")
    rows = per_method(explainer, rgb, args.repeats)
    print("| method | s / image | forward images | fwd+bwd images | x one fwd+bwd |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, forward, backward, ratio in rows:
        print(f"| {name} | {seconds:.3f} | {forward} | {backward} | {ratio:.2f} |")

    batch, (geometry,) = imgs.batch_preprocess([rgb], explainer.card)
    x, view = batch[0], imgs.model_view(rgb, geometry)
    target = int(explainer.predict([rgb])[0].top5[0]["index"])

    def classify(rgb_batch):  # lime's classifier: RGB float batch -> probabilities
        views = np.clip(np.rint(rgb_batch), 0, 255).astype(np.uint8)
        return explainer.probabilities(imgs.scale_model_view(views, explainer.card))

    from lime.wrappers.scikit_image import SegmentationAlgorithm

    seg_fn = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2,
                                   random_seed=0)
    import torch

    net = load_lite0()[0].eval()
    lime_times, rise_times = {"swag_onnx": [], "lime package": []}, {"swag_onnx": [], "torch": []}
    for _ in range(2):
        lime_times["swag_onnx"].append(timed(lambda: lime(
            x, view, explainer.probabilities, target, samples=args.samples)))
        lime_times["lime package"].append(timed(lambda: lime_reference(
            view, seg_fn, classify, target, args.samples)))
        rise_times["swag_onnx"].append(timed(lambda: rise(
            x, explainer.probabilities, target, masks=args.masks)))
        rise_times["torch"].append(timed(lambda: torch_rise(net, x, target, args.masks)))
    print(f"\ntorch threads {torch.get_num_threads()}; medians of 2 interleaved runs")
    for title, times, ours, theirs in (
            (f"LIME, {args.samples} samples", lime_times, "swag_onnx", "lime package"),
            (f"RISE, {args.masks} masks", rise_times, "swag_onnx", "torch")):
        a, b = np.median(times[ours]), np.median(times[theirs])
        print(f"{title}: {ours} {a:.2f} s, {theirs} {b:.2f} s, speed-up {b / a:.2f}x "
              f"(target >= 1.5x: {'PASS' if b / a >= 1.5 else 'MISS'})")


if __name__ == "__main__":
    main()
