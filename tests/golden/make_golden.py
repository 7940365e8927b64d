"""Stores every method's map and record on the embedded default model (run once, before a
refactor of the method dispatch; tests/test_registry.py compares the current code with it).

    python tests/golden/make_golden.py

The photo is scikit-image's chelsea at half size; the slow methods run with few samples so the
comparison stays quick (the parameters are part of the stored record).
"""

import json
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from swag_onnx import Explainer

HERE = Path(__file__).parent
CASES = {  # method -> parameters
    # swag-image's defaults changed after the golden maps were stored (tools/swag_study.py):
    # the settings they were made with are pinned here
    "swag-image": {"attribution": "gradient_x_input", "sign": "abs"},
    "swag-gradient": {}, "swag-combined": {},
    "gradcam": {}, "gradcam++": {}, "normgrad": {}, "normgrad-selective": {},
    "gradient": {}, "gradient-x-input": {},
    "integrated-gradients": {"steps": 8},
    "smoothgrad": {"samples": 6, "seed": 3},
    "lime": {"samples": 60, "seed": 1},
    "rise": {"masks": 64, "seed": 2},
    "xrai": {"steps": 4},
}
META_CASES = ("gradcam", "swag-image")  # with meta=True


def photo() -> np.ndarray:
    rgb = data.chelsea()
    return cv2.resize(rgb, (rgb.shape[1] // 2, rgb.shape[0] // 2), interpolation=cv2.INTER_AREA)


def records_and_maps(explainer: Explainer):
    """{key: (record without timings/provider, saliency, labels or None)}"""
    rgb = photo()
    out = {}
    for method, params in CASES.items():
        result, = explainer.explain([rgb], method=method, **params)
        out[method] = result
    for method in META_CASES:
        result, = explainer.explain([rgb], method=method, meta=True, **CASES[method])
        out[f"{method}+meta"] = result
    return {key: (_comparable(r.record()), r.saliency, r.labels) for key, r in out.items()}


def _comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("timings_ms", "provider")}


def main() -> None:
    found = records_and_maps(Explainer())
    arrays = {}
    for key, (_, saliency, labels) in found.items():
        arrays[f"{key}/saliency"] = saliency.astype(np.float32)
        if labels is not None:
            arrays[f"{key}/labels"] = labels.astype(np.int32)
    np.savez_compressed(HERE / "methods.npz", **arrays)
    records = {key: record for key, (record, _, _) in found.items()}
    (HERE / "methods.json").write_text(json.dumps(records, indent=1, sort_keys=True,
                                                  default=float) + "\n")


if __name__ == "__main__":
    main()
