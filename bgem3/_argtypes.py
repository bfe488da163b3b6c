"""The argument machinery shared by ``bgem3`` (``bgem3/cli.py``) and ``bgem3 serve``
(``bgem3/serve/cli.py``): one place, imported by both, so neither imports the other. It holds the
``type=`` converters, the user-facing error (:class:`CLIError`), the parser whose usage errors are one
line (:class:`OneLineParser`) and ``--backend`` / ``--backend-file`` as Encoder options.

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
from typing import Any, Callable

__all__ = ["CLIError", "OneLineParser", "UsageError", "backend_options", "finite_float", "non_negative",
           "non_negative_seconds", "port", "positive", "positive_seconds"]


class CLIError(Exception):
    """A user-facing failure: printed as one ``bgem3: error: ...`` line."""


class UsageError(CLIError):
    """A command line argparse could not take (exit status 2)."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus the exit status 2), like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--backend`` / ``--backend-file`` as Encoder options (nothing for the default torch backend)."""
    backend = getattr(args, "backend", None) or "torch"
    file_name = getattr(args, "backend_file", None)
    if file_name and backend == "torch":
        raise CLIError("--backend-file names an ONNX / OpenVINO graph; add --backend onnx or --backend openvino")
    out: dict[str, Any] = {} if backend == "torch" else {"backend": backend}
    if file_name:
        out["model_kwargs"] = {"file_name": file_name}
    return out


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None


def _number(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"{value!r} must be a finite number")
    return x


def _checked(name: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], message: str,
             doc: str) -> Callable[[str], Any]:
    """A converter: ``convert`` the text, then refuse it with ``message`` unless ``ok``."""
    def check(value: str) -> Any:
        x = convert(value)
        if not ok(x):
            raise argparse.ArgumentTypeError(message.format(value=value))
        return x

    check.__name__ = check.__qualname__ = name
    check.__doc__ = doc
    return check


positive = _checked("positive", _integer, lambda n: n > 0, "{value} must be a positive integer", "An integer >= 1.")
non_negative = _checked("non_negative", _integer, lambda n: n >= 0, "{value} must be 0 or more", "An integer >= 0.")
port = _checked("port", _integer, lambda n: 0 <= n <= 65535,
                "{value} is not a port number; use 0-65535 (0 = any free port)",
                "A TCP port, 0-65535 (0: the system picks a free one).")
finite_float = _checked("finite_float", _number, lambda x: True, "", "Any finite number (no ``nan`` / ``inf``).")
positive_seconds = _checked("positive_seconds", _number, lambda x: x > 0, "{value!r} must be a number of seconds > 0",
                            "A finite number of seconds > 0.")
non_negative_seconds = _checked("non_negative_seconds", _number, lambda x: x >= 0,
                                "{value!r} must be a number of seconds >= 0", "A finite number of seconds >= 0.")
