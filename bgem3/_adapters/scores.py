"""How an adapter puts bgem3's scores into a framework's metadata (:func:`merge_scores`).

Example::

    >>> from bgem3._adapters.scores import merge_scores
    >>> merge_scores({"src": "a"}, [("score", 0.5), ("dense_score", None)], "bgem3_",
    ...              warn_on_collision=True, owner="demo", noun="document", returned="Document", verb="Set")
    ({'src': 'a', 'bgem3_score': 0.5}, ['bgem3_score'])
"""

from __future__ import annotations

import warnings
from typing import Any, Iterable, Mapping, Optional

def merge_scores(
    metadata: Mapping[str, Any],
    scores: Iterable[tuple[str, Optional[float]]],
    prefix: str = "",
    *,
    warn_on_collision: bool,
    owner: str,
    noun: str,
    returned: str,
    verb: str,
    stacklevel: int = 5,
) -> tuple[dict[str, Any], list[str]]:
    """A copy of ``metadata`` with ``prefix + key`` set to ``float(value)`` for each score (``None``
    scores left out), and the list of keys written.

    If ``warn_on_collision`` and ``metadata`` already has one of those keys, a ``UserWarning`` says
    which key was shadowed and how to keep both; ``noun`` ("document" / "node") names what the
    metadata belongs to, ``returned`` what the caller returns, ``verb`` how to give the prefix.
    ``stacklevel`` is counted from this function (the default attributes the warning to the code that
    called the adapter's public method, two adapter frames up).
    """
    meta: dict[str, Any] = dict(metadata)
    keys: list[str] = []
    for key, value in scores:
        if value is None:
            continue
        name = prefix + key
        if warn_on_collision and name in meta:
            warnings.warn(
                f"{owner}: a {noun}'s metadata already has the key {name!r}; the returned {returned}'s "
                f"{name!r} holds bgem3's {key} instead (the stored metadata is unchanged). {verb} "
                f"metadata_key_prefix='bgem3_' (or another prefix) to keep both.",
                UserWarning,
                stacklevel=stacklevel,
            )
        meta[name] = float(value)
        keys.append(name)
    return meta, keys
