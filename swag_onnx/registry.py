"""Parameters read from a function's signature: the shared part of the method and metric
registries (swag_onnx.methods.registry, swag_onnx.metrics.registry).

A registered function declares each user-settable parameter as a keyword-only argument with a
default and an annotation ``Annotated[type, check, "help text"]`` (checks from
swag_onnx.validation). ``params_of`` reads them; ``check_params`` validates user values with them
and fills the defaults, so every value a run will use is checked before the run starts.
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

from swag_onnx.errors import BadOptionError


@dataclass(frozen=True)
class Param:
    """One parameter: its name, default, check (a swag_onnx.validation object) and help."""

    name: str
    default: Any
    check: Callable[[str, Any], Any]
    help: str

    @property
    def option(self) -> str:
        """The command-line spelling: --n-segments for n_segments."""
        return "--" + self.name.replace("_", "-")

    def describe(self) -> str:
        """'help (default D; accepts ...)' for listings."""
        default = "per source" if self.default is None else repr(self.default)
        return f"{self.help} (default {default}; {self.check})"


def params_of(function: Callable) -> dict[str, Param]:
    """The keyword-only parameters of `function`, each annotated
    ``Annotated[type, check, "help"]``; a parameter without that annotation is a bug."""
    hints = typing.get_type_hints(function, include_extras=True)
    params = {}
    for name, p in inspect.signature(function).parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        extras = getattr(hints.get(name), "__metadata__", ())
        if len(extras) != 2 or not callable(extras[0]) or not isinstance(extras[1], str):
            raise TypeError(f"{function.__qualname__}: parameter {name} needs an annotation "
                            "Annotated[type, check, 'help']")
        params[name] = Param(name, p.default, extras[0], extras[1])
    return params


def check_params(params: dict[str, Param], given: dict[str, Any], owner: str) -> dict[str, Any]:
    """Every parameter of `params` with its checked value (given, else the default); a given
    name that is not a parameter raises BadOptionError."""
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise BadOptionError(f"option(s) {', '.join(unknown)} do not apply to {owner}; it takes: "
                             + (", ".join(params) or "none"))
    return {name: p.check(name, given[name]) if name in given else p.default
            for name, p in params.items()}
