"""The metric registry: every evaluation metric is one entry holding every fact about it.

An entry is made by decorating the metric's adapter (swag_onnx.metrics.entries):

    @metric("deletion", title="deletion AUC", higher_is_better=False, needs={"map"},
            protocol=lambda p: "Deletion: ...")
    def _deletion(inputs: MetricInputs, *, step: Annotated[...] = None, ...) -> list[Value]:

- ``needs``: which maps and model functions it reads (NEEDS); ``evaluate`` computes only those.
- protocol parameters: the adapter's keyword-only arguments (swag_onnx.registry.params_of). The
  same name in two metrics is one protocol option (same default and check, asserted here).
- ``rows``: the results.csv rows it writes, each with its title and direction (most metrics
  write one row named like the metric); ``curves``: the axis labels of the raw curves it saves
  (None: no curves); ``per_class``: one row
  per annotated class (localisation metrics); ``aggregate``: how rows become one number
  (default the mean over images); ``protocol``: its protocol in words, from the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from swag_onnx.errors import BadOptionError
from swag_onnx.registry import Param, check_params, params_of

NEEDS = {
    "map": "the map of the explained (top-1) class",
    "least_class_map": "the map of the least probable class too",
    "random_class_map": "the map of a random other class too (seeded per image)",
    "annotations": "boxes per image (--annotations); the map of each annotated class",
    "probabilities": "a batched probability function (extra model runs)",
    "randomised_maps": "the map again at each stage of a cascading randomisation of the model's "
                       "parameters (one explanation per stage)",
}


@dataclass
class MetricInputs:
    """What a metric may read, for ONE image and method.

    x: the preprocessed model input (model layout: ``layout`` CHW or HWC); view: the uint8 RGB
    (h, w, 3) image x was made from. saliency: the map (h, w) at the model input resolution;
    original: the same map (H0, W0) at the image's original size. target: the class explained.
    probabilities: model-layout batch -> (N, K); rgb_probabilities: uint8 RGB batch
    (N, h, w, 3) -> (N, K). image_name: the image's name in results.csv (seeds per image).
    other_maps: {need: (map (h, w) of that other class, a note)} for the *_class_map needs
    declared; boxes: (M, 4) boxes of the class
    explained (x0, y0, x1, y1, original pixels). randomised_maps: seed -> [(stage name, map
    (h, w))], the same method's map of the same class with the model's parameters randomised in
    cascade from the output down (swag_onnx.metrics.mprt; the last stage is "all").
    memo: shared by the metrics of one image and method (SIC and AIC come from one set of model
    runs).
    """

    x: np.ndarray
    layout: str
    view: np.ndarray
    saliency: np.ndarray
    original: np.ndarray
    target: int
    probabilities: Callable
    rgb_probabilities: Callable
    image_name: str
    other_maps: dict = field(default_factory=dict)
    boxes: np.ndarray | None = None
    randomised_maps: Callable[[int], list[tuple[str, np.ndarray]]] | None = None
    memo: dict = field(default_factory=dict)


@dataclass
class Value:
    """One results.csv row's value: its row name, value, raw curve (x, y) or None, and a note."""

    row: str
    value: float
    curve: tuple[np.ndarray, np.ndarray] | None = None
    note: str = ""


@dataclass(frozen=True)
class Row:
    """A results.csv metric column value: its title and direction."""

    title: str
    higher_is_better: bool


@dataclass(frozen=True, eq=False)  # identity: entries are unique
class Metric:
    """One registered metric (see the module docstring)."""

    name: str
    run: Callable[..., list[Value]]
    needs: frozenset[str]
    rows: dict[str, Row]
    params: dict[str, Param]
    protocol: Callable[[dict], str]
    reference: str
    curves: tuple[str, str] | None = None  # the raw curves' (x label, y label)
    per_class: bool = False
    aggregate: Callable[[list[dict]], tuple[float, float, int]] | None = None


METRICS: dict[str, Metric] = {}
DEFAULT_METRICS = ("deletion", "insertion")


def metric(name: str, *, title: str, higher_is_better: bool, needs, protocol, reference: str,
           rows: dict[str, Row] | None = None, curves: tuple[str, str] | None = None,
           per_class: bool = False,
           aggregate=None):
    """Register the decorated adapter ``run(inputs, **protocol) -> [Value, ...]``."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise TypeError(f"metric {name}: unknown needs {sorted(unknown)}")

    def register(run):
        params = params_of(run)
        for other in METRICS.values():
            for key in set(params) & set(other.params):
                if (params[key].default, params[key].check) != \
                        (other.params[key].default, other.params[key].check):
                    raise TypeError(f"protocol option {key} differs between {name} and "
                                    f"{other.name}")
        METRICS[name] = Metric(name, run, frozenset(needs),
                               rows or {name: Row(title, higher_is_better)}, params, protocol,
                               reference, curves, per_class, aggregate)
        return run

    return register


def rows_info() -> dict[str, Row]:
    """Every row name any metric writes, with its title and direction."""
    return {row: info for m in METRICS.values() for row, info in m.rows.items()}


def owner(row: str) -> Metric:
    """The metric that writes results.csv rows named `row`."""
    return next(m for m in METRICS.values() if row in m.rows)


def protocol_params() -> dict[str, Param]:
    """Every protocol option of every metric (one per name)."""
    return {name: p for m in METRICS.values() for name, p in m.params.items()}


def resolve(names) -> list[Metric]:
    """The metrics named (case-insensitive), duplicates dropped, in registry order."""
    wanted = []
    for name in names or DEFAULT_METRICS:
        name = str(name).strip().lower()
        if name not in METRICS:
            raise BadOptionError(f"unknown metric {name!r}; choose one of: "
                                 + ", ".join(METRICS))
        wanted.append(name)
    return [m for m in METRICS.values() if m.name in wanted]


def check_protocol(given: dict[str, Any]) -> dict[str, Any]:
    """Every protocol option's value (given ones checked, None = default)."""
    return check_params(protocol_params(), {k: v for k, v in given.items() if v is not None},
                        "the metrics")
