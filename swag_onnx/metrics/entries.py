"""Registry entries of the evaluation metrics (swag_onnx.metrics.registry): each adapts the
metric's pure function to ``MetricInputs`` and says its protocol in words.

Protocol options are keyword-only arguments; one name is one option for every metric that takes
it (``step`` for deletion and insertion, ``seed`` and ``batch_size`` everywhere).
"""

from __future__ import annotations

import zlib
from typing import Annotated

import numpy as np

from swag_onnx.metrics import energy, mprt, pic, pointing, road, sensitivity
from swag_onnx.metrics import insertion_deletion as idl
from swag_onnx.metrics.registry import MetricInputs, Row, Value, metric
from swag_onnx.validation import BATCH, SEED, Choice, Int, Number, Optional

STEP = Annotated[object, Optional(Int(1)), "deletion/insertion: pixels per step (default "
                 "h*w/224: 224 on a 224x224 input)"]
BATCH_SIZE = Annotated[int, BATCH, "inputs per model call (speed and memory only)"]
MIN_SCORE = Annotated[float, Number(0.0, 1.0), "SIC/AIC: skip images whose top-1 probability "
                      "is below this"]
REVEAL = Annotated[str, Choice(pic.REVEALS), "SIC/AIC: interpolate (reference) or paste "
                   "(faster)"]
SEED_OPTION = Annotated[int, SEED, "seed of SIC/AIC's random pixels, of MPRT's redrawn "
                        "parameters and of the stochastic methods"]
SCORE_TEXT = ("Score: the softmax probability of the class predicted on the clean image, which "
              "is the class explained; maps are scored at the model input resolution, pixels "
              "ranked by saliency (ties by row-major index).")


def _curve_value(name: str, inputs: MetricInputs, y: np.ndarray, step) -> Value:
    h, w = inputs.saliency.shape
    xs = idl.curve_fractions(h, w, step)
    return Value(name, idl.auc(y, xs), (xs, y))


def _step_text(p: dict) -> str:
    h, w = p["resolution"]
    step = p["step"] or idl.default_step(h, w)
    return (f"{step} pixels per step ({-(-h * w // step) + 1} points per curve); AUC by the "
            "trapezoid rule over the exact fraction of pixels changed, x in [0, 1].")


PROBABILITY = "probability of the top-1 class"


@metric("deletion", title="deletion AUC", higher_is_better=False, needs={"map"},
        curves=("fraction of pixels deleted", PROBABILITY),
        reference="Petsiuk et al., BMVC 2018 (RISE)",
        protocol=lambda p: f"Deletion: the top pixels are set to {p['baseline']} in the "
        f"normalised input space (0 = the normalisation's mean colour); {_step_text(p)} "
        + SCORE_TEXT)
def _deletion(inputs: MetricInputs, *, step: STEP = None,
              baseline: Annotated[float, Number(), "deletion: value of deleted pixels in the "
                                  "normalised input space (0 = the mean colour)"] = 0.0,
              batch_size: BATCH_SIZE = 32) -> list[Value]:
    y = idl.deletion_curve(inputs.x, inputs.saliency, inputs.probabilities, inputs.target,
                           layout=inputs.layout, step=step, batch_size=batch_size,
                           baseline=baseline)
    return [_curve_value("deletion", inputs, y, step)]


@metric("insertion", title="insertion AUC", higher_is_better=True, needs={"map"},
        curves=("fraction of pixels inserted", PROBABILITY),
        reference="Petsiuk et al., BMVC 2018 (RISE)",
        protocol=lambda p: "Insertion: starts from a Gaussian blur of the input (kernel "
        f"{p['blur_ksize']}, sigma {p['blur_sigma']}, border reflect) and restores the top "
        f"pixels; {_step_text(p)} " + SCORE_TEXT)
def _insertion(inputs: MetricInputs, *, step: STEP = None,
               blur_ksize: Annotated[int, Int(1, 255, odd=True), "insertion: Gaussian kernel "
                                     "size"] = idl.BLUR_KSIZE,
               blur_sigma: Annotated[float, Number(0.0, low_open=True), "insertion: Gaussian "
                                     "sigma"] = idl.BLUR_SIGMA,
               batch_size: BATCH_SIZE = 32) -> list[Value]:
    y = idl.insertion_curve(inputs.x, inputs.saliency, inputs.probabilities, inputs.target,
                            layout=inputs.layout, step=step, batch_size=batch_size,
                            blur_ksize=blur_ksize, blur_sigma=blur_sigma)
    return [_curve_value("insertion", inputs, y, step)]


def _pic(kind: str, inputs: MetricInputs, pic_min_score, pic_reveal, seed, batch_size):
    """SIC or AIC; both come from one set of forward passes (kept in inputs.memo)."""
    key = ("pic", pic_min_score, pic_reveal, seed, batch_size)
    if key not in inputs.memo:
        image_seed = (seed * 1_000_003 + zlib.crc32(inputs.image_name.encode())) % 2 ** 32
        inputs.memo[key] = pic.pic_curves(inputs.view, inputs.saliency, inputs.rgb_probabilities,
                                          inputs.target, seed=image_seed, batch_size=batch_size,
                                          min_pred_value=pic_min_score, reveal=pic_reveal)
    curve = getattr(inputs.memo[key], kind)
    note = f"skipped: {curve.skipped}" if curve.skipped else ""
    xy = None if curve.skipped else (np.asarray(curve.x, np.float64),
                                     np.asarray(curve.y, np.float64))
    return [Value(kind, float(curve.auc), xy, note)]


def pic_text(p: dict) -> str:
    return (f"{p['pic_kind']}: against information content (lossless WebP bytes, normalised "
            "between the blurred start and the image); the blurred start is the image "
            "re-interpolated (Delaunay, linear) from 1% random pixels plus the corners, each "
            "threshold (fraction of the top pixels revealed) re-interpolated with them "
            f"('{p['pic_reveal']}'); scores normalised by the blurred start's and the image's, "
            "running maximum; AUC by the trapezoid rule on 1001 samples. An image whose score "
            f"on the original is below {p['pic_min_score']} (or whose blurred start is not "
            "smaller or scores as high) has no curve: counted as skipped. Random pixels seeded "
            f"per image from seed {p['seed']} and the image name (the same for every method).")


@metric("sic", title="SIC AUC", higher_is_better=True, needs={"map"},
        curves=("information content (normalised)", "normalised probability of the top-1 class"),
        reference="Kapishnikov et al., ICCV 2019 (XRAI); PAIR's saliency package",
        protocol=lambda p: pic_text({**p, "pic_kind": "SIC (softmax probability)"}))
def _sic(inputs: MetricInputs, *, pic_min_score: MIN_SCORE = pic.MIN_PRED_VALUE,
         pic_reveal: REVEAL = "interpolate", seed: SEED_OPTION = 0,
         batch_size: BATCH_SIZE = 32) -> list[Value]:
    return _pic("sic", inputs, pic_min_score, pic_reveal, seed, batch_size)


@metric("aic", title="AIC AUC", higher_is_better=True, needs={"map"},
        curves=("information content (normalised)", "accuracy (top-1 class kept)"),
        reference="Kapishnikov et al., ICCV 2019 (XRAI); PAIR's saliency package",
        protocol=lambda p: pic_text({**p, "pic_kind": "AIC (1 while the class is top-1)"}))
def _aic(inputs: MetricInputs, *, pic_min_score: MIN_SCORE = pic.MIN_PRED_VALUE,
         pic_reveal: REVEAL = "interpolate", seed: SEED_OPTION = 0,
         batch_size: BATCH_SIZE = 32) -> list[Value]:
    return _pic("aic", inputs, pic_min_score, pic_reveal, seed, batch_size)


def per_class_accuracy(rows: list[dict]) -> tuple[float, float, int]:
    """(mean of the per-class accuracies, their std, number of tests) (TorchRay)."""
    result = pointing.pointing_accuracy((r["label"], r["value"] > 0.5) for r in rows)
    spread = [float(v) for v in result["per_class"].values()]
    std = float(np.std(spread)) if spread else float("nan")
    return float(result["accuracy"]), std, len(rows)


@metric("pointing", title="pointing accuracy", higher_is_better=True, needs={"annotations"},
        per_class=True, aggregate=per_class_accuracy,
        reference="Zhang et al., ECCV 2016; TorchRay's protocol",
        protocol=lambda p: "Pointing game: each annotated class in an image is explained; a "
        f"hit when the map's argmax at the original image size lies within {p['tolerance']} "
        "px of a box of that class; accuracy = mean of the per-class accuracies (std: over "
        "the classes).")
def _pointing(inputs: MetricInputs, *,
              tolerance: Annotated[int, Int(0, 10_000), "pointing game: tolerance in pixels"]
              = pointing.TOLERANCE) -> list[Value]:
    hit = bool(pointing.pointing_hit(inputs.original, inputs.boxes, tolerance=tolerance))
    return [Value("pointing", float(hit), note="hit" if hit else "miss")]


@metric("class-sensitivity", title="class sensitivity", higher_is_better=False,
        needs={"least_class_map"}, reference="Rebuffi et al., CVPR 2020 (NormGrad)",
        protocol=lambda p: "Class sensitivity (NormGrad): Spearman rank correlation between "
        "the maps of the most and the least probable class (model resolution); lower = more "
        "class-sensitive.")
def _class_sensitivity(inputs: MetricInputs) -> list[Value]:
    other, note = inputs.other_maps["least_class_map"]
    return [Value("class-sensitivity", sensitivity.class_sensitivity(inputs.saliency, other),
                  note=note)]


@metric("random-logit", title="random-logit Spearman", higher_is_better=False,
        needs={"random_class_map"},
        reference="Sixt et al., ICML 2020; Adebayo et al., NeurIPS 2018 (sanity checks)",
        protocol=lambda p: "Random-logit test: Spearman rank correlation between the map of the "
        "explained class and that of a random other class (drawn per image from seed "
        f"{p['seed']} and the image name; model resolution); a map that does not depend on the "
        "class scores near 1, lower is better.")
def _random_logit(inputs: MetricInputs, *, seed: SEED_OPTION = 0) -> list[Value]:
    other, note = inputs.other_maps["random_class_map"]
    return [Value("random-logit", sensitivity.class_sensitivity(inputs.saliency, other),
                  note=note)]


def _road_text(p: dict) -> str:
    steps = list(range(p["road_step"], 100, p["road_step"]))
    return ("ROAD (Rong et al., ICML 2022): the most (MoRF) or least (LeRF) relevant p% of "
            f"pixels, p in {steps}, are removed and filled by noisy linear imputation (each the "
            "weighted mean of its neighbours, 1/6 direct and 1/12 diagonal, one sparse linear "
            f"system; noise std {p['road_noise']} in the normalised input space, seeded from "
            f"{p['seed']}); score = probability of the explained class; road = mean over p of "
            "LeRF - MoRF, road-morf and road-lerf = the mean of each curve (as pytorch-grad-cam; "
            "its ROADCombined is road / 2).")


@metric("road", title="ROAD (LeRF - MoRF)", higher_is_better=True, needs={"map"},
        rows={"road": Row("ROAD (LeRF - MoRF)", True), "road-morf": Row("ROAD MoRF", False),
              "road-lerf": Row("ROAD LeRF", True)},
        curves=("fraction of pixels removed", PROBABILITY),
        reference="Rong et al., ICML 2022; pytorch-grad-cam's metrics.road: 1e-7",
        protocol=_road_text)
def _road(inputs: MetricInputs, *,
          road_step: Annotated[int, Int(1, 50), "ROAD: percent step; p = step, 2 step, ... "
                               "below 100"] = 10,
          road_noise: Annotated[float, Number(0.0), "ROAD: imputation noise std (normalised "
                                "input space)"] = road.NOISE,
          seed: SEED_OPTION = 0, batch_size: BATCH_SIZE = 32) -> list[Value]:
    percentages = np.arange(road_step, 100, road_step, dtype=np.float64)
    p, morf, lerf = road.road_curves(inputs.x, inputs.saliency, inputs.probabilities,
                                     inputs.target, layout=inputs.layout,
                                     percentages=percentages, noise=road_noise,
                                     seed=(seed * 1_000_003 + zlib.crc32(
                                         inputs.image_name.encode())) % 2 ** 32,
                                     batch_size=batch_size)
    scores, x = road.road_scores(morf, lerf), p / 100.0
    return [Value("road", scores["road"], (x, lerf - morf)),
            Value("road-morf", scores["road-morf"], (x, morf)),
            Value("road-lerf", scores["road-lerf"], (x, lerf))]


@metric("energy", title="energy in the box", higher_is_better=True, needs={"annotations"},
        per_class=True, reference="Wang et al., CVPR-W 2020 (Score-CAM's energy-based pointing "
        "game)",
        protocol=lambda p: "Energy-based pointing game (Score-CAM): the share of the map's mass "
        "(original image size) inside the boxes of the explained annotated class.")
def _energy(inputs: MetricInputs) -> list[Value]:
    return [Value("energy", energy.energy_in_boxes(inputs.original, inputs.boxes))]


def _mprt_text(p: dict) -> str:
    return ("MPRT (Adebayo et al., NeurIPS 2018): the model's parameters are randomised in "
            "cascade from the output down (the layers after the last stage layer, then each "
            "stage, the stage layers being the last spatial map at each resolution, then all), "
            "each redrawn from a normal with its tensor's own mean and std (seeded from "
            f"{p['seed']} and the parameter's name; batch-norm running statistics kept); the map "
            "of the explained class is recomputed at every stage; mprt = Spearman rank "
            "correlation of the absolute maps (model resolution) at full randomisation, "
            "mprt-ssim = their SSIM (each scaled to [0, 1]); the curves hold every stage (x = "
            "share of the stages done). A map that does not depend on the model scores 1, lower "
            "is better.")


@metric("mprt", title="MPRT Spearman", higher_is_better=False, needs={"randomised_maps"},
        rows={"mprt": Row("MPRT Spearman (all randomised)", False),
              "mprt-ssim": Row("MPRT SSIM (all randomised)", False)},
        curves=("share of the cascade randomised (0 = the model, 1 = all parameters)",
                "similarity to the original map"),
        reference="Adebayo et al., NeurIPS 2018 (sanity checks: cascading randomisation)",
        protocol=_mprt_text)
def _mprt(inputs: MetricInputs, *, seed: SEED_OPTION = 0) -> list[Value]:
    stages = inputs.randomised_maps(seed)
    rho, structural = mprt.similarities(inputs.saliency, [m for _, m in stages])
    x = np.arange(len(stages) + 1, dtype=np.float64) / len(stages)
    first = np.ones(1)  # the original map against itself
    note = "; ".join(f"{name} {r:.3f}" for (name, _), r in zip(stages, rho))
    return [Value("mprt", float(rho[-1]), (x, np.concatenate([first, rho])),
                  note=f"Spearman per stage: {note}"),
            Value("mprt-ssim", float(structural[-1]), (x, np.concatenate([first, structural])))]
