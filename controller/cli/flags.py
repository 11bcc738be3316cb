"""The commands' flag values, checked as they are parsed: argparse then stops with exit 2 and one line naming
the flag (`argument --workers: '0' is not a whole number from 1 to 256`), before anything starts.

A default read from an environment variable (`env`) is checked the same way, but only when the command runs
(argparse converts a string default with the flag's `type` only when the flag is not given), so `--help`
works whatever the environment holds, and the message names the variable too. `bind_problem` words an
address a server could not have after the flag that gave it.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from controller.core.plan import HEADER_NAME

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")


class FromEnvironment(str):
    """A flag's default read from an environment variable (`variable`), so that a refusal can name it."""

    variable = ""


def env(variable: str, fallback: Any = None, *, empty_is_unset: bool = True) -> Any:
    """A flag's default: the variable's value when it is set (and not empty, unless empty means something)."""
    value = os.environ.get(variable)
    if value is None or (value == "" and empty_is_unset):
        return fallback
    default = FromEnvironment(value)
    default.variable = variable
    return default


def source(text: str) -> str:
    """` (from $VARIABLE)` for a default read from the environment, else ``."""
    return f" (from ${text.variable})" if isinstance(text, FromEnvironment) else ""


def refused(text: str, what: str) -> argparse.ArgumentTypeError:
    """`'VALUE' (from $VARIABLE) is not WHAT`, which argparse prints after `argument --flag:`."""
    return argparse.ArgumentTypeError(f"{text!r}{source(text)} is not {what}")


def whole(low: int, high: int | None = None, what: str = "") -> Callable[[str], int]:
    """A type: a whole number from `low` (to `high`)."""
    what = what or (f"a whole number from {low} to {high}" if high is not None else f"a whole number of {low} or more")

    def whole_number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise refused(text, what) from None
        if value < low or (high is not None and value > high):
            raise refused(text, what)
        return value
    return whole_number


def number(low: float, high: float = math.inf, *, above: bool = False, what: str = "") -> Callable[[str], float]:
    """A type: a finite number from `low` (or `above` it) to `high`; never NaN or infinite."""
    if not what:
        start = f"above {low:g}" if above else f"from {low:g}" if high < math.inf else f"of {low:g} or more"
        what = f"a number {start}" + (f" to {high:g}" if high < math.inf else "")

    def finite_number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise refused(text, what) from None
        if not math.isfinite(value) or value < low or (above and value == low) or value > high:
            raise refused(text, what)
        return value
    return finite_number


def seconds(low: float, high: float) -> Callable[[str], float]:
    """A type: a number of seconds from `low` to `high`."""
    return number(low, high, what=f"a number of seconds from {low:g} to {high:g}")


def one_of(*choices: str) -> Callable[[str], str]:
    """A type: one of `choices` (argparse's `choices` would not check a default from the environment)."""
    def chosen(text: str) -> str:
        if text not in choices:
            raise refused(text, " or ".join(choices))
        return str(text)
    return chosen


def http_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        good = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed [IPv6 address
        good = False
    if not good:
        raise refused(text, "an http:// or https:// URL with a host")
    return str(text)


def header_name(text: str) -> str:
    if not HEADER_NAME.fullmatch(text):  # as a release's header fields take them
        raise refused(text, "a lower-case HTTP header name (letters, digits and '-')")
    return str(text)


def header_name_or_none(text: str) -> str:
    """A header name, or '' for none."""
    return text if text == "" else header_name(text)


def namespace(text: str) -> str:
    if not _DNS_LABEL.fullmatch(text):
        raise refused(text, "a namespace's name (lower-case letters, digits and '-', at most 63)")
    return str(text)


def lease_name(text: str) -> str:
    if not _DNS_SUBDOMAIN.fullmatch(text):
        raise refused(text, "a Lease's name (lower-case letters, digits, '-' and '.', at most 253)")
    return str(text)


def bind_problem(exc: OSError, host_flag: str, port_flag: str) -> str:
    """`FLAG VALUE: reason` of a failed bind: the host's flag for an address that does not resolve or is not
    this machine's, the port's for the rest (in use, a privileged port)."""
    on_host = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
    reason = exc.strerror or str(exc)
    return f"{host_flag if on_host else port_flag}: {reason[:1].lower()}{reason[1:]}"
