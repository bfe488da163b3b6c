"""argparse ``type=`` converters shared by ``bgem3`` (``bgem3/cli.py``) and ``bgem3 serve``
(``bgem3/serve/cli.py``): one place, imported by both, so neither imports the other.

Each takes the flag's text and returns the value, or raises ``argparse.ArgumentTypeError`` with
a message that names the value and what was expected (argparse prefixes the flag).

Example::

    >>> positive("8")
    8
    >>> positive("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: 0 must be a positive integer
    >>> port("65536")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: 65536 is not a port number; use 0-65535 (0 = any free port)
"""

from __future__ import annotations

import argparse
import math

__all__ = ["finite_float", "non_negative", "non_negative_seconds", "port", "positive", "positive_seconds"]


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None


def positive(value: str) -> int:
    """An integer >= 1."""
    n = _integer(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return n


def non_negative(value: str) -> int:
    """An integer >= 0."""
    n = _integer(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return n


def port(value: str) -> int:
    """A TCP port, 0-65535 (0: the system picks a free one)."""
    n = _integer(value)
    if not 0 <= n <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number; use 0-65535 (0 = any free port)")
    return n


def finite_float(value: str) -> float:
    """Any finite number (no ``nan`` / ``inf``)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"{value!r} must be a finite number")
    return x


def positive_seconds(value: str) -> float:
    """A finite number of seconds > 0."""
    x = finite_float(value)
    if not x > 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a number of seconds > 0")
    return x


def non_negative_seconds(value: str) -> float:
    """A finite number of seconds >= 0."""
    x = finite_float(value)
    if x < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a number of seconds >= 0")
    return x
