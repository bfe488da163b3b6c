"""The adapters' argument checks and errors: a missing framework, a list argument given as one string, an
unknown option named with the nearest valid one."""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping, Optional

from ..stores.base import check_str_list

def missing_framework(adapter: str, requirement: str, framework: str, extra: str) -> ImportError:
    """The ``ImportError`` an adapter package raises when its framework is not installed.

    >>> str(missing_framework("langchain_bgem3", "langchain-core", "LangChain", "langchain"))
    "langchain_bgem3 needs langchain-core, which is not installed. Install the LangChain extra: pip install 'bgem3[langchain]'"
    """
    return ImportError(
        f"{adapter} needs {requirement}, which is not installed. "
        f"Install the {framework} extra: pip install 'bgem3[{extra}]'"
    )


def check_list_arg(values: Any, name: str) -> list[str]:
    """The package-wide policy for a lone string where a list belongs: a ``TypeError`` naming the
    argument and the fix (never split into characters, never silently wrapped).

    >>> check_list_arg(["a", "b"], "ids")
    ['a', 'b']
    >>> check_list_arg("ab", "ids")
    Traceback (most recent call last):
    TypeError: ids must be a list of strings, not a single string; wrap it: ['ab']
    """
    return check_str_list(values, name)


def unknown_options_error(owner: str, unknown: Iterable[str], valid: Iterable[str],
                          hints: Optional[Mapping[str, str]] = None, exc: type = TypeError) -> Exception:
    """An error naming each unknown keyword, with the alternative: a hint from ``hints`` (an
    option of the class being replaced) or the closest valid name (a typo).

    >>> str(unknown_options_error("BGEM3Embedding", ["model_nme"], ["model_name", "device"]))
    "BGEM3Embedding got unknown keyword argument 'model_nme' (did you mean 'model_name'?). Valid options: ['device', 'model_name']"
    """
    valid = sorted(set(valid))
    hints = dict(hints or {})
    parts = []
    for name in sorted(unknown):
        if name in hints:
            parts.append(f"{name!r} ({hints[name]})")
            continue
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.75)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    noun = "argument" if len(parts) == 1 else "arguments"
    return exc(f"{owner} got unknown keyword {noun} {', '.join(parts)}. Valid options: {valid}")
