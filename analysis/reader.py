"""The project's one reader of input: every spec and config is read and validated through `Reader`.

This module owns turning plain data (parsed YAML/JSON) into checked values with a message that names the
exact field: the release spec (`controller.core.spec.release`), its A/B experiment and hooks, the
analysis and experiment configs (`analysis.config`, `analysis.abtest`) and the Prometheus config
(`controller.adapters.prometheus.client`). A check takes the value and its path and returns the value
typed (or a harmless stand-in), so a parser reads top to bottom, one trip down the document.

It sits in `analysis`, the bottom layer, because the statistics read their own configs (and restore them
from a release's stored state, `analysis.abtest.state_config`) and `analysis` may import nothing above it;
everything above can import it.

Two ways to meet a problem, chosen by the caller:
- collect (`Reader()`): every problem is kept as `path: message` and `raise_if_problems(InvalidSpec)`
  raises them all at once, so one run of the validator tells the operator everything (release specs, hooks);
- fail fast (`Reader(fail=InvalidAnalysisConfig)`): the first problem raises `fail(path, message)`, for
  configs whose later fields are checked against earlier ones (analysis, experiment, Prometheus).

None, whether absent or an explicit null, takes the check's `default`; without one it is "is required". A
caller that must refuse an explicit null passes `data.get(key, DEFAULT)` and no default.

Wording: the release spec and the configs have always said a few things in different words (not a
mapping, an unknown field, a whole number out of bounds), and operators and tests know both;
`SPEC_WORDING` (release spec, hooks) and `CONFIG_WORDING` (analysis, experiment and Prometheus configs)
keep them. Every other message is the same for all input.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

__all__ = ["CONFIG_WORDING", "SPEC_WORDING", "Reader", "Wording"]

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class Wording(NamedTuple):
    """The messages whose words differ between the release spec and the configs (`str.format` fields)."""

    not_a_mapping: str  # {value!r} {kind}
    unknown_field: str  # {known}
    below: str  # {value} {low}
    above: str  # {value} {high}


SPEC_WORDING = Wording(
    not_a_mapping="must be a mapping, not {kind}",
    unknown_field="is not a known field (known: {known})",
    below="{value} is below {low}",
    above="{value} is above {high}",
)
CONFIG_WORDING = Wording(
    not_a_mapping="{value!r} is not an object",
    unknown_field="unknown field (known: {known})",
    below="{value} is less than {low}",
    above="{value} is more than {high}",
)


class Reader:
    """Typed, validated values from plain data; problems are collected or raised (see the module doc)."""

    def __init__(self, fail: Callable[[str, str], Exception] | None = None,
                 wording: Wording = SPEC_WORDING) -> None:
        self.fail = fail
        self.wording = wording
        self.problems: list[str] = []

    # -- problems ------------------------------------------------------------------------------------

    def problem(self, path: str, message: str) -> None:
        """Record `path: message`, or raise it at once when the reader fails fast."""
        if self.fail is not None:
            raise self.fail(path, message)
        self.problems.append(f"{path}: {message}")

    def raise_if_problems(self, error: Callable[[list[str]], Exception]) -> None:
        """Raise `error(problems)` when any problem was collected."""
        if self.problems:
            raise error(list(self.problems))

    # -- structure -----------------------------------------------------------------------------------

    def mapping(self, value: Any, path: str, required: bool = True) -> Mapping[str, Any]:
        """A mapping; None is `{}` unless required. A problem gives `{}`."""
        if value is None and not required:
            return {}
        if not isinstance(value, Mapping):
            self.problem(path, "is required" if value is None
                         else self.wording.not_a_mapping.format(value=value, kind=_kind(value)))
            return {}
        return value

    def unknown_fields(self, value: Mapping[str, Any], path: str, known: Sequence[str]) -> None:
        """A problem for every key of `value` that is not in `known` (the message lists them)."""
        for key in value:
            if key not in known:
                self.problem(f"{path}.{key}", self.wording.unknown_field.format(known=", ".join(known)))

    def fields(self, value: Any, path: str, known: Sequence[str], required: bool = True) -> Mapping[str, Any]:
        """A mapping whose keys are all in `known`: `mapping` and `unknown_fields` in one."""
        fields = self.mapping(value, path, required)
        self.unknown_fields(fields, path, known)
        return fields

    def items(self, value: Any, path: str, what: str, non_empty: bool = True) -> list[Any]:
        """A list (of `what`, for the message); a problem gives `[]`."""
        if not isinstance(value, list) or (non_empty and not value):
            self.problem(path, f"must be a {'non-empty ' if non_empty else ''}list of {what}")
            return []
        return value

    # -- scalars -------------------------------------------------------------------------------------

    def string(self, value: Any, path: str, pattern: re.Pattern[str] | None = None, *,
               default: str | None = None, what: str = "") -> str:
        """A non-empty string that `pattern` matches in full (`what` names the pattern for the message)."""
        if value is None and default is not None:
            return default
        if not isinstance(value, str) or not value:
            self.problem(path, "is required" if value is None else f"must be a non-empty string, not {_kind(value)}")
            return default or ""
        if pattern and not pattern.fullmatch(value):
            self.problem(path, f"{value!r} is not {what or 'valid'}")
        return value

    def optional_string(self, value: Any, path: str) -> str | None:
        """A string (empty allowed) or None."""
        if value is not None and not isinstance(value, str):
            self.problem(path, f"must be a string, not {_kind(value)}")
            return None
        return value

    def integer(self, value: Any, path: str, low: int, high: int | None = None, *,
                default: int | None = None, what: str = "") -> int:
        """A whole number in [low, high]; `what` ("between 0 and 10") words the bounds' message instead."""
        if value is None and default is not None:
            return default
        if value is None or not isinstance(value, int) or isinstance(value, bool):
            self.problem(path, "is required" if value is None else f"must be a whole number, not {_kind(value)}")
            return default if default is not None else low
        if what and (value < low or (high is not None and value > high)):
            self.problem(path, f"{value} is not {what}")
        elif value < low:
            self.problem(path, self.wording.below.format(value=value, low=low))
        elif high is not None and value > high:
            self.problem(path, self.wording.above.format(value=value, high=high))
        return value

    def number(self, value: Any, path: str, low: float, high: float, *, open_low: bool = True,
               open_high: bool = True, what: str = "") -> float:
        """A finite number in the interval low..high, each end open unless told; `what` ("positive") words
        the bounds' message instead of the interval. No default: the configs that read numbers give theirs
        with `data.get(key, DEFAULT)`."""
        if value is None:
            self.problem(path, "is required")
            return low
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.problem(path, f"{value!r} is not a finite number")
            return low
        too_low = value <= low if open_low else value < low
        too_high = value >= high if open_high else value > high
        if too_low or too_high:
            interval = f"{'(' if open_low else '['}{_number(low)}, {_number(high)}{')' if open_high else ']'}"
            self.problem(path, f"{value!r} is not {what or 'in ' + interval}")
        return float(value)

    def optional_number(self, value: Any, path: str, low: float, high: float, *, open_low: bool = True,
                        open_high: bool = True) -> float | None:
        """None, or a number as `number` checks it."""
        if value is None:
            return None
        return self.number(value, path, low, high, open_low=open_low, open_high=open_high)

    def boolean(self, value: Any, path: str, default: bool | None = None) -> bool:
        """true or false."""
        if value is None and default is not None:
            return default
        if not isinstance(value, bool):
            self.problem(path, "is required" if value is None else f"must be true or false, not {_kind(value)}")
            return bool(default)
        return value

    def duration(self, value: Any, path: str, default: float | None = None, low: float = 0.0) -> float:
        """Seconds from `30s`, `2m`, `500ms`, `1h` or a number of seconds, at least `low`."""
        if value is None and default is not None:
            return default
        seconds: float
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        elif isinstance(value, str) and value.strip().startswith("-") and _DURATION.fullmatch(value.strip()[1:]):
            self.problem(path, f"{value!r} is negative: a duration of at least {low:g}s")
            return default if default is not None else low
        else:
            self.problem(path, "is required" if value is None
                         else f"{value!r} is not a duration (e.g. 30s, 2m, 500ms or seconds)")
            return default if default is not None else low
        if seconds < low:
            self.problem(path, f"{value!r} is shorter than {low:g}s")
        return seconds

    # -- names ---------------------------------------------------------------------------------------

    def choice(self, value: Any, path: str, options: Sequence[str], default: str | None = None) -> str:
        """One of `options`; a problem gives the default (or the first option)."""
        if value is None and default is not None:
            return default
        if value not in options:
            self.problem(path, "is required" if value is None else f"{value!r} is not one of {', '.join(options)}")
            return default if default is not None else options[0]
        return str(value)

    def subset(self, value: Any, path: str, options: Sequence[str]) -> tuple[str, ...]:
        """A list of `options`, duplicates dropped, order kept."""
        if not isinstance(value, list):
            self.problem(path, "is required" if value is None else f"{value!r} is not a list")
            return ()
        chosen = []
        for i, item in enumerate(value):
            if item in options:
                chosen.append(str(item))
            else:
                self.problem(f"{path}[{i}]", f"{item!r} is not one of {', '.join(options)}")
        return tuple(dict.fromkeys(chosen))


def _kind(value: Any) -> str:
    """What a value is, for a message: `nothing`, `str`, `list`, ..."""
    return "nothing" if value is None else type(value).__name__


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
