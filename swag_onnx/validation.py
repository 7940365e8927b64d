"""Checks of user-given options: the one place where option values are validated.

A check is a small frozen object: ``check(name, value)`` returns the value normalised (an int,
a float, one of the choices) or raises BadOptionError with one line that names the option, says
what it must be and repeats the value as given; ``str(check)`` says what it accepts (help texts,
``swag-onnx methods``). Method and metric parameters carry their check in their signature
(``Annotated[int, Int(1), "help"]``, see swag_onnx.registry); the API validates every option of
a run with these before the first model run.

Pure functions (swag_onnx.methods, swag_onnx.metrics) do not validate user options again; they
raise ValueError for arrays of the wrong shape and other caller bugs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from swag_onnx.errors import BadOptionError


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _bounds(minimum, maximum, low_open: bool = False, high_open: bool = False) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'>' if low_open else '>='} {minimum}")
    if maximum is not None:
        parts.append(f"{'<' if high_open else '<='} {maximum}")
    return " and ".join(parts)


@dataclass(frozen=True)
class Int:
    """An integer (not a bool) within [minimum, maximum] (None = unbounded), odd if asked."""

    minimum: int | None = None
    maximum: int | None = None
    odd: bool = False

    def __call__(self, name: str, value: Any) -> int:
        if not _is_int(value) or (self.minimum is not None and value < self.minimum) \
                or (self.maximum is not None and value > self.maximum) \
                or (self.odd and value % 2 == 0):
            raise BadOptionError(f"{name} must be {self}, got {value!r}")
        return int(value)

    def __str__(self) -> str:
        bounds = _bounds(self.minimum, self.maximum)
        kind = "an odd integer" if self.odd else "an integer"
        return f"{kind} {bounds}" if bounds else kind


@dataclass(frozen=True)
class Number:
    """A finite real number within the bounds; ``low_open``/``high_open`` exclude the bound;
    ``nonzero`` excludes 0."""

    minimum: float | None = None
    maximum: float | None = None
    low_open: bool = False
    high_open: bool = False
    nonzero: bool = False

    def __call__(self, name: str, value: Any) -> float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
            raise BadOptionError(f"{name} must be {self}, got {value!r}")
        number = float(value)
        if not math.isfinite(number) or (self.nonzero and number == 0) or not self._within(number):
            raise BadOptionError(f"{name} must be {self}, got {value!r}")
        return number

    def _within(self, number: float) -> bool:
        if self.minimum is not None and (number < self.minimum
                                         or (self.low_open and number == self.minimum)):
            return False
        return self.maximum is None or not (number > self.maximum
                                            or (self.high_open and number == self.maximum))

    def __str__(self) -> str:
        bounds = _bounds(self.minimum, self.maximum, self.low_open, self.high_open)
        text = "a finite number" + (" " + bounds if bounds else "")
        return text + (", not 0" if self.nonzero else "")


@dataclass(frozen=True)
class Choice:
    """One of the given strings."""

    choices: tuple[str, ...]

    def __call__(self, name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise BadOptionError(f"unknown {name} {value!r}; choose one of: "
                                 + ", ".join(self.choices))
        return value

    def __str__(self) -> str:
        return "one of " + ", ".join(self.choices)


@dataclass(frozen=True)
class Flag:
    """True or False."""

    def __call__(self, name: str, value: Any) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise BadOptionError(f"{name} must be true or false, got {value!r}")
        return bool(value)

    def __str__(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Optional:
    """None, or what ``check`` accepts."""

    check: Any

    def __call__(self, name: str, value: Any) -> Any:
        return None if value is None else self.check(name, value)

    def __str__(self) -> str:
        return f"{self.check} (or unset)"


SEED = Int(0, 2**32 - 1)  # numpy's seeds
BATCH = Int(1, 1 << 16)


def require(check, name: str, value: Any) -> Any:
    """For pure functions (methods, metrics): the same check, raising ValueError. A bad value
    there is a caller bug, since the API checks user options before calling them."""
    try:
        return check(name, value)
    except BadOptionError as exc:
        raise ValueError(str(exc)) from None
