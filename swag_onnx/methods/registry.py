"""The method registry: every saliency method is one entry holding every fact about it.

An entry is made by decorating the method's adapter, in the method's own module:

    @method("integrated-gradients", needs={"grad_fn"}, summary="...", reference="...")
    def _integrated_gradients(inputs: Inputs, *, steps: Annotated[int, Int(2), "path steps"] = 64
                              ) -> Output: ...

- ``needs``: what the method reads from the model with its default parameters, a subset of
  NEEDS; the Explainer runs the shared gradient run once per batch and fills only the fields of
  ``Inputs`` that were declared.
- ``needs_for`` (optional): params -> needs, for a method whose parameters change what it reads
  (SWAG's ``average`` trades the shared run's gradient for extra gradient runs); given every
  parameter's checked value, it returns the needs of that call (``Method.needs_for``), and must
  return ``needs`` for the defaults. The Explainer and ``check_meta`` ask it, nothing else does.
- parameters: the adapter's keyword-only arguments (swag_onnx.registry.params_of), with their
  defaults, checks and help; the API checks user values with them before the first model run.
- flags: ``meta`` (meta-saliency applies: the map is made from the shared gradient run, as long
  as the parameters keep the needs within it),
  ``progress`` (reports progress through ``Inputs.progress``), ``regions`` (what the labels of
  ``Output.regions`` mean, None when there are none), ``control`` (a control map, not an
  explanation).

The adapter returns an ``Output``: the map at the model input resolution (any scale; the Explainer
maps it to the original image and normalises it), optional region labels, and facts to record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from swag_onnx.errors import BadOptionError
from swag_onnx.registry import Param, check_params, params_of

NEEDS = {
    "input_grad": "the input gradient of the shared gradient run",
    "layers": "layer activations and gradients of the shared gradient run",
    "image": "the RGB image the model saw",
    "probabilities": "a batched probability function (extra model runs)",
    "scores": "a batched score (logit) function (extra model runs)",
    "grad_fn": "a batched gradient function (extra gradient runs)",
    "layer_scores": "the model from the layer on, fed an edited activation (extra runs)",
    "preprocess": "the model's preprocessing of an RGB image",
}
SHARED_RUN = frozenset({"input_grad", "layers"})
# what a meta-saliency map may read: the stepped shared run and the image (no other model run)
META_NEEDS = SHARED_RUN | {"image"}


@dataclass
class Inputs:
    """What a method may read, for ONE image; only the fields its entry declared are set.

    x: the preprocessed model input (C, H, W) or (H, W, C), channels on ``channel_axis``.
    target: the class explained. input_grad: dS_target/dx, shaped like x. layers: per requested
    layer, (activation, gradient) channels first (K, h, w); layer_names: their tensor names.
    image: uint8 RGB (H, W, 3), the image x was made from (after resize and crop).
    probabilities / scores: batch (N, *x.shape) -> (N, K) softmax probabilities / logits.
    grad_fn: batch -> (target scores (N,), input gradients (N, *x.shape)).
    layer_scores: per layer, acts (N, K, h, w) channels first -> logits (N, K) of the model with
    that layer's activation replaced (x fixed). preprocess: uint8 RGB (H, W, 3) -> model input.
    progress: progress(done, total) for methods flagged ``progress``.
    """

    x: np.ndarray
    channel_axis: int
    target: int
    input_grad: np.ndarray | None = None
    layers: list[tuple[np.ndarray, np.ndarray]] | None = None
    layer_names: list[str] | None = None
    image: np.ndarray | None = None
    probabilities: Callable | None = None
    scores: Callable | None = None
    grad_fn: Callable | None = None
    layer_scores: list[Callable] | None = None
    preprocess: Callable | None = None
    progress: Callable[[int, int], None] | None = None


@dataclass
class Output:
    """A method's answer: saliency (H, W) at the model input resolution (any scale), region
    labels (H, W) int or None, and facts to record beside the parameters."""

    saliency: np.ndarray
    regions: np.ndarray | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True, eq=False)  # identity: entries are unique
class Method:
    """One registered method (see the module docstring)."""

    name: str
    run: Callable[..., Output]
    needs: frozenset[str]
    summary: str
    reference: str
    params: dict[str, Param]
    meta: bool = False
    progress: bool = False
    regions: str | None = None
    control: bool = False
    needs_fn: Callable[[dict[str, Any]], Any] | None = None  # see the module docstring

    def check(self, given: dict[str, Any]) -> dict[str, Any]:
        """Every parameter's value (given ones checked, the rest defaults)."""
        return check_params(self.params, given, self.name)

    def needs_for(self, params: dict[str, Any] | None = None) -> frozenset[str]:
        """What the method reads when run with `params` (checked values; missing ones take
        their defaults): ``needs`` unless the entry declared ``needs_for``."""
        if self.needs_fn is None:
            return self.needs
        values = {name: p.default for name, p in self.params.items()}
        values.update({k: v for k, v in (params or {}).items() if k in self.params})
        needs = frozenset(self.needs_fn(values))
        if not needs <= set(NEEDS):
            raise TypeError(f"method {self.name}: unknown needs {sorted(needs - set(NEEDS))}")
        return needs

    def needs_text(self) -> str:
        return "; ".join(NEEDS[n] for n in sorted(self.needs))


METHODS: dict[str, Method] = {}
ALIASES: dict[str, Callable[[dict], str]] = {}  # name -> (options -> registered name)


def method(name: str, *, needs, summary: str, reference: str, meta: bool = False,
           progress: bool = False, regions: str | None = None, control: bool = False,
           needs_for: Callable[[dict[str, Any]], Any] | None = None):
    """Register the decorated adapter ``run(inputs, **params) -> Output`` as method `name`
    (needs_for: params -> needs, see the module docstring)."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise TypeError(f"method {name}: unknown needs {sorted(unknown)}")
    if meta and not set(needs) <= META_NEEDS:
        raise TypeError(f"method {name}: meta-saliency applies to maps of the shared run only")

    def register(run: Callable[..., Output]) -> Callable[..., Output]:
        if name in METHODS:
            raise TypeError(f"method {name} registered twice")
        entry = Method(name, run, frozenset(needs), summary, reference, params_of(run),
                       meta, progress, regions, control, needs_for)
        if entry.needs_for() != entry.needs:
            raise TypeError(f"method {name}: needs_for(defaults) {sorted(entry.needs_for())} "
                            f"differs from needs {sorted(entry.needs)}")
        METHODS[name] = entry
        return run

    return register


def alias(name: str, resolve: Callable[[dict], str]) -> None:
    """`name` stands for the method resolve(options) returns (e.g. swag -> swag-image)."""
    ALIASES[name] = resolve


def resolve(names, options: dict | None = None) -> list[Method]:
    """The methods named (aliases resolved with `options`), duplicates dropped, in order."""
    names = [names] if isinstance(names, str) else list(names)
    resolved: list[Method] = []
    for name in names:
        name = ALIASES[name](options or {}) if name in ALIASES else name
        if name not in METHODS:
            raise BadOptionError(f"unknown method {name!r}; choose one of: "
                                 + ", ".join([*ALIASES, *METHODS]))
        if METHODS[name] not in resolved:
            resolved.append(METHODS[name])
    return resolved


def split_params(methods: list[Method], params: dict[str, Any],
                 shared: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{method name: its checked parameters} from one dict of options; an option that no chosen
    method takes is an error, except the `shared` ones (used elsewhere too, e.g. seed)."""
    taken = set().union(*(m.params for m in methods)) if methods else set()
    unused = sorted(set(params) - taken - set(shared))
    if unused:
        raise BadOptionError(f"option(s) {', '.join(unused)} do not apply to "
                             f"{', '.join(m.name for m in methods)}")
    return {m.name: m.check({k: v for k, v in params.items() if k in m.params})
            for m in methods}


def check_meta(methods: list[Method], lr: Any,
               params: dict[str, dict[str, Any]] | None = None) -> float:
    """Meta-saliency applies to every method in `methods` run with `params` ({method name: its
    parameters}, as split_params returns them; missing: defaults); returns the checked rate.
    Raises BadOptionError (one line, naming the option) when a method is not made from the
    shared run, or when its parameters take it beyond it (e.g. SWAG's --average)."""
    from swag_onnx.validation import Number

    wrong = [m.name for m in methods if not m.meta and not m.control]  # controls: no model
    if wrong:
        able = ", ".join(m.name for m in METHODS.values() if m.meta)
        raise BadOptionError(f"--meta applies to methods made from one gradient run ({able}), "
                             f"not to {', '.join(wrong)}")
    for m in methods:
        given = (params or {}).get(m.name, {})
        extra = m.needs_for(given) - META_NEEDS
        if extra:
            causes = _options_causing(m, given)
            raise BadOptionError(
                f"--meta cannot be combined with {_spell(m, causes, given)} ({m.name}): it "
                f"reads {'; '.join(NEEDS[n] for n in sorted(extra))}, not the one stepped "
                f"gradient run; leave out --meta or use "
                f"{_spell(m, causes, {k: m.params[k].default for k in causes})}")
    return Number(nonzero=True)("--meta-lr", lr)


def _options_causing(m: Method, given: dict[str, Any]) -> list[str]:
    """The given non-default parameters whose default alone brings `m`'s needs back within
    META_NEEDS (all non-default ones when no single one does)."""
    changed = [k for k, v in given.items() if k in m.params and v != m.params[k].default]
    alone = [k for k in changed if m.needs_for({**given, k: m.params[k].default}) <= META_NEEDS]
    return alone or changed


def _spell(m: Method, names: list[str], values: dict[str, Any]) -> str:
    """'--name value ...' as typed on the command line."""
    return " ".join(f"{m.params[k].option} {values[k]}" for k in names)


def input_size(inputs: Inputs) -> tuple[int, int]:
    """(H, W) of the model input."""
    shape = inputs.x.shape
    return (shape[1], shape[2]) if inputs.channel_axis == 0 else (shape[0], shape[1])
